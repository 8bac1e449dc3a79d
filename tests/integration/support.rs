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
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "`{tool}` is not installed: the tests need it (run `just setup` or `.ci/run`, which install it)");
}

/// Runs a command and returns stdout, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
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
        run_ok(Command::new("gcc").args(["-static", "-Os", "-s", "-o"]).arg(&out).arg(repo_root().join("fixtures/hello/src/hello.c")));
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
    run_ok(Command::new("cp").arg("-a").arg(format!("{}/.", src.display())).arg(dst));
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
        Fixture { store: store_dir.path().to_path_buf(), dir, _store_dir: store_dir }
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
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from imgbuild ({e}):\n{out}"))
    }
}

/// name -> manifest digest, from `--json` output.
pub fn digests(v: &Value) -> Vec<(String, String)> {
    v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_owned(), i["manifest_digest"].as_str().unwrap().to_owned()))
        .collect()
}

/// Every layer's (digest, cached) of one image.
pub fn layers_of(v: &Value, name: &str) -> Vec<(String, bool)> {
    let img = v["images"].as_array().unwrap().iter().find(|i| i["name"] == name).unwrap_or_else(|| panic!("no image {name} in {v}"));
    img["layers"].as_array().unwrap().iter().map(|l| (l["digest"].as_str().unwrap().to_owned(), l["cached"].as_bool().unwrap())).collect()
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

/// A short unique suffix for names in shared engines.
pub fn unique() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    format!("{}{}", std::process::id(), SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() % 100000)
}
