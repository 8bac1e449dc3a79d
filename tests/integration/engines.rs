//! Outputs checked by independent tools: skopeo, umoci, docker and podman.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::support::*;

/// (type, mode, link target or content) of every path below `root`, keyed by the
/// path relative to it; hardlinked files are marked with their group.
fn listing(root: &Path, normalise_modes: bool) -> BTreeMap<String, (char, u32, String)> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    fn walk(
        p: &Path,
        rel: String,
        out: &mut BTreeMap<String, (char, u32, String)>,
        inodes: &mut BTreeMap<u64, String>,
        norm: bool,
    ) {
        let m = std::fs::symlink_metadata(p).unwrap();
        let mode = m.permissions().mode() & 0o7777;
        if m.file_type().is_symlink() {
            out.insert(
                rel,
                ('l', 0, std::fs::read_link(p).unwrap().display().to_string()),
            );
        } else if m.is_dir() {
            let mode = if norm { (mode & 0o7000) | 0o755 } else { mode };
            out.insert(rel.clone(), ('d', mode, String::new()));
            let mut kids: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            kids.sort();
            for k in kids {
                let r = if rel.is_empty() {
                    k.clone()
                } else {
                    format!("{rel}/{k}")
                };
                walk(&p.join(&k), r, out, inodes, norm);
            }
        } else {
            let mode = if norm {
                (mode & 0o7000) | if mode & 0o111 != 0 { 0o755 } else { 0o644 }
            } else {
                mode
            };
            let content = String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
            let link = if m.nlink() > 1 {
                format!(" [link {}]", inodes.entry(m.ino()).or_insert(rel.clone()))
            } else {
                String::new()
            };
            out.insert(rel, ('f', mode, format!("{content}{link}")));
        }
    }
    walk(root, String::new(), &mut out, &mut inodes, normalise_modes);
    out
}

#[test]
fn skopeo_and_umoci_read_every_output_and_unpack_the_exact_tree() {
    require("skopeo");
    require("umoci");
    let f = Fixture::new("hello");
    enrich_site(f.path());
    let built = f.build_json(&["all"]);
    let out = f.path().join("out");
    for (name, digest) in digests(&built) {
        let tar = out.join(format!("{name}.tar"));
        for transport in ["oci-archive", "docker-archive"] {
            let info = run_ok(
                Command::new("skopeo")
                    .args(["inspect", "--raw"])
                    .arg(format!("{transport}:{}", tar.display())),
            );
            assert!(info.contains("\"layers\""), "{transport}: {info}");
        }
        // The OCI side carries the manifest byte for byte: its digest is ours.
        let inspect = run_ok(
            Command::new("skopeo")
                .arg("inspect")
                .arg(format!("oci:{}:{name}", out.join("oci").display())),
        );
        assert!(
            inspect.contains(&digest),
            "oci layout digest mismatch for {name}: {inspect}"
        );
        let inspect = run_ok(
            Command::new("skopeo")
                .arg("inspect")
                .arg(format!("oci-archive:{}", tar.display())),
        );
        assert!(
            inspect.contains(&digest),
            "oci-archive digest mismatch for {name}: {inspect}"
        );
        let copy = tempfile::tempdir().unwrap();
        run_ok(
            Command::new("skopeo")
                .arg("copy")
                .arg(format!("docker-archive:{}", tar.display()))
                .arg(format!("oci:{}:x", copy.path().display())),
        );
        run_ok(
            Command::new("skopeo")
                .arg("copy")
                .arg(format!("oci-archive:{}", tar.display()))
                .arg(format!("oci:{}:y", copy.path().display())),
        );
    }

    let unpacked = tempfile::tempdir().unwrap();
    let bundle = unpacked.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:hello", out.join("oci").display()))
            .arg(&bundle),
    );
    let rootfs = bundle.join("rootfs");
    // /srv is exactly the source tree: contents, modes (normalised), symlinks,
    // hardlinks, long names, empty directories.
    let mut expected = listing(&f.path().join("layers/site"), true);
    expected.remove("");
    let mut got = listing(&rootfs.join("srv"), false);
    got.remove("");
    assert_eq!(got, expected);
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "hi\n"
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("usr/bin/hi")).unwrap(),
        Path::new("/bin/hello")
    );
    assert_eq!(mode_of(&rootfs.join("data")), 0o1777);
    assert_eq!(mode_of(&rootfs.join("tmp")), 0o1777);
    assert_eq!(mode_of(&rootfs.join("bin/hello")), 0o755);
}

#[test]
fn docker_and_podman_load_and_run_the_image() {
    require("docker");
    require("podman");
    let f = Fixture::new("hello");
    // A unique repository so parallel runs never share an engine name.
    let repo = format!("imgbuild-test/hello-{}", unique());
    let recipe = std::fs::read_to_string(f.path().join("recipes/hello.toml")).unwrap();
    std::fs::write(
        f.path().join("recipes/hello.toml"),
        format!("repository = \"{repo}\"\ntags = [\"t1\", \"t2\"]\n{recipe}"),
    )
    .unwrap();
    f.build_json(&["all"]);
    let tar = f.path().join("out/hello.tar");
    let expected = "hello from imgbuild; GREETING=hi\n/etc/motd: hi\n/srv/index.html: <h1>hello from imgbuild</h1>\n";

    let loaded = run_ok(Command::new("docker").arg("load").arg("-i").arg(&tar));
    assert!(
        loaded.contains(&format!("{repo}:t1")) && loaded.contains(&format!("{repo}:t2")),
        "{loaded}"
    );
    let ran = run_ok(
        Command::new("docker")
            .args(["run", "--rm"])
            .arg(format!("{repo}:t1")),
    );
    let _ = Command::new("docker")
        .args(["rmi", "-f"])
        .arg(format!("{repo}:t1"))
        .arg(format!("{repo}:t2"))
        .output();
    assert_eq!(ran, expected);

    let loaded = run_ok(Command::new("podman").arg("load").arg("-i").arg(&tar));
    assert!(loaded.contains(&format!("{repo}:t1")), "{loaded}");
    let ran = run_ok(
        Command::new("podman")
            .args(["run", "--rm", "--runtime", "runc"])
            .arg(format!("localhost/{repo}:t1")),
    );
    let _ = Command::new("podman")
        .args(["rmi", "-f"])
        .arg(format!("localhost/{repo}:t1"))
        .output();
    assert_eq!(ran, expected);
}
