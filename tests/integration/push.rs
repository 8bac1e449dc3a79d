//! `imgbuild push` against a real registry process (the CNCF distribution
//! registry on 127.0.0.1), read back by skopeo and pulled by Docker.

use std::process::Command;

use serde_json::Value;

use crate::support::*;

fn push_json(cmd: &mut Command, args: &[&str]) -> Value {
    let out = run_ok(cmd.args(["--json", "push"]).args(args));
    serde_json::from_str::<Value>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))["push"].clone()
}

fn outcomes(report: &Value) -> Vec<(String, String, String)> {
    let mut v = vec![];
    for img in report["images"].as_array().unwrap() {
        for b in img["blobs"].as_array().unwrap() {
            v.push((
                img["reference"].as_str().unwrap().to_owned(),
                b["digest"].as_str().unwrap().to_owned(),
                b["outcome"].as_str().unwrap().to_owned(),
            ));
        }
    }
    v
}

#[test]
fn push_sends_only_what_is_missing_and_an_engine_runs_the_result() {
    require("skopeo");
    let reg = Registry::start();
    let f = Fixture::new("hello");
    let built = f.build_json(&["all"]);
    let prefix = format!("{}/ci", reg.addr);
    let first = push_json(&mut f.cmd(), &["--registry", &prefix, "--tag", "sha-1"]);
    assert!(
        first["bytes_uploaded"].as_u64().unwrap() > 300_000,
        "{first}"
    );
    // The pushed manifests are the local bytes: same digests, read back by skopeo.
    for (name, digest) in digests(&built) {
        let raw = run_ok(
            Command::new("skopeo")
                .args(["inspect", "--tls-verify=false", "--raw"])
                .arg(format!("docker://{prefix}/{name}:sha-1")),
        );
        let remote = format!("sha256:{}", hex_sha256(raw.as_bytes()));
        assert_eq!(remote, digest, "{name}");
        let copy = tempfile::tempdir().unwrap();
        run_ok(
            Command::new("skopeo")
                .args(["copy", "--src-tls-verify=false"])
                .arg(format!("docker://{prefix}/{name}:latest"))
                .arg(format!("oci:{}:x", copy.path().display())),
        );
    }
    // hello's first layer is base's: mounted or shared, never uploaded twice.
    let base_layer = layers_of(&built, "base")[0].0.clone();
    let uploads = outcomes(&first)
        .into_iter()
        .filter(|(_, d, o)| *d == base_layer && o == "uploaded")
        .count();
    assert_eq!(uploads, 1, "{first}");

    // Nothing changed: nothing is uploaded.
    let second = push_json(&mut f.cmd(), &["--registry", &prefix]);
    assert_eq!(second["bytes_uploaded"], 0, "{second}");

    // One file changed: exactly one layer is uploaded (plus the new config).
    std::fs::write(f.path().join("layers/site/index.html"), "<h1>v2</h1>\n").unwrap();
    let rebuilt = f.build_json(&["all"]);
    let third = push_json(&mut f.cmd(), &["--registry", &prefix]);
    let layer_uploads: Vec<_> = outcomes(&third)
        .into_iter()
        .filter(|(_, d, o)| {
            o == "uploaded" && layers_of(&rebuilt, "hello").iter().any(|(l, _)| l == d)
        })
        .collect();
    assert_eq!(layer_uploads.len(), 1, "{third}");

    // A pushed image used as `from` (by tag) by another recipe builds and runs;
    // the tag's digest is recorded in imgbuild.lock.
    let d = Fixture::new("hello");
    std::fs::write(
        d.path().join("recipes/derived.toml"),
        format!("from = \"{prefix}/hello:latest\"\n[config]\ncmd = [\"-f\", \"/etc/derived\", \"-f\", \"/srv/index.html\"]\n[[layers]]\nfiles = [ {{ dest = \"/etc/derived\", content = \"derived\\n\" }} ]\n"),
    )
    .unwrap();
    let derived = d.build_json(&["build", "derived"]);
    let lock = std::fs::read_to_string(d.path().join("imgbuild.lock")).unwrap();
    assert!(
        lock.contains(&format!("reference = \"{prefix}/hello:latest\"")),
        "{lock}"
    );
    let dl = layers_of(&derived, "derived");
    assert_eq!(dl.len(), 3);
    assert_eq!(
        dl[..2].iter().map(|l| &l.0).collect::<Vec<_>>(),
        layers_of(&rebuilt, "hello")
            .iter()
            .map(|l| &l.0)
            .collect::<Vec<_>>()
    );
    let img = DockerImage::load(&d.path().join("out/derived.tar"), "derived");
    let ran = run_ok(Command::new("docker").args(["run", "--rm", &img.0]));
    assert!(
        ran.contains("GREETING=hi")
            && ran.contains("/etc/derived: derived")
            && ran.contains("/srv/index.html: <h1>v2</h1>"),
        "{ran}"
    );
    // Locked and cached: builds again with the registry gone.
    drop(img);

    // A real engine pulls and runs it.
    let image = format!("{prefix}/hello:latest");
    run_ok(Command::new("docker").args(["pull", "-q", &image]));
    let ran = run_ok(Command::new("docker").args(["run", "--rm", &image]));
    let _ = Command::new("docker").args(["rmi", &image]).output();
    assert!(ran.contains("/srv/index.html: <h1>v2</h1>"), "{ran}");
}

#[test]
fn the_venv_layers_go_up_once_for_app_and_worker() {
    let s = stack();
    let reg = Registry::start();
    let report = push_json(
        Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .arg("-C")
            .arg(repo_root())
            .arg("--store")
            .arg(&s.store)
            .arg("--out")
            .arg(&s.out),
        &[
            "--registry",
            &format!("{}/stack", reg.addr),
            "app",
            "worker",
        ],
    );
    let all = outcomes(&report);
    for (venv_layer, _) in layers_of(&s.json, "venv") {
        let uploads = all
            .iter()
            .filter(|(_, d, o)| *d == venv_layer && o == "uploaded")
            .count();
        let elsewhere = all
            .iter()
            .filter(|(_, d, o)| *d == venv_layer && o != "uploaded")
            .count();
        assert_eq!(
            (uploads, elsewhere),
            (1, 2),
            "venv layer {venv_layer} in {report}"
        );
    }
}

#[test]
fn push_errors_are_clear_and_keep_secrets_out() {
    let f = Fixture::new("hello");
    // nothing built yet
    let out = f.run(&["push", "--registry", "127.0.0.1:9/x"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has not been built"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.build_json(&["all"]);
    // a registry that is not there: a clear error naming it, after retries
    let port = free_port();
    let out = f
        .cmd()
        .env("IMGBUILD_REGISTRY_USER", "u")
        .env("IMGBUILD_REGISTRY_PASSWORD", "hunter2-secret")
        .args(["push", "--registry", &format!("127.0.0.1:{port}/x")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("hunter2-secret"), "{err}");
}

fn hex_sha256(b: &[u8]) -> String {
    let o = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    o.stdin.as_ref().unwrap().write_all(b).unwrap();
    let out = o.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}
