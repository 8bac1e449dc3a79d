//! Against the real PyPI (through whatever index pip is configured with): fetch,
//! verify, install, import with a real interpreter, wrong hashes, offline rebuild from
//! the cache, and the project's real requirements file.
//!
//! One test function on purpose: it sets `PIP_INDEX_URL` for the offline part, and the
//! environment is process-wide.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use imgbuild_layer::{Content, Node, Tree};
use imgbuild_python::{
    Error, Libc, Target, VenvSpec, fetch_wheels, fingerprint, install, parse_requirements,
    requirements::parse_requirements_str,
};
use imgbuild_store::Store;

const SIX_WHL: &str = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254";
const SIX_SDIST: &str = "1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926";
const AT_WHL: &str = "7405140ff1230c310e51dc27b3145b9092d659ce68ff733fb0cefe3ee42be028";
const AT_SDIST: &str = "4640d96be84d82d02ed59ea2b7105a0f7b33abe8703703cd0ab0bf87c427522f";
const REDIS_WHL: &str = "ed4802971884ae19d640775ba3b03aa2e7bd5e8fb8dfaed2decce4d0fc48391f";
const REDIS_SDIST: &str = "0dab495cd5753069d3bc650a0dde8a8f9edde16fc5691b689a566eda58100d0f";

fn requirements(with_async_timeout: bool) -> String {
    let mut t = String::from("# uv pip compile --generate-hashes (by hand)\n");
    if with_async_timeout {
        t.push_str(&format!(
            "async-timeout==4.0.3 ; python_full_version < \"3.11.3\" \\\n    --hash=sha256:{AT_SDIST} \\\n    --hash=sha256:{AT_WHL}\n    # via redis\n"
        ));
    }
    t.push_str(&format!(
        "redis==5.0.1 \\\n    --hash=sha256:{REDIS_SDIST} \\\n    --hash=sha256:{REDIS_WHL}\n"
    ));
    t.push_str(&format!(
        "six==1.16.0 \\\n    --hash=sha256:{SIX_SDIST} \\\n    --hash=sha256:{SIX_WHL}\n"
    ));
    t
}

fn bookworm(bytecode: bool) -> VenvSpec {
    VenvSpec {
        bytecode,
        ..VenvSpec::bookworm("requirements.txt", "/opt/venv")
    }
}

/// Writes a tree's entries below `root` (files copied, symlinks made).
fn materialise(tree: &Tree, root: &Path) {
    for (p, n) in tree.iter() {
        let dest = root.join(p.as_str());
        match n {
            Node::Dir(_) => std::fs::create_dir_all(&dest).unwrap(),
            Node::File { content, .. } => match content {
                Content::Inline(b) => std::fs::write(&dest, b).unwrap(),
                Content::Host { path, size, .. } => {
                    assert_eq!(std::fs::copy(path, &dest).unwrap(), *size);
                }
                Content::Range { .. } => panic!("unexpected range content"),
            },
            Node::Symlink { target, .. } => std::os::unix::fs::symlink(target, &dest).unwrap(),
            Node::Hardlink { .. } => panic!("unexpected hardlink"),
        }
    }
}

#[test]
fn pypi_fetch_verify_install_import_and_offline_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let http = client();
    let path = PathBuf::from("requirements.txt");

    // 1. a wrong hash fails clearly, before anything is downloaded into the store
    let bad = requirements(true)
        .replace(SIX_WHL, &"0".repeat(64))
        .replace(SIX_SDIST, &"1".repeat(64));
    let reqs = parse_requirements_str(&bad, &path).unwrap();
    let err = fetch_wheels(&bookworm(false), &reqs, &store, &http, 4).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NoHashMatch { .. }), "{msg}");
    assert!(
        msg.contains("six 1.16.0") && msg.contains("six-1.16.0-py2.py3-none-any.whl"),
        "{msg}"
    );
    assert!(
        store
            .list_blobs()
            .unwrap()
            .iter()
            .all(|d| d.hex() != SIX_WHL)
    );
    assert_eq!(count_files(&store.root().join("tmp")), 0);

    // 2. redis needs async-timeout on 3.11.2 but not on 3.11.7: the closure check is for
    //    the target, not the host
    let reqs_no_at = parse_requirements_str(&requirements(false), &path).unwrap();
    let wheels_no_at = fetch_wheels(&bookworm(false), &reqs_no_at, &store, &http, 4).unwrap();
    let err = install(
        &bookworm(false),
        &reqs_no_at,
        &wheels_no_at,
        &store,
        None,
        1,
        &mut Tree::new(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains(
            "redis 5.0.1 requires async-timeout>=4.0.2 (python_full_version <= \"3.11.2\") but it is not in requirements.txt"
        ),
        "{err}"
    );
    let newer = VenvSpec {
        target: Target {
            python_full_version: "3.11.7".into(),
            ..Target::bookworm_cpython311()
        },
        ..bookworm(false)
    };
    install(
        &newer,
        &reqs_no_at,
        &wheels_no_at,
        &store,
        None,
        1,
        &mut Tree::new(),
    )
    .unwrap();

    // 3. the full set: fetched in parallel, verified, installed, with .pyc
    let reqs = parse_requirements_str(&requirements(true), &path).unwrap();
    let spec = bookworm(true);
    let wheels = fetch_wheels(&spec, &reqs, &store, &http, 4).unwrap();
    let files: Vec<_> = wheels.iter().map(|w| w.filename.as_str()).collect();
    assert_eq!(
        files,
        [
            "async_timeout-4.0.3-py3-none-any.whl",
            "redis-5.0.1-py3-none-any.whl",
            "six-1.16.0-py2.py3-none-any.whl"
        ]
    );
    for w in &wheels {
        assert!(
            store.verify(&w.digest).unwrap(),
            "{} stored under its sha256",
            w.filename
        );
        assert!(
            reqs.requirements
                .iter()
                .any(|r| r.hashes.contains(&w.digest))
        );
    }
    // the .pyc files are written by the image's interpreter: here a layer holding this
    // machine's Debian python3.11
    let interp = image_interpreter(&store);
    let mut tree = Tree::new();
    let report = install(&spec, &reqs, &wheels, &store, Some(&interp), 2, &mut tree).unwrap();
    assert_eq!(report.packages.len(), 3);
    assert!(report.pyc_files > 50, "{report:?}");
    assert!(
        report.warnings.iter().all(|w| !w.contains("differed")),
        "{:?}",
        report.warnings
    );

    // 4. a real interpreter imports from the installed site-packages, using our .pyc
    let root = tmp.path().join("rootfs");
    materialise(&tree, &root);
    let sp = root.join("opt/venv/lib/python3.11/site-packages");
    let out = interp
        .command()
        .args([
            "-S",
            "-v",
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import redis, six, async_timeout; \
             print(redis.__version__, six.__version__, async_timeout.__version__)",
        ])
        .arg(&sp)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "5.0.1 1.16.0 4.0.3");
    // modules were loaded from our unchecked-hash .pyc files (importlib says "matches"
    // when it accepts a .pyc for its source; a source mtime newer than the .pyc does not
    // matter in unchecked-hash mode)
    let verbose = String::from_utf8_lossy(&out.stderr);
    let pyc = sp.join("redis/__pycache__/client.cpython-311.pyc");
    assert!(
        verbose.contains(&format!(
            "{} matches {}",
            pyc.display(),
            sp.join("redis/client.py").display()
        )),
        "{verbose}"
    );
    assert!(
        !verbose.contains(&format!(
            "code object from '{}'",
            sp.join("redis/client.py").display()
        )),
        "{verbose}"
    );

    // 5. offline: the same build with the index pointed at a closed port succeeds from
    //    the store alone, and gives the same tree
    // SAFETY: this test binary has a single test function, so no other thread reads the
    // environment concurrently.
    unsafe { std::env::set_var("PIP_INDEX_URL", "http://127.0.0.1:9/simple") };
    let again = fetch_wheels(&spec, &reqs, &store, &http, 4).unwrap();
    let mut tree2 = Tree::new();
    install(&spec, &reqs, &again, &store, Some(&interp), 2, &mut tree2).unwrap();
    assert_eq!(
        tree.iter().collect::<Vec<_>>(),
        tree2.iter().collect::<Vec<_>>()
    );
    // …and the closed port really is used when the store is empty
    let empty = Store::open(tmp.path().join("empty")).unwrap();
    let err = fetch_wheels(&spec, &reqs, &empty, &http, 4).unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
    unsafe { std::env::remove_var("PIP_INDEX_URL") };

    // 5b. pip's `cert` (PIP_CERT): the index is trusted through that CA bundle only; a
    //     bundle holding one unrelated root CA makes PyPI's certificate unacceptable
    let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if system.is_file() {
        let bundle = std::fs::read_to_string(system).unwrap();
        let end = "-----END CERTIFICATE-----";
        let first = &bundle[bundle.find("-----BEGIN CERTIFICATE-----").unwrap()
            ..bundle.find(end).unwrap() + end.len()];
        let unrelated = tmp.path().join("unrelated-ca.pem");
        std::fs::write(&unrelated, format!("{first}\n")).unwrap();
        let before = std::env::var_os("PIP_CERT");
        // SAFETY: single test function, see above
        unsafe { std::env::set_var("PIP_CERT", &unrelated) };
        let empty = Store::open(tmp.path().join("empty-cert")).unwrap();
        let err = fetch_wheels(&spec, &reqs, &empty, &http, 4).unwrap_err();
        assert!(
            matches!(err, Error::Http { .. })
                && err.to_string().to_lowercase().contains("certificate"),
            "{err}"
        );
        unsafe { std::env::set_var("PIP_CERT", system) };
        fetch_wheels(&spec, &reqs, &empty, &http, 4).unwrap();
        match before {
            Some(v) => unsafe { std::env::set_var("PIP_CERT", v) },
            None => unsafe { std::env::remove_var("PIP_CERT") },
        }
    }

    // 6. the fingerprint is computed without the network and is stable
    assert_eq!(
        fingerprint(&spec, &reqs),
        fingerprint(
            &spec,
            &parse_requirements_str(&requirements(true), &path).unwrap()
        )
    );

    // 7. the project's real requirements file (layers/venv, for trixie's CPython
    //    3.13.5) has a wheel for every requirement but psycopg-c, which is an sdist
    //    only (the stack builds it in its py-builder sandbox: tests/integration), on
    //    both of the stack's architectures
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../layers/venv/requirements.txt");
    if real.is_file() {
        let mut reqs = parse_requirements(&real).unwrap();
        let all = reqs.requirements.len();
        reqs.requirements.retain(|r| r.key != "psycopg-c");
        assert_eq!(reqs.requirements.len(), all - 1, "psycopg-c is pinned");
        for arch in ["x86_64", "aarch64"] {
            let spec = VenvSpec {
                requirements: real.clone(),
                interpreter: "/usr/bin/python3.13".into(),
                target: Target {
                    python_full_version: "3.13.5".into(),
                    libc: Libc::Glibc(2, 41),
                    arch: arch.into(),
                },
                ..bookworm(false)
            };
            let wheels = fetch_wheels(&spec, &reqs, &store, &http, 4)
                .unwrap_or_else(|e| panic!("{arch}: {e}"));
            assert_eq!(wheels.len(), reqs.requirements.len(), "{arch}");
        }
    }
}
