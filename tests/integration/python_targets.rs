//! The venv's target (CPython version, ABI, glibc, architecture) is read from the image,
//! never from constants (issue 11): trixie's python3.13 with a cp313 C extension, and a
//! registry base whose Python lives in `/usr/local`, each imported in a real engine.

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// six (pure) and MarkupSafe 3.0.2 (a C extension: cp313 manylinux wheels for x86_64
/// and aarch64), pinned with their hashes as `uv pip compile --generate-hashes` writes them.
const REQUIREMENTS: &str = "\
markupsafe==3.0.2 \\
    --hash=sha256:15ab75ef81add55874e7ab7055e9c397312385bd9ced94920f2802310c930396 \\
    --hash=sha256:569511d3b58c8791ab4c2e1285575265991e6d8f8700c7be0e88f86cb0672094 \\
    --hash=sha256:ee55d3edf80167e48ea11a923c7386f4669df67d7994554387f84e7d8b0a2bf0
six==1.17.0 \\
    --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274 \\
    --hash=sha256:ff70335d468e7eb6ec65b95b99d3a2836546063f63acc5171de367e834932a81
";

/// What the venv's interpreter says: its version, prefix, base prefix, the escaped
/// text (MarkupSafe's C speedups, which only load on the matching ABI), where the
/// extension was loaded from, and six's version.
const PROBE: &str = "import sys, markupsafe, markupsafe._speedups as s, six; \
print(sys.version.split()[0], sys.prefix, sys.base_prefix, markupsafe.escape('<a>'), s.__file__.rsplit('/', 1)[1], six.__version__)";

fn project(dir: &Path, recipes: &[(&str, String)]) {
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    std::fs::write(dir.join("imgbuild.toml"), "[debian]\nsuite = \"trixie\"\n").unwrap();
    std::fs::write(dir.join("requirements.txt"), REQUIREMENTS).unwrap();
    for (name, text) in recipes {
        std::fs::write(dir.join(format!("recipes/{name}.toml")), text).unwrap();
    }
}

fn imgbuild(dir: &Path, store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.arg("-C").arg(dir).arg("--store").arg(store);
    c.env_remove("SOURCE_DATE_EPOCH");
    c
}

fn docker_run(image: &DockerImage, args: &[&str]) -> String {
    run_ok(
        Command::new("docker")
            .args(["run", "--rm", "--network", "none", &image.0])
            .args(args),
    )
}

/// Debian 13's python3.13 (no `/usr/bin/python3` link: the default interpreter is the
/// image's only `python3.Y`), its standard library byte-compiled by itself, and a venv
/// whose wheels are chosen for cp313 on the image's glibc.
#[test]
fn a_venv_on_trixie_python313_imports_a_cp313_extension() {
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let p = dir.path();
    project(
        p,
        &[(
            "py313",
            r#"[[layers]]
debian = { packages = ["python3.13"] }

[[layers]]
python = { requirements = "requirements.txt" }
"#
            .into(),
        )],
    );
    run_ok(imgbuild(p, store.path()).args(["--json", "build", "py313"]));
    let inspect = run_ok(imgbuild(p, store.path()).args(["inspect", "py313"]));
    assert!(
        inspect.contains("target: CPython 3.13.")
            && inspect.contains("on x86_64 glibc 2.41 (/usr/bin/python3.13; version from /var/lib/dpkg/status.d/python3.13-minimal"),
        "{inspect}"
    );
    assert!(
        inspect.contains("standard library: ")
            && inspect
                .contains(".pyc files (written by the image's /usr/bin/python3.13 (CPython 3.13."),
        "{inspect}"
    );
    let image = DockerImage::load(&p.join("out/py313.tar"), "py313");
    let out = docker_run(&image, &["/opt/venv/bin/python", "-c", PROBE]);
    let f: Vec<&str> = out.split_whitespace().collect();
    assert!(f[0].starts_with("3.13."), "{out}");
    assert_eq!(
        &f[1..],
        [
            "/opt/venv",
            "/usr",
            "&lt;a&gt;",
            "_speedups.cpython-313-x86_64-linux-gnu.so",
            "1.17.0"
        ],
        "{out}"
    );
    // the .pyc files the image uses were written at build time: the standard
    // library's (by the layer's own python3.13) and the venv's
    let cached = docker_run(
        &image,
        &[
            "/opt/venv/bin/python",
            "-c",
            "import os, six, importlib.util as u; print(all(os.path.exists(u.cache_from_source(m.__file__)) for m in (os, six)))",
        ],
    );
    assert_eq!(cached.trim(), "True", "{cached}");
}

/// A registry base whose Python is not Debian's package: there is no such image to
/// pull here, so the test makes one and pushes it to a registry on 127.0.0.1. Its
/// Python is trixie's 3.13 relocated to `/usr/local` (the layout of the official
/// Python images: `/usr/local/bin/python3 -> python3.13`, `/usr/local/lib/python3.13`),
/// over Debian's libraries only (`libpython3.13-stdlib` for what its extension modules
/// link; no interpreter and no dpkg record of one). What it proves: the default
/// interpreter is found in `/usr/local`, its version is read without Debian's record
/// (from the binary), the layers come from a registry base, and the venv's
/// `home` and `base_prefix` are `/usr/local`.
#[test]
fn a_venv_on_a_registry_base_with_its_own_python_in_usr_local() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let p = dir.path();
    project(
        p,
        &[
            (
                "debpy",
                "[[layers]]\ndebian = { packages = [\"python3.13\"], bytecode = false }\n".into(),
            ),
            (
                "localpy",
                format!(
                    r#"repository = "{}/bases/localpy"

[[layers]]
debian = {{ packages = ["libpython3.13-stdlib", "libexpat1"], bytecode = false }}

[[layers]]
files = [
  {{ image = "debpy", src = "/usr/bin/python3.13", dest = "/usr/local/bin/python3.13" }},
  {{ image = "debpy", src = "/usr/lib/python3.13", dest = "/usr/local/lib/python3.13" }},
]
symlinks = [ {{ path = "/usr/local/bin/python3", target = "python3.13" }} ]
"#,
                    reg.addr
                ),
            ),
        ],
    );
    run_ok(imgbuild(p, store.path()).args(["build", "localpy"]));
    run_ok(
        imgbuild(p, store.path())
            .env("IMGBUILD_INSECURE_REGISTRIES", &reg.addr)
            .args(["push", "localpy"]),
    );
    // the app: from the registry, a venv with the image's default interpreter
    std::fs::write(
        p.join("recipes/app.toml"),
        format!(
            "from = \"{}/bases/localpy:latest\"\n\n[[layers]]\npython = {{ requirements = \"requirements.txt\" }}\n",
            reg.addr
        ),
    )
    .unwrap();
    run_ok(
        imgbuild(p, store.path())
            .env("IMGBUILD_INSECURE_REGISTRIES", &reg.addr)
            .args(["build", "app"]),
    );
    let inspect = run_ok(
        imgbuild(p, store.path())
            .env("IMGBUILD_INSECURE_REGISTRIES", &reg.addr)
            .args(["inspect", "app"]),
    );
    assert!(
        inspect.contains("(/usr/local/bin/python3.13; version from /usr/local/bin/python3.13,"),
        "{inspect}"
    );
    let image = DockerImage::load(&p.join("out/app.tar"), "app");
    let out = docker_run(&image, &["/opt/venv/bin/python", "-c", PROBE]);
    let f: Vec<&str> = out.split_whitespace().collect();
    assert!(f[0].starts_with("3.13."), "{out}");
    assert_eq!(
        &f[1..],
        [
            "/opt/venv",
            "/usr/local",
            "&lt;a&gt;",
            "_speedups.cpython-313-x86_64-linux-gnu.so",
            "1.17.0"
        ],
        "{out}"
    );
    let cfg = docker_run(
        &image,
        &[
            "/usr/local/bin/python3",
            "-c",
            "print(open('/opt/venv/pyvenv.cfg').read())",
        ],
    );
    assert!(cfg.contains("home = /usr/local/bin"), "{cfg}");
}

/// An image whose C library is musl (Alpine's layout: `/lib/ld-musl-x86_64.so.1`, no
/// glibc) is refused before anything is downloaded, in an error that says why. The
/// interpreter is an ELF header only (the target is read, never run).
#[test]
fn a_musl_image_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let p = dir.path();
    project(
        p,
        &[(
            "alpine",
            r#"[[layers]]
files = [
  { src = "python3.12", dest = "/usr/local/bin/python3.12", mode = "0755" },
  { dest = "/usr/local/lib/python3.12/os.py", content = "" },
  { dest = "/lib/ld-musl-x86_64.so.1", content = "musl\n" },
]
symlinks = [ { path = "/usr/local/bin/python3", target = "python3.12" } ]

[[layers]]
python = { requirements = "requirements.txt" }
"#
            .into(),
        )],
    );
    // e_ident of a 64-bit little-endian ELF, e_type 0, e_machine EM_X86_64
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(16, 0);
    elf.extend_from_slice(&[0, 0, 62, 0]);
    std::fs::write(p.join("python3.12"), elf).unwrap();
    let out = imgbuild(p, store.path())
        .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
        .args(["build", "alpine"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("recipes/alpine.toml:")
            && err.contains("`/usr/local/bin/python3.12`")
            && err.contains("the image's C library is musl (`ld-musl-x86_64.so.1`), which imgbuild does not support")
            && err.contains("glibc-based image"),
        "{err}"
    );
    assert!(!err.contains("127.0.0.1:9"), "nothing was fetched: {err}");
}
