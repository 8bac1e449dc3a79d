//! `imgbuild push` against a real registry process (the CNCF distribution
//! registry on 127.0.0.1), read back by skopeo and pulled by Docker.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::Value;
use sha2::Digest as _;

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
    drop(img);

    // A real engine pulls and runs it.
    let image = format!("{prefix}/hello:latest");
    run_ok(Command::new("docker").args(["pull", "-q", &image]));
    let ran = run_ok(Command::new("docker").args(["run", "--rm", &image]));
    let _ = Command::new("docker").args(["rmi", &image]).output();
    assert!(ran.contains("/srv/index.html: <h1>v2</h1>"), "{ran}");

    // Locked and cached: builds again with the registry gone, to the same image.
    drop(reg);
    let again = d.build_json(&["build", "--locked", "derived"]);
    assert_eq!(digests(&again), digests(&derived));
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
    // exactly the images named (venv, their base, is not pushed on its own): each
    // platform's manifest, then the two image indexes
    let refs = |key: &str| -> Vec<String> {
        report[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {report}"))
            .iter()
            .map(|i| i["reference"].as_str().unwrap().to_owned())
            .collect()
    };
    let pushed = refs("images");
    assert_eq!(pushed.len(), 4, "{report}");
    for name in ["app", "worker"] {
        let n = pushed
            .iter()
            .filter(|r| r.contains(&format!("/stack/{name}@")))
            .count();
        assert_eq!(n, 2, "{name}: one manifest per platform in {report}");
    }
    let indexes = refs("indexes");
    assert_eq!(indexes.len(), 2, "{report}");
    // every platform's venv layers: uploaded once, found there (or mounted) once
    let venv = s.json["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "venv")
        .unwrap();
    let mut checked = 0;
    for platform in venv["platforms"].as_array().unwrap() {
        for layer in platform["layers"].as_array().unwrap() {
            let venv_layer = layer["digest"].as_str().unwrap();
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
                (1, 1),
                "venv layer {venv_layer} ({}) in {report}",
                platform["platform"]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4, "two venv layers on each of two platforms");
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
    // a registry that is not there: a clear error naming it, after retries for as
    // long as the budget (IMGBUILD_RETRY_TIMEOUT) lasts, saying how many were made
    let port = free_port();
    let started = std::time::Instant::now();
    let out = f
        .cmd()
        .env("IMGBUILD_REGISTRY_USER", "u")
        .env("IMGBUILD_REGISTRY_PASSWORD", "hunter2-secret")
        .env("IMGBUILD_RETRY_TIMEOUT", "3")
        .args(["push", "--registry", &format!("127.0.0.1:{port}/x")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(
        err.contains("gave up after ") && err.contains(" attempts over 3 s"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
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

// ---------------------------------------------------------------- login, names, JSON

const USER: &str = "ci-bot";
const PASSWORD: &str = "Corr3ct-h0rse-battery";

/// A distribution registry on 127.0.0.1 with htpasswd auth and/or TLS, stopped by PID
/// when dropped.
struct AuthRegistry {
    addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl AuthRegistry {
    fn start(htpasswd: bool, tls: Option<(&Path, &Path)>) -> AuthRegistry {
        require("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut extra = String::new();
        if let Some((cert, key)) = tls {
            extra.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if htpasswd {
            let hash = bcrypt::hash_with_result(PASSWORD, 5)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoY);
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{USER}:{hash}\n")).unwrap();
            extra.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: imgbuild-test\n    path: {}\n",
                file.display()
            ));
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{extra}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = AuthRegistry {
            addr: addr.clone(),
            child,
            _dir: dir,
        };
        wait_for(30, "the registry to answer", || {
            std::net::TcpStream::connect(&addr).ok().map(|_| ())
        });
        r
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with `input` on stdin; (success, stdout, stderr).
fn run_with_stdin(cmd: &mut Command, input: &str) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn login_stores_credentials_like_docker_login_and_push_uses_them() {
    require("skopeo");
    let reg = AuthRegistry::start(true, None);
    let f = Fixture::new("hello");
    f.build_json(&["all"]);
    let home = tempfile::tempdir().unwrap();
    let docker_config = home.path().join("docker-config");
    let config_json = docker_config.join("config.json");
    // Only the config directory of this test: no HOME credentials, no CI variables.
    let with_env = |mut c: Command| {
        c.env("DOCKER_CONFIG", &docker_config)
            .env("HOME", home.path())
            .env_remove("IMGBUILD_REGISTRY_USER")
            .env_remove("IMGBUILD_REGISTRY_PASSWORD")
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("XDG_RUNTIME_DIR");
        c
    };
    let login = |password: &str| {
        let mut c = with_env(f.cmd());
        c.args(["login", &reg.addr, "-u", USER, "--password-stdin"]);
        run_with_stdin(&mut c, &format!("{password}\n"))
    };

    // Wrong password: a clear failure, nothing written, the password nowhere.
    let wrong = "Wr0ng-pa55word-given";
    let (ok, out, err) = login(wrong);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains(&format!("authentication to {} failed for {USER}", reg.addr)),
        "{err}"
    );
    assert!(!out.contains(wrong) && !err.contains(wrong), "{out}{err}");
    assert!(!config_json.exists());

    // A push before login: the registry wants credentials, none are found.
    let prefix = format!("{}/ci", reg.addr);
    let out = with_env(f.cmd())
        .args(["push", "--registry", &prefix, "hello"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("authentication required"), "{err}");

    // The right one: stored as docker login stores it, 0600, password in no output.
    let (ok, out, err) = login(PASSWORD);
    assert!(ok, "{out}{err}");
    assert!(err.contains(&config_json.display().to_string()), "{err}");
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "{out}{err}"
    );
    assert_eq!(mode_of(&config_json), 0o600);
    let cfg: Value = serde_json::from_slice(&std::fs::read(&config_json).unwrap()).unwrap();
    let auth = cfg["auths"][reg.addr.as_str()]["auth"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(auth)
            .unwrap(),
        format!("{USER}:{PASSWORD}").as_bytes()
    );

    // The next push finds them; skopeo reads the image back with the same credentials.
    let out = run_ok(with_env(f.cmd()).args(["--json", "push", "--registry", &prefix, "hello"]));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(!out.contains(PASSWORD));
    let digest = report["push"]["images"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let raw = run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
            .arg(format!("{USER}:{PASSWORD}"))
            .arg(format!("docker://{prefix}/hello:latest")),
    );
    assert_eq!(
        format!("sha256:{:x}", sha2::Sha256::digest(raw.as_bytes())),
        digest
    );
}

#[test]
fn push_names_only_the_named_images_and_all_push_prints_one_json_document() {
    require("skopeo");
    let reg = Registry::start();
    let f = Fixture::new("hello");
    let built = f.build_json(&["all"]);
    let prefix = format!("{}/named", reg.addr);
    // `push hello`: hello only (its manifest carries base's layer), not base.
    let report = push_json(&mut f.cmd(), &["--registry", &prefix, "hello"]);
    let refs: Vec<&str> = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap())
        .collect();
    assert_eq!(refs.len(), 1, "{report}");
    assert!(refs[0].starts_with(&format!("{prefix}/hello@")), "{report}");
    let base_there = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{prefix}/base:latest"))
        .output()
        .unwrap();
    assert!(!base_there.status.success(), "base was pushed too");

    // `all --push --json`: one JSON document, the build's images and the push report.
    let prefix = format!("{}/every", reg.addr);
    let out = run_ok(
        f.cmd()
            .args(["--json", "all", "--push", "--registry", &prefix]),
    );
    let doc: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not one JSON document ({e}): {out}"));
    assert_eq!(digests(&doc), digests(&built));
    let pushed: Vec<&str> = doc["push"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["digest"].as_str().unwrap())
        .collect();
    let mut want: Vec<String> = digests(&built).into_iter().map(|(_, d)| d).collect();
    want.sort();
    let mut got: Vec<String> = pushed.iter().map(|d| d.to_string()).collect();
    got.sort();
    assert_eq!(got, want, "{doc}");
    assert!(doc["push"]["bytes_uploaded"].as_u64().unwrap() > 0, "{doc}");
}

// ---------------------------------------------------------------- registry bases

/// A tar+gzip layer of (path, kind) entries: `Dir(mode)`, `File(text)`, `Link(target)`.
enum Entry<'a> {
    Dir(u32),
    File(&'a str),
    Link(&'a str),
}

/// (gzip blob, diff_id) of a layer.
fn gz_layer(entries: &[(&str, Entry)]) -> (Vec<u8>, String) {
    let mut b = tar::Builder::new(Vec::new());
    for (path, e) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match e {
            Entry::Dir(mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), &[][..]).unwrap();
            }
            Entry::File(text) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(text.len() as u64);
                b.append_data(&mut h, path, text.as_bytes()).unwrap();
            }
            Entry::Link(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let diff_id = format!("sha256:{:x}", sha2::Sha256::digest(&tar));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// Writes an OCI layout with one image of these layers, tagged `tag`.
fn oci_layout(dir: &Path, layers: &[(Vec<u8>, String)], tag: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = format!("{:x}", sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.1).collect::<Vec<_>>()},
    }))
    .unwrap();
    let (config_digest, config_size) = put(&config);
    let layer_descs: Vec<Value> = layers
        .iter()
        .map(|(gz, _)| {
            let (d, n) = put(gz);
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layer_descs,
    }))
    .unwrap();
    let (md, mn) = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
                           "annotations": {"org.opencontainers.image.ref.name": tag}}],
        }))
        .unwrap(),
    )
    .unwrap();
}

/// Pushes a base image made by hand (not by imgbuild) with skopeo: merged-/usr links,
/// accounts in /etc/passwd and /etc/group, and an upper layer with whiteouts that
/// replaces the accounts, removes a directory and the `lib` symlink.
fn push_custom_base(registry: &str) -> String {
    require("skopeo");
    let lower = gz_layer(&[
        ("usr", Entry::Dir(0o755)),
        ("usr/bin", Entry::Dir(0o755)),
        ("usr/lib", Entry::Dir(0o755)),
        ("bin", Entry::Link("usr/bin")),
        ("lib", Entry::Link("usr/lib")),
        ("etc", Entry::Dir(0o755)),
        (
            "etc/passwd",
            Entry::File("root:x:0:0:root:/root:/bin/sh\nghost:x:1500:1500::/:/bin/false\n"),
        ),
        ("etc/group", Entry::File("root:x:0:\nghost:x:1500:\n")),
        ("opt", Entry::Dir(0o755)),
        ("opt/gone", Entry::Dir(0o700)),
    ]);
    let upper = gz_layer(&[
        (
            "etc/passwd",
            Entry::File(
                "root:x:0:0:root:/root:/bin/sh\nbaseuser:x:1234:1234:Base user:/home/base:/bin/sh\n",
            ),
        ),
        ("etc/group", Entry::File("root:x:0:\nbaseuser:x:1234:\n")),
        ("opt/.wh.gone", Entry::File("")),
        (".wh.lib", Entry::File("")),
    ]);
    let layout = tempfile::tempdir().unwrap();
    oci_layout(layout.path(), &[lower, upper], "1");
    let reference = format!("{registry}/bases/custom:1");
    run_ok(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1", layout.path().display()))
            .arg(format!("docker://{reference}")),
    );
    reference
}

/// A fixture project with one recipe `derived` from `base` (a registry reference).
fn derived_project(base: &str) -> Fixture {
    let f = Fixture::new("hello");
    for r in ["base", "hello"] {
        std::fs::remove_file(f.path().join(format!("recipes/{r}.toml"))).unwrap();
    }
    std::fs::write(
        f.path().join("recipes/derived.toml"),
        format!(
            r#"from = "{base}"

[[layers]]
files = [
  {{ dest = "/bin/x", content = "x\n", owner = "baseuser", mode = "0755" }},
  {{ dest = "/opt/gone/f", content = "f\n" }},
  {{ dest = "/lib/y", content = "y\n" }},
]
users = [ {{ name = "newuser", uid = 2000, gid = 2000, home = "/home/new", shell = "/bin/sh" }} ]
"#
        ),
    )
    .unwrap();
    f
}

/// `umoci unpack` of an image of `out/oci`; returns the bundle dir (rootfs inside).
fn unpack(f: &Fixture, name: &str) -> tempfile::TempDir {
    require("umoci");
    let bundle = tempfile::tempdir().unwrap();
    let dest = bundle.path().join("b");
    run_ok(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{name}", f.path().join("out/oci").display()))
            .arg(&dest),
    );
    bundle
}

#[test]
fn a_registry_base_keeps_its_accounts_symlinks_and_whiteouts() {
    use std::os::unix::fs::MetadataExt;
    let reg = Registry::start();
    let base = push_custom_base(&reg.addr);
    let f = derived_project(&base);
    f.build_json(&["build", "derived"]);
    let bundle = unpack(&f, "derived");
    let root: PathBuf = bundle.path().join("b/rootfs");
    // /bin is still the base's symlink; the file went through it, owned by the base's user
    let bin = std::fs::symlink_metadata(root.join("bin")).unwrap();
    assert!(bin.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(root.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    let x = std::fs::symlink_metadata(root.join("usr/bin/x")).unwrap();
    assert!(x.is_file());
    assert_eq!((x.uid(), x.gid()), (1234, 1234));
    // /etc/passwd: the base's accounts (after its upper layer) plus the new user
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("root:x:0:0:")
            && passwd.contains("baseuser:x:1234:1234:Base user:/home/base:/bin/sh")
            && passwd.contains("newuser:x:2000:2000:"),
        "{passwd}"
    );
    assert!(!passwd.contains("ghost"), "{passwd}");
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(
        group.contains("baseuser:x:1234:") && group.contains("newuser:x:2000:"),
        "{group}"
    );
    // whiteouts of the base's upper layer count: /opt/gone (0700 below) is new, and
    // /lib (a symlink below) is a directory again
    assert_eq!(mode_of(&root.join("opt/gone")), 0o755);
    let lib = std::fs::symlink_metadata(root.join("lib")).unwrap();
    assert!(lib.is_dir());
    assert!(root.join("lib/y").is_file() && !root.join("usr/lib/y").exists());
}

#[test]
fn plain_http_registries_for_base_pulls_and_lock_are_a_setting() {
    // 0.0.0.0:PORT reaches the registry listening on 127.0.0.1, but is not a loopback
    // name: imgbuild speaks TLS to it unless it is listed as insecure.
    let reg = Registry::start();
    push_custom_base(&reg.addr);
    let port = reg.addr.rsplit_once(':').unwrap().1;
    let host = format!("0.0.0.0:{port}");
    let base = format!("{host}/bases/custom:1");
    let f = derived_project(&base);
    let out = f
        .cmd()
        .env_remove("IMGBUILD_INSECURE_REGISTRIES")
        .args(["build", "derived"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("https://{host}/")) && err.contains("IMGBUILD_INSECURE_REGISTRIES"),
        "{err}"
    );
    // the environment variable
    let built = run_ok(
        f.cmd()
            .env(
                "IMGBUILD_INSECURE_REGISTRIES",
                format!("other.example, {host}"),
            )
            .args(["--json", "build", "derived"]),
    );
    assert!(built.contains("\"derived\""), "{built}");
    // the project setting, for `imgbuild lock` (which resolves the tag afresh)
    std::fs::write(
        f.path().join("imgbuild.toml"),
        format!("[registry]\ninsecure = [\"{host}\"]\n"),
    )
    .unwrap();
    run_ok(
        f.cmd()
            .env_remove("IMGBUILD_INSECURE_REGISTRIES")
            .args(["lock"]),
    );
    let lock = std::fs::read_to_string(f.path().join("imgbuild.lock")).unwrap();
    assert!(lock.contains(&format!("reference = \"{base}\"")), "{lock}");
}

#[test]
fn a_registry_with_a_private_ca_is_trusted_through_certs_d() {
    require("openssl");
    let pki = tempfile::tempdir().unwrap();
    let p = |n: &str| pki.path().join(n);
    let ssl = |args: &[&str]| {
        run_ok(Command::new("openssl").current_dir(pki.path()).args(args));
    };
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=imgbuild test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    ssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let reg = AuthRegistry::start(false, Some((&p("server.crt"), &p("server.key"))));
    let certs_d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(certs_d.path().join(&reg.addr)).unwrap();
    std::fs::copy(p("ca.crt"), certs_d.path().join(&reg.addr).join("ca.crt")).unwrap();
    let f = Fixture::new("hello");
    f.build_json(&["all"]);
    let prefix = format!("{}/tls", reg.addr);
    let report = push_json(
        f.cmd().env("IMGBUILD_CERTS_D", certs_d.path()),
        &["--registry", &prefix, "hello"],
    );
    assert!(report["bytes_uploaded"].as_u64().unwrap() > 0, "{report}");
    // read back over verified TLS by skopeo with the same CA
    run_ok(
        Command::new("skopeo")
            .args(["inspect", "--raw", "--cert-dir"])
            .arg(certs_d.path().join(&reg.addr))
            .arg(format!("docker://{prefix}/hello:latest")),
    );
    // without its CA directory a loopback registry is spoken to in plain HTTP, which
    // this one refuses
    let out = f
        .cmd()
        .env("IMGBUILD_CERTS_D", pki.path().join("none"))
        .args(["push", "--registry", &prefix, "hello"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&reg.addr), "{err}");
}
