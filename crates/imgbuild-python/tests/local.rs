//! Tests against crafted wheels and a real HTTP index on 127.0.0.1: wheel choice per
//! target, hash checks, unsafe entries, venv layout, RECORD, scripts, closure check.

mod common;

use std::path::Path;

use common::*;
use imgbuild_layer::{Content, Meta, Node, Tree, TreePath};
use imgbuild_python::{
    Error, Libc, Target, VenvSpec, fetch_wheels, install, requirements::parse_requirements_str,
};
use imgbuild_store::{Digest, Store};

fn spec(target: Target, bytecode: bool) -> VenvSpec {
    VenvSpec {
        requirements: "layers/venv/requirements.txt".into(),
        venv: "/opt/venv".into(),
        interpreter: "/usr/bin/python3.11".into(),
        bytecode,
        target,
    }
}

fn demo_wheel(marker_tag: &str) -> Vec<u8> {
    build_wheel(&WheelSpec {
        name: "demo",
        version: "1.0",
        requires_dist: &[
            "helper>=2; python_full_version < \"3.11.3\"",
            "colorama; sys_platform == \"win32\"",
            "fancy; extra == \"fancy\"",
        ],
        entry_points: Some(
            "[console_scripts]\ndemo = demo.cli:main\n[gui_scripts]\ndemo-gui = demo:App.run [fancy]\n[other]\nx = y:z\n",
        ),
        files: vec![
            (
                "demo/__init__.py".into(),
                format!(
                    "TAG = {marker_tag:?}\nclass App:\n    @staticmethod\n    def run(): return 0\n"
                )
                .into_bytes(),
                0o644,
            ),
            (
                "demo/cli.py".into(),
                b"def main():\n    print('hi')\n    return 0\n".to_vec(),
                0o644,
            ),
            (
                "demo/tool.sh".into(),
                b"#!/bin/sh\necho tool\n".to_vec(),
                0o755,
            ),
            (
                "demo-1.0.data/scripts/demo-legacy".into(),
                b"#!python\nimport demo\nprint(demo.TAG)\n".to_vec(),
                0o644,
            ),
            (
                "demo-1.0.data/scripts/plain.sh".into(),
                b"#!/bin/sh\necho plain\n".to_vec(),
                0o644,
            ),
            (
                "demo-1.0.data/purelib/demo_extra.py".into(),
                b"X = 1\n".to_vec(),
                0o644,
            ),
            (
                "demo-1.0.data/headers/demo.h".into(),
                b"int demo;\n".to_vec(),
                0o644,
            ),
            (
                "demo-1.0.data/data/share/demo/x,y.txt".into(),
                b"data\n".to_vec(),
                0o644,
            ),
        ],
    })
}

fn helper_wheel() -> Vec<u8> {
    build_wheel(&WheelSpec {
        name: "helper",
        version: "2.5",
        requires_dist: &[],
        entry_points: None,
        files: vec![(
            "helper.py".into(),
            b"def help():\n    return 42\n".to_vec(),
            0o644,
        )],
    })
}

/// Publishes demo (several wheels, one sdist) and helper on the index; returns the
/// requirements text pointing at it.
fn publish(index: &Index, with_helper_req: bool, extras: &str) -> (String, Vec<u8>, Vec<u8>) {
    let any = demo_wheel("any");
    let native = demo_wheel("native");
    let cp312 = demo_wheel("cp312");
    let too_new = demo_wheel("glibc 2.38");
    let arm = demo_wheel("aarch64");
    let sdist = b"not a wheel".to_vec();
    let files = [
        ("demo-1.0-py3-none-any.whl", any.clone()),
        (
            "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            native.clone(),
        ),
        ("demo-1.0-cp312-cp312-manylinux_2_17_x86_64.whl", cp312),
        ("demo-1.0-cp311-cp311-manylinux_2_38_x86_64.whl", too_new),
        ("demo-1.0-cp311-cp311-musllinux_1_1_aarch64.whl", arm),
        ("demo-1.0.tar.gz", sdist),
    ];
    let listed: Vec<_> = files
        .iter()
        .map(|(n, b)| (*n, Some(sha256_hex(b)), Some(">=3.8"), b.clone()))
        .collect();
    index.project("demo", &listed);
    let helper = helper_wheel();
    index.project(
        "helper",
        &[(
            "helper-2.5-py3-none-any.whl",
            Some(sha256_hex(&helper)),
            None,
            helper.clone(),
        )],
    );
    let hashes: String = files
        .iter()
        .map(|(_, b)| format!(" \\\n    --hash=sha256:{}", sha256_hex(b)))
        .collect();
    let mut text = format!(
        "--index-url {}\n# a comment\ndemo{extras}==1.0{hashes}\n    # via -r requirements.in\n",
        index.url()
    );
    text.push_str(&format!(
        "fancy==1.0 ; sys_platform == 'win32' --hash=sha256:{}\n",
        "0".repeat(64)
    ));
    if with_helper_req {
        text.push_str(&format!(
            "helper==2.5 ; python_version >= \"3.8\" \\\n    --hash=sha256:{}\n",
            sha256_hex(&helper)
        ));
    }
    (text, any, native)
}

#[test]
fn fetch_picks_best_wheel_per_target_and_installs_a_venv() {
    let index = Index::start();
    let (text, any, native) = publish(&index, true, "");
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let reqs = parse_requirements_str(&text, Path::new("layers/venv/requirements.txt")).unwrap();
    let http = client();

    // bookworm x86_64: the manylinux cp311 wheel beats py3-none-any; the too-new glibc
    // and cp312 wheels are not candidates; `fancy` (win32 only) is skipped
    let s = spec(Target::bookworm_cpython311(), false);
    let wheels = fetch_wheels(&s, &reqs, &store, &http, 4).unwrap();
    let names: Vec<_> = wheels.iter().map(|w| w.filename.as_str()).collect();
    assert_eq!(
        names,
        [
            "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "helper-2.5-py3-none-any.whl"
        ]
    );
    assert_eq!(wheels[0].digest, Digest::of_bytes(&native));
    assert!(store.verify(&Digest::of_bytes(&native)).unwrap());
    assert_eq!(
        index
            .wheel_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );

    // aarch64 glibc: only the pure wheel fits (musllinux is for musl)
    let arm = Target {
        arch: "aarch64".into(),
        ..Target::bookworm_cpython311()
    };
    let w = fetch_wheels(&spec(arm, false), &reqs, &store, &http, 2).unwrap();
    assert_eq!(w[0].filename, "demo-1.0-py3-none-any.whl");
    assert_eq!(w[0].digest, Digest::of_bytes(&any));
    // musl aarch64: the musllinux wheel
    let musl = Target {
        arch: "aarch64".into(),
        libc: Libc::Musl(1, 2),
        ..Target::bookworm_cpython311()
    };
    let w = fetch_wheels(&spec(musl, false), &reqs, &store, &http, 2).unwrap();
    assert_eq!(
        w[0].filename,
        "demo-1.0-cp311-cp311-musllinux_1_1_aarch64.whl"
    );

    // second fetch for bookworm: from the store, no wheel request (selection record)
    let before = index
        .wheel_requests
        .load(std::sync::atomic::Ordering::SeqCst);
    let again = fetch_wheels(&s, &reqs, &store, &http, 4).unwrap();
    assert_eq!(again[0].digest, wheels[0].digest);
    assert_eq!(
        index
            .wheel_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        before
    );

    // install
    let mut tree = Tree::new();
    let report = install(&s, &reqs, &wheels, &store, &mut tree).unwrap();
    assert_eq!(report.packages.len(), 2);
    assert_eq!(
        report.scripts,
        ["demo", "demo-gui", "demo-legacy", "plain.sh"]
    );
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let get = |p: &str| {
        tree.get(&TreePath::new(p).unwrap())
            .cloned()
            .unwrap_or_else(|| panic!("{p} missing"))
    };
    let inline = |p: &str| match get(p) {
        Node::File {
            content: Content::Inline(b),
            ..
        } => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("{p}: {other:?}"),
    };
    let meta = |p: &str| match get(p) {
        Node::File { meta, .. } => meta,
        other => panic!("{p}: {other:?}"),
    };
    assert_eq!(
        inline("opt/venv/pyvenv.cfg"),
        "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\nexecutable = /usr/bin/python3.11\ncommand = /usr/bin/python3.11 -m venv /opt/venv\n"
    );
    let link = |p: &str| match get(p) {
        Node::Symlink { target, .. } => target,
        other => panic!("{p}: {other:?}"),
    };
    assert_eq!(link("opt/venv/bin/python3.11"), "/usr/bin/python3.11");
    assert_eq!(link("opt/venv/bin/python3"), "python3.11");
    assert_eq!(link("opt/venv/bin/python"), "python3.11");
    assert_eq!(link("opt/venv/lib64"), "lib");
    assert!(matches!(get("opt/venv/include"), Node::Dir(_)));
    let sp = "opt/venv/lib/python3.11/site-packages";
    // library files come from the unpacked cache, by reference
    match get(&format!("{sp}/demo/__init__.py")) {
        Node::File {
            meta,
            content: Content::Host { path, size, .. },
        } => {
            assert_eq!(meta, Meta::new(0o644, 0, 0));
            assert!(
                path.starts_with(store.root().join("unpacked/wheels-v1")),
                "{path:?}"
            );
            assert_eq!(std::fs::read(&path).unwrap().len() as u64, size);
            assert!(
                String::from_utf8(std::fs::read(&path).unwrap())
                    .unwrap()
                    .contains("native")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(meta(&format!("{sp}/demo/tool.sh")).mode, 0o755);
    assert_eq!(meta(&format!("{sp}/demo_extra.py")).mode, 0o644);
    assert!(matches!(
        get("opt/venv/include/site/python3.11/demo/demo.h"),
        Node::File { .. }
    ));
    assert!(matches!(
        get("opt/venv/share/demo/x,y.txt"),
        Node::File { .. }
    ));
    // scripts
    assert_eq!(meta("opt/venv/bin/demo").mode, 0o755);
    assert_eq!(
        inline("opt/venv/bin/demo"),
        "#!/opt/venv/bin/python\n# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom demo.cli import main\nif __name__ == '__main__':\n    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n    sys.exit(main())\n"
    );
    assert!(
        inline("opt/venv/bin/demo-gui").contains("from demo import App\n")
            && inline("opt/venv/bin/demo-gui").contains("sys.exit(App.run())")
    );
    assert_eq!(
        inline("opt/venv/bin/demo-legacy"),
        "#!/opt/venv/bin/python\nimport demo\nprint(demo.TAG)\n"
    );
    assert_eq!(meta("opt/venv/bin/demo-legacy").mode, 0o755);
    assert!(
        matches!(get("opt/venv/bin/plain.sh"), Node::File { meta, content: Content::Host { .. } } if meta.mode == 0o755)
    );
    assert!(
        tree.get(&TreePath::new("opt/venv/bin/x").unwrap())
            .is_none(),
        "non-script entry point group installed"
    );
    // INSTALLER and RECORD
    assert_eq!(
        inline(&format!("{sp}/demo-1.0.dist-info/INSTALLER")),
        "imgbuild\n"
    );
    let record = inline(&format!("{sp}/demo-1.0.dist-info/RECORD"));
    let rows: Vec<Vec<String>> = record
        .lines()
        .map(imgbuild_python::unpack::parse_csv_line)
        .collect();
    assert!(rows.iter().all(|r| r.len() == 3));
    let paths: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "RECORD is sorted");
    assert_eq!(
        paths,
        [
            "../../../bin/demo",
            "../../../bin/demo-gui",
            "../../../bin/demo-legacy",
            "../../../bin/plain.sh",
            "../../../include/site/python3.11/demo/demo.h",
            "../../../share/demo/x,y.txt",
            "demo-1.0.dist-info/INSTALLER",
            "demo-1.0.dist-info/METADATA",
            "demo-1.0.dist-info/RECORD",
            "demo-1.0.dist-info/WHEEL",
            "demo-1.0.dist-info/entry_points.txt",
            "demo/__init__.py",
            "demo/cli.py",
            "demo/tool.sh",
            "demo_extra.py",
        ]
    );
    assert!(record.contains("\ndemo-1.0.dist-info/RECORD,,\n"));
    assert!(
        record.contains("\n\"../../../share/demo/x,y.txt\",sha256="),
        "{record}"
    );
    assert!(record.contains("\ndemo/cli.py,sha256=") && record.contains("demo-1.0.dist-info/INSTALLER,sha256=zWmqPUsyx2cLdP14RfvjI-Gcor6nAHTLB1zv6q-REh8,9\n"));
    // every file is root-owned and has 0644 or 0755
    for (p, n) in tree.iter() {
        if let Node::File { meta, .. } = n {
            assert!(
                meta.uid == 0 && meta.gid == 0 && (meta.mode == 0o644 || meta.mode == 0o755),
                "{p:?} {meta:?}"
            );
        }
    }

    // determinism: the same inputs give the same tree
    let mut tree2 = Tree::new();
    install(&s, &reqs, &again, &store, &mut tree2).unwrap();
    let a: Vec<_> = tree.iter().collect();
    let b: Vec<_> = tree2.iter().collect();
    assert_eq!(a, b);
}

#[test]
fn hash_problems_fail_cleanly() {
    let index = Index::start();
    let good = helper_wheel();
    let evil = build_wheel(&WheelSpec {
        name: "helper",
        version: "2.5",
        requires_dist: &["evil"],
        entry_points: None,
        files: vec![],
    });
    // the index claims the good hash but serves other bytes
    index.project(
        "helper",
        &[(
            "helper-2.5-py3-none-any.whl",
            Some(sha256_hex(&good)),
            None,
            evil.clone(),
        )],
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let http = client();
    let s = spec(Target::bookworm_cpython311(), false);

    let text = format!(
        "-i {}\nhelper==2.5 --hash=sha256:{}\n",
        index.url(),
        sha256_hex(&good)
    );
    let reqs = parse_requirements_str(&text, Path::new("requirements.txt")).unwrap();
    let err = fetch_wheels(&s, &reqs, &store, &http, 2).unwrap_err();
    assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("helper-2.5-py3-none-any.whl") && msg.contains(&sha256_hex(&evil)),
        "{msg}"
    );
    assert_eq!(store.list_blobs().unwrap(), vec![]);
    assert_eq!(count_files(&store.root().join("tmp")), 0);
    assert_eq!(count_files(&store.root().join("records")), 0);

    // a requirement whose hashes match no file: refused before any download
    let before = index
        .wheel_requests
        .load(std::sync::atomic::Ordering::SeqCst);
    let text = format!(
        "-i {}\nhelper==2.5 --hash=sha256:{}\n",
        index.url(),
        "ab".repeat(32)
    );
    let reqs = parse_requirements_str(&text, Path::new("requirements.txt")).unwrap();
    let err = fetch_wheels(&s, &reqs, &store, &http, 2).unwrap_err();
    assert!(matches!(err, Error::NoHashMatch { .. }), "{err}");
    assert!(
        err.to_string().contains("helper 2.5 (requirements line 2)")
            && err.to_string().contains("helper-2.5-py3-none-any.whl"),
        "{err}"
    );
    assert_eq!(
        index
            .wheel_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        before
    );
    assert_eq!(store.list_blobs().unwrap(), vec![]);

    // an index without a hash for the file: downloaded, checked against the pins, refused
    index.project(
        "helper",
        &[("helper-2.5-py3-none-any.whl", None, None, evil.clone())],
    );
    let text = format!(
        "-i {}\nhelper==2.5 --hash=sha256:{}\n",
        index.url(),
        sha256_hex(&good)
    );
    let reqs = parse_requirements_str(&text, Path::new("requirements.txt")).unwrap();
    let err = fetch_wheels(&s, &reqs, &store, &http, 2).unwrap_err();
    assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
    assert_eq!(store.list_blobs().unwrap(), vec![]);
    assert_eq!(count_files(&store.root().join("tmp")), 0);
    // …and accepted when the bytes are right
    index.project(
        "helper",
        &[("helper-2.5-py3-none-any.whl", None, None, good.clone())],
    );
    let w = fetch_wheels(&s, &reqs, &store, &http, 2).unwrap();
    assert_eq!(w[0].digest, Digest::of_bytes(&good));
}

#[test]
fn no_suitable_wheel_names_the_package_and_files() {
    let index = Index::start();
    let w312 = demo_wheel("312");
    let sdist = b"sdist".to_vec();
    index.project(
        "demo",
        &[
            (
                "demo-1.0-cp312-cp312-manylinux_2_17_x86_64.whl",
                Some(sha256_hex(&w312)),
                None,
                w312.clone(),
            ),
            (
                "demo-1.0.tar.gz",
                Some(sha256_hex(&sdist)),
                None,
                sdist.clone(),
            ),
            (
                "demo-0.9-py3-none-any.whl",
                Some(sha256_hex(b"old")),
                None,
                b"old".to_vec(),
            ),
        ],
    );
    let text = format!(
        "-i {}\ndemo==1.0 --hash=sha256:{} --hash=sha256:{}\n",
        index.url(),
        sha256_hex(&w312),
        sha256_hex(&sdist)
    );
    let reqs = parse_requirements_str(&text, Path::new("requirements.txt")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let err = fetch_wheels(
        &spec(Target::bookworm_cpython311(), false),
        &reqs,
        &store,
        &client(),
        1,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NoSuitableWheel { .. }), "{msg}");
    assert!(
        msg.contains("demo 1.0") && msg.contains("CPython 3.11.2 on x86_64 glibc 2.36"),
        "{msg}"
    );
    assert!(
        msg.contains("demo-1.0-cp312-cp312-manylinux_2_17_x86_64.whl, demo-1.0.tar.gz"),
        "{msg}"
    );
    assert!(!msg.contains("0.9"), "{msg}");

    // Requires-Python on the index excludes the target
    index.project(
        "demo",
        &[(
            "demo-1.0-py3-none-any.whl",
            Some(sha256_hex(&w312)),
            Some(">=3.12"),
            w312.clone(),
        )],
    );
    let err = fetch_wheels(
        &spec(Target::bookworm_cpython311(), false),
        &reqs,
        &store,
        &client(),
        1,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("Requires-Python `>=3.12`"),
        "{err}"
    );

    // unknown project
    let text = format!(
        "-i {}\nnope==1.0 --hash=sha256:{}\n",
        index.url(),
        sha256_hex(b"x")
    );
    let reqs = parse_requirements_str(&text, Path::new("requirements.txt")).unwrap();
    let err = fetch_wheels(
        &spec(Target::bookworm_cpython311(), false),
        &reqs,
        &store,
        &client(),
        1,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("`nope`") && err.to_string().contains("not on the index"),
        "{err}"
    );
}

#[test]
fn missing_dependency_names_who_needs_it_for_the_target() {
    let index = Index::start();
    let (text, _, _) = publish(&index, false, "[fancy]");
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let reqs = parse_requirements_str(&text, Path::new("layers/venv/requirements.txt")).unwrap();
    let s = spec(Target::bookworm_cpython311(), false);
    let wheels = fetch_wheels(&s, &reqs, &store, &client(), 2).unwrap();
    let mut tree = Tree::new();
    let err = install(&s, &reqs, &wheels, &store, &mut tree).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Closure { .. }), "{msg}");
    assert!(
        msg.contains("demo[fancy] 1.0 requires helper>=2 (python_full_version < \"3.11.3\") but it is not in requirements.txt"),
        "{msg}"
    );
    // the [fancy] extra's dependency is only pinned for win32: missing on Linux
    assert!(
        msg.contains("requires fancy (extra == \"fancy\") but it is not in requirements.txt"),
        "{msg}"
    );
    assert!(!msg.contains("colorama"), "{msg}");
    assert!(
        tree.is_empty(),
        "nothing installed when the closure is incomplete"
    );

    // on 3.11.7 redis-style markers do not apply; the extra still does
    let newer = spec(
        Target {
            python_full_version: "3.11.7".into(),
            ..Target::bookworm_cpython311()
        },
        false,
    );
    let msg = install(&newer, &reqs, &wheels, &store, &mut Tree::new())
        .unwrap_err()
        .to_string();
    assert!(!msg.contains("helper") && msg.contains("fancy"), "{msg}");
}

#[test]
fn version_conflict_is_reported() {
    let index = Index::start();
    let demo = demo_wheel("any");
    let helper15 = build_wheel(&WheelSpec {
        name: "helper",
        version: "1.5",
        requires_dist: &[],
        entry_points: None,
        files: vec![],
    });
    index.project(
        "demo",
        &[(
            "demo-1.0-py3-none-any.whl",
            Some(sha256_hex(&demo)),
            None,
            demo.clone(),
        )],
    );
    index.project(
        "helper",
        &[(
            "helper-1.5-py3-none-any.whl",
            Some(sha256_hex(&helper15)),
            None,
            helper15.clone(),
        )],
    );
    let text = format!(
        "-i {}\ndemo==1.0 --hash=sha256:{}\nhelper==1.5 --hash=sha256:{}\n",
        index.url(),
        sha256_hex(&demo),
        sha256_hex(&helper15)
    );
    let reqs = parse_requirements_str(&text, Path::new("requirements.txt")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let s = spec(Target::bookworm_cpython311(), false);
    let wheels = fetch_wheels(&s, &reqs, &store, &client(), 2).unwrap();
    let msg = install(&s, &reqs, &wheels, &store, &mut Tree::new())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("demo 1.0 requires helper>=2 (python_full_version < \"3.11.3\") but requirements.txt line 3 pins helper==1.5"),
        "{msg}"
    );
}

#[test]
fn unsafe_wheel_entries_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    for (entry, why) in [
        ("../evil.py", "`..`"),
        ("demo/../../evil.py", "`..`"),
        ("/etc/cron.d/evil", "absolute"),
        ("demo-1.0.data/data/../../../../etc/passwd", "`..`"),
        ("demo-1.0.data/bogus/x", "unknown .data category"),
    ] {
        let wheel = build_wheel(&WheelSpec {
            name: "demo",
            version: "1.0",
            requires_dist: &[],
            entry_points: None,
            files: vec![
                ("demo/__init__.py".into(), b"".to_vec(), 0o644),
                (entry.into(), b"pwned".to_vec(), 0o644),
            ],
        });
        let d = store.put_bytes(&wheel).unwrap();
        let err =
            imgbuild_python::unpack::unpack_cached(&store, &d, "demo-1.0-py3-none-any.whl", "demo")
                .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::UnsafeWheelEntry { .. }),
            "{entry}: {msg}"
        );
        assert!(
            msg.contains("demo-1.0-py3-none-any.whl") && msg.contains(entry) && msg.contains(why),
            "{msg}"
        );
        assert!(
            !store
                .root()
                .join("unpacked/wheels-v1")
                .join(d.hex())
                .exists()
        );
        assert_eq!(count_files(&store.root().join("tmp")), 0);
    }
    // a file whose content does not match the wheel's own RECORD
    let mut files = vec![("demo/__init__.py".to_string(), b"ok".to_vec(), 0o644)];
    let good = build_wheel(&WheelSpec {
        name: "demo",
        version: "1.0",
        requires_dist: &[],
        entry_points: None,
        files: files.clone(),
    });
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(good)).unwrap();
    let mut entries = vec![];
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let mut b = vec![];
        std::io::Read::read_to_end(&mut f, &mut b).unwrap();
        let name = f.name().unwrap().into_owned();
        if name == "demo/__init__.py" {
            b = b"tampered".to_vec();
        }
        entries.push((name, b, 0o644));
    }
    files.clear();
    let d = store.put_bytes(&zip_bytes(&entries)).unwrap();
    let err =
        imgbuild_python::unpack::unpack_cached(&store, &d, "demo-1.0-py3-none-any.whl", "demo")
            .unwrap_err();
    assert!(
        err.to_string()
            .contains("does not match the wheel's RECORD"),
        "{err}"
    );
    assert_eq!(count_files(&store.root().join("tmp")), 0);
}

fn bytecode_wheel() -> Vec<u8> {
    build_wheel(&WheelSpec {
        name: "bc",
        version: "1.0",
        requires_dist: &[],
        entry_points: None,
        files: vec![
            // a set literal in a membership test becomes a frozenset constant: hash-order
            // dependent before 3.11 (3.11 marshal sorts set elements, bpo-37596)
            (
                "bc/__init__.py".into(),
                b"def kind(x):\n    return x in {'alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta', 'theta'}\n\nNAMES = ('a', 'b')\n".to_vec(),
                0o644,
            ),
            ("bc/sub/mod.py".into(), b"def where():\n    return where.__code__.co_filename\n".to_vec(), 0o644),
            ("bc/broken.py".into(), b"def oops(:\n".to_vec(), 0o644),
            ("bc/data.txt".into(), b"not python\n".to_vec(), 0o644),
        ],
    })
}

fn pyc_bytes(tree: &Tree) -> Vec<(String, Vec<u8>)> {
    tree.iter()
        .filter(|(p, _)| p.as_str().ends_with(".pyc"))
        .map(|(p, n)| match n {
            Node::File {
                content: Content::Host { path, .. },
                ..
            } => (p.as_str().to_owned(), std::fs::read(path).unwrap()),
            other => panic!("{p:?}: {other:?}"),
        })
        .collect()
}

#[test]
fn bytecode_is_deterministic_unchecked_hash_with_in_image_paths() {
    let host = imgbuild_python::bytecode::find_host_python(&Target::bookworm_cpython311())
        .expect("these tests need python3.11 on PATH (CPython 3.11 is part of the build machine)");
    let wheel = bytecode_wheel();
    let mut results = vec![];
    for _ in 0..2 {
        // two independent stores: two independent compilations
        let index = Index::start();
        index.project(
            "bc",
            &[(
                "bc-1.0-py3-none-any.whl",
                Some(sha256_hex(&wheel)),
                None,
                wheel.clone(),
            )],
        );
        let text = format!(
            "-i {}\nbc==1.0 --hash=sha256:{}\n",
            index.url(),
            sha256_hex(&wheel)
        );
        let reqs = parse_requirements_str(&text, Path::new("requirements.txt")).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let s = spec(Target::bookworm_cpython311(), true);
        let wheels = fetch_wheels(&s, &reqs, &store, &client(), 1).unwrap();
        let mut tree = Tree::new();
        let report = install(&s, &reqs, &wheels, &store, &mut tree).unwrap();
        assert_eq!(report.pyc_files, 2, "{report:?}");
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(
            report.warnings[0].contains("did not byte-compile")
                && report.warnings[0].contains("bc/broken.py"),
            "{:?}",
            report.warnings
        );
        let record = match tree.get(
            &TreePath::new("opt/venv/lib/python3.11/site-packages/bc-1.0.dist-info/RECORD")
                .unwrap(),
        ) {
            Some(Node::File {
                content: Content::Inline(b),
                ..
            }) => String::from_utf8(b.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        };
        assert!(
            record.contains("bc/__pycache__/__init__.cpython-311.pyc,sha256="),
            "{record}"
        );
        assert!(
            record.contains("bc/sub/__pycache__/mod.cpython-311.pyc,sha256="),
            "{record}"
        );
        let pycs = pyc_bytes(&tree);
        assert_eq!(
            pycs.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
            [
                "opt/venv/lib/python3.11/site-packages/bc/__pycache__/__init__.cpython-311.pyc",
                "opt/venv/lib/python3.11/site-packages/bc/sub/__pycache__/mod.cpython-311.pyc"
            ]
        );
        for (p, b) in &pycs {
            // PEP 552 header: magic of 3.11, flags = hash-based (1) without check_source (2)
            assert_eq!(hex::encode(&b[..4]), host.magic, "{p}");
            assert_eq!(hex::encode(&b[..4]), "a70d0d0a", "{p}");
            assert_eq!(
                u32::from_le_bytes(b[4..8].try_into().unwrap()),
                1,
                "{p}: unchecked-hash flags"
            );
        }
        // the in-image source path is what the code objects record
        let mod_pyc = &pycs[1].1;
        let needle = b"/opt/venv/lib/python3.11/site-packages/bc/sub/mod.py";
        assert!(
            mod_pyc.windows(needle.len()).any(|w| w == needle),
            "in-image path recorded"
        );
        assert!(
            !mod_pyc
                .windows(tmp.path().as_os_str().len())
                .any(|w| w == tmp.path().as_os_str().as_encoded_bytes())
        );
        results.push(pycs);
        drop(tmp);
    }
    assert_eq!(
        results[0], results[1],
        ".pyc bytes differ between two independent builds"
    );
}

#[test]
fn bytecode_without_same_minor_interpreter_is_a_warning() {
    let wheel = bytecode_wheel();
    let index = Index::start();
    index.project(
        "bc",
        &[(
            "bc-1.0-py3-none-any.whl",
            Some(sha256_hex(&wheel)),
            None,
            wheel.clone(),
        )],
    );
    let text = format!(
        "-i {}\nbc==1.0 --hash=sha256:{}\n",
        index.url(),
        sha256_hex(&wheel)
    );
    let reqs = parse_requirements_str(&text, Path::new("requirements.txt")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    // CPython 3.4 exists nowhere on a current machine
    let s = VenvSpec {
        interpreter: "/usr/bin/python3.4".into(),
        ..spec(
            Target {
                python_full_version: "3.4.10".into(),
                ..Target::bookworm_cpython311()
            },
            true,
        )
    };
    let wheels = fetch_wheels(&s, &reqs, &store, &client(), 1).unwrap();
    let mut tree = Tree::new();
    let report = install(&s, &reqs, &wheels, &store, &mut tree).unwrap();
    assert_eq!(report.pyc_files, 0);
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].contains("no .pyc files") && report.warnings[0].contains("python3.4"),
        "{:?}",
        report.warnings
    );
    assert!(
        tree.get(&TreePath::new("opt/venv/lib/python3.4/site-packages/bc/__init__.py").unwrap())
            .is_some()
    );
    assert!(pyc_bytes(&tree).is_empty());
}
