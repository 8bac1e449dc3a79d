//! Images for several platforms (`[build] platforms`) through the real binary, on
//! `fixtures/platforms`: recipe `tiny` (a static busybox from Debian, one small
//! `.deb` per architecture, and a layer of files) for linux/amd64 and linux/arm64,
//! and `armonly`, built `from` it for arm64 alone (a recipe's `platforms`).
//!
//! Checked with independent tools: skopeo reads the image index in `out/oci/` and
//! in `out/NAME.tar`, podman loads the tarball, `docker load` (Docker 20.10 reads
//! `manifest.json`) gets the build machine's platform, `imgbuild load --platform
//! linux/arm64` puts the arm64 image in the engine and `docker run --platform
//! linux/arm64` runs it under emulation (`uname -m` = `aarch64`); a push to a real
//! registry followed by `skopeo copy --override-arch arm64` gets the arm64 image.

use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::support::*;

/// `fixtures/platforms` built once (`all --json`) for the tests that only read it.
fn built() -> &'static (Fixture, Value) {
    static BUILT: OnceLock<(Fixture, Value)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let f = Fixture::new("platforms");
        let json = f.build_json(&["all"]);
        (f, json)
    })
}

fn image<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no image {name} in {json:#}"))
}

/// The per-platform entries of an image in the build report: platform -> entry.
fn platforms_of(json: &Value, name: &str) -> Vec<(String, Value)> {
    image(json, name)["platforms"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} has no platforms: {json:#}"))
        .iter()
        .map(|p| (p["platform"].as_str().unwrap().to_owned(), p.clone()))
        .collect()
}

fn layer_digests(entry: &Value) -> Vec<String> {
    entry["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// `(os/architecture[/variant], digest)` of every manifest of an image index.
fn index_platforms(raw: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
    assert_eq!(
        v["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{raw}"
    );
    v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut name = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                name.push('/');
                name.push_str(v);
            }
            (name, m["digest"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn two_platforms_make_one_index_and_share_the_files_layer() {
    let (f, json) = built();
    let tiny = platforms_of(json, "tiny");
    let names: Vec<&str> = tiny.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["linux/amd64", "linux/arm64"], "{json:#}");
    let (amd, arm) = (layer_digests(&tiny[0].1), layer_digests(&tiny[1].1));
    assert_eq!(amd.len(), 2);
    // the Debian layer is each architecture's; the files layer is one blob
    assert_ne!(
        amd[0], arm[0],
        "the busybox layers must differ by architecture"
    );
    assert_eq!(amd[1], arm[1], "the files layer must be the same blob");
    assert_ne!(tiny[0].1["manifest_digest"], tiny[1].1["manifest_digest"]);
    // the image's own fields are the build machine's platform's (docker load gets it)
    assert_eq!(
        image(json, "tiny")["manifest_digest"],
        tiny[0].1["manifest_digest"]
    );
    let index_digest = image(json, "tiny")["index_digest"].as_str().unwrap();

    // out/oci: the name points at the index, both platforms in it (skopeo)
    require("skopeo");
    let oci = format!("oci:{}/out/oci:tiny", f.path().display());
    let raw = run_ok(Command::new("skopeo").args(["inspect", "--raw", &oci]));
    let in_index = index_platforms(&raw);
    assert_eq!(
        in_index,
        vec![
            (
                "linux/amd64".to_owned(),
                tiny[0].1["manifest_digest"].as_str().unwrap().to_owned()
            ),
            (
                "linux/arm64/v8".to_owned(),
                tiny[1].1["manifest_digest"].as_str().unwrap().to_owned()
            ),
        ]
    );
    for (arch, want) in [("amd64", "amd64"), ("arm64", "arm64")] {
        let config: Value = serde_json::from_str(&run_ok(Command::new("skopeo").args([
            "inspect",
            "--config",
            "--override-arch",
            arch,
            &oci,
        ])))
        .unwrap();
        assert_eq!(config["architecture"], want, "{config:#}");
        assert_eq!(config["os"], "linux");
    }
    // a recipe narrowed to arm64: an index of one platform
    let armonly = platforms_of(json, "armonly");
    assert_eq!(armonly.len(), 1);
    assert_eq!(armonly[0].0, "linux/arm64");
    // built from tiny's arm64 image
    assert_eq!(layer_digests(&armonly[0].1)[..2], arm[..]);

    // out/tiny.tar: skopeo reads the index in it (oci-archive) and Docker's
    // manifest.json (docker-archive), which names the build machine's platform
    let tar = f.path().join("out/tiny.tar");
    let raw = run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        &format!("oci-archive:{}", tar.display()),
    ]));
    assert_eq!(index_platforms(&raw).len(), 2, "{raw}");
    assert_eq!(
        serde_json::from_str::<Value>(&raw).unwrap()["manifests"][1]["digest"],
        tiny[1].1["manifest_digest"]
    );
    let docker_archive: Value = serde_json::from_str(&run_ok(
        Command::new("skopeo").args(["inspect", &format!("docker-archive:{}", tar.display())]),
    ))
    .unwrap();
    assert_eq!(docker_archive["Architecture"], "amd64");

    // the lock pins each architecture's packages
    let lock = std::fs::read_to_string(f.path().join("imgbuild.lock")).unwrap();
    assert!(
        lock.contains("arch = \"arm64\"") && lock.contains("architecture = \"arm64\""),
        "{lock}"
    );
    assert!(lock.contains("architecture = \"amd64\""), "{lock}");

    // inspect shows the index and each platform
    let shown = run_ok(f.cmd().args(["inspect", "tiny"]));
    assert!(shown.contains(index_digest), "{shown}");
    assert!(
        shown.contains("platforms  linux/amd64, linux/arm64")
            && shown.contains("platform   linux/arm64"),
        "{shown}"
    );

    // a second build changes nothing: every layer cached, same index
    let again = f.build_json(&["all"]);
    assert_eq!(image(&again, "tiny")["index_digest"], index_digest);
    for (_, p) in platforms_of(&again, "tiny") {
        assert!(
            p["layers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["cached"] == true)
        );
    }
}

#[test]
fn podman_loads_the_tarball() {
    let (f, _) = built();
    require("podman");
    let out = run_ok(
        Command::new("podman")
            .args(["load", "-i"])
            .arg(f.path().join("out/tiny.tar")),
    );
    assert!(out.contains("imgbuild/tiny"), "{out}");
    let arch = run_ok(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Architecture}}",
        "imgbuild/tiny:latest",
    ]));
    let _ = Command::new("podman")
        .args(["rmi", "imgbuild/tiny:latest"])
        .output();
    assert_eq!(arch.trim(), "amd64");
}

#[test]
fn docker_runs_each_platform_loaded() {
    require("docker");
    // its own copy, named so that no other test's or developer's image is touched
    let f = Fixture::new("platforms");
    let repo = format!("imgbuild-test/platforms-{}", unique());
    let recipe = f.path().join("recipes/tiny.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(&recipe, format!("repository = \"{repo}\"\n{text}")).unwrap();
    run_ok(f.cmd().args(["all"]));
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rmi", &self.0]).output();
        }
    }
    let reference = format!("{repo}:latest");
    let _remove = Remove(reference.clone());
    let run = |platform: &str| {
        run_ok(Command::new("docker").args(["run", "--rm", "--platform", platform, &reference]))
            .trim()
            .to_owned()
    };

    // docker load of out/NAME.tar: the build machine's platform
    run_ok(
        Command::new("docker")
            .args(["load", "-q", "-i"])
            .arg(f.path().join("out/tiny.tar")),
    );
    assert_eq!(run("linux/amd64"), "x86_64");

    // imgbuild load --platform linux/arm64: the arm64 image, run under emulation
    let loaded = run_ok(f.cmd().args([
        "--json",
        "load",
        "tiny",
        "--engine",
        "docker",
        "--platform",
        "linux/arm64",
    ]));
    assert!(loaded.contains("\"loaded\""), "{loaded}");
    assert_eq!(run("linux/arm64"), "aarch64");
    let greeting = run_ok(Command::new("docker").args([
        "run",
        "--rm",
        "--platform",
        "linux/arm64",
        &reference,
        "cat",
        "/etc/greeting",
    ]));
    assert_eq!(greeting, "hello from every platform\n");
    assert!(f.path().join("out/tiny.linux-arm64.tar").is_file());

    // and back to amd64
    run_ok(f.cmd().args([
        "load",
        "tiny",
        "--engine",
        "docker",
        "--platform",
        "linux/amd64",
    ]));
    assert_eq!(run("linux/amd64"), "x86_64");

    // a platform the image was not built for is a clear error
    let out = f.run(&[
        "load",
        "armonly",
        "--engine",
        "docker",
        "--platform",
        "linux/amd64",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not built for linux/amd64"), "{err}");
}

#[test]
fn push_sends_the_index_and_skopeo_copies_the_arm64_image() {
    let (f, json) = built();
    let registry = Registry::start();
    let prefix = format!("{}/plat", registry.addr);
    let pushed: Value = serde_json::from_str(&run_ok(f.cmd().args([
        "--json",
        "push",
        "tiny",
        "--registry",
        &prefix,
    ])))
    .unwrap();
    // every platform's manifest, untagged; then the index, tagged
    let images = pushed["push"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{pushed:#}");
    assert!(
        images
            .iter()
            .all(|i| i["tags"].as_array().unwrap().is_empty())
    );
    let indexes = pushed["push"]["indexes"].as_array().unwrap();
    assert_eq!(indexes.len(), 1);
    assert_eq!(indexes[0]["digest"], image(json, "tiny")["index_digest"]);
    assert_eq!(indexes[0]["tags"], serde_json::json!(["latest"]));

    require("skopeo");
    let remote = format!("docker://{prefix}/tiny:latest");
    let raw =
        run_ok(Command::new("skopeo").args(["inspect", "--tls-verify=false", "--raw", &remote]));
    let names: Vec<String> = index_platforms(&raw).into_iter().map(|(p, _)| p).collect();
    assert_eq!(names, ["linux/amd64", "linux/arm64/v8"]);
    let dest = tempfile::tempdir().unwrap();
    run_ok(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--override-arch",
        "arm64",
        &remote,
        &format!("oci:{}:arm", dest.path().display()),
    ]));
    let config: Value = serde_json::from_str(&run_ok(Command::new("skopeo").args([
        "inspect",
        "--config",
        &format!("oci:{}:arm", dest.path().display()),
    ])))
    .unwrap();
    assert_eq!(config["architecture"], "arm64", "{config:#}");
    assert_eq!(config["variant"], "v8");

    // a registry base with an index is resolved per platform: a project built
    // `from` the pushed index gets each platform's own layers below its own
    let proj = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(proj.path().join("recipes")).unwrap();
    std::fs::write(
        proj.path().join("imgbuild.toml"),
        "[build]\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\n",
    )
    .unwrap();
    std::fs::write(
        proj.path().join("recipes/onbase.toml"),
        format!(
            "from = \"{prefix}/tiny:latest\"\n\n[[layers]]\nfiles = [ {{ dest = \"/etc/on-base\", content = \"yes\\n\" }} ]\n"
        ),
    )
    .unwrap();
    let on_base: Value = serde_json::from_str(&run_ok(
        Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .arg("-C")
            .arg(proj.path())
            .arg("--store")
            .arg(store.path())
            .args(["--json", "all"]),
    ))
    .unwrap();
    let per = platforms_of(&on_base, "onbase");
    let tiny = platforms_of(json, "tiny");
    for ((p, entry), (tp, tiny_entry)) in per.iter().zip(&tiny) {
        assert_eq!(p, tp);
        let layers = layer_digests(entry);
        assert_eq!(
            layers[..2],
            layer_digests(tiny_entry)[..],
            "{p}: {on_base:#}"
        );
    }
    assert_eq!(layer_digests(&per[0].1)[2], layer_digests(&per[1].1)[2]);
    let lock = std::fs::read_to_string(proj.path().join("imgbuild.lock")).unwrap();
    assert!(
        lock.contains(image(json, "tiny")["index_digest"].as_str().unwrap()),
        "the tag is locked to the index: {lock}"
    );

    // an unchanged push sends nothing
    let again: Value = serde_json::from_str(&run_ok(f.cmd().args([
        "--json",
        "push",
        "tiny",
        "--registry",
        &prefix,
    ])))
    .unwrap();
    assert_eq!(again["push"]["bytes_uploaded"], 0, "{again:#}");
}

#[test]
fn platform_subsets_and_bad_platforms() {
    let f = Fixture::new("platforms");
    // `imgbuild lock` pins every platform's packages
    run_ok(f.cmd().arg("lock"));
    let lock_path = f.path().join("imgbuild.lock");
    let locked = std::fs::read_to_string(&lock_path).unwrap();
    assert!(
        locked.contains("architecture = \"amd64\"") && locked.contains("arch = \"arm64\""),
        "{locked}"
    );
    // --platform: arm64 only, for every recipe
    let json = f.build_json(&["all", "--locked", "--platform", "linux/arm64"]);
    // (a build of some platforms keeps the others' pins)
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), locked);
    for name in ["tiny", "armonly"] {
        let ps: Vec<String> = platforms_of(&json, name)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(ps, ["linux/arm64"], "{name}: {json:#}");
    }
    let plan = run_ok(f.cmd().args(["plan", "--platform", "linux/amd64", "tiny"]));
    assert!(
        plan.contains("tiny linux/amd64 (recipes/tiny.toml)"),
        "{plan}"
    );
    assert!(!plan.contains("linux/arm64"), "{plan}");

    let fails = |args: &[&str]| {
        let out = f.run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // an unknown platform on the command line
    let err = fails(&["build", "tiny", "--platform", "linux/s390x"]);
    assert!(
        err.contains("--platform: unknown platform `linux/s390x`")
            && err.contains("linux/amd64, linux/arm64"),
        "{err}"
    );
    // `build armonly --platform linux/amd64`: the recipe is arm64 only
    let err = fails(&["build", "armonly", "--platform", "linux/amd64"]);
    assert!(
        err.contains("recipes/armonly.toml") && err.contains("none of the platforms"),
        "{err}"
    );

    // a recipe naming an unknown platform: its file and line
    let recipe = f.path().join("recipes/armonly.toml");
    let good = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        good.replace("\"linux/arm64\"]", "\"linux/riscv64\"]"),
    )
    .unwrap();
    let err = fails(&["plan"]);
    assert!(
        err.contains("recipes/armonly.toml:3:") && err.contains("unknown platform `linux/riscv64`"),
        "{err}"
    );
    std::fs::write(&recipe, &good).unwrap();

    // a recipe platform the project does not build: its file and line
    std::fs::write(
        f.path().join("imgbuild.toml"),
        "[build]\nplatforms = [\"linux/amd64\"]\n",
    )
    .unwrap();
    let err = fails(&["build", "armonly"]);
    assert!(
        err.contains("recipes/armonly.toml:3:")
            && err.contains("`linux/arm64` is not one of the project's platforms (linux/amd64)"),
        "{err}"
    );
    // --platform outside the project's list
    let err = fails(&["build", "tiny", "--platform", "linux/arm64"]);
    assert!(err.contains("not one of the project's platforms"), "{err}");

    // imgbuild.toml naming an unknown platform: its line
    std::fs::write(
        f.path().join("imgbuild.toml"),
        "[build]\nplatforms = [\n  \"linux/amd64\",\n  \"windows/amd64\",\n]\n",
    )
    .unwrap();
    let err = fails(&["plan"]);
    assert!(
        err.contains("imgbuild.toml:4:") && err.contains("unknown platform `windows/amd64`"),
        "{err}"
    );
}

/// A build step runs natively for the build machine's platform and under qemu's
/// user-mode emulation for arm64, and says so only then: each platform's step writes
/// its own `uname -m` (the builder image is `tiny`, busybox, of that platform).
#[test]
fn a_build_step_for_arm64_runs_under_emulation_and_says_so() {
    let f = Fixture::new("platforms");
    std::fs::write(
        f.path().join("recipes/machine.toml"),
        r#"from = "scratch"

[[layers]]
build = { image = "tiny", command = ["/bin/busybox", "sh", "-c", "/bin/busybox uname -m > /out/machine"],
          outputs = [ { path = "/out", dest = "/etc/build" } ] }
"#,
    )
    .unwrap();
    let o = f.run(&["build", "machine"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // one line for the arm64 step, none for amd64's
    let emulated: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("runs under emulation (qemu-aarch64)"))
        .collect();
    assert_eq!(emulated.len(), 1, "{stderr}");
    // the files each platform's step wrote: its own machine
    let tar = f.path().join("out/machine.tar");
    for (platform, want) in [("amd64", "x86_64\n"), ("arm64", "aarch64\n")] {
        let dir = tempfile::tempdir().unwrap();
        skopeo_copy_arch(&tar, platform, &format!("dir:{}", dir.path().display()));
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("manifest.json")).unwrap(),
        )
        .unwrap();
        let layer = manifest["layers"][0]["digest"].as_str().unwrap();
        let blob = dir.path().join(layer.trim_start_matches("sha256:"));
        let machine = run_ok(
            Command::new("tar")
                .arg("-xzOf")
                .arg(&blob)
                .arg("etc/build/machine"),
        );
        assert_eq!(machine, want, "{platform}");
    }
}
