//! Tests against crafted wheels and a real HTTP index on 127.0.0.1: wheel choice per
//! target, hash checks, unsafe entries, venv layout, RECORD, scripts, closure check.

mod common;

use std::path::Path;

use common::*;
use imgbuild_layer::{Content, Meta, Node, Tree, TreePath};
use imgbuild_python::{
    Error, ImageFiles, ImageInterpreter, Libc, Target, VenvSpec, fetch_wheels, install,
    requirements::parse_requirements_str,
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
    let report = install(&s, &reqs, &wheels, &store, None, 1, &mut tree).unwrap();
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
    install(&s, &reqs, &again, &store, None, 1, &mut tree2).unwrap();
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
    let err = install(&s, &reqs, &wheels, &store, None, 1, &mut tree).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Closure { .. }), "{msg}");
    assert!(
        msg.contains("demo[fancy] 1.0 requires helper>=2 (python_full_version < \"3.11.3\") but it is not in requirements.txt"),
        "{msg}"
    );
    // the [fancy] extra's dependency is pinned, but only for win32: the message says
    // where and why it does not apply
    let fancy_line = text.lines().position(|l| l.starts_with("fancy==")).unwrap() + 1;
    assert!(
        msg.contains(&format!(
            "demo[fancy] 1.0 requires fancy (extra == \"fancy\") but requirements.txt line {fancy_line} pins fancy==1.0 only when `sys_platform == \"win32\"`, which is false for the target CPython 3.11.2 on x86_64 glibc 2.36"
        )),
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
    let msg = install(&newer, &reqs, &wheels, &store, None, 1, &mut Tree::new())
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
    let msg = install(&s, &reqs, &wheels, &store, None, 1, &mut Tree::new())
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

/// The index and requirements for the bytecode wheel.
fn bytecode_setup(index: &Index) -> imgbuild_python::Requirements {
    let wheel = bytecode_wheel();
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
    parse_requirements_str(&text, Path::new("requirements.txt")).unwrap()
}

#[test]
fn bytecode_is_written_by_the_image_interpreter_deterministically() {
    let mut results = vec![];
    for _ in 0..2 {
        // two independent stores: two independent copies of the interpreter, two
        // independent compilations
        let index = Index::start();
        let reqs = bytecode_setup(&index);
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let interp = image_interpreter(&store);
        assert_eq!(interp.version, "3.11.2", "Debian bookworm's CPython");
        assert_eq!(
            (interp.magic.as_str(), interp.cache_tag.as_str()),
            ("a70d0d0a", "cpython-311")
        );
        let s = spec(Target::bookworm_cpython311(), true);
        let wheels = fetch_wheels(&s, &reqs, &store, &client(), 1).unwrap();
        let mut tree = Tree::new();
        let report = install(&s, &reqs, &wheels, &store, Some(&interp), 1, &mut tree).unwrap();
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
        drop(interp);
        drop(tree);
        assert_eq!(
            count_files(&store.root().join("tmp")),
            0,
            "the copy is removed"
        );
        drop(tmp);
    }
    assert_eq!(
        results[0], results[1],
        ".pyc bytes differ between two independent builds"
    );
}

#[test]
fn the_image_interpreter_runs_through_the_image_loader_with_a_clean_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let interp = image_interpreter(&store);
    let out = interp
        .command()
        .args([
            "-S",
            "-c",
            "import os, sys; print(' '.join(sorted(os.environ))); print(sys.prefix); print(sys.version.split()[0])",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // nothing of this process's environment (PATH, a pyenv shim, PYTHONPATH...)
    assert_eq!(
        lines[0], "PYTHONCOERCECLOCALE PYTHONHASHSEED PYTHONHOME PYTHONUTF8",
        "{text}"
    );
    // the copy's prefix, not the host's /usr
    assert!(
        Path::new(lines[1]).starts_with(store.root().join("tmp")) && lines[1].ends_with("/usr"),
        "{text}"
    );
    assert_eq!(lines[2], interp.version);
    // the identity names the interpreter binary: another build of it is another compiler
    assert_eq!(interp.identity.len(), 64);
    let again = image_interpreter(&store);
    assert_eq!(again.identity, interp.identity);
}

#[test]
fn bytecode_without_the_image_interpreter_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let layer = debian_python_layer(&store);
    let target = Target::bookworm_cpython311();

    // a scratch image: nothing at the interpreter's path
    let mut other = Tree::new();
    other
        .insert(
            TreePath::new("etc/motd").unwrap(),
            Node::File {
                meta: Meta::FILE,
                content: Content::inline(b"hi\n".to_vec()),
            },
        )
        .unwrap();
    let opts = imgbuild_layer::WriteOptions {
        mtime: 0,
        threads: 1,
    };
    let scratch = imgbuild_layer::write_layer(&other, &opts, &store)
        .unwrap()
        .descriptor
        .digest;
    let image = ImageFiles::from_layers(&store, std::slice::from_ref(&scratch)).unwrap();
    let err =
        ImageInterpreter::materialise(&image, "/usr/bin/python3.11", &target, &store).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Interpreter { .. }), "{msg}");
    assert!(
        msg.contains("`/usr/bin/python3.11`") && msg.contains("set `bytecode = false`"),
        "{msg}"
    );

    // an image whose binaries this machine cannot execute (as an arm64 image on an
    // x86_64 host): an error, never a build without .pyc files
    let mut foreign = Tree::new();
    for (path, body, mode) in [
        (
            "usr/bin/python3.11",
            &b"\x7fELF not for this machine"[..],
            0o755,
        ),
        (
            "lib64/ld-linux-x86-64.so.2",
            &b"\x7fELF nor this"[..],
            0o755,
        ),
        ("usr/lib/python3.11/os.py", &b""[..], 0o644),
    ] {
        foreign
            .insert(
                TreePath::new(path).unwrap(),
                Node::File {
                    meta: Meta::new(mode, 0, 0),
                    content: Content::inline(body.to_vec()),
                },
            )
            .unwrap();
    }
    let err = ImageInterpreter::materialise(
        &ImageFiles::from_tree(&foreign),
        "/usr/bin/python3.11",
        &target,
        &store,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Interpreter { .. })
            && err.to_string().contains("cannot start it")
            && err.to_string().contains("set `bytecode = false`"),
        "{err}"
    );

    // an upper layer that deletes the interpreter (an OCI whiteout)
    let mut gone = Tree::new();
    gone.insert(
        TreePath::new("usr/bin/.wh.python3.11").unwrap(),
        Node::File {
            meta: Meta::FILE,
            content: Content::inline(Vec::new()),
        },
    )
    .unwrap();
    let whiteout = imgbuild_layer::write_layer(&gone, &opts, &store)
        .unwrap()
        .descriptor
        .digest;
    let image = ImageFiles::from_layers(&store, &[layer.clone(), whiteout]).unwrap();
    assert!(matches!(
        ImageInterpreter::materialise(&image, "/usr/bin/python3.11", &target, &store),
        Err(Error::Interpreter { .. })
    ));
    // the interpreter is found through the image's own symlinks (/bin -> usr/bin)
    let image = ImageFiles::from_layers(&store, std::slice::from_ref(&layer)).unwrap();
    let via_link =
        ImageInterpreter::materialise(&image, "/bin/python3.11", &target, &store).unwrap();
    assert_eq!(via_link.version, "3.11.2");
    // ...and must be the target's minor version
    let err = ImageInterpreter::materialise(
        &image,
        "/usr/bin/python3.11",
        &Target {
            python_full_version: "3.12.1".into(),
            ..Target::bookworm_cpython311()
        },
        &store,
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Interpreter { .. }) && err.to_string().contains("python3.12"),
        "{err}"
    );

    // install: bytecode without an interpreter, or one that is not the target version
    let index = Index::start();
    let reqs = bytecode_setup(&index);
    let s = spec(Target::bookworm_cpython311(), true);
    let wheels = fetch_wheels(&s, &reqs, &store, &client(), 1).unwrap();
    let err = install(&s, &reqs, &wheels, &store, None, 1, &mut Tree::new()).unwrap_err();
    assert!(matches!(err, Error::Spec(_)), "{err}");
    let newer = spec(
        Target {
            python_full_version: "3.11.7".into(),
            ..Target::bookworm_cpython311()
        },
        true,
    );
    let err = install(
        &newer,
        &reqs,
        &wheels,
        &store,
        Some(&via_link),
        1,
        &mut Tree::new(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("CPython 3.11.2") && err.to_string().contains("3.11.7"),
        "{err}"
    );
    // without bytecode, no interpreter is needed and none is run
    let plain = spec(Target::bookworm_cpython311(), false);
    let mut tree = Tree::new();
    let report = install(&plain, &reqs, &wheels, &store, None, 1, &mut tree).unwrap();
    assert_eq!(report.pyc_files, 0);
    assert!(pyc_bytes(&tree).is_empty());
}

/// Publishes each (name, wheel) and returns requirements for all of them.
fn publish_all(index: &Index, wheels: &[(&str, Vec<u8>)]) -> imgbuild_python::Requirements {
    let mut text = format!("-i {}\n", index.url());
    for (name, w) in wheels {
        index.project(
            name,
            &[(
                &format!("{name}-1.0-py3-none-any.whl"),
                Some(sha256_hex(w)),
                None,
                w.clone(),
            )],
        );
        text.push_str(&format!("{name}==1.0 --hash=sha256:{}\n", sha256_hex(w)));
    }
    parse_requirements_str(&text, Path::new("requirements.txt")).unwrap()
}

#[test]
fn a_stale_pyc_of_a_replaced_source_is_left_out() {
    // aa and bb both ship shared/mod.py; bb (installed later) replaces it with a copy
    // that does not compile: aa's .pyc must not stay next to bb's source
    let aa = build_wheel(&WheelSpec {
        name: "aa",
        version: "1.0",
        requires_dist: &[],
        entry_points: None,
        files: vec![
            (
                "shared/mod.py".into(),
                b"VALUE = 'from aa'\n".to_vec(),
                0o644,
            ),
            ("shared/ok.py".into(), b"X = 1\n".to_vec(), 0o644),
        ],
    });
    let bb = build_wheel(&WheelSpec {
        name: "bb",
        version: "1.0",
        requires_dist: &[],
        entry_points: None,
        files: vec![("shared/mod.py".into(), b"VALUE = (\n".to_vec(), 0o644)],
    });
    let index = Index::start();
    let reqs = publish_all(&index, &[("aa", aa), ("bb", bb)]);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let interp = image_interpreter(&store);
    let s = spec(Target::bookworm_cpython311(), true);
    let wheels = fetch_wheels(&s, &reqs, &store, &client(), 1).unwrap();
    let mut tree = Tree::new();
    let report = install(&s, &reqs, &wheels, &store, Some(&interp), 2, &mut tree).unwrap();
    let sp = "opt/venv/lib/python3.11/site-packages";
    let pycs: Vec<String> = pyc_bytes(&tree).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        pycs,
        [format!("{sp}/shared/__pycache__/ok.cpython-311.pyc")]
    );
    assert_eq!(report.pyc_files, 1);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("shared/__pycache__/mod.cpython-311.pyc left out")),
        "{:?}",
        report.warnings
    );
    let record = match tree.get(&TreePath::new(&format!("{sp}/aa-1.0.dist-info/RECORD")).unwrap()) {
        Some(Node::File {
            content: Content::Inline(b),
            ..
        }) => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(!record.contains("mod.cpython-311.pyc"), "{record}");
    assert!(
        record.contains("shared/__pycache__/ok.cpython-311.pyc"),
        "{record}"
    );
}

#[test]
fn wheels_cannot_replace_the_venv_skeleton() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let s = spec(Target::bookworm_cpython311(), false);
    for (what, entry_points, file) in [
        (
            "entry point",
            Some("[console_scripts]\npython = evil:main\n"),
            None,
        ),
        (
            "gui entry point",
            Some("[gui_scripts]\npython3.11 = evil:main\n"),
            None,
        ),
        ("script", None, Some("evil-1.0.data/scripts/python3")),
        ("data", None, Some("evil-1.0.data/data/pyvenv.cfg")),
        ("data", None, Some("evil-1.0.data/data/bin/python")),
        ("data", None, Some("evil-1.0.data/data/lib64/x")),
    ] {
        let mut files = vec![("evil.py".to_string(), b"def main(): pass\n".to_vec(), 0o644)];
        if let Some(f) = file {
            files.push((f.to_string(), b"#!/bin/sh\n".to_vec(), 0o755));
        }
        let w = build_wheel(&WheelSpec {
            name: "evil",
            version: "1.0",
            requires_dist: &[],
            entry_points,
            files,
        });
        let index = Index::start();
        let reqs = publish_all(&index, &[("evil", w)]);
        let wheels = fetch_wheels(&s, &reqs, &store, &client(), 1).unwrap();
        let mut tree = Tree::new();
        let err = install(&s, &reqs, &wheels, &store, None, 1, &mut tree).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::ReservedPath { .. }), "{what}: {msg}");
        assert!(msg.contains("evil-1.0-py3-none-any.whl"), "{what}: {msg}");
        let expected = match (entry_points, file) {
            (Some(ep), _) if ep.contains("python3.11") => "/opt/venv/bin/python3.11".to_owned(),
            (Some(_), _) => "/opt/venv/bin/python".to_owned(),
            (_, Some(f)) if f.contains("scripts/") => "/opt/venv/bin/python3".to_owned(),
            (_, Some(f)) => format!("/opt/venv/{}", f.trim_start_matches("evil-1.0.data/data/")),
            _ => unreachable!(),
        };
        assert!(msg.contains(&format!("`{expected}`")), "{what}: {msg}");
    }
}

#[test]
fn symlink_entries_in_wheels_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let good = build_wheel(&WheelSpec {
        name: "demo",
        version: "1.0",
        requires_dist: &[],
        entry_points: None,
        files: vec![("demo/__init__.py".into(), b"".to_vec(), 0o644)],
    });
    // the same wheel plus a symlink entry pointing out of site-packages
    let mut src = zip::ZipArchive::new(std::io::Cursor::new(good)).unwrap();
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..src.len() {
        z.raw_copy_file(src.by_index(i).unwrap()).unwrap();
    }
    z.add_symlink(
        "demo/passwd",
        "/etc/passwd",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    let bytes = z.finish().unwrap().into_inner();
    let d = store.put_bytes(&bytes).unwrap();
    let err =
        imgbuild_python::unpack::unpack_cached(&store, &d, "demo-1.0-py3-none-any.whl", "demo")
            .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::UnsafeWheelEntry { .. }), "{msg}");
    assert!(
        msg.contains("demo-1.0-py3-none-any.whl")
            && msg.contains("demo/passwd")
            && msg.contains("symlink"),
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
