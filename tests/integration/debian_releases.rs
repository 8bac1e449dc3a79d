//! Debian releases and third-party repositories through the real binary.
//!
//! One project (its downloads are a trixie and a bookworm index and a few small
//! `.deb`s, so the test stays cheap): `[debian] suite = "trixie"` with a third-party
//! repository served from a temp dir on 127.0.0.1, its `InRelease` clearsigned by a
//! key `gpg` generates here (gpg and dpkg-deb make the repository, independently of
//! imgbuild's own OpenPGP and .deb code). Recipe `mini` (trixie: dash, base-files,
//! netbase and the repository's package) is built, loaded into docker and run; recipe
//! `old` overrides the release for its layer (bookworm). Checked: the lock records
//! the release of each layer and the repository of the repository's package; a
//! release changed in a recipe is a lock mismatch (`--locked` names the recipe) and
//! the plan's reason names the release; an index signed by another key is refused
//! with one line naming the repository.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::support::*;

/// Serves the files under `root` on 127.0.0.1 (read at each request, so a test can
/// swap one) until the process ends; returns the base URL and the paths requested.
fn serve_dir(root: PathBuf) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = requests.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let (root, log) = (root.clone(), log.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    return;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                log.lock().unwrap().push(path.clone());
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let file = root.join(path.trim_start_matches('/'));
                match (path.contains(".."), std::fs::read(&file)) {
                    (false, Ok(body)) => {
                        let _ = write!(
                            c,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = c.write_all(&body);
                    }
                    _ => {
                        let _ = write!(
                            c,
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                }
            });
        }
    });
    (url, requests)
}

fn sha256(path: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A gpg home with a new signing key for `uid`; returns the key's armored public part.
fn gpg_key(home: &Path, uid: &str) -> String {
    run_ok(
        Command::new("gpg")
            .env("GNUPGHOME", home)
            .args(["--batch", "--passphrase", "", "--quick-gen-key", uid])
            .args(["ed25519", "sign", "never"]),
    );
    run_ok(
        Command::new("gpg")
            .env("GNUPGHOME", home)
            .args(["--armor", "--export", uid]),
    )
}

fn clearsign(home: &Path, uid: &str, text: &Path, out: &Path) {
    let _ = std::fs::remove_file(out);
    run_ok(
        Command::new("gpg")
            .env("GNUPGHOME", home)
            .args([
                "--batch",
                "--yes",
                "--local-user",
                uid,
                "--clearsign",
                "--output",
            ])
            .arg(out)
            .arg(text),
    );
}

/// The repository `extra` (suite `trixie-extra`, component `main`) with one package,
/// `imgbuild-extra` 1.0, which ships `/usr/share/imgbuild-extra/hello.txt`. Returns the
/// path of its unsigned Release.
fn make_repository(root: &Path) -> PathBuf {
    let pkg = root.join("build/imgbuild-extra");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/share/imgbuild-extra")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: imgbuild-extra\nVersion: 1.0\nArchitecture: all\nMaintainer: test <t@example.org>\n\
         Description: imgbuild test package\n",
    )
    .unwrap();
    std::fs::write(
        pkg.join("usr/share/imgbuild-extra/hello.txt"),
        "from the extra repository\n",
    )
    .unwrap();
    let pool = root.join("pool/main");
    std::fs::create_dir_all(&pool).unwrap();
    let deb = pool.join("imgbuild-extra_1.0_all.deb");
    run_ok(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&pkg)
            .arg(&deb),
    );
    let dir = root.join("dists/trixie-extra/main/binary-amd64");
    std::fs::create_dir_all(&dir).unwrap();
    let packages = format!(
        "Package: imgbuild-extra\nVersion: 1.0\nArchitecture: all\nMaintainer: test <t@example.org>\n\
         Filename: pool/main/imgbuild-extra_1.0_all.deb\nSize: {}\nSHA256: {}\nDescription: imgbuild test package\n\n",
        std::fs::metadata(&deb).unwrap().len(),
        sha256(&deb)
    );
    std::fs::write(dir.join("Packages"), &packages).unwrap();
    let release = root.join("dists/trixie-extra/Release");
    std::fs::write(
        &release,
        format!(
            "Origin: imgbuild test\nSuite: trixie-extra\nCodename: trixie-extra\n\
             Date: Sat, 05 Dec 2026 00:00:00 UTC\nArchitectures: amd64\nComponents: main\nSHA256:\n {} {} main/binary-amd64/Packages\n",
            sha256(&dir.join("Packages")),
            packages.len()
        ),
    )
    .unwrap();
    release
}

#[test]
fn trixie_and_bookworm_layers_with_a_signed_third_party_repository() {
    require("gpg");
    require("dpkg-deb");
    require("docker");
    let repo = tempfile::tempdir().unwrap();
    let gpg_home = tempfile::tempdir().unwrap();
    let release = make_repository(repo.path());
    let good = gpg_key(gpg_home.path(), "imgbuild repo key <repo@example.org>");
    gpg_key(gpg_home.path(), "someone else <else@example.org>");
    let inrelease = repo.path().join("dists/trixie-extra/InRelease");
    clearsign(gpg_home.path(), "repo@example.org", &release, &inrelease);
    let (url, requests) = serve_dir(repo.path().to_owned());

    let project = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let p = project.path();
    std::fs::create_dir_all(p.join("recipes")).unwrap();
    std::fs::create_dir_all(p.join("keys")).unwrap();
    std::fs::write(p.join("keys/extra.asc"), good).unwrap();
    std::fs::write(
        p.join("imgbuild.toml"),
        format!(
            "[debian]\nsuite = \"trixie\"\n\n[[debian.repositories]]\nname = \"extra\"\nurl = \"{url}\"\n\
             suite = \"trixie-extra\"\ncomponents = [\"main\"]\nkey = \"keys/extra.asc\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        p.join("recipes/mini.toml"),
        "[[layers]]\ndebian = { packages = [\"dash\", \"base-files\", \"netbase\", \"extra:imgbuild-extra\"] }\n",
    )
    .unwrap();
    let old_recipe =
        "[[layers]]\ndebian = { suite = \"bookworm\", packages = [\"netbase\"], base = false }\n";
    std::fs::write(p.join("recipes/old.toml"), old_recipe).unwrap();
    let imgbuild = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
        c.arg("-C")
            .arg(p)
            .arg("--store")
            .arg(store.path())
            .env_remove("IMGBUILD_DEBIAN_MIRROR")
            .env_remove("IMGBUILD_DEBIAN_SECURITY_MIRROR");
        c
    };

    // the lock: trixie for mini, bookworm (the default, not written) for old, and the
    // repository of the repository's package
    run_ok(imgbuild().arg("lock"));
    let lock = std::fs::read_to_string(p.join("imgbuild.lock")).unwrap();
    let entry = |recipe: &str| {
        lock.split("[[debian]]")
            .find(|e| e.contains(&format!("recipe = \"{recipe}\"")))
            .unwrap_or_else(|| panic!("no entry for {recipe}:\n{lock}"))
            .to_owned()
    };
    let mini = entry("mini");
    assert!(mini.contains("\nsuite = \"trixie\"\n"), "{lock}");
    assert!(!mini.contains("\narch = "), "amd64 is the default: {lock}");
    assert!(
        mini.contains("name = \"imgbuild-extra\", version = \"1.0\"")
            && mini.contains("repository = \"extra\" }"),
        "{lock}"
    );
    assert_eq!(
        mini.matches("repository = ").count(),
        1,
        "only the repository's package names one: {lock}"
    );
    assert!(mini.contains("name = \"dash\""), "{lock}");
    assert!(mini.contains("trixie-security = "), "{lock}");
    // the repository (trixie-extra) was read for the trixie layer only, not for old's
    // bookworm one
    let inrelease_reads = |r: &Mutex<Vec<String>>| {
        r.lock()
            .unwrap()
            .iter()
            .filter(|p| p.ends_with("/InRelease"))
            .count()
    };
    assert_eq!(inrelease_reads(&requests), 1, "{requests:?}");
    let old = entry("old");
    assert!(!old.contains("suite = "), "{lock}");
    assert!(old.contains("bookworm-security = "), "{lock}");
    // bookworm's netbase (trixie has 6.5)
    assert!(
        old.contains("name = \"netbase\", version = \"6.4\""),
        "{lock}"
    );

    // builds, runs in docker: Debian 13 with the repository's file
    let out = run_ok(imgbuild().args(["--json", "all", "--locked"]));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["images"].as_array().unwrap().len(), 2, "{out}");
    let image = DockerImage::load(&p.join("out/mini.tar"), "trixie-mini");
    let ran = run_ok(Command::new("docker").args([
        "run",
        "--rm",
        &image.0,
        "/bin/dash",
        "-c",
        // dash's builtins only: the image has no coreutils
        "read v < /etc/debian_version; read h < /usr/share/imgbuild-extra/hello.txt; echo \"$v\"; echo \"$h\"",
    ]));
    assert!(ran.starts_with("13."), "{ran}");
    assert!(ran.ends_with("\nfrom the extra repository\n"), "{ran}");
    // the release of old's layer changes: a lock mismatch naming the recipe, and the
    // plan's reason names the release
    std::fs::write(
        p.join("recipes/old.toml"),
        old_recipe.replace("suite = \"bookworm\", ", ""),
    )
    .unwrap();
    let o = imgbuild().args(["all", "--locked"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(
            "old.toml: layer 1 was locked for bookworm amd64, the recipe asks for trixie amd64"
        ),
        "{err}"
    );
    let plan = run_ok(imgbuild().args(["--json", "plan", "old"]));
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    let reason = plan["images"][0]["layers"][0]["reason"].to_string();
    assert!(
        reason.contains("debian release bookworm amd64 -> trixie amd64"),
        "{plan}"
    );

    // an index signed by another key is refused, in one line naming the repository
    clearsign(gpg_home.path(), "else@example.org", &release, &inrelease);
    let o = imgbuild().args(["-q", "lock"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("repository `extra` of imgbuild.toml (key ")
            && err.contains("/dists/trixie-extra/InRelease: the signature does not verify"),
        "{err}"
    );
}

/// A release imgbuild has no keys for, in a recipe or in imgbuild.toml: one line naming
/// the file, line and column, before anything is read from the network.
#[test]
fn a_release_without_keys_is_an_error_naming_where() {
    let project = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let p = project.path();
    std::fs::create_dir_all(p.join("recipes")).unwrap();
    std::fs::write(
        p.join("recipes/x.toml"),
        "[[layers]]\ndebian = { packages = [\"netbase\"], suite = \"forky\" }\n",
    )
    .unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .arg("-C")
            .arg(p)
            .arg("--store")
            .arg(store.path())
            .arg("plan")
            .output()
            .unwrap()
    };
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("recipes/x.toml:2:44: `debian.suite`: ") && err.contains("`forky`"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    std::fs::write(
        p.join("recipes/x.toml"),
        "[[layers]]\ndebian = { packages = [\"netbase\"] }\n",
    )
    .unwrap();
    std::fs::write(p.join("imgbuild.toml"), "[debian]\nsuite = \"forky\"\n").unwrap();
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("imgbuild.toml:2: ") && err.contains("`forky`"),
        "{err}"
    );
}
