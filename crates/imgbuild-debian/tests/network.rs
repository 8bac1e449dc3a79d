//! Against the real Debian archive (deb.debian.org): the signed index, the resolver compared
//! with apt itself, verified parallel downloads, unpacking a real closure, tamper detection,
//! and the error for a version the mirror no longer serves.
//!
//! Needs network access to deb.debian.org, and `apt-get` (Debian's `apt` package) for the
//! comparison with apt's own resolver. Nothing here is skipped when those are missing: the
//! tests fail.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use imgbuild_debian::system::{Accounts, base_fixup};
use imgbuild_debian::{Error, Index, LockedPackage, Mirror, Unpacker, fetch_debs, resolve};
use imgbuild_layer::{Meta, Node, Tree, TreePath};
use imgbuild_store::Store;

struct Shared {
    _dir: tempfile::TempDir,
    store: Store,
    index: Index,
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .unwrap()
}

/// One index for all tests of this file (fetching it is the slow part).
fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let index = Index::fetch(&Mirror::default(), &store, &http()).expect("index fetch");
        Shared {
            _dir: dir,
            store,
            index,
        }
    })
}

fn roots() -> Vec<String> {
    ["nginx", "base-files", "netbase"]
        .map(String::from)
        .to_vec()
}

#[test]
fn index_is_verified_and_cached() {
    let s = shared();
    assert!(
        s.index.len() > 30_000,
        "bookworm main amd64 has ~60k packages, got {}",
        s.index.len()
    );
    assert_eq!(s.index.suites.len(), 3);
    for info in &s.index.suites {
        assert!(info.signed_by.starts_with("debian-archive-"), "{info:?}");
        assert!(s.store.has_blob(&info.packages_sha256));
    }
    assert!(
        s.index
            .candidate("libc6")
            .unwrap()
            .filename
            .starts_with("pool/main/g/glibc/libc6_")
    );

    // fetching again reuses the stored Packages blobs (same inode: not rewritten)
    let inodes = |st: &Store, idx: &Index| -> Vec<u64> {
        idx.suites
            .iter()
            .map(|i| {
                std::fs::metadata(st.blob_path(&i.packages_sha256))
                    .unwrap()
                    .ino()
            })
            .collect()
    };
    let before = inodes(&s.store, &s.index);
    let again = Index::fetch(&Mirror::default(), &s.store, &http()).unwrap();
    if again
        .suites
        .iter()
        .zip(&s.index.suites)
        .all(|(a, b)| a.packages_sha256 == b.packages_sha256)
    {
        assert_eq!(inodes(&s.store, &again), before);
    }
}

#[test]
fn nginx_closure_is_small_and_matches_apt() {
    let s = shared();
    let r = resolve(&s.index, &roots(), &[]).unwrap();
    let names: BTreeSet<&str> = r.packages.iter().map(|p| p.name.as_str()).collect();
    assert!(
        (25..=40).contains(&names.len()),
        "{} packages: {names:?}",
        names.len()
    );
    for must in [
        "nginx",
        "nginx-common",
        "libc6",
        "libpcre2-8-0",
        "libssl3",
        "base-files",
        "netbase",
        "iproute2",
    ] {
        assert!(names.contains(must), "{must} missing from {names:?}");
    }
    // not the naive closure: no alternative awks, no Recommends, no implicit Essential set
    for never in ["gawk", "original-awk", "dash", "coreutils", "bash", "perl"] {
        assert!(!names.contains(never), "{never} should not be in {names:?}");
    }
    let sorted: Vec<&str> = r.packages.iter().map(|p| p.name.as_str()).collect();
    assert!(sorted.windows(2).all(|w| w[0] < w[1]), "sorted by name");
    for p in &r.packages {
        assert!(
            p.filename.starts_with("pool/") && p.filename.ends_with(".deb"),
            "{p:?}"
        );
    }

    let apt = apt_resolve(&roots());
    let ours: BTreeSet<String> = r
        .packages
        .iter()
        .map(|p| format!("{}={}", p.name, p.version))
        .collect();
    assert_eq!(
        ours, apt,
        "ours (left) vs apt-get install -s on an empty status (right)"
    );

    // exclude prunes iproute2 and what only it needed
    let slim = resolve(
        &s.index,
        &roots(),
        &["iproute2".into(), "debconf".into(), "mawk".into()],
    )
    .unwrap();
    let slim_names: BTreeSet<&str> = slim.packages.iter().map(|p| p.name.as_str()).collect();
    assert!(
        !slim_names.contains("iproute2")
            && !slim_names.contains("libbpf1")
            && !slim_names.contains("libelf1"),
        "{slim_names:?}"
    );
    assert!(slim_names.contains("nginx") && slim_names.contains("libc6"));
    assert!(slim.excluded_dropped.contains(&"iproute2".to_owned()));
    assert_eq!(
        slim.packages.len(),
        11,
        "the by-hand slim nginx had 11 packages: {slim_names:?}"
    );
    assert!(
        slim.excluded_required_by["iproute2"].contains(&"nginx".to_owned()),
        "{:?}",
        slim.excluded_required_by
    );
}

/// `apt-get install -s --no-install-recommends` against a private apt root with only the
/// three bookworm suites and an empty dpkg status (as the by-hand scripts did).
fn apt_resolve(roots: &[String]) -> BTreeSet<String> {
    static APT_ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    static UPDATED: Mutex<bool> = Mutex::new(false);
    let a = APT_ROOT.get_or_init(|| tempfile::tempdir().unwrap()).path();
    for d in [
        "etc/sources.list.d",
        "etc/preferences.d",
        "etc/apt.conf.d",
        "lists/partial",
        "cache/archives/partial",
        "state",
    ] {
        std::fs::create_dir_all(a.join(d)).unwrap();
    }
    std::fs::write(a.join("state/status"), "").unwrap();
    std::fs::write(
        a.join("etc/sources.list"),
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main\n\
         deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main\n\
         deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main\n",
    )
    .unwrap();
    let p = |s: &str| a.join(s).to_str().unwrap().to_owned();
    let opts: Vec<String> = [
        format!("Dir::Etc::sourcelist={}", p("etc/sources.list")),
        format!("Dir::Etc::sourceparts={}", p("etc/sources.list.d")),
        format!("Dir::Etc::preferencesparts={}", p("etc/preferences.d")),
        format!("Dir::Etc::parts={}", p("etc/apt.conf.d")),
        format!("Dir::State::lists={}", p("lists")),
        format!("Dir::State::status={}", p("state/status")),
        format!("Dir::State::extended_states={}", p("state/extended_states")),
        format!("Dir::Cache={}", p("cache")),
        format!("Dir::Cache::archives={}", p("cache/archives")),
        "Dir::Cache::pkgcache=".into(),
        "Dir::Cache::srcpkgcache=".into(),
        "APT::Architecture=amd64".into(),
        "APT::Architectures::=amd64".into(),
        "APT::Install-Recommends=false".into(),
        "APT::Install-Suggests=false".into(),
        "APT::Sandbox::User=root".into(),
        "Debug::NoLocking=true".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_owned(), o])
    .collect();
    let run = |args: &[&str]| {
        let out = Command::new("apt-get")
            .args(&opts)
            .args(args)
            .env("LC_ALL", "C")
            .output()
            .expect("apt-get must be installed (Debian package `apt`)");
        assert!(
            out.status.success(),
            "apt-get {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    {
        let mut updated = UPDATED.lock().unwrap();
        if !*updated {
            run(&["update", "-q"]);
            *updated = true;
        }
    }
    let mut args = vec!["install", "-s", "-q", "--no-install-recommends"];
    args.extend(roots.iter().map(String::as_str));
    run(&args)
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next().unwrap();
            let ver = f.next().unwrap().trim_start_matches('(');
            format!("{name}={ver}")
        })
        .collect()
}

/// The other reference images of the by-hand study resolve exactly as apt resolves them.
#[test]
fn reference_closures_match_apt() {
    let s = shared();
    for roots in [
        &[
            "postgresql-15",
            "postgresql-plpython3-15",
            "dash",
            "base-files",
            "netbase",
        ][..],
        &["python3.11", "tzdata", "base-files", "netbase"],
        &["redis-server", "base-files", "netbase"],
        &[
            "rabbitmq-server",
            "dash",
            "coreutils",
            "sed",
            "libc-bin",
            "base-files",
            "netbase",
        ],
    ] {
        let roots: Vec<String> = roots.iter().map(|r| r.to_string()).collect();
        let r = resolve(&s.index, &roots, &[]).unwrap();
        let ours: BTreeSet<String> = r
            .packages
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        let apt = apt_resolve(&roots);
        let only_ours: Vec<_> = ours.difference(&apt).collect();
        let only_apt: Vec<_> = apt.difference(&ours).collect();
        assert!(
            only_ours.is_empty() && only_apt.is_empty(),
            "{roots:?}: only ours {only_ours:?}, only apt {only_apt:?}"
        );
    }
}

#[test]
fn fetch_unpack_and_tamper_detection() {
    let s = shared();
    let r = resolve(&s.index, &roots(), &[]).unwrap();
    let seen = Mutex::new(vec![]);
    let progress = |l: &str| seen.lock().unwrap().push(l.to_owned());
    fetch_debs(
        &Mirror::default(),
        &r.packages,
        &s.store,
        &http(),
        4,
        &progress,
    )
    .unwrap();
    assert_eq!(
        seen.lock().unwrap().len(),
        r.packages.len(),
        "every .deb fetched once"
    );
    for p in &r.packages {
        assert!(
            s.store.verify(&p.sha256).unwrap(),
            "{} stored and intact",
            p.name
        );
    }

    // nothing is fetched twice
    seen.lock().unwrap().clear();
    fetch_debs(
        &Mirror::default(),
        &r.packages,
        &s.store,
        &http(),
        4,
        &progress,
    )
    .unwrap();
    assert!(seen.lock().unwrap().is_empty());

    // a tampered cached .deb is detected and fetched again
    let netbase = r.packages.iter().find(|p| p.name == "netbase").unwrap();
    std::fs::write(s.store.blob_path(&netbase.sha256), b"tampered").unwrap();
    fetch_debs(
        &Mirror::default(),
        &r.packages,
        &s.store,
        &http(),
        2,
        &progress,
    )
    .unwrap();
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [format!(
            "fetch netbase {} ({} bytes)",
            netbase.version, netbase.size
        )]
    );
    assert!(s.store.verify(&netbase.sha256).unwrap());

    // unpack the whole closure
    let mut tree = Tree::new();
    let mut u = Unpacker::new();
    let mut reports = vec![];
    for p in &r.packages {
        reports.push(
            u.unpack(&s.store, p, &mut tree)
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    base_fixup(&mut tree).unwrap();
    Accounts::debian_base().render(&mut tree).unwrap();
    tree.validate().unwrap();

    let get = |p: &str| tree.get(&TreePath::new(p).unwrap()).cloned();
    match get("usr/sbin/nginx") {
        Some(Node::File { meta, content }) => {
            assert_eq!(meta, Meta::new(0o755, 0, 0));
            assert!(content.size() > 500_000, "nginx binary is ~1.2 MB");
        }
        other => panic!("usr/sbin/nginx: {other:?}"),
    }
    assert!(matches!(get("bin"), Some(Node::Symlink { target, .. }) if target == "usr/bin"));
    assert!(matches!(get("lib64"), Some(Node::Symlink { target, .. }) if target == "usr/lib64"));
    // libc6 ships ./lib64/ld-linux-x86-64.so.2: rewritten under usr/
    assert!(get("usr/lib64/ld-linux-x86-64.so.2").is_some());
    assert!(get("usr/lib/x86_64-linux-gnu/libc.so.6").is_some());
    assert!(matches!(
        get("etc/nginx/nginx.conf"),
        Some(Node::File { .. })
    ));
    assert!(matches!(
        get("var/lib/dpkg/status.d/nginx"),
        Some(Node::File { .. })
    ));
    // special bits survive: libc6's /var/mail? no; base-files ships /var/local 2775 root:staff
    assert_eq!(get("var/local"), Some(Node::Dir(Meta::new(0o2775, 0, 50))));
    assert_eq!(get("tmp"), Some(Node::Dir(Meta::new(0o1777, 0, 0))));
    // maintainer scripts reported
    let nginx_common = reports.iter().find(|r| r.name == "nginx-common").unwrap();
    assert!(
        nginx_common
            .maintainer_scripts
            .iter()
            .any(|s| s.script == "postinst"),
        "{nginx_common:?}"
    );
    // every regular file of the tree points at a spool blob range inside the file
    for (p, n) in tree.iter() {
        if let Node::File {
            content: imgbuild_layer::Content::Range { path, offset, size },
            ..
        } = n
        {
            let len = std::fs::metadata(path).unwrap().len();
            assert!(offset + size <= len, "{p}");
        }
    }
}

/// setuid/setgid bits and numeric groups survive from a real package (passwd, libpam-modules-bin).
#[test]
fn setuid_and_setgid_files_are_kept() {
    let s = shared();
    let r = resolve(&s.index, &["passwd".into()], &[]).unwrap();
    fetch_debs(
        &Mirror::default(),
        &r.packages,
        &s.store,
        &http(),
        4,
        &|_| {},
    )
    .unwrap();
    let mut tree = Tree::new();
    let mut u = Unpacker::new();
    for p in &r.packages {
        u.unpack(&s.store, p, &mut tree).unwrap();
    }
    let meta = |p: &str| match tree.get(&TreePath::new(p).unwrap()) {
        Some(Node::File { meta, .. }) => *meta,
        other => panic!("{p}: {other:?}"),
    };
    assert_eq!(meta("usr/bin/passwd"), Meta::new(0o4755, 0, 0));
    // setgid, group shadow(42)
    assert_eq!(meta("usr/sbin/unix_chkpwd"), Meta::new(0o2755, 0, 42));
    assert_eq!(meta("usr/bin/chage"), Meta::new(0o2755, 0, 42));
}

#[test]
fn a_version_the_mirror_no_longer_serves_says_what_to_do() {
    let s = shared();
    let mut gone: LockedPackage = (&s.index.candidate("netbase").unwrap().clone()).into();
    gone.version = "0.0.1".into();
    gone.filename = "pool/main/n/netbase/netbase_0.0.1_all.deb".into();
    gone.sha256 = imgbuild_store::Digest::of_bytes(b"not stored");
    let err = fetch_debs(&Mirror::default(), &[gone], &s.store, &http(), 1, &|_| {}).unwrap_err();
    assert!(matches!(err, Error::DebGone { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("netbase 0.0.1") && msg.contains("imgbuild lock") && msg.contains("snapshot"),
        "{msg}"
    );
}

/// The package suggested for a missing library, against the real bookworm index and
/// the host's own dpkg database (this machine is Debian bookworm): for the libraries
/// here, the suggestion is the package `dpkg -S` says ships the file, and never another
/// one.
#[test]
fn soname_suggestions_match_what_dpkg_says_ships_the_library() {
    let s = shared();
    let owner = |soname: &str| -> Option<String> {
        ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"]
            .iter()
            .find_map(|dir| {
                let out = Command::new("dpkg")
                    .args(["-S", &format!("{dir}/{soname}")])
                    .output()
                    .unwrap();
                let text = String::from_utf8(out.stdout).unwrap();
                let pkg = text.split(':').next()?.trim().to_owned();
                (out.status.success() && !pkg.is_empty()).then_some(pkg)
            })
    };
    let policy_named = [
        "libstdc++.so.6",
        "libgcc_s.so.1",
        "libz.so.1",
        "libssl.so.3",
        "libcrypto.so.3",
        "libm.so.6",
        "libzstd.so.1",
        "liblzma.so.5",
        "libffi.so.8",
        "libexpat.so.1",
        "libsqlite3.so.0",
        "libbz2.so.1.0",
        "libyaml-0.so.2",
        "libpython3.11.so.1.0",
        "libxml2.so.2",
        "libglib-2.0.so.0",
        "libgobject-2.0.so.0",
        "libjpeg.so.62",
        "libcurl-gnutls.so.4",
        "libcrypt.so.1",
        "libnsl.so.2",
        "libLLVM-14.so.1",
        "libpcre2-8.so.0",
        "libgssapi_krb5.so.2",
        "libpng16.so.16",
        "libfreetype.so.6",
        "libX11.so.6",
        "libtinfo.so.6",
        "libldap-2.5.so.0",
        "libicuuc.so.72",
        "libkrb5.so.3",
        "libcom_err.so.2",
        "libidn2.so.0",
        "libtasn1.so.6",
        "libbrotlidec.so.1",
        "libssh2.so.1",
        "libnghttp2.so.14",
        "libxslt.so.1",
        "libdb-5.3.so",
        "libpam.so.0",
        "libevent-2.1.so.7",
        "libgomp.so.1",
        "libquadmath.so.0",
        "libgcrypt.so.20",
    ];
    for soname in policy_named.iter().chain(&["libmemusage.so"]) {
        let Some(owner) = owner(soname) else {
            panic!("dpkg knows no package shipping {soname} on this host");
        };
        let suggested = imgbuild_debian::soname::packages_for_soname(&s.index, soname);
        if policy_named.contains(soname) {
            assert_eq!(suggested.first(), Some(&owner), "{soname}: {suggested:?}");
        } else {
            assert!(
                suggested.is_empty() || suggested[0] == owner,
                "{soname}: {suggested:?}"
            );
        }
    }
}

/// The bytes of a file of an unpacked tree, written out for tools that read files.
fn write_out(tree: &Tree, path: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join(path.replace('/', "_"));
    match tree.get(&TreePath::new(path).unwrap()) {
        Some(Node::File {
            content: imgbuild_layer::Content::Range { path, offset, size },
            ..
        }) => {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(path).unwrap();
            f.seek(SeekFrom::Start(*offset)).unwrap();
            let mut buf = vec![0; *size as usize];
            f.read_exact(&mut buf).unwrap();
            std::fs::write(&out, buf).unwrap();
        }
        other => panic!("{path}: {other:?}"),
    }
    out
}

/// trixie for arm64 from the real archive: each suite verified with trixie's own keys, a
/// small closure resolved from the arm64 index, fetched, unpacked with arm64's merged-/usr
/// layout (no /lib64), and its binaries are aarch64 ELF files (checked by `file` and
/// `readelf`, independent of this crate).
#[test]
fn trixie_arm64_closure_unpacks_to_aarch64_binaries() {
    use imgbuild_debian::{Arch, Suite};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    // through the per-command cache: fetched once per (suite, arch)
    let indexes = imgbuild_debian::Indexes::new();
    let get = || {
        indexes
            .get(
                &Mirror::default(),
                Suite::Trixie,
                Arch::Arm64,
                &store,
                &http(),
            )
            .unwrap()
    };
    let index = get();
    assert!(std::sync::Arc::ptr_eq(&index, &get()));
    assert_eq!(indexes.fetched().len(), 1);
    assert_eq!(index.arch, Arch::Arm64);
    let suites: Vec<(&str, &str)> = index
        .suites
        .iter()
        .map(|s| (s.suite.as_str(), s.signed_by.as_str()))
        .collect();
    assert_eq!(
        suites.iter().map(|s| s.0).collect::<Vec<_>>(),
        ["trixie", "trixie-updates", "trixie-security"]
    );
    for (suite, by) in &suites {
        if suite.ends_with("-security") {
            assert!(by.contains("security-automatic"), "{suite}: {by}");
        } else {
            assert!(
                by.starts_with("debian-archive-") && !by.contains("security"),
                "{suite}: {by}"
            );
        }
    }
    let r = resolve(
        &index,
        &["base-files".into(), "libc6".into(), "dash".into()],
        &[],
    )
    .unwrap();
    for p in &r.packages {
        assert!(
            p.architecture == "arm64" || p.architecture == "all",
            "{p:?}"
        );
        assert!(!p.filename.ends_with("_amd64.deb"), "{p:?}");
    }
    let libc = r.packages.iter().find(|p| p.name == "libc6").unwrap();
    assert!(libc.version.starts_with("2.41"), "trixie's glibc: {libc:?}");
    fetch_debs(&Mirror::default(), &r.packages, &store, &http(), 4, &|_| {}).unwrap();
    let mut tree = Tree::new();
    let mut u = Unpacker::for_arch(Arch::Arm64);
    for p in &r.packages {
        u.unpack(&store, p, &mut tree)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    imgbuild_debian::system::base_fixup_for(&mut tree, Suite::Trixie, Arch::Arm64).unwrap();
    tree.validate().unwrap();
    let get = |p: &str| tree.get(&TreePath::new(p).unwrap()).cloned();
    assert!(matches!(get("bin"), Some(Node::Symlink { target, .. }) if target == "usr/bin"));
    assert!(matches!(get("lib"), Some(Node::Symlink { target, .. }) if target == "usr/lib"));
    assert_eq!(get("lib64"), None, "arm64 has no /lib64");
    assert!(get("usr/lib/ld-linux-aarch64.so.1").is_some());
    assert!(get("usr/lib/aarch64-linux-gnu/libc.so.6").is_some());

    let out = tempfile::tempdir().unwrap();
    let dash = write_out(&tree, "usr/bin/dash", out.path());
    let file = Command::new("file").arg("-b").arg(&dash).output().unwrap();
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(
        file.contains("ELF 64-bit") && file.contains("ARM aarch64"),
        "{file}"
    );
    let libc_so = write_out(&tree, "usr/lib/aarch64-linux-gnu/libc.so.6", out.path());
    let h = Command::new("readelf")
        .arg("-h")
        .arg(&libc_so)
        .output()
        .unwrap();
    let h = String::from_utf8_lossy(&h.stdout);
    assert!(h.contains("AArch64"), "{h}");
    let l = Command::new("readelf")
        .arg("-l")
        .arg(&dash)
        .output()
        .unwrap();
    let l = String::from_utf8_lossy(&l.stdout);
    assert!(l.contains(Arch::Arm64.dynamic_loader()), "{l}");
}
