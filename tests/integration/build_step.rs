//! The `build` layer source: a C program compiled by gcc-12 of a builder image made of
//! real Debian packages, in bubblewrap, run with `docker run`; cached by its inputs;
//! and the sandbox's walls (no network, no host files, no writes outside the outputs),
//! each checked against a step that would succeed without them.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::process::Command;

use crate::support::*;

const BUILDER: &str = "# gcc-12 and what it runs (cpp-12's cc1, binutils' as and ld); bash for the\n\
# sandbox tests. Maintainer scripts do not run: no `gcc`/`cc` alternatives.\n\
[[layers]]\n\
debian = { packages = [\"gcc-12\", \"libc6-dev\", \"bash\"] }\n";

const HELLO_C: &str =
    "#include <stdio.h>\nint main(void) { puts(\"hello from a build step\"); return 0; }\n";

/// Builds a new variant of `hello-c` as uid 65534 (a copy of the project and of the
/// store, owned by it), then as root: the step really runs both times (its layer is
/// not cached) and the two layers are the same bytes.
fn as_ordinary_user_gives_roots_bytes(f: &Fixture) {
    require("setpriv");
    let user = tempfile::tempdir().unwrap();
    let (project, store) = (user.path().join("project"), user.path().join("store"));
    fs::create_dir_all(&project).unwrap();
    fs::create_dir_all(&store).unwrap();
    copy_tree(f.path(), &project);
    copy_tree(&f.store, &store);
    fs::write(
        project.join("src/hello-c/hello.c"),
        HELLO_C.replace("from a build step", "from an ordinary user"),
    )
    .unwrap();
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg("65534:65534")
            .arg(user.path()),
    );
    let mut as_user = Command::new("setpriv");
    as_user
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_imgbuild"))
        .arg("-C")
        .arg(&project)
        .arg("--store")
        .arg(&store)
        .args(["--json", "build", "hello-c"])
        .env("HOME", user.path())
        .env_remove("SOURCE_DATE_EPOCH");
    let theirs: serde_json::Value = serde_json::from_str(&run_ok(&mut as_user)).unwrap();
    let layer = &image(&theirs, "hello-c")["layers"][0];
    assert_eq!(layer["cached"], false, "{theirs}");

    fs::write(
        f.path().join("src/hello-c/hello.c"),
        HELLO_C.replace("from a build step", "from an ordinary user"),
    )
    .unwrap();
    let ours = f.build_json(&["build", "hello-c"]);
    assert_eq!(
        image(&ours, "hello-c")["layers"][0]["cached"],
        false,
        "{ours}"
    );
    assert_eq!(
        image(&ours, "hello-c")["manifest_digest"],
        image(&theirs, "hello-c")["manifest_digest"],
        "root and uid 65534 built different bytes"
    );
    assert_eq!(
        run_image(&ours, "hello-c").trim(),
        "hello from an ordinary user"
    );
}

fn step_recipe(command: &str, extra: &str) -> String {
    format!(
        "[[layers]]\nbuild = {{ image = \"c-builder\", inputs = [ {{ src = \"src/hello-c\", dest = \"/src\" }} ], workdir = \"/src\", command = {command}, outputs = [ {{ path = \"/out\", dest = \"/opt/out\" }} ]{extra} }}\n"
    )
}

fn image<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no image {name} in {json}"))
}

fn run_image(json: &serde_json::Value, name: &str) -> String {
    let tar = image(json, name)["tarball"].as_str().unwrap().to_owned();
    let img = DockerImage::load(std::path::Path::new(&tar), name);
    run_ok(Command::new("docker").args(["run", "--rm", &img.0]))
}

/// Builds `recipe` and returns its stderr, asserting that it failed.
fn fails(f: &Fixture, recipe: &str) -> String {
    let out = f.run(&["build", recipe]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{recipe} built:\n{err}");
    err
}

#[test]
fn a_build_step_compiles_c_in_a_sandbox_is_cached_by_its_inputs_and_is_walled_in() {
    require("bwrap");
    require("docker");
    let f = Fixture::new("hello");
    fs::write(f.path().join("recipes/c-builder.toml"), BUILDER).unwrap();
    fs::create_dir_all(f.path().join("src/hello-c")).unwrap();
    fs::write(f.path().join("src/hello-c/hello.c"), HELLO_C).unwrap();
    fs::write(
        f.path().join("recipes/hello-c.toml"),
        "[config]\nentrypoint = [\"/usr/local/bin/hello\"]\n\n[[layers]]\n\
         build = { image = \"c-builder\", inputs = [ { src = \"src/hello-c\", dest = \"/src\" } ], workdir = \"/src\",\n\
         command = [\"gcc-12\", \"-O2\", \"-static\", \"-o\", \"/out/hello\", \"hello.c\"], env = { LC_ALL = \"C\" },\n\
         outputs = [ { path = \"/out\", dest = \"/usr/local/bin\" } ] }\n",
    )
    .unwrap();

    // (1) compiled in the sandbox, runs in a scratch image
    let first = f.build_json(&["build", "hello-c"]);
    assert_eq!(
        run_image(&first, "hello-c").trim(),
        "hello from a build step"
    );
    let layer = &image(&first, "hello-c")["layers"][0];
    assert_eq!(layer["cached"], false, "{first}");

    // (2) nothing changed: every layer cached, the step does not run
    let second = f.build_json(&["build", "hello-c"]);
    for name in ["c-builder", "hello-c"] {
        for l in image(&second, name)["layers"].as_array().unwrap() {
            assert_eq!(l["cached"], true, "{name}: {second}");
        }
    }
    assert_eq!(
        image(&second, "hello-c")["manifest_digest"],
        image(&first, "hello-c")["manifest_digest"]
    );

    // (3) a changed source rebuilds exactly the step's layer, naming the file
    fs::write(
        f.path().join("src/hello-c/hello.c"),
        HELLO_C.replace("from a build step", "again"),
    )
    .unwrap();
    let third = f.build_json(&["build", "hello-c"]);
    for l in image(&third, "c-builder")["layers"].as_array().unwrap() {
        assert_eq!(l["cached"], true, "{third}");
    }
    let l = &image(&third, "hello-c")["layers"][0];
    assert_eq!(l["cached"], false, "{third}");
    assert_eq!(
        l["reason"],
        serde_json::json!(["src/hello-c/hello.c changed"]),
        "{third}"
    );
    assert_eq!(run_image(&third, "hello-c").trim(), "hello again");

    // (3b) as an ordinary user (uid 65534, unprivileged user namespaces, as on a
    // developer's machine): the same step runs and gives the same bytes as root's
    as_ordinary_user_gives_roots_bytes(&f);

    // (4) the walls. A control step: bash runs, writes its output, reads its input.
    fs::write(
        f.path().join("recipes/control.toml"),
        step_recipe(
            r#"["bash", "-c", "read -r l < /src/hello.c && echo \"$l\" > /out/ok"]"#,
            "",
        ),
    )
    .unwrap();
    let control = f.build_json(&["build", "control"]);
    assert_eq!(image(&control, "control")["layers"][0]["cached"], false);

    // no network: a server the test runs on 127.0.0.1 is not reachable
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    fs::write(
        f.path().join("recipes/net.toml"),
        step_recipe(
            &format!(
                r#"["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected > /out/r"]"#
            ),
            "",
        ),
    )
    .unwrap();
    let err = fails(&f, "net");
    assert!(
        err.contains("recipes/net.toml:2:9: build step `bash -c exec 3<>/dev/tcp/127.0.0.1/"),
        "{err}"
    );
    assert!(err.contains("failed with exit code 1"), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    let mut buf = [0u8; 1];
    match listener.accept() {
        Ok((mut s, _)) => panic!("the sandbox connected: {:?}", s.read(&mut buf)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }

    // no host files: a marker in the host's /tmp and one in the project, outside the inputs
    let marker = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    fs::write(marker.path(), "host secret\n").unwrap();
    let in_project = f.path().join("secret.txt");
    fs::write(&in_project, "project secret\n").unwrap();
    for (name, path) in [
        ("tmpmarker", marker.path()),
        ("projmarker", in_project.as_path()),
    ] {
        fs::write(
            f.path().join(format!("recipes/{name}.toml")),
            step_recipe(
                &format!(
                    r#"["bash", "-c", "read -r l < {} && echo \"$l\" > /out/leak"]"#,
                    path.display()
                ),
                "",
            ),
        )
        .unwrap();
        let err = fails(&f, name);
        assert!(err.contains("No such file or directory"), "{err}");
        assert!(
            !err.contains("host secret") && !err.contains("project secret"),
            "{err}"
        );
    }

    // no writes outside the outputs: not to /, not to an input
    for (name, target) in [("writeroot", "/evil"), ("writeinput", "/src/evil")] {
        fs::write(
            f.path().join(format!("recipes/{name}.toml")),
            step_recipe(&format!(r#"["bash", "-c", "echo x > {target}"]"#), ""),
        )
        .unwrap();
        let err = fails(&f, name);
        assert!(err.contains("Read-only file system"), "{err}");
    }
    assert!(!f.path().join("src/hello-c/evil").exists());

    // --check-reproducible runs a step twice and names the files that differ
    fs::write(
        f.path().join("recipes/dated.toml"),
        step_recipe(
            r#"["bash", "-c", "echo $EPOCHREALTIME > /out/date; echo same > /out/same"]"#,
            "",
        ),
    )
    .unwrap();
    let out = f.run(&["build", "--check-reproducible", "dated"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "--check-reproducible: 1 output file(s) differ between two runs:\n  /out/date"
        ),
        "{err}"
    );
    fs::write(
        f.path().join("recipes/stable.toml"),
        step_recipe(r#"["bash", "-c", "echo same > /out/same"]"#, ""),
    )
    .unwrap();
    run_ok(f.cmd().args(["build", "--check-reproducible", "stable"]));

    // without bwrap on PATH the error says what to install
    fs::write(
        f.path().join("recipes/nobwrap.toml"),
        step_recipe(r#"["bash", "-c", "echo nobwrap > /out/x"]"#, ""),
    )
    .unwrap();
    let out = f
        .cmd()
        .env("PATH", "/nonexistent")
        .args(["build", "nobwrap"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("`bwrap` is not installed: build steps run in bubblewrap; install it (apt-get install bubblewrap)"),
        "{err}"
    );

    // a step over its time limit is killed, and the error says so
    fs::write(
        f.path().join("recipes/slow.toml"),
        step_recipe(
            r#"["bash", "-c", "echo started; while :; do :; done"]"#,
            ", timeout_secs = 1",
        ),
    )
    .unwrap();
    let err = fails(&f, "slow");
    assert!(err.contains("killed after timeout_secs = 1"), "{err}");
    assert!(err.contains("| started"), "{err}");
}

/// Recipe errors name the file, line and column, before anything is built.
#[test]
fn a_build_step_recipe_error_names_the_place() {
    let f = Fixture::new("hello");
    fs::create_dir_all(f.path().join("src/hello-c")).unwrap();
    for (toml, want) in [
        (
            step_recipe("[]", ""),
            "recipes/bad.toml:2:113: command may not be empty",
        ),
        (
            "[[layers]]\nbuild = { image = \"base\", inputs = [ { src = \"src/hello-c\", dest = \"/out/src\" } ], command = [\"true\"], outputs = [ { path = \"/out\", dest = \"/x\" } ] }\n".to_owned(),
            "path \"/out\" overlaps the mount point /out/src",
        ),
        (
            step_recipe(r#"["true"]"#, ", timeout_secs = 0"),
            "timeout_secs must be at least 1",
        ),
        (
            "[[layers]]\nbuild = { image = \"base\", command = [\"true\"], outputs = [ { path = \"/tmp\", dest = \"/x\" } ] }\n".to_owned(),
            "recipes/bad.toml:2:68: path \"/tmp\" is /tmp or around it, which the sandbox provides itself",
        ),
    ] {
        fs::write(f.path().join("recipes/bad.toml"), &toml).unwrap();
        let out = f.run(&["plan", "bad"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}");
        assert!(err.contains(want), "{toml}\n{err}");
    }
}
