//! Files copied out of another recipe's image (`files = [{ image, src, dest }]`):
//! built from `fixtures/copy` (image `a` has an executable, a symlink, a file and a
//! sticky directory owned by a declared user; `b` copies `/app` out of it) and read
//! back with the system's `tar`, not our own reader. The test adds a second layer to
//! `a` from an archive with a hard link.

use std::fs;
use std::process::Command;

use serde_json::Value;

use crate::support::*;

fn image<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no image {name} in {json}"))
}

fn blob(f: &Fixture, digest: &Value) -> std::path::PathBuf {
    f.store
        .join("blobs/sha256")
        .join(digest.as_str().unwrap().trim_start_matches("sha256:"))
}

/// `tar -tv` of the first layer of image `name`, one space between fields.
fn listing(f: &Fixture, json: &Value, name: &str) -> String {
    let out = run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-tvzf"])
            .arg(blob(f, &image(json, name)["layers"][0]["digest"])),
    );
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn files_copied_out_of_an_image_keep_its_modes_owners_and_links_and_follow_its_changes() {
    require("tar");
    let f = Fixture::new("copy");
    // a second layer of `a`, from an archive `tar` writes with a hard link in it
    let src = tempfile::tempdir().unwrap();
    fs::create_dir_all(src.path().join("x")).unwrap();
    fs::write(src.path().join("x/one"), "same\n").unwrap();
    fs::hard_link(src.path().join("x/one"), src.path().join("x/two")).unwrap();
    fs::create_dir_all(f.path().join("vendor")).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-czf")
            .arg(f.path().join("vendor/x.tar.gz"))
            .arg("-C")
            .arg(src.path())
            .arg("x"),
    );
    let a = f.path().join("recipes/a.toml");
    let recipe = fs::read_to_string(&a).unwrap();
    fs::write(
        &a,
        format!("{recipe}\n[[layers]]\narchive = {{ src = \"vendor/x.tar.gz\", dest = \"/app/links\", strip_components = 1 }}\n"),
    )
    .unwrap();
    let first = f.build_json(&["build", "b"]);
    let list = listing(&f, &first, "b");
    for want in [
        "drwxr-xr-x 0/0 0 1970-01-01 00:00 srv/app/",
        "-rwxr-xr-x 0/0 19 1970-01-01 00:00 srv/app/bin/run",
        "-rw-r--r-- 0/0 7 1970-01-01 00:00 srv/app/static/app.css",
        "-rw-r--r-- 1000/1000 13 1970-01-01 00:00 srv/app/static/data.txt",
        "lrwxrwxrwx 0/0 0 1970-01-01 00:00 srv/app/static/latest.css -> app.css",
        "drwxrwxrwt 1000/1000 0 1970-01-01 00:00 srv/app/static/uploads/",
        "-rw-r--r-- 0/0 5 1970-01-01 00:00 srv/app/links/one",
        "hrw-r--r-- 0/0 0 1970-01-01 00:00 srv/app/links/two link to srv/app/links/one",
    ] {
        assert!(list.contains(want), "`{want}` not in:\n{list}");
    }
    // only the copied tree (and its parent): not a's accounts
    assert!(!list.contains("etc/"), "{list}");
    let b_layer = blob(&f, &image(&first, "b")["layers"][0]["digest"]);
    let bytes = run_ok(
        Command::new("tar")
            .arg("-xOzf")
            .arg(&b_layer)
            .arg("srv/app/static/data.txt"),
    );
    assert_eq!(bytes, "owned by web\n");

    // nothing changed: cached
    let again = f.build_json(&["build", "b"]);
    assert_eq!(image(&again, "b")["layers"][0]["cached"], true, "{again}");
    assert_eq!(
        image(&again, "b")["manifest_digest"],
        image(&first, "b")["manifest_digest"]
    );

    // a file of `a` changed: b's layer is rebuilt, naming the image, with the new bytes
    fs::write(f.path().join("layers/app/bin/run"), "#!/bin/sh\necho v2\n").unwrap();
    let changed = f.build_json(&["build", "b"]);
    let b = image(&changed, "b");
    assert_eq!(b["layers"][0]["cached"], false, "{changed}");
    assert_eq!(b["layers"][0]["reason"][0], "image a changed", "{changed}");
    let run = run_ok(
        Command::new("tar")
            .arg("-xOzf")
            .arg(blob(&f, &b["layers"][0]["digest"]))
            .arg("srv/app/bin/run"),
    );
    assert_eq!(run, "#!/bin/sh\necho v2\n");
    let list = listing(&f, &changed, "b");
    assert!(
        list.contains("-rwxr-xr-x 0/0 18 1970-01-01 00:00 srv/app/bin/run"),
        "{list}"
    );
}

#[test]
fn a_copy_from_an_unknown_image_or_a_missing_path_is_an_error_naming_it() {
    let f = Fixture::new("copy");
    let b = f.path().join("recipes/b.toml");
    let write = |line: &str| fs::write(&b, format!("[[layers]]\nfiles = [ {line} ]\n")).unwrap();

    write(r#"{ image = "nope", src = "/app", dest = "/srv" }"#);
    let out = f.run(&["build", "b"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("recipes/b.toml:2:")
            && err.contains("unknown image `nope`")
            && err.contains("a"),
        "{err}"
    );

    write(r#"{ image = "a", src = "/app/missing", dest = "/srv" }"#);
    let out = f.run(&["build", "b"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("recipes/b.toml:2:")
            && err.contains(r#"src "/app/missing" is not in image `a`"#),
        "{err}"
    );

    write(r#"{ image = "a", src = "app", dest = "/srv" }"#);
    let err = String::from_utf8_lossy(&f.run(&["build", "b"]).stderr).into_owned();
    assert!(
        err.contains("must be an absolute path in the image"),
        "{err}"
    );

    write(r#"{ image = "docker.io/library/nginx:1.25", src = "/etc", dest = "/srv" }"#);
    let err = String::from_utf8_lossy(&f.run(&["build", "b"]).stderr).into_owned();
    assert!(err.contains("is not a recipe name"), "{err}");

    write(r#"{ image = "a", src = "/app/bin/run", dest = "/srv/run", mode = "0700" }"#);
    let err = String::from_utf8_lossy(&f.run(&["build", "b"]).stderr).into_owned();
    assert!(err.contains("keep that image's modes"), "{err}");
}
