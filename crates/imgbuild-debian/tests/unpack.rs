//! The unpacker on small .deb files crafted here (ar + control.tar + data.tar with each
//! supported compression), including hostile entries that must be refused.

use std::io::{Read, Seek, SeekFrom, Write};

use imgbuild_debian::deb::Replaced;
use imgbuild_debian::index::Base;
use imgbuild_debian::{Error, LockedPackage, Unpacker};
use imgbuild_layer::{Content, Meta, Node, Tree, TreePath};
use imgbuild_store::{Bucket, Store};

enum E<'a> {
    Dir(&'a str, u32, u32, u32),
    File(&'a str, u32, u32, u32, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// Writes a name into the header as-is: the tar crate refuses `..` and absolute paths,
/// and those are exactly what these tests need to feed the unpacker.
fn raw_name(h: &mut tar::Header, name: &str) {
    let gnu = h.as_gnu_mut().unwrap();
    gnu.name = [0; 100];
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        let data: &[u8] = match e {
            E::Dir(p, mode, uid, gid) => {
                raw_name(&mut h, p);
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_uid(*uid as u64);
                h.set_gid(*gid as u64);
                h.set_size(0);
                b""
            }
            E::File(p, mode, uid, gid, data) => {
                raw_name(&mut h, p);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid as u64);
                h.set_gid(*gid as u64);
                h.set_size(data.len() as u64);
                data
            }
            E::Symlink(p, t) | E::Hardlink(p, t) => {
                raw_name(&mut h, p);
                h.set_entry_type(if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_link_name_literal(t).unwrap();
                h.set_mode(0o777);
                h.set_uid(0);
                h.set_gid(0);
                h.set_size(0);
                b""
            }
        };
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn compress(kind: &str, data: &[u8]) -> Vec<u8> {
    match kind {
        "xz" => {
            let mut w = liblzma::write::XzEncoder::new(Vec::new(), 6);
            w.write_all(data).unwrap();
            w.finish().unwrap()
        }
        "gz" => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            w.write_all(data).unwrap();
            w.finish().unwrap()
        }
        "zst" => zstd::encode_all(data, 3).unwrap(),
        "bz2" => {
            let mut w = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
            w.write_all(data).unwrap();
            w.finish().unwrap()
        }
        "none" => data.to_vec(),
        _ => unreachable!(),
    }
}

fn ar_member(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(
        format!(
            "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
            name,
            0,
            0,
            0,
            100644,
            data.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(b'\n');
    }
}

fn ext(kind: &str) -> &str {
    match kind {
        "none" => "",
        "xz" => ".xz",
        "gz" => ".gz",
        "zst" => ".zst",
        "bz2" => ".bz2",
        _ => unreachable!(),
    }
}

/// A whole .deb: control.tar.xz with control (and optional scripts), data.tar.<kind>.
fn deb(name: &str, kind: &str, data: &[E], scripts: &[(&str, &str)]) -> Vec<u8> {
    deb_with(name, kind, data, scripts, "")
}

/// [`deb`] with more control fields (`Replaces: a\n`).
fn deb_with(name: &str, kind: &str, data: &[E], scripts: &[(&str, &str)], fields: &str) -> Vec<u8> {
    let control = format!(
        "Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: T <t@example.org>\n{fields}Description: test\n"
    );
    let mut ctl: Vec<E> = vec![
        E::Dir("./", 0o755, 0, 0),
        E::File("./control", 0o644, 0, 0, control.as_bytes()),
    ];
    let md5 = "d41d8cd98f00b204e9800998ecf8427e  usr/bin/tool\n";
    ctl.push(E::File("./md5sums", 0o644, 0, 0, md5.as_bytes()));
    for (s, text) in scripts {
        ctl.push(E::File(
            Box::leak(format!("./{s}").into_boxed_str()),
            0o755,
            0,
            0,
            text.as_bytes(),
        ));
    }
    let mut out = b"!<arch>\n".to_vec();
    ar_member(&mut out, "debian-binary", b"2.0\n");
    ar_member(&mut out, "control.tar.xz", &compress("xz", &tar_of(&ctl)));
    ar_member(
        &mut out,
        &format!("data.tar{}", ext(kind)),
        &compress(kind, &tar_of(data)),
    );
    out
}

fn put(store: &Store, name: &str, bytes: &[u8]) -> LockedPackage {
    let sha256 = store.put_bytes(bytes).unwrap();
    LockedPackage {
        name: name.into(),
        version: "1.0-1".into(),
        architecture: "amd64".into(),
        filename: format!("pool/main/t/{name}/{name}_1.0-1_amd64.deb"),
        size: bytes.len() as u64,
        sha256,
        base: Base::Debian,
        repository: "debian".into(),
    }
}

fn get<'t>(t: &'t Tree, p: &str) -> &'t Node {
    t.get(&TreePath::new(p).unwrap())
        .unwrap_or_else(|| panic!("{p} missing"))
}

fn content(c: &Content) -> Vec<u8> {
    match c {
        Content::Range { path, offset, size } => {
            let mut f = std::fs::File::open(path).unwrap();
            f.seek(SeekFrom::Start(*offset)).unwrap();
            let mut v = vec![0; *size as usize];
            f.read_exact(&mut v).unwrap();
            v
        }
        Content::Inline(b) => b.to_vec(),
        other => panic!("{other:?}"),
    }
}

fn file_bytes(t: &Tree, p: &str) -> (Vec<u8>, Meta) {
    match get(t, p) {
        Node::File { meta, content: c } => (content(c), *meta),
        other => panic!("{p}: {other:?}"),
    }
}

const SCRIPT: &[u8] = b"#!/bin/sh\necho hi\n";

fn good_entries() -> Vec<E<'static>> {
    vec![
        E::Dir("./", 0o755, 0, 0),
        E::Dir("./bin/", 0o755, 0, 0),
        E::File("./bin/tool", 0o755, 0, 0, SCRIPT),
        E::Dir("./usr/", 0o755, 0, 0),
        E::Dir("./usr/bin/", 0o755, 0, 0),
        E::File("./usr/bin/chsh", 0o4755, 0, 0, b"\x7fELF-setuid"),
        E::File("./usr/sbin/unix_chkpwd", 0o2755, 0, 42, b"\x7fELF-setgid"),
        E::Dir("./var/", 0o755, 0, 0),
        E::Dir("./var/local/", 0o2775, 0, 50),
        E::Dir("./tmp/", 0o1777, 0, 0),
        E::File("./usr/lib/x/a", 0o644, 0, 0, b"shared bytes"),
        E::Hardlink("./usr/lib/x/b", "./usr/lib/x/a"),
        E::File("./lib/x86_64-linux-gnu/libfoo.so.1", 0o644, 0, 0, b"lib"),
        E::Symlink("./lib/x86_64-linux-gnu/libfoo.so", "libfoo.so.1"),
        E::Symlink(
            "./lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ),
    ]
}

#[test]
fn unpacks_every_compression_with_metadata_and_merged_usr() {
    for kind in ["xz", "gz", "zst", "bz2", "none"] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let postinst = "#!/bin/sh\nset -e\nadduser --system foo\nupdate-alternatives --install /usr/bin/x x /usr/bin/y 10\n";
        let pkg = put(
            &store,
            "good",
            &deb(
                "good",
                kind,
                &good_entries(),
                &[
                    ("postinst", postinst),
                    ("triggers", "activate-noawait ldconfig\n"),
                ],
            ),
        );
        let mut tree = Tree::new();
        let report = Unpacker::new().unpack(&store, &pkg, &mut tree).unwrap();
        assert_eq!(report.data_compression, kind);

        // merged /usr
        for d in ["bin", "sbin", "lib", "lib64"] {
            assert_eq!(
                get(&tree, d),
                &Node::Symlink {
                    meta: Meta::new(0o777, 0, 0),
                    target: format!("usr/{d}")
                },
                "{kind}"
            );
        }
        assert!(tree.get(&TreePath::new("bin/tool").unwrap()).is_none());
        let (bytes, meta) = file_bytes(&tree, "usr/bin/tool");
        assert_eq!(
            (bytes.as_slice(), meta),
            (SCRIPT, Meta::new(0o755, 0, 0)),
            "{kind}"
        );
        // special bits and numeric owners
        assert_eq!(file_bytes(&tree, "usr/bin/chsh").1, Meta::new(0o4755, 0, 0));
        assert_eq!(
            file_bytes(&tree, "usr/sbin/unix_chkpwd").1,
            Meta::new(0o2755, 0, 42)
        );
        assert_eq!(
            get(&tree, "var/local"),
            &Node::Dir(Meta::new(0o2775, 0, 50))
        );
        assert_eq!(get(&tree, "tmp"), &Node::Dir(Meta::new(0o1777, 0, 0)));
        // links
        assert_eq!(
            get(&tree, "usr/lib/x/b"),
            &Node::Hardlink {
                target: TreePath::new("usr/lib/x/a").unwrap()
            }
        );
        assert_eq!(file_bytes(&tree, "usr/lib/x/a").0, b"shared bytes");
        assert!(
            matches!(get(&tree, "usr/lib/x86_64-linux-gnu/libfoo.so"), Node::Symlink { target, .. } if target == "libfoo.so.1")
        );
        assert!(
            matches!(get(&tree, "usr/lib64/ld-linux-x86-64.so.2"), Node::Symlink { target, .. } if target.starts_with("/lib/"))
        );
        tree.validate().unwrap();
        // scanner metadata, as distroless writes it
        let (status, _) = file_bytes(&tree, "var/lib/dpkg/status.d/good");
        assert!(
            String::from_utf8(status)
                .unwrap()
                .starts_with("Package: good\nVersion: 1.0-1\n")
        );
        assert!(
            file_bytes(&tree, "var/lib/dpkg/status.d/good.md5sums")
                .0
                .ends_with(b"usr/bin/tool\n")
        );
        // maintainer scripts reported, not run
        let scripts: Vec<&str> = report
            .maintainer_scripts
            .iter()
            .map(|s| s.script.as_str())
            .collect();
        assert_eq!(scripts, ["postinst", "triggers"]);
        let hints = &report.maintainer_scripts[0].hints;
        assert!(
            hints.iter().any(|h| h.contains("adduser"))
                && hints.iter().any(|h| h.contains("update-alternatives")),
            "{hints:?}"
        );
        assert_eq!(
            report.maintainer_scripts[1].hints,
            ["trigger: activate-noawait ldconfig"]
        );
        assert_eq!(report.sh_scripts, ["./bin/tool"]);
    }
}

#[test]
fn second_unpack_uses_the_spool_record_without_the_deb() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let pkg = put(&store, "good", &deb("good", "xz", &good_entries(), &[]));
    let mut t1 = Tree::new();
    Unpacker::new().unpack(&store, &pkg, &mut t1).unwrap();
    // the .deb is gone: the record and the spooled tar are enough
    store.remove_blob(&pkg.sha256).unwrap();
    let mut t2 = Tree::new();
    Unpacker::new().unpack(&store, &pkg, &mut t2).unwrap();
    assert_eq!(t1.iter().collect::<Vec<_>>(), t2.iter().collect::<Vec<_>>());
    assert_eq!(file_bytes(&t2, "usr/bin/tool").0, SCRIPT);
}

#[test]
fn tampered_deb_in_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = deb("good", "gz", &good_entries(), &[]);
    let pkg = put(&store, "good", &bytes);
    let mut evil = bytes.clone();
    let n = evil.len();
    evil[n - 30] ^= 0xff;
    std::fs::write(store.blob_path(&pkg.sha256), &evil).unwrap();
    let err = Unpacker::new()
        .unpack(&store, &pkg, &mut Tree::new())
        .unwrap_err();
    assert!(matches!(err, Error::BadDeb { .. }), "{err}");
    assert!(err.to_string().contains("good"), "{err}");
    // nothing was recorded for it, and the corrupt blob was removed
    assert!(store.list_entries(Bucket::DebianUnpack).unwrap().is_empty());
    assert!(!store.has_blob(&pkg.sha256));
}

fn unpack_err(entries: &[E]) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let pkg = put(&store, "evil", &deb("evil", "xz", entries, &[]));
    Unpacker::new()
        .unpack(&store, &pkg, &mut Tree::new())
        .unwrap_err()
}

#[test]
fn escaping_entries_are_refused() {
    let cases: Vec<(Vec<E>, &str)> = vec![
        (
            vec![E::File("./../etc/passwd", 0o644, 0, 0, b"x")],
            "./../etc/passwd",
        ),
        (
            vec![E::File("./usr/../../etc/passwd", 0o644, 0, 0, b"x")],
            "./usr/../../etc/passwd",
        ),
        (
            vec![E::File("/etc/passwd", 0o644, 0, 0, b"x")],
            "/etc/passwd",
        ),
        (
            vec![E::Hardlink("./usr/bin/x", "../../etc/shadow")],
            "./usr/bin/x",
        ),
        (
            vec![E::Hardlink("./usr/bin/x", "/etc/shadow")],
            "./usr/bin/x",
        ),
        (
            vec![E::Hardlink("./usr/bin/x", "./usr/bin/nothing")],
            "./usr/bin/x",
        ),
    ];
    for (entries, path) in cases {
        let err = unpack_err(&entries);
        match &err {
            Error::Unpack {
                package, path: p, ..
            } => {
                assert_eq!(package, "evil");
                assert_eq!(p, path);
            }
            other => panic!("{path}: {other}"),
        }
        assert!(
            err.to_string().contains("evil") && err.to_string().contains(path),
            "{err}"
        );
    }
}

#[test]
fn file_over_directory_is_refused() {
    // within one package
    let err = unpack_err(&[
        E::Dir("./usr/share/foo/", 0o755, 0, 0),
        E::File("./usr/share/foo", 0o644, 0, 0, b"x"),
    ]);
    assert!(
        matches!(&err, Error::Unpack { path, .. } if path == "./usr/share/foo"),
        "{err}"
    );
    assert!(err.to_string().contains("directory"), "{err}");

    // across packages, and a directory over a file too
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = put(
        &store,
        "a",
        &deb(
            "a",
            "xz",
            &[
                E::Dir("./etc/foo/", 0o755, 0, 0),
                E::File("./etc/bar", 0o644, 0, 0, b"1"),
            ],
            &[],
        ),
    );
    let b = put(
        &store,
        "b",
        &deb("b", "xz", &[E::File("./etc/foo", 0o644, 0, 0, b"x")], &[]),
    );
    let c = put(
        &store,
        "c",
        &deb("c", "xz", &[E::Dir("./etc/bar/", 0o755, 0, 0)], &[]),
    );
    let mut u = Unpacker::new();
    let mut t = Tree::new();
    u.unpack(&store, &a, &mut t).unwrap();
    let err = u.unpack(&store, &b, &mut t).unwrap_err();
    assert!(
        matches!(&err, Error::Unpack { package, .. } if package == "b"),
        "{err}"
    );
    let err = u.unpack(&store, &c, &mut t).unwrap_err();
    assert!(
        err.to_string().contains("`a`"),
        "names the package that shipped the file: {err}"
    );
}

#[test]
fn aliased_paths_across_packages_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = put(
        &store,
        "a",
        &deb("a", "xz", &[E::File("./bin/x", 0o755, 0, 0, b"1")], &[]),
    );
    let b = put(
        &store,
        "b",
        &deb("b", "xz", &[E::File("./usr/bin/x", 0o755, 0, 0, b"2")], &[]),
    );
    let same = put(
        &store,
        "same",
        &deb("same", "xz", &[E::File("./bin/x", 0o755, 0, 0, b"3")], &[]),
    );
    let mut u = Unpacker::new();
    let mut t = Tree::new();
    u.unpack(&store, &a, &mut t).unwrap();
    let err = u.unpack(&store, &b, &mut t).unwrap_err();
    match &err {
        Error::AliasConflict {
            package,
            other_package,
            canonical,
            ..
        } => {
            assert_eq!(
                (package.as_str(), other_package.as_str(), canonical.as_str()),
                ("b", "a", "usr/bin/x")
            );
        }
        other => panic!("{other}"),
    }
    // the same spelling from another package is a dpkg-style replace, reported
    let r = u.unpack(&store, &same, &mut t).unwrap();
    assert_eq!(
        r.replaced,
        [Replaced {
            path: "usr/bin/x".into(),
            previous: "a".into(),
            declared: false
        }]
    );
}

#[test]
fn directories_shipped_over_a_symlink_are_written_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // a: usr/share/doc/a -> b (relative), opt/app -> /srv/app (absolute), its own files
    let a = put(
        &store,
        "a",
        &deb(
            "a",
            "xz",
            &[
                E::Dir("./usr/share/doc/b/", 0o755, 0, 0),
                E::Symlink("./usr/share/doc/a", "b"),
                E::Dir("./srv/app/", 0o750, 0, 0),
                E::Symlink("./opt/app", "/srv/app"),
                E::Symlink("./opt/up", "../../.."),
            ],
            &[],
        ),
    );
    // b ships the directories as directories, with files below them
    let b = put(
        &store,
        "b",
        &deb(
            "b",
            "gz",
            &[
                E::Dir("./usr/share/doc/a/", 0o755, 0, 0),
                E::File("./usr/share/doc/a/copyright", 0o644, 0, 0, b"(c)"),
                E::Dir("./opt/app/", 0o755, 0, 0),
                E::Dir("./opt/app/lib/", 0o755, 0, 0),
                E::File("./opt/app/lib/x.so", 0o644, 0, 0, b"so"),
                E::Hardlink("./opt/app/lib/y.so", "./opt/app/lib/x.so"),
            ],
            &[],
        ),
    );
    let mut u = Unpacker::new();
    let mut t = Tree::new();
    u.unpack(&store, &a, &mut t).unwrap();
    u.unpack(&store, &b, &mut t)
        .unwrap_or_else(|e| panic!("writes through the symlinks: {e}"));
    // the symlinks stay, the contents land at their targets
    assert!(matches!(get(&t, "usr/share/doc/a"), Node::Symlink { target, .. } if target == "b"));
    assert_eq!(file_bytes(&t, "usr/share/doc/b/copyright").0, b"(c)");
    assert!(matches!(get(&t, "opt/app"), Node::Symlink { target, .. } if target == "/srv/app"));
    assert_eq!(file_bytes(&t, "srv/app/lib/x.so").0, b"so");
    assert_eq!(
        get(&t, "srv/app/lib/y.so"),
        &Node::Hardlink {
            target: TreePath::new("srv/app/lib/x.so").unwrap()
        }
    );
    // the directory kept the metadata it had (as dpkg keeps the existing directory)
    assert_eq!(get(&t, "srv/app"), &Node::Dir(Meta::new(0o750, 0, 0)));
    t.validate().unwrap();

    // a link whose target leaves the image root is not followed
    let c = put(
        &store,
        "c",
        &deb(
            "c",
            "xz",
            &[E::File("./opt/up/etc/passwd", 0o644, 0, 0, b"x")],
            &[],
        ),
    );
    let err = u.unpack(&store, &c, &mut t).unwrap_err();
    assert!(
        matches!(&err, Error::Unpack { package, path, .. } if package == "c" && path == "./opt/up/etc/passwd"),
        "{err}"
    );
    assert!(err.to_string().contains("leaves the image root"), "{err}");
}

#[test]
fn notes_report_unrun_scripts_missing_sh_and_undeclared_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let tool = put(
        &store,
        "tool",
        &deb(
            "tool",
            "xz",
            &[
                E::File("./usr/share/common/x", 0o644, 0, 0, b"1"),
                E::File("./etc/init.d/tool", 0o755, 0, 0, SCRIPT),
            ],
            &[("postinst", "#!/bin/sh\nadduser --system tool\n")],
        ),
    );
    // overwrites tool's file without Replaces
    let rude = put(
        &store,
        "rude",
        &deb(
            "rude",
            "xz",
            &[E::File("./usr/share/common/x", 0o644, 0, 0, b"2")],
            &[],
        ),
    );
    // overwrites it with Replaces on a version range that holds for tool 1.0-1
    let polite = put(
        &store,
        "polite",
        &deb_with(
            "polite",
            "xz",
            &[E::File("./usr/share/common/x", 0o644, 0, 0, b"3")],
            &[],
            "Replaces: rude, tool (<< 2)\n",
        ),
    );
    let shell = put(
        &store,
        "dash",
        &deb("dash", "xz", &[E::Symlink("./bin/sh", "dash")], &[]),
    );
    let mut u = Unpacker::new();
    let mut t = Tree::new();
    let reports = u
        .unpack_all(&store, &[tool, rude, polite], &mut t, 2, &|_| {})
        .unwrap();
    let notes = imgbuild_debian::deb::notes(&reports, &t);
    assert_eq!(notes.len(), 3, "{notes:#?}");
    assert!(
        notes[0].starts_with("not run: tool postinst") && notes[0].contains("adduser"),
        "{}",
        notes[0]
    );
    assert!(
        notes[1].starts_with("warning: this layer has no /bin/sh, but 1 package(s) ship #!/bin/sh scripts: tool (/etc/init.d/tool);")
            && notes[1].contains("dash"),
        "{}",
        notes[1]
    );
    assert!(
        notes[2].contains("/usr/share/common/x")
            && notes[2].contains("of tool by rude")
            && notes[2].contains("Replaces"),
        "{}",
        notes[2]
    );
    assert_eq!(file_bytes(&t, "usr/share/common/x").0, b"3");
    // with /bin/sh in the layer there is nothing to warn about
    u.unpack(&store, &shell, &mut t).unwrap();
    let notes = imgbuild_debian::deb::notes(&reports, &t);
    assert!(
        notes.iter().all(|n| !n.starts_with("warning")),
        "{notes:#?}"
    );
}

#[test]
fn unpack_all_reads_in_parallel_and_places_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let pkgs: Vec<LockedPackage> = (0..6)
        .map(|i| {
            let name = format!("p{i}");
            let data = format!("from {name}");
            let bytes = deb(
                &name,
                ["xz", "gz", "zst"][i % 3],
                &[
                    E::File("./usr/share/same", 0o644, 0, 0, data.as_bytes()),
                    E::File(
                        Box::leak(format!("./usr/share/{name}").into_boxed_str()),
                        0o644,
                        0,
                        0,
                        b"own",
                    ),
                ],
                &[],
            );
            put(&store, &name, &bytes)
        })
        .collect();
    let mut sequential = Tree::new();
    let mut u = Unpacker::new();
    for p in &pkgs {
        u.unpack(&store, p, &mut sequential).unwrap();
    }
    for r in store.list_entries(Bucket::DebianUnpack).unwrap() {
        store.remove_entry(Bucket::DebianUnpack, &r).unwrap();
    }
    let mut parallel = Tree::new();
    let seen = std::sync::Mutex::new(vec![]);
    let reports = Unpacker::new()
        .unpack_all(&store, &pkgs, &mut parallel, 4, &|p| {
            seen.lock().unwrap().push(p.name.clone())
        })
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 6);
    assert_eq!(
        sequential.iter().collect::<Vec<_>>(),
        parallel.iter().collect::<Vec<_>>()
    );
    // the last package in the given order wins, as in a sequential unpack
    assert_eq!(file_bytes(&parallel, "usr/share/same").0, b"from p5");
    // every report names its spool, an intact blob of the store
    for (r, p) in reports.iter().zip(&pkgs) {
        assert_eq!(r.name, p.name);
        let spool = r.spool.as_ref().unwrap();
        assert!(store.verify(spool).unwrap());
    }
}

#[test]
fn not_a_deb_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let pkg = put(&store, "junk", b"PK\x03\x04 definitely not ar");
    let err = Unpacker::new()
        .unpack(&store, &pkg, &mut Tree::new())
        .unwrap_err();
    assert!(
        err.to_string().contains("junk") && err.to_string().contains("ar"),
        "{err}"
    );
}

/// trixie's base-files ships the merged-/usr symlinks itself (`./bin -> usr/bin`, and
/// `./lib64 -> usr/lib64` on amd64 only): they are the links the unpacker already made,
/// not a symlink to put over the `usr/bin` directory. On arm64 there is no `/lib64`.
#[test]
fn base_files_shipping_the_merged_usr_links_unpacks() {
    use imgbuild_debian::Arch;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let entries = [
        E::Dir("./", 0o755, 0, 0),
        E::Dir("./usr/", 0o755, 0, 0),
        E::Dir("./usr/bin/", 0o755, 0, 0),
        E::Dir("./usr/lib64/", 0o755, 0, 0),
        E::Symlink("./bin", "usr/bin"),
        E::Symlink("./lib", "usr/lib"),
        E::Symlink("./lib64", "usr/lib64"),
        E::Symlink("./sbin", "usr/sbin"),
        E::File("./usr/bin/tool", 0o755, 0, 0, b"x"),
    ];
    let pkg = put(
        &store,
        "base-files",
        &deb("base-files", "xz", &entries, &[]),
    );
    let mut tree = Tree::new();
    Unpacker::new().unpack(&store, &pkg, &mut tree).unwrap();
    for d in ["bin", "sbin", "lib", "lib64"] {
        assert!(
            matches!(get(&tree, d), Node::Symlink { target, .. } if *target == format!("usr/{d}")),
            "{d}"
        );
        assert!(
            matches!(get(&tree, &format!("usr/{d}")), Node::Dir(_)),
            "usr/{d}"
        );
    }
    assert!(matches!(get(&tree, "usr/bin/tool"), Node::File { .. }));

    // arm64: base-files ships no lib64 link, and none is made
    let arm: Vec<E> = entries
        .into_iter()
        .filter(|e| !matches!(e, E::Symlink("./lib64", _) | E::Dir("./usr/lib64/", ..)))
        .collect();
    let pkg = put(&store, "base-files", &deb("base-files", "xz", &arm, &[]));
    let mut tree = Tree::new();
    Unpacker::for_arch(Arch::Arm64)
        .unpack(&store, &pkg, &mut tree)
        .unwrap();
    assert!(matches!(get(&tree, "lib"), Node::Symlink { .. }));
    assert!(tree.get(&TreePath::new("lib64").unwrap()).is_none());
    assert!(tree.get(&TreePath::new("usr/lib64").unwrap()).is_none());

    // a link elsewhere is still refused over a directory
    let bad = [
        E::Dir("./usr/bin/", 0o755, 0, 0),
        E::Symlink("./bin", "/opt/bin"),
    ];
    let pkg = put(&store, "evil", &deb("evil", "xz", &bad, &[]));
    assert!(
        Unpacker::new()
            .unpack(&store, &pkg, &mut Tree::new())
            .is_err()
    );
}

/// Scripts that cannot matter to an image are one line per kind in the notes: the
/// ldconfig-only triggers of library packages, and prerm/postrm (removal only);
/// anything else keeps its own line.
#[test]
fn trivial_scripts_are_grouped_in_the_notes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let lib = |name: &'static str, triggers: &'static str| {
        let file = Box::leak(format!("./usr/lib/{name}.so").into_boxed_str());
        put(
            &store,
            name,
            &deb(
                name,
                "xz",
                &[E::File(file, 0o644, 0, 0, b"so")],
                &[("triggers", triggers)],
            ),
        )
    };
    let liba = lib("liba1", "activate-noawait ldconfig\n");
    let libb = lib("libb2", "# comment\nactivate ldconfig\n");
    let libc = lib(
        "libc3",
        "interest-noawait /usr/lib/foo\nactivate-noawait ldconfig\n",
    );
    let tool = put(
        &store,
        "tool",
        &deb(
            "tool",
            "xz",
            &[E::File("./usr/bin/tool", 0o755, 0, 0, b"x")],
            &[
                ("postinst", "#!/bin/sh\nadduser --system tool\n"),
                ("prerm", "#!/bin/sh\nexit 0\n"),
                ("postrm", "#!/bin/sh\ndeluser tool || true\n"),
            ],
        ),
    );
    let mut u = Unpacker::new();
    let mut t = Tree::new();
    let reports = u
        .unpack_all(&store, &[liba, libb, libc, tool], &mut t, 2, &|_| {})
        .unwrap();
    let notes = imgbuild_debian::deb::notes(&reports, &t);
    assert_eq!(
        notes,
        [
            "not run: libc3 triggers: trigger: interest-noawait /usr/lib/foo; trigger: activate-noawait ldconfig",
            "not run: tool postinst: creates users/groups (adduser): declare them in the recipe",
            "not run: the ldconfig trigger of 2 package(s): liba1, libb2 (not needed: the libraries are in the default search paths, no ld.so.cache)",
            "not run: prerm/postrm of 1 package(s): tool (dpkg runs them only to remove or upgrade a package)",
        ],
        "{notes:#?}"
    );
}
