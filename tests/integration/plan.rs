//! `imgbuild plan` and `--expect-cached`: every layer's cache state and why it is
//! built, from the real binary on a fixture with a Debian layer, a files layer and an
//! image built from them.

use std::fs;

use crate::cli_output::{normalise, snapshot};
use crate::support::*;

/// The fixture's lock with netbase pinned to another version (and .deb): planning
/// needs no download, so the pin need not exist in the archive.
fn with_other_netbase(lock: &str) -> String {
    lock.lines()
        .map(|l| {
            if l.contains("name = \"netbase\"") {
                let v = l.find("version = \"").expect("version") + "version = \"".len();
                let end = v + l[v..].find('"').unwrap();
                let s = l.find("sha256 = \"sha256:").expect("sha256") + "sha256 = \"sha256:".len();
                format!(
                    "{}0.0-test{}{}{}",
                    &l[..v],
                    &l[end..s],
                    "0".repeat(64),
                    &l[s + 64..]
                )
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn plan_names_each_layers_state_and_reason() {
    let f = Fixture::new("plan");
    run_ok(f.cmd().arg("lock"));
    let mut doc = String::new();
    let mut plan = |title: &str| {
        let json = run_ok(f.cmd().args(["--json", "plan"]));
        doc.push_str(&format!("== {title}\n{}", normalise(&json, f.path())));
    };
    plan("cold store");
    // a plan builds and writes nothing: no out/, no layer blob
    assert!(!f.path().join("out").exists());
    run_ok(f.cmd().arg("all"));
    plan("warm store");

    fs::write(f.path().join("layers/app/app.txt"), "app v2\n").unwrap();
    plan("one file changed");
    run_ok(f.cmd().arg("all"));

    let lock_path = f.path().join("imgbuild.lock");
    let lock = fs::read_to_string(&lock_path).unwrap();
    fs::write(&lock_path, with_other_netbase(&lock)).unwrap();
    plan("one package version changed");
    fs::write(&lock_path, &lock).unwrap();

    let recipe = f.path().join("recipes/base.toml");
    let text = fs::read_to_string(&recipe).unwrap();
    fs::write(
        &recipe,
        text.replace(
            "base = false }",
            "base = false, remove_paths = [\"/etc/services\"] }",
        ),
    )
    .unwrap();
    plan("lower layer changed");
    snapshot("plan", &doc);

    // the build says the same, and the files layer above turns out unchanged
    let json = f.build_json(&["all"]);
    let base = json["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "base")
        .unwrap();
    let reason = base["layers"][0]["reason"][0].as_str().unwrap();
    assert!(
        reason.starts_with("debian options ")
            && reason.contains(r#""remove_paths":["/etc/services"]"#),
        "{json}"
    );
    assert_eq!(base["layers"][1]["cached"], true, "{json}");
}

#[test]
fn expect_cached_fails_on_a_change_and_passes_on_a_no_op() {
    let f = Fixture::new("hello");
    run_ok(f.cmd().arg("all"));
    run_ok(f.cmd().args(["all", "--expect-cached"]));
    fs::write(f.path().join("layers/site/index.html"), "changed\n").unwrap();
    let out = f.run(&["build", "hello", "--expect-cached"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--expect-cached: 1 layer(s) would be built")
            && err.contains("recipes/hello.toml layer 1")
            && err.contains("layers/site/index.html changed"),
        "{err}"
    );
    // nothing was built: the tarball is the first build's
    let plan = run_ok(f.cmd().arg("plan"));
    assert!(
        plan.contains("build: layers/site/index.html changed"),
        "{plan}"
    );
}

#[test]
fn a_tree_and_a_file_at_one_destination_are_refused_naming_both() {
    let f = Fixture::new("hello");
    fs::write(
        f.path().join("recipes/bad.toml"),
        "[[layers]]\nfiles = [\n  { src = \"layers/site\", dest = \"/srv\" },\n  { content = \"x\", dest = \"/srv/index.html\" },\n]\n",
    )
    .unwrap();
    let out = f.run(&["build", "bad"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("recipes/bad.toml:4:3: layer 1 writes /srv/index.html twice: as a file from layers/site/index.html (recipes/bad.toml:3:3) and as a file from content of /srv/index.html; keep one"),
        "{err}"
    );
}
