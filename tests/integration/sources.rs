//! Layer sources beyond the fixture's files: the `archive` source, checked by
//! building from archives the system's `tar` writes and reading the layer back with
//! `tar` (not our own reader).

use std::fs;
use std::process::Command;

use crate::support::*;

/// A project with `vendor/app.tar.*` made by `tar` from a tree with owners and times
/// that must not reach the image.
fn project_with_archive(compress: &str, mtime: &str, owner: &str) -> Fixture {
    require("tar");
    let f = Fixture::new("hello");
    let src = tempfile::tempdir().unwrap();
    let app = src.path().join("app-1.0");
    fs::create_dir_all(app.join("bin")).unwrap();
    fs::create_dir_all(app.join("share")).unwrap();
    fs::write(app.join("bin/run"), "#!/bin/sh\necho run\n").unwrap();
    fs::write(app.join("share/doc.txt"), "doc\n").unwrap();
    std::os::unix::fs::symlink("doc.txt", app.join("share/link")).unwrap();
    fs::hard_link(app.join("share/doc.txt"), app.join("share/same.txt")).unwrap();
    run_ok(
        Command::new("chmod")
            .args(["0755"])
            .arg(app.join("bin/run")),
    );
    run_ok(Command::new("chmod").args(["4750"]).arg(app.join("bin")));
    fs::create_dir_all(f.path().join("vendor")).unwrap();
    let archive = f.path().join(format!("vendor/app.tar{compress}"));
    let flag = match compress {
        ".gz" => "-z",
        ".xz" => "-J",
        ".zst" => "--zstd",
        _ => "-f-",
    };
    let mut tar = Command::new("tar");
    tar.arg("-C")
        .arg(src.path())
        .args(["--mtime", mtime, "--owner", owner, "--group", owner, "-c"]);
    if flag != "-f-" {
        tar.arg(flag);
    }
    run_ok(tar.arg("-f").arg(&archive).arg("app-1.0"));
    fs::write(
        f.path().join("recipes/vendored.toml"),
        format!(
            "[[layers]]\narchive = {{ src = \"vendor/app.tar{compress}\", dest = \"/opt/app\", strip_components = 1 }}\n"
        ),
    )
    .unwrap();
    f
}

fn layer_listing(f: &Fixture, json: &serde_json::Value) -> String {
    let image = json["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "vendored")
        .unwrap();
    let digest = image["layers"][0]["digest"].as_str().unwrap();
    let blob = f
        .store
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let listing = run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "--full-time", "-tvzf"])
            .arg(blob),
    );
    // columns are padded: one space between fields
    listing
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn an_archive_is_unpacked_reproducibly_whatever_its_compression_owners_and_times() {
    let a = project_with_archive(".gz", "2020-01-01", "1234");
    let ja = a.build_json(&["build", "vendored"]);
    let listing = layer_listing(&a, &ja);
    for want in [
        "drwsr-x--- 0/0 0 1970-01-01 00:00:00 opt/app/bin/",
        "-rwxr-xr-x 0/0 19 1970-01-01 00:00:00 opt/app/bin/run",
        "-rw-r--r-- 0/0 4 1970-01-01 00:00:00 opt/app/share/doc.txt",
        "lrwxrwxrwx 0/0 0 1970-01-01 00:00:00 opt/app/share/link -> doc.txt",
        "hrw-r--r-- 0/0 0 1970-01-01 00:00:00 opt/app/share/same.txt link to opt/app/share/doc.txt",
    ] {
        assert!(listing.contains(want), "`{want}` not in:\n{listing}");
    }
    assert!(!listing.contains("app-1.0"), "{listing}");

    // the same tree with other times, owners and compression: the same layer
    for (compress, mtime, owner) in [
        (".xz", "2024-06-01", "0"),
        (".zst", "2001-02-03", "42"),
        ("", "1999-12-31", "7"),
    ] {
        let b = project_with_archive(compress, mtime, owner);
        let jb = b.build_json(&["build", "vendored"]);
        assert_eq!(
            ja["images"][0]["layers"][0]["digest"],
            jb["images"][0]["layers"][0]["digest"],
            "{compress}: {}",
            layer_listing(&b, &jb)
        );
    }

    // unchanged: cached; changed: rebuilt, saying why
    let again = a.build_json(&["build", "vendored"]);
    assert_eq!(again["images"][0]["layers"][0]["cached"], true);
    fs::write(a.path().join("vendor/other"), "x").unwrap();
    run_ok(
        Command::new("tar")
            .arg("-czf")
            .arg(a.path().join("vendor/app.tar.gz"))
            .arg("-C")
            .arg(a.path().join("vendor"))
            .arg("other"),
    );
    let changed = a.build_json(&["build", "vendored"]);
    assert_eq!(
        changed["images"][0]["layers"][0]["reason"][0], "vendor/app.tar.gz changed",
        "{changed}"
    );
}

#[test]
fn an_archive_entry_that_leaves_dest_is_refused_naming_it() {
    require("python3");
    let f = Fixture::new("hello");
    fs::create_dir_all(f.path().join("vendor")).unwrap();
    let archive = f.path().join("vendor/evil.tar");
    run_ok(Command::new("python3").arg("-c").arg(format!(
        "import tarfile, io\nt = tarfile.open('{}', 'w')\ni = tarfile.TarInfo('../../etc/evil'); i.size = 1\nt.addfile(i, io.BytesIO(b'x'))\nt.close()",
        archive.display()
    )));
    fs::write(
        f.path().join("recipes/evil.toml"),
        "[[layers]]\narchive = { src = \"vendor/evil.tar\", dest = \"/opt\" }\n",
    )
    .unwrap();
    let out = f.run(&["build", "evil"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("recipes/evil.toml:2:11: archive \"vendor/evil.tar\": entry ../../etc/evil leaves the archive's directory (`..`)"),
        "{err}"
    );
}
