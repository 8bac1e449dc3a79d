//! `imgbuild load` into real engines (skips what the engine has under every tag,
//! restores a missing tag; checked with the engines' own events and inspect) and
//! `imgbuild pin` (digests written into an env file that docker-compose reads:
//! pulled from a real registry by digest, or run locally by image ID).

use std::process::Command;

use serde_json::Value;

use crate::support::*;

/// The hello fixture with unique repositories (engines are shared) and two tags.
struct Named {
    f: Fixture,
    u: String,
}

impl Named {
    fn new() -> Named {
        let f = Fixture::new("hello");
        let u = unique();
        for name in ["base", "hello"] {
            let p = f.path().join(format!("recipes/{name}.toml"));
            let recipe = std::fs::read_to_string(&p).unwrap();
            std::fs::write(
                &p,
                format!(
                    "repository = \"imgbuild-test/{name}-{u}\"\ntags = [\"t1\", \"t2\"]\n{recipe}"
                ),
            )
            .unwrap();
        }
        Named { f, u }
    }

    fn repo(&self, name: &str) -> String {
        format!("imgbuild-test/{name}-{}", self.u)
    }

    /// Every name the images get in `engine`.
    fn engine_names(&self, engine: &str) -> Vec<String> {
        let prefix = if engine == "podman" { "localhost/" } else { "" };
        ["base", "hello"]
            .iter()
            .flat_map(|n| ["t1", "t2"].map(|t| format!("{prefix}{}:{t}", self.repo(n))))
            .collect()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = run_ok(self.f.cmd().arg("--json").args(args));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{out}"))
    }
}

/// Removes the given names from an engine when dropped.
struct Untag(&'static str, Vec<String>);

impl Drop for Untag {
    fn drop(&mut self) {
        let _ = Command::new(self.0)
            .args(["rmi", "-f"])
            .args(&self.1)
            .output();
    }
}

fn actions(load: &Value) -> Vec<(String, String)> {
    load.as_array()
        .unwrap_or_else(|| panic!("no load outcomes: {load}"))
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap().to_owned(),
                o["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn image_id(engine: &str, reference: &str) -> Option<String> {
    let o = Command::new(engine)
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .output()
        .unwrap();
    o.status.success().then(|| {
        let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        if id.starts_with("sha256:") {
            id
        } else {
            format!("sha256:{id}")
        }
    })
}

fn config_digest(built: &Value, name: &str) -> String {
    built["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap()["config_digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

/// IDs of the images docker loaded between two instants (`docker events`: the
/// engine's own record, independent of what imgbuild says it did).
fn docker_loads(since: &str, until: &str) -> Vec<String> {
    run_ok(Command::new("docker").args([
        "events",
        "--since",
        since,
        "--until",
        until,
        "--filter",
        "type=image",
        "--filter",
        "event=load",
        "--format",
        "{{.ID}}",
    ]))
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
fn load_into_docker_skips_what_it_has_and_restores_a_missing_tag() {
    require("docker");
    let n = Named::new();
    let _cleanup = Untag("docker", n.engine_names("docker"));
    // `all --load --json`: one document with the build and what load did.
    let built = n.json(&["all", "--load", "--engine", "docker"]);
    assert_eq!(
        actions(&built["load"]),
        pairs(&[("base", "loaded"), ("hello", "loaded")]),
        "{built}"
    );
    assert!(built["images"].as_array().unwrap().len() == 2, "{built}");
    let ids: Vec<String> = ["base", "hello"]
        .iter()
        .map(|i| config_digest(&built, i))
        .collect();
    for (i, name) in n.engine_names("docker").iter().enumerate() {
        assert_eq!(
            image_id("docker", name).as_ref(),
            Some(&ids[i / 2]),
            "{name}"
        );
    }

    // Again: every image skipped, and docker loaded nothing of ours.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let since = now();
    let again =
        n.f.cmd()
            .args(["--json", "load", "--engine", "docker"])
            .output()
            .unwrap();
    let until = now();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let doc: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        actions(&doc["load"]),
        pairs(&[("base", "skipped"), ("hello", "skipped")])
    );
    let said = String::from_utf8_lossy(&again.stderr);
    assert_eq!(said.matches("skipped").count(), 2, "{said}");
    let loads = docker_loads(&since, &until);
    assert!(
        loads.iter().all(|id| !ids.contains(id)),
        "docker loaded {loads:?}"
    );

    // One tag removed: it is back (by `docker tag`, no load), the other image skipped.
    let t2 = format!("{}:t2", n.repo("hello"));
    run_ok(Command::new("docker").args(["rmi", &t2]));
    assert_eq!(image_id("docker", &t2), None);
    let since = now();
    let third = n.json(&["load", "--engine", "docker"]);
    let until = now();
    assert_eq!(
        actions(&third["load"]),
        pairs(&[("base", "skipped"), ("hello", "tagged")])
    );
    assert_eq!(image_id("docker", &t2), Some(ids[1].clone()));
    let loads = docker_loads(&since, &until);
    assert!(
        loads.iter().all(|id| !ids.contains(id)),
        "docker loaded {loads:?}"
    );

    // A tag that names another image does not count: it is moved back.
    run_ok(Command::new("docker").args(["tag", &format!("{}:t1", n.repo("base")), &t2]));
    let fourth = n.json(&["load", "--engine", "docker"]);
    assert_eq!(
        actions(&fourth["load"]),
        pairs(&[("base", "skipped"), ("hello", "tagged")])
    );
    assert_eq!(image_id("docker", &t2), Some(ids[1].clone()));
    // Gone under every tag: loaded from out/hello.tar.
    run_ok(
        Command::new("docker")
            .args(["rmi"])
            .arg(format!("{}:t1", n.repo("hello")))
            .arg(&t2),
    );
    let since = now();
    let fifth = n.json(&["load", "--engine", "docker"]);
    let until = now();
    assert_eq!(
        actions(&fifth["load"]),
        pairs(&[("base", "skipped"), ("hello", "loaded")])
    );
    assert!(docker_loads(&since, &until).contains(&ids[1]));
    let ran = run_ok(Command::new("docker").args(["run", "--rm", &t2]));
    assert!(
        ran.contains("/srv/index.html: <h1>hello from imgbuild</h1>"),
        "{ran}"
    );
}

#[test]
fn load_into_podman_skips_what_it_has_and_restores_a_missing_tag() {
    require("podman");
    let n = Named::new();
    let names = n.engine_names("podman");
    let _cleanup = Untag("podman", names.clone());
    let built = n.json(&["all"]);
    let first = n.json(&["load", "--engine", "podman"]);
    assert_eq!(
        actions(&first["load"]),
        pairs(&[("base", "loaded"), ("hello", "loaded")])
    );
    let ids: Vec<String> = ["base", "hello"]
        .iter()
        .map(|i| config_digest(&built, i))
        .collect();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            image_id("podman", name).as_ref(),
            Some(&ids[i / 2]),
            "{name}"
        );
    }
    let again = n.json(&["load", "--engine", "podman"]);
    assert_eq!(
        actions(&again["load"]),
        pairs(&[("base", "skipped"), ("hello", "skipped")])
    );
    let t2 = format!("localhost/{}:t2", n.repo("hello"));
    // `podman untag IMAGE NAME`: without NAME it would remove every name
    run_ok(Command::new("podman").args(["untag", &t2, &t2]));
    assert_eq!(image_id("podman", &t2), None);
    let third = n.json(&["load", "--engine", "podman"]);
    assert_eq!(
        actions(&third["load"]),
        pairs(&[("base", "skipped"), ("hello", "tagged")])
    );
    assert_eq!(image_id("podman", &t2), Some(ids[1].clone()));
    let ran = run_ok(Command::new("podman").args(["run", "--rm", "--runtime", "runc", &t2]));
    assert!(
        ran.contains("/srv/index.html: <h1>hello from imgbuild</h1>"),
        "{ran}"
    );
}

/// A docker-compose project in `dir` (a tiny compose file using the pin
/// variables), taken down when dropped, with the images it pulled removed.
struct ComposeProject {
    file: std::path::PathBuf,
    name: String,
    pulled: Vec<String>,
}

impl ComposeProject {
    fn new(deploy: &std::path::Path) -> ComposeProject {
        require("docker-compose");
        let file = deploy.join("compose.yaml");
        std::fs::write(
            &file,
            "services:\n  hello:\n    image: ${IMGBUILD_HELLO_IMAGE:-imgbuild/hello:latest}\n",
        )
        .unwrap();
        ComposeProject {
            file,
            name: format!("imgbuild-pin-{}", unique()),
            pulled: vec![],
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.arg("-f").arg(&self.file).args(["-p", &self.name]);
        // the shell's environment would override the env file
        c.env_remove("IMGBUILD_HELLO_IMAGE");
        c
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = self.cmd().args(["down", "-v"]).output();
        for r in &self.pulled {
            let _ = Command::new("docker").args(["rmi", r]).output();
        }
    }
}

fn env_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn pin_writes_registry_digests_that_docker_compose_pulls_and_runs() {
    use std::os::unix::fs::PermissionsExt;
    require("docker");
    let reg = Registry::start();
    let f = Fixture::new("hello");
    let built = f.build_json(&["all"]);
    let prefix = format!("{}/pin{}", reg.addr, unique());
    run_ok(f.cmd().args(["push", "--registry", &prefix]));
    let deploy = f.path().join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    let env = deploy.join(".env");
    let before =
        "# mine\nKEEP=1 # a comment\n\nIMGBUILD_HELLO_IMAGE=old/ref:1\nexport OTHER = 'x y'\n";
    std::fs::write(&env, before).unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();

    let out = run_ok(f.cmd().args(["--json", "pin", "--registry", &prefix]));
    let doc: Value = serde_json::from_str(&out).unwrap();
    let digest = |name: &str| {
        digests(&built)
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
    };
    let hello_pin = format!("{prefix}/hello@{}", digest("hello"));
    let base_pin = format!("{prefix}/base@{}", digest("base"));
    assert_eq!(doc["pins"][0]["variable"], "IMGBUILD_BASE_IMAGE", "{doc}");
    assert_eq!(doc["pins"][1]["reference"], hello_pin.as_str(), "{doc}");
    // Every other line kept, the pin replaced in place, the new one appended; 0600.
    let lines = env_lines(&env);
    assert_eq!(
        lines[..5],
        [
            "# mine".to_owned(),
            "KEEP=1 # a comment".to_owned(),
            String::new(),
            format!("IMGBUILD_HELLO_IMAGE={hello_pin}"),
            "export OTHER = 'x y'".to_owned(),
        ]
    );
    assert!(
        lines[5].is_empty() && lines[6].starts_with("# image pins"),
        "{lines:?}"
    );
    assert_eq!(lines[7], format!("IMGBUILD_BASE_IMAGE={base_pin}"));
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert_eq!(mode_of(&env), 0o600);
    // No temp file left beside it.
    assert_eq!(std::fs::read_dir(&deploy).unwrap().count(), 1);

    // docker-compose reads the pin, pulls that digest from the registry, runs it.
    let mut project = ComposeProject::new(&deploy);
    let config = run_ok(project.cmd().arg("config"));
    assert!(config.contains(&format!("image: {hello_pin}")), "{config}");
    project.pulled.push(hello_pin.clone());
    run_ok(project.cmd().arg("pull"));
    let pulled = run_ok(Command::new("docker").args([
        "image",
        "inspect",
        "--format",
        "{{.Id}} {{json .RepoDigests}}",
        &hello_pin,
    ]));
    assert!(
        pulled.starts_with(&config_digest(&built, "hello")) && pulled.contains(&hello_pin),
        "{pulled}"
    );
    let ran = run_ok(project.cmd().args(["run", "--rm", "hello"]));
    assert!(
        ran.contains("/srv/index.html: <h1>hello from imgbuild</h1>"),
        "{ran}"
    );

    // A rebuild after a change: pinning again moves the pin (in place, no second header).
    std::fs::write(f.path().join("layers/site/index.html"), "<h1>v2</h1>\n").unwrap();
    let rebuilt = f.build_json(&["build", "hello"]);
    run_ok(f.cmd().args(["push", "--registry", &prefix, "hello"]));
    run_ok(f.cmd().args(["pin", "--registry", &prefix, "hello"]));
    let v2 = format!(
        "{prefix}/hello@{}",
        digests(&rebuilt)
            .into_iter()
            .find(|(n, _)| n == "hello")
            .unwrap()
            .1
    );
    let lines2 = env_lines(&env);
    assert_eq!(lines2[3], format!("IMGBUILD_HELLO_IMAGE={v2}"));
    assert_eq!(lines2.len(), 8);
    assert_eq!(lines2[7], lines[7]);
    project.pulled.push(v2);
    run_ok(project.cmd().arg("pull"));
    let ran = run_ok(project.cmd().args(["run", "--rm", "hello"]));
    assert!(ran.contains("/srv/index.html: <h1>v2</h1>"), "{ran}");
}

#[test]
fn pin_local_writes_the_loaded_image_id_that_compose_and_podman_run() {
    use std::os::unix::fs::symlink;
    require("docker");
    require("podman");
    let n = Named::new();
    let _docker = Untag("docker", n.engine_names("docker"));
    let _podman = Untag("podman", n.engine_names("podman"));
    let deploy = n.f.path().join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    let env = deploy.join(".env");

    // Clear errors: no env file; an image that is not loaded.
    let built = n.json(&["all"]);
    let hello_id = config_digest(&built, "hello");
    let out = n.f.run(&["pin", "--local", "--engine", "docker", "hello"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("imgbuild setup"),
        "{err}"
    );
    std::fs::write(&env, "A=1\n").unwrap();
    let out = n.f.run(&["pin", "--local", "--engine", "docker", "hello"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("imgbuild load hello"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&env).unwrap(), "A=1\n");

    // Loaded into docker: pinned by image ID, which docker-compose runs as is.
    run_ok(n.f.cmd().args(["load", "--engine", "docker"]));
    run_ok(
        n.f.cmd()
            .args(["pin", "--local", "--engine", "docker", "hello"]),
    );
    let lines = env_lines(&env);
    assert_eq!(lines[0], "A=1");
    assert_eq!(
        lines.last().unwrap(),
        &format!("IMGBUILD_HELLO_IMAGE={hello_id}")
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("IMGBUILD_BASE_IMAGE")),
        "only the named image: {lines:?}"
    );
    let project = ComposeProject::new(&deploy);
    let config = run_ok(project.cmd().arg("config"));
    assert!(config.contains(&format!("image: {hello_id}")), "{config}");
    let ran = run_ok(project.cmd().args(["run", "--rm", "hello"]));
    assert!(
        ran.contains("/srv/index.html: <h1>hello from imgbuild</h1>"),
        "{ran}"
    );
    // the container compose creates runs exactly that image
    run_ok(project.cmd().args(["up", "--no-start"]));
    let container = run_ok(project.cmd().args(["ps", "-q", "hello"]));
    let image = run_ok(Command::new("docker").args([
        "inspect",
        "--format",
        "{{.Image}}",
        container.trim(),
    ]));
    assert_eq!(image.trim(), hello_id);

    // Podman: the same ID; a symlinked env file is updated where it points.
    let real = n.f.path().join("podman.env");
    std::fs::write(&real, "# podman\n").unwrap();
    let link = deploy.join("podman.env");
    symlink(&real, &link).unwrap();
    run_ok(n.f.cmd().args(["load", "--engine", "podman", "hello"]));
    run_ok(
        n.f.cmd()
            .args(["pin", "--local", "--engine", "podman", "--env-file"])
            .arg(&link)
            .arg("hello"),
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let lines = env_lines(&real);
    assert_eq!(
        lines.last().unwrap(),
        &format!("IMGBUILD_HELLO_IMAGE={hello_id}")
    );
    let ran = run_ok(Command::new("podman").args(["run", "--rm", "--runtime", "runc", &hello_id]));
    assert!(
        ran.contains("/srv/index.html: <h1>hello from imgbuild</h1>"),
        "{ran}"
    );
}
