//! Test support: fixture projects in temp dirs, running the binary, requiring tools.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails (never skips) when a tool the tests need is not installed.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: the tests need it (run `just setup` or `.ci/run`, which install it)"
    );
}

/// Runs a command and returns stdout, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The static test program, compiled once per test run.
pub fn hello_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        require("gcc");
        let dir = std::env::temp_dir().join(format!("imgbuild-test-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("hello");
        run_ok(
            Command::new("gcc")
                .args(["-static", "-Os", "-s", "-o"])
                .arg(&out)
                .arg(repo_root().join("fixtures/hello/src/hello.c")),
        );
        out
    })
}

/// A copy of a fixture project in a temp dir, with its own store.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    _store_dir: tempfile::TempDir,
}

pub fn copy_tree(src: &Path, dst: &Path) {
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(dst),
    );
}

impl Fixture {
    pub fn new(name: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&repo_root().join("fixtures").join(name), dir.path());
        let bin = dir.path().join("layers/bin");
        if dir.path().join("src/hello.c").exists() {
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::copy(hello_binary(), bin.join("hello")).unwrap();
        }
        let store_dir = tempfile::tempdir().unwrap();
        Fixture {
            store: store_dir.path().to_path_buf(),
            dir,
            _store_dir: store_dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The binary with `-C <fixture> --store <store>`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
        c.arg("-C").arg(self.path()).arg("--store").arg(&self.store);
        c.env_remove("SOURCE_DATE_EPOCH");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs a build with `--json` and returns the parsed output.
    pub fn build_json(&self, args: &[&str]) -> Value {
        let out = run_ok(self.cmd().arg("--json").args(args));
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("bad JSON from imgbuild ({e}):\n{out}"))
    }
}

/// name -> manifest digest, from `--json` output.
pub fn digests(v: &Value) -> Vec<(String, String)> {
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["manifest_digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every layer's (digest, cached) of one image.
pub fn layers_of(v: &Value, name: &str) -> Vec<(String, bool)> {
    let img = v["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no image {name} in {v}"));
    img["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_owned(),
                l["cached"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Adds what git cannot carry to a fixture's site tree: hardlinks, a long path,
/// an empty directory, setuid and sticky modes.
pub fn enrich_site(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let site = root.join("layers/site");
    let long = site.join(format!("deep/{}/{}", "d".repeat(120), "f".repeat(110)));
    std::fs::create_dir_all(long.parent().unwrap()).unwrap();
    std::fs::write(&long, "long name\n").unwrap();
    std::fs::create_dir_all(site.join("empty")).unwrap();
    std::fs::write(site.join("hard1"), "linked\n").unwrap();
    std::fs::hard_link(site.join("hard1"), site.join("hard2")).unwrap();
    std::fs::write(site.join("suid"), "#!/bin/true\n").unwrap();
    std::fs::set_permissions(site.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::create_dir_all(site.join("sticky")).unwrap();
    std::fs::set_permissions(site.join("sticky"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(site.join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(site.join("run.sh"), std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// One architecture's image out of an OCI archive that holds an image index
/// (`out/NAME.tar`), copied by skopeo (an independent reader of the index) to `dest`
/// (a skopeo destination: `dir:PATH`, `docker-archive:PATH`).
pub fn skopeo_copy_arch(oci_archive: &Path, arch: &str, dest: &str) {
    require("skopeo");
    run_ok(
        Command::new("skopeo")
            .args([
                "copy",
                "-q",
                "--override-arch",
                arch,
                "--override-os",
                "linux",
            ])
            .arg(format!("oci-archive:{}", oci_archive.display()))
            .arg(dest),
    );
}

/// An SPDX document checked by the independent SPDX parser and validator
/// (`pyspdxtools`, from spdx-tools) and returned parsed.
pub fn validated_spdx(path: &Path) -> Value {
    require("pyspdxtools");
    let o = Command::new("pyspdxtools")
        .arg("-i")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("invalid"),
        "pyspdxtools {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A short unique suffix for names in shared engines.
pub fn unique() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    format!(
        "{}{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            % 100000
    )
}

/// The repository's own stack (recipes/, layers/, imgbuild.lock), built once per
/// test run with `--locked` into a store shared by the tests of this run.
pub struct Stack {
    pub out: PathBuf,
    pub store: PathBuf,
    pub json: Value,
}

pub fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stack");
        let (out, store) = (base.join("out"), base.join("store"));
        let json = run_ok(
            Command::new(env!("CARGO_BIN_EXE_imgbuild"))
                .arg("-C")
                .arg(repo_root())
                .arg("--store")
                .arg(&store)
                .arg("--out")
                .arg(&out)
                .args(["--json", "all", "--locked"]),
        );
        Stack {
            out,
            store,
            json: serde_json::from_str(&json).expect("build JSON"),
        }
    })
}

/// Loads `out/NAME.tar` of the stack into docker under a unique tag and returns it;
/// the image is removed when the guard drops.
pub struct DockerImage(pub String);

impl DockerImage {
    /// Loads `tar` and names the image `imgbuild-test/NAME:UNIQUE` (by image ID, so
    /// a test never depends on a name another test may move). The names the tarball
    /// carries (`imgbuild/...`) are put back as they were before the load: a test
    /// run does not replace or leave behind images under a developer's names.
    pub fn load(tar: &Path, name: &str) -> DockerImage {
        require("docker");
        let manifest: Value = serde_json::from_str(&run_ok(
            Command::new("tar")
                .arg("-xOf")
                .arg(tar)
                .arg("manifest.json"),
        ))
        .expect("manifest.json of the tarball");
        let id = format!(
            "sha256:{}",
            manifest[0]["Config"]
                .as_str()
                .unwrap()
                .trim_start_matches("blobs/sha256/")
                // skopeo's docker-archive names it `<hex>.json`
                .trim_end_matches(".json")
        );
        let names: Vec<String> = manifest[0]["RepoTags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let image_id = |n: &str| {
            let out = Command::new("docker")
                .args(["image", "inspect", "--format", "{{.Id}}", n])
                .output()
                .unwrap();
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let before: Vec<(String, Option<String>)> =
            names.iter().map(|n| (n.clone(), image_id(n))).collect();
        run_ok(Command::new("docker").args(["load", "-q", "-i"]).arg(tar));
        let tag = format!("imgbuild-test/{name}:{}", unique());
        run_ok(Command::new("docker").args(["tag", &id, &tag]));
        for (n, old) in before {
            match old {
                Some(old) if old != id => {
                    let _ = Command::new("docker").args(["tag", &old, &n]).output();
                }
                Some(_) => {}
                None => {
                    let _ = Command::new("docker").args(["rmi", &n]).output();
                }
            }
        }
        DockerImage(tag)
    }
}

impl Drop for DockerImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", &self.0]).output();
    }
}

/// A container or network removed when dropped.
pub struct DockerThing(pub &'static str, pub String);

impl Drop for DockerThing {
    fn drop(&mut self) {
        let args: &[&str] = if self.0 == "network" {
            &["network", "rm"]
        } else {
            &["rm", "-f", "-v"]
        };
        let _ = Command::new("docker").args(args).arg(&self.1).output();
    }
}

pub fn docker_network() -> DockerThing {
    let name = format!("imgbuild-test-{}", unique());
    run_ok(Command::new("docker").args(["network", "create", &name]));
    DockerThing("network", name)
}

/// `docker run -d` with the given arguments; returns the container guard.
pub fn docker_run(args: &[&str]) -> DockerThing {
    let id = run_ok(Command::new("docker").args(["run", "-d"]).args(args));
    DockerThing("container", id.trim().to_owned())
}

/// Polls `f` every 500 ms until it returns Some, for at most `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// `docker exec` output if it succeeds.
pub fn docker_exec(container: &str, args: &[&str]) -> Option<String> {
    let o = Command::new("docker")
        .arg("exec")
        .arg(container)
        .args(args)
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

pub fn docker_logs(container: &str) -> String {
    let o = Command::new("docker")
        .args(["logs", container])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The CNCF distribution registry on 127.0.0.1, stopped (by PID) when dropped.
pub struct Registry {
    pub addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        require("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let r = Registry {
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

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HTTP GET on 127.0.0.1 with curl: (status, body).
pub fn http_get(url: &str) -> Option<(u16, String)> {
    let o = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_owned()))
}

/// An independent reader (skopeo) accepts the tarball.
pub fn skopeo_accepts(tar: &Path) {
    require("skopeo");
    run_ok(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", tar.display())),
    );
}

/// Permission bits (with setuid/setgid/sticky) of a path.
pub fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}
