//! Regression tests of defects found by testing imgbuild from outside (issue 10):
//! each one failed before its fix.

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// A recipe with the image's own CPython (Debian's `python3.11`, its
/// standard library left uncompiled to keep the test cheap) and a venv of one small
/// pure-Python wheel, which the image's interpreter byte-compiles.
fn write_python_project(dir: &Path) {
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    std::fs::write(
        dir.join("recipes/py.toml"),
        r#"from = "scratch"

[[layers]]
debian = { packages = ["python3.11"], bytecode = false }

[[layers]]
python = { requirements = "requirements.txt", venv = "/opt/venv", interpreter = "/usr/bin/python3.11" }
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("requirements.txt"),
        "blinker==1.9.0 \\\n    --hash=sha256:b4ce2265a7abece45e7cc896e98dbebe6cead56bcf805a3d23136d145f5445bf \\\n    --hash=sha256:ba0efaa9080b619ff2f3459d1d500c57bddea4a6b424b60a91141db6fd2f08bc\n",
    )
    .unwrap();
}

/// `--store ./.store` (relative to the working directory) works as an absolute
/// path does, also for byte-compiling, which runs the image's interpreter in
/// another working directory.
#[test]
fn a_relative_store_path_byte_compiles() {
    let dir = tempfile::tempdir().unwrap();
    write_python_project(dir.path());
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .current_dir(dir.path())
            .env_remove("SOURCE_DATE_EPOCH")
            .args(["--store", "./.store", "--json", "build", "py"]),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(layers_of(&v, "py").len(), 2, "{out}");
    // The .pyc files are in the venv layer: list it with tar, independently.
    let tar = dir.path().join("out/py.tar");
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&unpacked),
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("manifest.json")).unwrap()).unwrap();
    let venv_layer = index[0]["Layers"][1].as_str().unwrap().to_owned();
    let listing = run_ok(
        Command::new("tar")
            .arg("-tzf")
            .arg(unpacked.join(&venv_layer)),
    );
    assert!(
        listing
            .lines()
            .any(|l| l.contains("blinker/__pycache__/") && l.ends_with(".pyc")),
        "no .pyc in the venv layer:\n{listing}"
    );
    // The store is where the relative path named it, not anywhere else.
    assert!(dir.path().join(".store/blobs/sha256").is_dir());

    // `inspect` of the Debian layer: the ldconfig triggers of the libraries and the
    // removal scripts are one line each, the scripts worth reading keep theirs.
    let inspect = run_ok(
        Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .current_dir(dir.path())
            .args(["--store", "./.store", "inspect", "py"]),
    );
    let not_run: Vec<&str> = inspect
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("not run:"))
        .collect();
    assert!(
        !not_run
            .iter()
            .any(|l| l.ends_with("triggers: trigger: activate-noawait ldconfig")),
        "{inspect}"
    );
    let grouped = not_run
        .iter()
        .find(|l| l.starts_with("not run: the ldconfig trigger of "))
        .unwrap_or_else(|| panic!("{inspect}"));
    assert!(
        grouped.contains("libc6") && grouped.contains("libssl3"),
        "{grouped}"
    );
    assert!(
        not_run
            .iter()
            .any(|l| l.starts_with("not run: prerm/postrm of ")),
        "{inspect}"
    );
    assert!(
        !not_run
            .iter()
            .any(|l| l.contains(" prerm") && !l.starts_with("not run: prerm/postrm")),
        "{inspect}"
    );
    assert!(
        not_run
            .iter()
            .any(|l| l.starts_with("not run: libc6 postinst: ")),
        "{inspect}"
    );
    assert!(not_run.len() <= 15, "{} lines:\n{inspect}", not_run.len());
}

/// A same-size corruption of `out/NAME.tar` anywhere in the file (a flipped byte
/// in the last blob, or in the last tar header), with the mtime put back, is
/// found by the next build, which writes the tarball again; a no-op build after
/// it leaves the file alone.
#[test]
fn a_same_size_corruption_of_the_tarball_is_rewritten() {
    use std::os::unix::fs::MetadataExt;
    let f = Fixture::new("hello");
    f.build_json(&["all"]);
    let tar = f.path().join("out/hello.tar");
    let good = std::fs::read(&tar).unwrap();
    // Offsets of the last entry, read with the tar crate.
    let (header_at, data_at, size) = {
        let mut ar = tar::Archive::new(std::fs::File::open(&tar).unwrap());
        let last = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .last()
            .map(|e| (e.raw_header_position(), e.raw_file_position(), e.size()));
        last.unwrap()
    };
    assert!(
        data_at > 64 * 1024,
        "the fixture's last blob should lie past the documents"
    );
    let image_line = |stderr: &str| {
        stderr
            .lines()
            .find(|l| l.starts_with("[hello] image "))
            .unwrap_or_else(|| panic!("no image line:\n{stderr}"))
            .to_owned()
    };
    for (what, at) in [
        ("a byte of the last blob", data_at + size / 2),
        ("a byte of the last tar header's name", header_at + 10),
    ] {
        let mut bytes = good.clone();
        bytes[at as usize] ^= 0x55;
        let m = std::fs::metadata(&tar).unwrap();
        std::fs::write(&tar, &bytes).unwrap();
        run_ok(
            Command::new("touch")
                .arg("-d")
                .arg(format!("@{}.{:09}", m.mtime(), m.mtime_nsec()))
                .arg(&tar),
        );
        let after = std::fs::metadata(&tar).unwrap();
        assert_eq!(
            (after.len(), after.mtime(), after.mtime_nsec()),
            (m.len(), m.mtime(), m.mtime_nsec())
        );
        let out = f.run(&["build", "hello"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {stderr}");
        assert!(
            !image_line(&stderr).contains("(unchanged)"),
            "{what}: {stderr}"
        );
        assert!(
            std::fs::read(&tar).unwrap() == good,
            "{what}: the tarball was not restored"
        );
        skopeo_accepts(&tar);
    }
    let out = f.run(&["build", "hello"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(image_line(&stderr).contains("(unchanged)"), "{stderr}");
}

/// A FIFO where a recipe, `imgbuild.toml` or `imgbuild.lock` is expected is
/// refused at once with an error naming it; before, every command hung forever
/// (opening a FIFO waits for a writer).
#[test]
fn a_fifo_instead_of_a_project_file_is_refused_not_waited_on() {
    for (path, named) in [
        ("recipes/fifo.toml", "recipes/fifo.toml"),
        ("imgbuild.toml", "imgbuild.toml"),
        ("imgbuild.lock", "imgbuild.lock"),
    ] {
        let f = Fixture::new("hello");
        let fifo = f.path().join(path);
        run_ok(Command::new("mkfifo").arg(&fifo));
        // coreutils' timeout: exit 124 if the command still runs after 30 s.
        let mut c = Command::new("timeout");
        c.arg("30").arg(env!("CARGO_BIN_EXE_imgbuild"));
        c.arg("-C").arg(f.path()).arg("--store").arg(&f.store);
        let out = c.arg("all").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(
            out.status.code(),
            Some(124),
            "{path}: imgbuild hung on the FIFO"
        );
        assert_eq!(out.status.code(), Some(1), "{path}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{path}: expected one line:\n{err}"
        );
        assert!(
            err.contains(named) && err.contains("is a FIFO, not a regular file"),
            "{path}: {err}"
        );
        assert!(!f.path().join("out").exists(), "{path}: output was written");
    }
}

/// Values that would end up broken in the image config, recipe names that are no
/// image names and repositories that are no references are refused before
/// anything is built, each with one line naming the file, line and column.
#[test]
fn config_values_names_and_repositories_are_validated() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "NUL in an env value",
            "bad.toml",
            "[config]\nenv = { A = \"x\\u0000y\" }\n",
            "recipes/bad.toml:2:13: env `A` contains a NUL character",
        ),
        (
            "NUL in an env name",
            "bad.toml",
            "[config]\nenv = { \"A\\u0000\" = \"x\" }\n",
            "recipes/bad.toml:2:9: env name contains a NUL character",
        ),
        (
            "= in an env name",
            "bad.toml",
            "[config]\nenv = { \"A=B\" = \"x\" }\n",
            "recipes/bad.toml:2:9: invalid env name \"A=B\"",
        ),
        (
            "NUL in stop_signal",
            "bad.toml",
            "[config]\nstop_signal = \"SIG\\u0000TERM\"\n",
            "recipes/bad.toml:2:15: stop_signal contains a NUL character",
        ),
        (
            "NUL in the entrypoint",
            "bad.toml",
            "[config]\nentrypoint = [\"/bin/sh\", \"-c\\u0000\"]\n",
            "recipes/bad.toml:2:26: entrypoint contains a NUL character",
        ),
        (
            "NUL in a label",
            "bad.toml",
            "[config]\nlabels = { a = \"\\u0000\" }\n",
            "recipes/bad.toml:2:16: label `a` contains a NUL character",
        ),
        (
            "a repository that is no reference",
            "bad.toml",
            "repository = \"HTTP://x/../y\"\n",
            "recipes/bad.toml:1:14: invalid repository \"HTTP://x/../y\"",
        ),
        (
            "a repository with a tag",
            "bad.toml",
            "repository = \"docker.io/org/x:1\"\n",
            "recipes/bad.toml:1:14: invalid repository \"docker.io/org/x:1\": it has a tag or digest",
        ),
        (
            "a name starting with -",
            "-rf.toml",
            "",
            "recipes/-rf.toml: recipe name \"-rf\" (the file name) is not a valid image name",
        ),
        (
            "a hidden file",
            ".hidden.toml",
            "",
            "recipes/.hidden.toml: recipe name \".hidden\" (the file name) is not a valid image name",
        ),
        (
            "two separators",
            "a..b.toml",
            "",
            "recipes/a..b.toml: recipe name \"a..b\"",
        ),
    ];
    for (what, file, recipe, expected) in cases {
        let f = Fixture::new("hello");
        std::fs::write(f.path().join("recipes").join(file), recipe).unwrap();
        let out = f.run(&["all"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains(expected),
            "{what}: expected `{expected}` in:\n{err}"
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{what}: expected one line:\n{err}"
        );
        assert!(!f.path().join("out").exists(), "{what}: output was written");
    }
    // Valid names and repositories of every form still build.
    let f = Fixture::new("hello");
    std::fs::write(
        f.path().join("recipes/a.b-c__d.toml"),
        "from = \"hello\"\nrepository = \"registry.example.com:5000/org/a-b\"\n",
    )
    .unwrap();
    f.build_json(&["all"]);
}

/// A TOML syntax error is reported on the line where the `]` is missing, not on
/// the line where the parser noticed it.
#[test]
fn a_missing_bracket_is_reported_on_its_own_line() {
    let f = Fixture::new("hello");
    let mut recipe = String::from("from = \"scratch\"\n\n[config]\n");
    for i in 4..=10 {
        recipe.push_str(&format!("# line {i}\n"));
    }
    recipe.push_str("cmd = [\"a\", \"b\"\n\n# a comment\nenv = { A = \"b\" }\n");
    assert_eq!(recipe.lines().nth(10), Some("cmd = [\"a\", \"b\""));
    std::fs::write(f.path().join("recipes/bad.toml"), &recipe).unwrap();
    let out = f.run(&["all"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("recipes/bad.toml:11:16: "), "{err}");
    // The same in imgbuild.toml (line only).
    std::fs::remove_file(f.path().join("recipes/bad.toml")).unwrap();
    std::fs::write(
        f.path().join("imgbuild.toml"),
        "[registry]\ninsecure = [\"a:5000\"\n\n[debian]\n",
    )
    .unwrap();
    let out = f.run(&["all"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("imgbuild.toml:2: "), "{err}");
}

/// `scripts/build.sh` leaves `imgbuild` runnable by name (README: "Using it"), in
/// `$IMGBUILD_BINDIR` (default /usr/local/bin); and `scripts/setup.sh`, which CI
/// runs, no longer compiles `just`, which no test uses.
#[test]
fn build_sh_puts_imgbuild_on_the_path() {
    // The real script in a copy of the checkout's shape, with this test's binary as
    // the build output and a `cargo` that only records its arguments: a real cargo
    // build here would rebuild the binary under other features (minutes of CPU).
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("scripts")).unwrap();
    std::fs::create_dir_all(repo.path().join("target/release")).unwrap();
    std::fs::create_dir_all(repo.path().join("fake-bin")).unwrap();
    // build.sh runs `scripts/setup.sh build` first (as root: bubblewrap, qemu binfmt;
    // installed already here, so it only checks)
    for script in ["build.sh", "setup.sh"] {
        std::fs::copy(
            repo_root().join("scripts").join(script),
            repo.path().join("scripts").join(script),
        )
        .unwrap();
    }
    std::fs::copy(
        env!("CARGO_BIN_EXE_imgbuild"),
        repo.path().join("target/release/imgbuild"),
    )
    .unwrap();
    let cargo = repo.path().join("fake-bin/cargo");
    std::fs::write(
        &cargo,
        "#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/cargo.log\"\n",
    )
    .unwrap();
    run_ok(Command::new("chmod").arg("755").arg(&cargo));
    let bindir = repo.path().join("bin dir");
    let path = format!("{}:/usr/bin:/bin", repo.path().join("fake-bin").display());
    // `--help` reaches `imgbuild all --help`: the script's steps run, nothing is built.
    let out = run_ok(
        Command::new(repo.path().join("scripts/build.sh"))
            .arg("--help")
            .env("PATH", &path)
            .env("IMGBUILD_BINDIR", &bindir),
    );
    assert!(out.contains("Usage:"), "{out}");
    let log = std::fs::read_to_string(repo.path().join("fake-bin/cargo.log")).unwrap();
    assert_eq!(log, "build --locked --release --bin imgbuild\n");
    assert_eq!(mode_of(&bindir.join("imgbuild")), 0o755);
    let by_name = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("imgbuild --version")
            .env("PATH", format!("{}:/usr/bin:/bin", bindir.display())),
    );
    assert!(by_name.starts_with("imgbuild "), "{by_name}");
    let setup = std::fs::read_to_string(repo_root().join("scripts/setup.sh")).unwrap();
    assert!(
        !setup
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("install --locked just")),
        "scripts/setup.sh compiles just again"
    );
}
