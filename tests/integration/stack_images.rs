//! The repository's stack images, built from the real Debian archive and PyPI with
//! the committed lock, run in a real engine (Docker).

use std::process::Command;

use crate::support::*;

fn image(name: &str) -> DockerImage {
    DockerImage::load(&stack().out.join(format!("{name}.tar")), name)
}

#[test]
fn nginx_serves_static_files_and_proxies_to_an_upstream() {
    let (nginx, venv) = (image("nginx"), image("venv"));
    let net = docker_network();
    // The upstream: a tiny HTTP server in the venv image, reachable as `app`.
    let upstream = "import http.server as h\nclass H(h.BaseHTTPRequestHandler):\n def do_GET(s):\n  b=('{\"upstream\":\"'+s.path+'\"}').encode(); s.send_response(200); s.send_header('Content-Length',str(len(b))); s.end_headers(); s.wfile.write(b)\nh.HTTPServer(('0.0.0.0',8000),H).serve_forever()";
    let _app = docker_run(&[
        "--network",
        &net.1,
        "--network-alias",
        "app",
        &venv.0,
        "-c",
        upstream,
    ]);
    let port = free_port().to_string();
    let c = docker_run(&[
        "--network",
        &net.1,
        "-p",
        &format!("127.0.0.1:{port}:8080"),
        &nginx.0,
    ]);
    let base = format!("http://127.0.0.1:{port}");
    wait_for(30, "nginx", || {
        http_get(&format!("{base}/nginx-health")).filter(|(s, _)| *s == 200)
    });
    let (s, body) = http_get(&format!("{base}/static/app.css")).unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        body,
        std::fs::read_to_string(repo_root().join("layers/app/static/app.css")).unwrap()
    );
    let (s, body) = wait_for(30, "the proxied upstream", || {
        http_get(&format!("{base}/api/hello")).filter(|(s, _)| *s == 200)
    });
    assert_eq!(s, 200);
    assert!(body.contains("\"upstream\":\"/api/hello\""), "{body}");
    // workers run as www-data, the master as root
    let top = run_ok(Command::new("docker").args(["top", &c.1, "-o", "user,pid,args"]));
    assert!(
        top.lines()
            .any(|l| l.starts_with("www-data") && l.contains("worker process")),
        "{top}"
    );
    assert!(
        docker_logs(&c.1).contains("GET /static/app.css"),
        "access log goes to stdout"
    );
}

#[test]
fn postgres_initialises_with_plpython_and_backup_functions() {
    require("psql");
    let pg = image("postgres-plpython");
    let port = free_port().to_string();
    let password = format!("pw{}", unique());
    let c = docker_run(&[
        "-e",
        &format!("POSTGRES_PASSWORD={password}"),
        "-p",
        &format!("127.0.0.1:{port}:5432"),
        &pg.0,
    ]);
    let psql = |sql: &str| {
        let o = Command::new("psql")
            .env("PGPASSWORD", &password)
            // the init SQL creates the extension and functions in the app database
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "app",
                "-Atc",
                sql,
            ])
            .output()
            .unwrap();
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    wait_for(90, "a password login over TCP", || psql("select 1")).to_string();
    assert_eq!(
        psql("select extname from pg_extension where extname = 'plpython3u'").as_deref(),
        Some("plpython3u")
    );
    let report = psql("select backup_report()::text")
        .unwrap_or_else(|| panic!("backup_report failed; logs:\n{}", docker_logs(&c.1)));
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        report["backup_dir"], "/var/lib/postgresql/backups",
        "{report}"
    );
    assert!(
        report["python_version"]
            .as_str()
            .unwrap()
            .starts_with("3.13"),
        "PL/Python is trixie's 3.13: {report}"
    );
    // backup_write: a JSON dump of public.jobs in the backups volume
    let written = psql("select backup_write('itest')::text")
        .unwrap_or_else(|| panic!("backup_write failed; logs:\n{}", docker_logs(&c.1)));
    let written: serde_json::Value = serde_json::from_str(&written).unwrap();
    assert_eq!(
        written["path"], "/var/lib/postgresql/backups/itest.json",
        "{written}"
    );
    // backup_list sees it
    let list: serde_json::Value =
        serde_json::from_str(&psql("select backup_list()::text").unwrap()).unwrap();
    let files = list["files"].as_array().unwrap();
    assert!(
        files
            .iter()
            .any(|f| f["name"] == "itest.json" && f["bytes"] == written["bytes"]),
        "{list}"
    );
    // and the file is really in the volume mounted at the backups directory: read it
    // from the host side of the mount
    let source = run_ok(Command::new("docker").args([
        "inspect",
        "-f",
        "{{range .Mounts}}{{if eq .Destination \"/var/lib/postgresql/backups\"}}{{.Source}}{{end}}{{end}}",
        &c.1,
    ]));
    let on_host = std::path::Path::new(source.trim()).join("itest.json");
    let bytes = std::fs::read(&on_host).unwrap_or_else(|e| panic!("{}: {e}", on_host.display()));
    assert_eq!(bytes.len() as u64, written["bytes"].as_u64().unwrap());
    let sha = run_ok(Command::new("sha256sum").arg(&on_host));
    assert_eq!(
        sha.split_whitespace().next(),
        written["sha256"].as_str(),
        "{written}"
    );
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["format"], "imgbuild-jobs-backup/1", "{doc}");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&on_host).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.uid()),
        (0o600, 999),
        "owned by postgres, private"
    );
    // a wrong password is refused
    let bad = Command::new("psql")
        .env("PGPASSWORD", "wrong")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-Atc",
            "select 1",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    // the server runs as postgres, not root
    let top = run_ok(Command::new("docker").args(["top", &c.1, "-o", "user,pid,args"]));
    assert!(top.lines().skip(1).all(|l| !l.starts_with("root")), "{top}");
}

#[test]
fn redis_answers_ping() {
    let redis = image("redis");
    let c = docker_run(&[&redis.0]);
    let pong = wait_for(30, "redis", || {
        docker_exec(&c.1, &["redis-cli", "ping"]).filter(|s| s.trim() == "PONG")
    });
    assert_eq!(pong.trim(), "PONG");
    assert_eq!(
        docker_exec(&c.1, &["redis-cli", "set", "k", "v"])
            .unwrap()
            .trim(),
        "OK"
    );
    // container.conf was read (protected mode is on by default) after Debian's redis.conf,
    // which it includes: an unreadable include is fatal in redis, so the server running
    // as user redis shows that redis.conf (0644 root:root as shipped) is readable.
    assert_eq!(
        docker_exec(&c.1, &["redis-cli", "config", "get", "protected-mode"])
            .unwrap()
            .lines()
            .nth(1),
        Some("no")
    );
    let top = run_ok(Command::new("docker").args(["top", &c.1, "-o", "user,pid,args"]));
    assert!(
        // uid 999 is redis in the image (the host may have no such user)
        top.lines()
            .skip(1)
            .all(|l| l.starts_with("999 ") && l.contains("redis-server")),
        "{top}"
    );
}

#[test]
fn rabbitmq_pings_and_accepts_the_configured_user() {
    let (rmq, venv) = (image("rabbitmq"), image("venv"));
    let net = docker_network();
    let user = format!("u{}", unique());
    let c = docker_run(&[
        "--network",
        &net.1,
        "--network-alias",
        "rmq",
        "-e",
        &format!("RABBITMQ_DEFAULT_USER={user}"),
        "-e",
        "RABBITMQ_DEFAULT_PASS=s3cret",
        &rmq.0,
    ]);
    wait_for(120, "rabbitmq-diagnostics ping", || {
        docker_exec(&c.1, &["rabbitmq-diagnostics", "-q", "ping"])
    });
    // the postinst would copy this file to /etc/rabbitmq/rabbitmq-env.conf; the recipe
    // does not, because it sets nothing (every line is a comment): check that it still is
    assert_eq!(
        docker_exec(
            &c.1,
            &[
                "sed",
                "-n",
                "/^[[:space:]]*[^#[:space:]]/p",
                "/usr/share/rabbitmq/rabbitmq-env.conf"
            ]
        )
        .as_deref(),
        Some(""),
        "rabbitmq-env.conf now sets something: copy it in recipes/rabbitmq.toml"
    );
    // the node answers pings before its AMQP listener is up
    wait_for(120, "rabbitmq startup", || {
        docker_logs(&c.1)
            .contains("Server startup complete")
            .then_some(())
    });
    let amqp = |u: &str, p: &str| {
        let script = format!(
            "from kombu import Connection\nwith Connection('amqp://{u}:{p}@rmq:5672//', connect_timeout=10) as c:\n    c.connect(); print('connected')"
        );
        Command::new("docker")
            .args(["run", "--rm", "--network", &net.1, &venv.0, "-c", &script])
            .output()
            .unwrap()
    };
    let ok = amqp(&user, "s3cret");
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("connected"),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        !amqp(&user, "wrong").status.success(),
        "a wrong password must be refused"
    );
}

#[test]
fn app_imports_its_stack_and_answers_healthz() {
    let app = image("app");
    let out = run_ok(Command::new("docker").args([
        "run",
        "--rm",
        "--entrypoint",
        "/opt/venv/bin/python",
        &app.0,
        "-c",
        "import celery, flask, psycopg, redis, gunicorn; print('ok', psycopg.pq.__impl__)",
    ]));
    // psycopg-c, built from its sdist in the py-builder sandbox, linked against libpq5
    assert!(out.starts_with("ok c"), "{out}");
    // every module comes from a .pyc of the image (the venv's and Debian's stdlib,
    // written at build time by the image's own interpreter): nothing is compiled at start
    let verbose = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--entrypoint",
            "/opt/venv/bin/python",
            &app.0,
            "-v",
            "-c",
            "import celery, flask, psycopg, redis, gunicorn",
        ])
        .output()
        .unwrap();
    assert!(verbose.status.success());
    let log = String::from_utf8_lossy(&verbose.stderr);
    let from = |dir: &str| {
        log.lines()
            .filter(|l| l.starts_with(&format!("# code object from '{dir}")))
            .collect::<Vec<_>>()
    };
    let (venv, stdlib) = (
        from("/opt/venv/lib/python3.13/site-packages/"),
        from("/usr/lib/python3.13/"),
    );
    assert!(venv.len() > 100 && stdlib.len() > 50, "{log}");
    let compiled: Vec<_> = venv
        .iter()
        .chain(&stdlib)
        .filter(|l| !l.ends_with(".pyc'"))
        .collect();
    assert!(compiled.is_empty(), "compiled at start: {compiled:?}");
    let port = free_port().to_string();
    let c = docker_run(&[
        "-p",
        &format!("127.0.0.1:{port}:8000"),
        "-e",
        "DATABASE_URL=postgresql://x:y@nowhere/z",
        "-e",
        "CELERY_BROKER_URL=amqp://x:y@nowhere//",
        "-e",
        "REDIS_URL=redis://nowhere:6379/0",
        &app.0,
    ]);
    let (_, body) = wait_for(60, "gunicorn /healthz", || {
        http_get(&format!("http://127.0.0.1:{port}/healthz")).filter(|(s, _)| *s == 200)
    });
    assert!(
        body.contains("\"status\":\"ok\""),
        "{body}\n{}",
        docker_logs(&c.1)
    );
    let top = run_ok(Command::new("docker").args(["top", &c.1, "-o", "user,pid,args"]));
    assert!(
        top.contains("gunicorn") && !top.lines().skip(1).any(|l| l.starts_with("root")),
        "{top}"
    );
}

#[test]
fn worker_connects_to_a_broker_and_completes_a_task() {
    let (worker, rmq, redis, app) = (
        image("worker"),
        image("rabbitmq"),
        image("redis"),
        image("app"),
    );
    let version = run_ok(Command::new("docker").args(["run", "--rm", &worker.0, "--version"]));
    assert!(
        version.trim().starts_with('5'),
        "celery --version: {version}"
    );
    let net = docker_network();
    let rc = docker_run(&[
        "--network",
        &net.1,
        "--network-alias",
        "rabbitmq",
        "-e",
        "RABBITMQ_DEFAULT_USER=stack",
        "-e",
        "RABBITMQ_DEFAULT_PASS=pw",
        &rmq.0,
    ]);
    let _redis = docker_run(&["--network", &net.1, "--network-alias", "redis", &redis.0]);
    wait_for(120, "rabbitmq", || {
        docker_exec(&rc.1, &["rabbitmq-diagnostics", "-q", "ping"])
    });
    let env = [
        "-e",
        "CELERY_BROKER_URL=amqp://stack:pw@rabbitmq:5672//",
        "-e",
        "REDIS_URL=redis://redis:6379/0",
        "-e",
        "CELERY_QUEUES=default",
    ];
    let mut args = vec!["--network", &net.1];
    args.extend(env);
    args.push(&worker.0);
    let w = docker_run(&args);
    wait_for(60, "the worker to be ready", || {
        docker_logs(&w.1).contains("ready.").then_some(())
    });
    // celery's built-in `celery.accumulate` task, sent from the app image to the
    // default queue, executed by the worker, its result read from Redis.
    let client = "from celery import Celery\nc = Celery(broker='amqp://stack:pw@rabbitmq:5672//', backend='redis://redis:6379/0')\nr = c.send_task('celery.accumulate', args=(2, 3), queue='default')\nprint('result', r.get(timeout=60))";
    let out = run_ok(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        &net.1,
        "--entrypoint",
        "/opt/venv/bin/python",
        &app.0,
        "-c",
        client,
    ]));
    assert!(
        out.contains("result [2, 3]") || out.contains("result (2, 3)"),
        "{out}\nworker logs:\n{}",
        docker_logs(&w.1)
    );
    assert!(
        docker_logs(&w.1).contains("succeeded"),
        "{}",
        docker_logs(&w.1)
    );
}

#[test]
fn stack_layers_are_shared_and_rebuild_bit_for_bit() {
    let s = stack();
    let venv = layers_of(&s.json, "venv");
    for name in ["app", "worker"] {
        let l = layers_of(&s.json, name);
        assert_eq!(
            l[..venv.len()].iter().map(|x| &x.0).collect::<Vec<_>>(),
            venv.iter().map(|x| &x.0).collect::<Vec<_>>(),
            "{name} must start with venv's layers"
        );
    }
    // Rebuild every layer, of both platforms, in a new store that has the downloads
    // (.debs, wheels) but no layer records: the same inputs must give the same bytes.
    // The wheels built from sdists are kept with the downloads (their records, keyed
    // by sdist, builder image and target): compiling psycopg-c again for arm64 under
    // emulation would take minutes, and an sdist build's reproducibility is checked
    // by `sdist_git` (`--check-reproducible`).
    let fresh = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fresh.path().join("blobs")).unwrap();
    std::fs::create_dir_all(fresh.path().join("records")).unwrap();
    run_ok(
        Command::new("cp")
            .arg("-al")
            .arg(s.store.join("blobs/sha256"))
            .arg(fresh.path().join("blobs/")),
    );
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(s.store.join("records/pywheel-built-v1"))
            .arg(fresh.path().join("records/")),
    );
    let out = tempfile::tempdir().unwrap();
    let json = run_ok(
        Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .arg("-C")
            .arg(repo_root())
            .arg("--store")
            .arg(fresh.path())
            .arg("--out")
            .arg(out.path())
            .args(["--json", "--jobs", "1", "all", "--locked"]),
    );
    let rebuilt: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        layers_of(&rebuilt, "postgres-plpython")
            .iter()
            .all(|(_, cached)| !cached),
        "layers must really be rebuilt"
    );
    assert_eq!(digests(&rebuilt), digests(&s.json));
}

/// `imgbuild inspect` shows the Debian notes: maintainer scripts that did not run, and a
/// warning when packages ship `#!/bin/sh` scripts but the layer has no `/bin/sh`.
#[test]
fn inspect_lists_unrun_scripts_and_missing_sh() {
    let s = stack();
    let inspect = |name: &str| {
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_imgbuild"))
                .arg("-C")
                .arg(repo_root())
                .arg("--store")
                .arg(&s.store)
                .args(["inspect", name]),
        )
    };
    let redis = inspect("redis");
    assert!(
        redis.contains("not run: redis-server postinst") && redis.contains("dpkg-statoverride"),
        "{redis}"
    );
    // nginx has no dash: its init script could not run
    let nginx = inspect("nginx");
    assert!(
        nginx
            .lines()
            .any(|l| l.contains("warning: this layer has no /bin/sh")
                && l.contains("nginx-common (/etc/init.d/nginx)")),
        "{nginx}"
    );
    // postgres has dash: no such warning
    let pg = inspect("postgres-plpython");
    assert!(!pg.contains("no /bin/sh"), "{pg}");
}

/// After `imgbuild gc`, what Debian layers were made from stays: the .debs and the
/// uncompressed data.tar spools their files point into, so rebuilding the layers
/// decompresses nothing.
#[test]
fn gc_keeps_the_spools_so_a_rebuild_does_not_decompress() {
    let s = stack();
    let copy = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(copy.path().join("blobs")).unwrap();
    run_ok(
        Command::new("cp")
            .arg("-al")
            .arg(s.store.join("blobs/sha256"))
            .arg(copy.path().join("blobs/")),
    );
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(s.store.join("records"))
            .arg(copy.path()),
    );
    let imgbuild = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
        c.arg("-C").arg(repo_root()).arg("--store").arg(copy.path());
        c
    };
    run_ok(imgbuild().args(["gc", "--keep-days", "1"]));
    let unpack = copy.path().join("records/debian-unpack-v1");
    let mut checked = 0;
    let mut stamps = vec![];
    for e in std::fs::read_dir(&unpack).unwrap() {
        let e = e.unwrap();
        if !copy
            .path()
            .join("blobs/sha256")
            .join(e.file_name())
            .exists()
        {
            continue; // a .deb no build of this store uses any more: gone with its spool
        }
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        let spool = rec["tar"].as_str().unwrap().trim_start_matches("sha256:");
        assert!(
            copy.path().join("blobs/sha256").join(spool).exists(),
            "gc removed the spool of {:?}",
            e.file_name()
        );
        stamps.push((e.path(), e.metadata().unwrap().modified().unwrap()));
        checked += 1;
    }
    assert!(
        checked > 100,
        "only {checked} unpack records with their .deb"
    );
    // rebuild the Debian layers from the .debs: the spools are used, nothing is read again
    std::fs::remove_dir_all(copy.path().join("records/layers-v2")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let json = run_ok(
        imgbuild()
            .arg("--out")
            .arg(out.path())
            .args(["--json", "build", "--locked", "nginx", "redis"]),
    );
    let rebuilt: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        layers_of(&rebuilt, "redis")
            .iter()
            .all(|(_, cached)| !cached)
    );
    for (path, before) in stamps {
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before,
            "{} was written again: the .deb was decompressed",
            path.display()
        );
    }
    // (nginx is built with what it reads: app, its venv and builders, client-builder)
    let nginx_and_redis = |json: &serde_json::Value| {
        digests(json)
            .into_iter()
            .filter(|(n, _)| n == "nginx" || n == "redis")
            .collect::<Vec<_>>()
    };
    assert_eq!(nginx_and_redis(&rebuilt), nginx_and_redis(&s.json));
}

/// The arm64 manifest of a stack image's index, taken out of `out/NAME.tar` by skopeo
/// (an independent reader of the index) into a docker archive, and loaded.
fn arm64_image(name: &str) -> DockerImage {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join(format!("{name}-arm64.tar"));
    skopeo_copy_arch(
        &stack().out.join(format!("{name}.tar")),
        "arm64",
        &format!("docker-archive:{}", archive.display()),
    );
    DockerImage::load(&archive, &format!("{name}-arm64"))
}

/// `docker run --platform linux/arm64` of `image` with `entrypoint` and `args`.
fn run_arm64(image: &DockerImage, entrypoint: &str, args: &[&str]) -> String {
    run_ok(
        Command::new("docker")
            .args([
                "run",
                "--rm",
                "--platform",
                "linux/arm64",
                "--entrypoint",
                entrypoint,
            ])
            .arg(&image.0)
            .args(args),
    )
}

/// Every stack image is an index with an arm64 manifest, and each arm64 image runs
/// (under qemu's user-mode emulation, as scripts/setup.sh enables it): the venv's
/// psycopg-c, compiled for arm64 in the emulated py-builder sandbox, loads against
/// the image's libpq; nginx accepts its config; the servers start their binaries.
#[test]
fn arm64_images_run_under_emulation() {
    let s = stack();
    let images = s.json["images"].as_array().expect("images");
    for i in images {
        let platforms: Vec<&str> = i["platforms"]
            .as_array()
            .map(|p| p.iter().filter_map(|x| x["platform"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{}", i["name"]);
    }

    let app = arm64_image("app");
    let out = run_arm64(
        &app,
        "/opt/venv/bin/python",
        &[
            "-c",
            "import celery, flask, psycopg, redis, gunicorn, platform; \
             print(platform.machine(), psycopg.pq.__impl__, psycopg.pq.version())",
        ],
    );
    assert!(out.starts_with("aarch64 c 17"), "{out}");

    let nginx = arm64_image("nginx");
    // nginx -t reports on stderr: run_ok checks its exit status
    run_arm64(&nginx, "/usr/sbin/nginx", &["-t"]);

    let pg = arm64_image("postgres-plpython");
    let out = run_arm64(&pg, "/usr/lib/postgresql/17/bin/postgres", &["--version"]);
    assert!(out.starts_with("postgres (PostgreSQL) 17."), "{out}");

    let redis = arm64_image("redis");
    let out = run_arm64(&redis, "/usr/bin/redis-server", &["--version"]);
    assert!(out.starts_with("Redis server v=8."), "{out}");

    let rabbitmq = arm64_image("rabbitmq");
    let out = run_arm64(
        &rabbitmq,
        "/usr/bin/erl",
        &[
            "-noshell",
            "-eval",
            "io:format(\"~s~n\", [erlang:system_info(system_architecture)]), halt().",
        ],
    );
    assert!(out.trim().starts_with("aarch64"), "{out}");
}

/// The SBOMs of the stack's images (SPDX, written beside each tarball), checked with
/// the independent SPDX validator: nginx's lists exactly the Debian packages its lock
/// pins (the build machine's platform, amd64), and app's every requirement of the
/// venv, psycopg-c (built from its sdist) among them.
#[test]
fn stack_sboms_list_the_lock_and_the_requirements() {
    require("pyspdxtools");
    // names compared as PEP 503 normalises them (`prompt_toolkit` = `prompt-toolkit`)
    let pep503 = |n: &str| {
        n.to_lowercase()
            .split(['-', '_', '.'])
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("-")
    };
    let s = stack();
    let spdx = |name: &str| validated_spdx(&s.out.join(format!("{name}.spdx.json")));
    let listed =
        |doc: &serde_json::Value, prefix: &str| -> std::collections::BTreeSet<(String, String)> {
            doc["packages"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["SPDXID"].as_str().unwrap().starts_with(prefix))
                .map(|p| {
                    (
                        pep503(p["name"].as_str().unwrap()),
                        p["versionInfo"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        };

    // nginx: its lock entries for amd64 (no `arch`, or `arch = "amd64"`)
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo_root().join("imgbuild.lock")).unwrap())
            .unwrap();
    let mut pinned = std::collections::BTreeSet::new();
    for d in lock["debian"].as_array().unwrap() {
        let amd64 = d.get("arch").and_then(|a| a.as_str()).unwrap_or("amd64") == "amd64";
        if d["recipe"].as_str() == Some("nginx") && amd64 {
            for p in d["packages"].as_array().unwrap() {
                pinned.insert((
                    p["name"].as_str().unwrap().to_lowercase(),
                    p["version"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    assert!(pinned.len() > 5, "{pinned:?}");
    assert_eq!(listed(&spdx("nginx"), "SPDXRef-Deb-"), pinned);

    // app: every pin of the venv's requirements file
    let reqs = std::fs::read_to_string(repo_root().join("layers/venv/requirements.txt")).unwrap();
    let wanted: std::collections::BTreeSet<(String, String)> = reqs
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|r| r.split_once("=="))
        .map(|(n, v)| (pep503(n), v.to_owned()))
        .collect();
    assert!(wanted.contains(&("psycopg-c".to_owned(), "3.3.9".to_owned())));
    let app = spdx("app");
    assert_eq!(listed(&app, "SPDXRef-PyPI-"), wanted);
    // psycopg-c's wheel was built here: its entry names the sdist the file pins
    let psycopg_c = app["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str().is_some_and(|n| pep503(n) == "psycopg-c"))
        .unwrap();
    let source = psycopg_c["sourceInfo"].as_str().unwrap_or_default();
    let sdist_hash = source
        .split("sha256 ")
        .nth(1)
        .and_then(|h| h.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no sdist in {psycopg_c}"));
    assert!(
        source.contains("psycopg_c-3.3.9.tar.gz")
            && reqs.contains(&format!("--hash=sha256:{sdist_hash}")),
        "{psycopg_c}"
    );
}
