//! The layer cache shared through a registry (`--cache`), against a real distribution
//! registry on 127.0.0.1 with a counting proxy in front of it (every request it forwards
//! is logged, so the tests count blob GETs and uploads; it can also refuse writes, as a
//! registry does for read-only credentials). Two "runners" are two copies of the
//! `plan` fixture (a Debian layer with one small package, and files layers) with
//! separate stores.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::support::*;

/// (method, target) of every request the proxy forwarded.
type ProxyLog = Arc<Mutex<Vec<(String, String)>>>;

/// An HTTP proxy in front of the registry, one request per connection: counts what
/// passes; with `deny_writes`, answers POST/PUT/PATCH/DELETE with 403 DENIED.
struct CountingProxy {
    addr: String,
    log: ProxyLog,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CountingProxy {
    fn start(upstream: &str, deny_writes: bool) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let log: ProxyLog = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2, upstream) = (log.clone(), stop.clone(), upstream.to_owned());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (log, upstream) = (log2.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = forward(conn, &upstream, &log, deny_writes);
                });
            }
        });
        CountingProxy {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn take_log(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn forward(
    conn: TcpStream,
    upstream: &str,
    log: &ProxyLog,
    deny_writes: bool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    let mut head = vec![];
    loop {
        let mut line = vec![];
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("");
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: u64 = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    log.lock().unwrap().push((method.clone(), target.clone()));
    if deny_writes && ["POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
        std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink())?;
        let body = br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
        let resp = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(resp.as_bytes())?;
        conn.write_all(body)?;
        let _ = conn.shutdown(Shutdown::Both);
        return Ok(());
    }
    let mut up = TcpStream::connect(upstream)?;
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    for (k, v) in &headers {
        if !k.eq_ignore_ascii_case("connection") {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    std::io::copy(&mut (&mut reader).take(len), &mut up)?;
    let mut resp = vec![];
    up.read_to_end(&mut resp)?;
    conn.write_all(&resp)?;
    let _ = conn.shutdown(Shutdown::Both);
    Ok(())
}

/// Blob downloads in a proxy log.
fn blob_gets(log: &[(String, String)]) -> Vec<String> {
    log.iter()
        .filter(|(m, t)| m == "GET" && t.contains("/blobs/") && !t.contains("/uploads"))
        .map(|(_, t)| t.clone())
        .collect()
}

/// Blob bytes sent in a proxy log: the digests of completed uploads (and any PATCH).
fn uploads(log: &[(String, String)]) -> Vec<String> {
    log.iter()
        .filter(|(m, t)| (m == "PUT" || m == "PATCH") && t.contains("/blobs/uploads/"))
        .map(|(_, t)| {
            t.split("digest=")
                .nth(1)
                .map(|d| d.split('&').next().unwrap_or(d).replace("%3A", ":"))
                .unwrap_or_else(|| t.clone())
        })
        .collect()
}

fn manifest_gets(log: &[(String, String)]) -> usize {
    log.iter()
        .filter(|(m, t)| m == "GET" && t.contains("/manifests/"))
        .count()
}

/// A runner: a fresh copy of the fixture with its own empty store.
fn runner(lock_from: Option<&Fixture>) -> Fixture {
    let f = Fixture::new("plan");
    if let Some(src) = lock_from {
        std::fs::copy(
            src.path().join("imgbuild.lock"),
            f.path().join("imgbuild.lock"),
        )
        .unwrap();
    }
    f
}

/// Runs imgbuild with `--json`; (exit ok, JSON or null, stderr).
fn run_json(f: &Fixture, args: &[&str]) -> (bool, Value, String) {
    let out = f.cmd().arg("--json").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.success(), v, stderr)
}

fn ok_json(f: &Fixture, args: &[&str]) -> (Value, String) {
    let (ok, v, err) = run_json(f, args);
    assert!(ok, "imgbuild {args:?} failed:\n{err}");
    (v, err)
}

/// (name, manifest digest) of a build report, sorted.
fn image_digests(v: &Value) -> Vec<(String, String)> {
    let mut d = digests(v);
    d.sort();
    d
}

fn built_layers(v: &Value) -> Vec<String> {
    let mut out = vec![];
    for img in v["images"].as_array().unwrap() {
        for l in img["layers"].as_array().unwrap() {
            if !l["cached"].as_bool().unwrap() {
                out.push(l["digest"].as_str().unwrap().to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn all_cached(v: &Value) -> bool {
    built_layers(v).is_empty()
}

/// Runner A builds and pushes with the cache; returns (runner, its report).
fn runner_a(proxy: &str) -> (Fixture, Value) {
    let a = runner(None);
    let cache = format!("{proxy}/cache");
    let prefix = format!("{proxy}/ci");
    let (v, _) = ok_json(
        &a,
        &["all", "--push", "--registry", &prefix, "--cache", &cache],
    );
    assert_eq!(v["cache"]["written"].as_u64(), Some(3), "{v}");
    (a, v)
}

#[test]
fn fresh_runner_builds_nothing_and_moves_no_blob() {
    let reg = Registry::start();
    let proxy = CountingProxy::start(&reg.addr, false);
    let (_a, va) = runner_a(&proxy.addr);
    let cache = format!("{}/cache", proxy.addr);
    let prefix = format!("{}/ci", proxy.addr);

    // Runner B: empty store, same commit (lock). Every layer is a registry hit, nothing is
    // downloaded or uploaded, and the pushed digests are A's.
    let b = runner(Some(&_a));
    proxy.take_log();
    let args = [
        "all",
        "--push",
        "--no-out",
        "--expect-cached",
        "--registry",
        &prefix,
        "--cache",
        &cache,
    ];
    let (vb, _) = ok_json(&b, &args);
    let log = proxy.take_log();
    assert!(all_cached(&vb), "{vb}");
    assert_eq!(image_digests(&vb), image_digests(&va));
    assert_eq!(blob_gets(&log), Vec::<String>::new(), "{log:#?}");
    assert_eq!(uploads(&log), Vec::<String>::new(), "{log:#?}");
    // one manifest GET per layer (3 fingerprints), for the plan and the build together
    assert_eq!(manifest_gets(&log), 3, "{log:#?}");
    assert!(!b.path().join("out").exists(), "--no-out wrote out/");
    // no .deb and no layer in B's store: only the image configs and manifests it made
    for e in std::fs::read_dir(b.store.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let len = e.metadata().unwrap().len();
        assert!(
            len < 4096,
            "{} ({len} bytes) was fetched",
            e.path().display()
        );
    }
    // the report counts the same
    let counts = &vb["requests"][&proxy.addr];
    assert_eq!(counts["blob_gets"].as_u64(), Some(0), "{vb}");
    assert_eq!(counts["blob_uploads"].as_u64(), Some(0), "{vb}");
    assert_eq!(counts["manifest_gets"].as_u64(), Some(3), "{vb}");
    assert_eq!(counts["bytes_up"].as_u64(), Some(0), "{vb}");
    assert_eq!(vb["cache"]["hits"].as_u64(), Some(3), "{vb}");
    assert_eq!(vb["cache"]["downloads"].as_u64(), Some(0), "{vb}");

    // One app file changed on B: that layer alone is built and uploaded (with the new
    // image config); nothing is downloaded, and its entry's blob is mounted, not sent.
    std::fs::write(b.path().join("layers/app/app.txt"), "changed on B\n").unwrap();
    let args = [
        "all",
        "--push",
        "--no-out",
        "--registry",
        &prefix,
        "--cache",
        &cache,
    ];
    let (vc, _) = ok_json(&b, &args);
    let log = proxy.take_log();
    let built = built_layers(&vc);
    assert_eq!(built.len(), 1, "{vc}");
    assert_eq!(blob_gets(&log), Vec::<String>::new(), "{log:#?}");
    let app = vc["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "app")
        .unwrap();
    let mut expected = vec![
        built[0].clone(),
        app["config_digest"].as_str().unwrap().to_owned(),
    ];
    expected.sort();
    let mut sent = uploads(&log);
    sent.sort();
    assert_eq!(sent, expected, "{log:#?}");
    assert_eq!(vc["cache"]["written"].as_u64(), Some(1), "{vc}");

    // With out/ written, the hits' blobs are downloaded (verified) once and kept locally.
    let (vd, _) = ok_json(&b, &["all", "--cache", &cache]);
    let log = proxy.take_log();
    assert!(b.path().join("out/app.tar").exists());
    assert_eq!(blob_gets(&log).len(), 2, "the two base layers: {log:#?}");
    assert_eq!(vd["cache"]["downloads"].as_u64(), Some(2), "{vd}");
    let (_, _) = ok_json(&b, &["all", "--cache", &cache]);
    assert_eq!(
        proxy.take_log(),
        vec![],
        "a warm rebuild asks the registry nothing"
    );
}

/// The manifest of a cache entry, as stored.
fn entry(addr: &str, fingerprint: &str) -> Value {
    let hex = fingerprint.trim_start_matches("sha256:");
    let out = run_ok(Command::new("curl").args([
        "-sf",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &format!("http://{addr}/v2/cache/manifests/fp-{hex}"),
    ]));
    serde_json::from_str(&out).unwrap()
}

fn put_entry(addr: &str, fingerprint: &str, manifest: &Value) {
    let hex = fingerprint.trim_start_matches("sha256:");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.json");
    std::fs::write(&file, serde_json::to_vec(manifest).unwrap()).unwrap();
    run_ok(Command::new("curl").args([
        "-sf",
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("http://{addr}/v2/cache/manifests/fp-{hex}"),
    ]));
}

/// The fingerprints of the plan, by (image, layer).
fn fingerprints(f: &Fixture) -> Vec<(String, u64, String)> {
    let v = f.build_json(&["plan"]);
    let mut out = vec![];
    for img in v["images"].as_array().unwrap() {
        for l in img["layers"].as_array().unwrap() {
            out.push((
                img["name"].as_str().unwrap().to_owned(),
                l["layer"].as_u64().unwrap(),
                l["fingerprint"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

#[test]
fn corrupt_cache_entry_never_ends_in_an_image() {
    let reg = Registry::start();
    let (a, va) = runner_a(&reg.addr);
    let fps = fingerprints(&a);
    let fp = |name: &str, layer: u64| {
        fps.iter()
            .find(|(n, l, _)| n == name && *l == layer)
            .unwrap()
            .2
            .clone()
    };
    // The app layer's entry now points at the base's files layer: a real blob of the
    // repository, with other content.
    let app_fp = fp("app", 1);
    let other = entry(&reg.addr, &fp("base", 2));
    let mut bad = entry(&reg.addr, &app_fp);
    bad["layers"][0] = other["layers"][0].clone();
    put_entry(&reg.addr, &app_fp, &bad);
    let cache = format!("{}/cache", reg.addr);

    // A runner that writes out/ downloads the hit and verifies it: its diff_id is not the
    // entry's, so the layer is built, and the image is A's.
    let b = runner(Some(&a));
    let (vb, err) = ok_json(&b, &["all", "--cache", &cache, "--cache-mode", "read"]);
    assert!(err.contains("diff_id"), "{err}");
    assert_eq!(image_digests(&vb), image_digests(&va));
    assert_eq!(vb["cache"]["rejected"].as_u64(), Some(1), "{vb}");
    assert_eq!(built_layers(&vb).len(), 1, "{vb}");

    // A runner that never reads the bytes (--no-out) catches it with --cache-verify 100:
    // the layer is built again, compared, and the build fails naming the layer and files.
    let c = runner(Some(&a));
    let (ok, _, err) = run_json(
        &c,
        &[
            "all",
            "--no-out",
            "--cache",
            &cache,
            "--cache-mode",
            "read",
            "--cache-verify",
            "100",
        ],
    );
    assert!(!ok, "a corrupt entry passed --cache-verify");
    assert!(err.contains("--cache-verify"), "{err}");
    assert!(err.contains("recipes/app.toml layer 1"), "{err}");
    assert!(err.contains("/app/app.txt"), "{err}");
    assert!(err.contains("/etc/plan"), "{err}");
    // and intact entries pass it
    let d = runner(Some(&a));
    let (vd, _) = ok_json(
        &d,
        &[
            "build",
            "base",
            "--no-out",
            "--cache",
            &cache,
            "--cache-verify",
            "100",
        ],
    );
    assert_eq!(vd["cache"]["verified"].as_u64(), Some(2), "{vd}");
}

#[test]
fn read_only_or_unreachable_cache_degrades_with_one_warning() {
    let reg = Registry::start();
    let (a, va) = runner_a(&reg.addr);
    // Credentials that may only pull: every write is refused.
    let ro = CountingProxy::start(&reg.addr, true);
    let b = runner(Some(&a));
    std::fs::write(b.path().join("layers/app/app.txt"), "changed\n").unwrap();
    let cache = format!("{}/cache", ro.addr);
    let (vb, err) = ok_json(&b, &["all", "--cache", &cache]);
    assert_eq!(err.matches("refused the write").count(), 1, "{err}");
    assert!(err.contains("read-only"), "{err}");
    assert_eq!(vb["cache"]["hits"].as_u64(), Some(2), "{vb}");
    assert_eq!(vb["cache"]["written"].as_u64(), Some(0), "{vb}");
    // --cache-mode read (or [cache] mode) never tries
    ro.take_log();
    std::fs::write(
        b.path().join("imgbuild.toml"),
        format!("[cache]\nrepository = \"{cache}\"\nmode = \"read\"\n"),
    )
    .unwrap();
    std::fs::write(b.path().join("layers/app/app.txt"), "changed again\n").unwrap();
    let (vc, err) = ok_json(&b, &["all"]);
    assert!(!err.contains("refused"), "{err}");
    assert_eq!(vc["cache"]["mode"], "read", "{vc}");
    assert!(ro.take_log().iter().all(|(m, _)| m == "GET" || m == "HEAD"));

    // A registry that is down: a warning, a local build, success, the same images.
    let c = runner(Some(&a));
    let down = format!("127.0.0.1:{}/cache", free_port());
    let (vc, err) = ok_json(&c, &["all", "--cache", &down]);
    assert_eq!(err.matches("building without it").count(), 1, "{err}");
    assert_eq!(image_digests(&vc), image_digests(&va));
}

#[test]
fn two_runners_at_once_agree() {
    let reg = Registry::start();
    // the lock first (both runners build the same commit)
    let seed = runner(None);
    run_ok(seed.cmd().arg("lock"));
    let cache = format!("{}/cache", reg.addr);
    let prefix = format!("{}/ci", reg.addr);
    let runners = [runner(Some(&seed)), runner(Some(&seed))];
    let children: Vec<_> = runners
        .iter()
        .map(|r| {
            r.cmd()
                .args([
                    "--json",
                    "all",
                    "--push",
                    "--registry",
                    &prefix,
                    "--cache",
                    &cache,
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let results: Vec<Value> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            serde_json::from_slice(&o.stdout).unwrap()
        })
        .collect();
    assert_eq!(image_digests(&results[0]), image_digests(&results[1]));
    // and a third runner finds everything
    let c = runner(Some(&seed));
    let (vc, _) = ok_json(&c, &["all", "--no-out", "--cache", &cache]);
    assert!(all_cached(&vc), "{vc}");
    assert_eq!(image_digests(&vc), image_digests(&results[0]));
}

#[test]
fn an_image_read_by_another_is_downloaded_only_for_that() {
    let reg = Registry::start();
    let cache = format!("{}/cache", reg.addr);
    let a = Fixture::new("copy");
    let (va, _) = ok_json(&a, &["all", "--cache", &cache]);
    // A fresh runner that writes no out/: image `a` is a hit, and `b` copies files out of
    // it, so a's one layer is downloaded (verified) to be read; b's layer is a hit too.
    let b = Fixture::new("copy");
    let (vb, _) = ok_json(&b, &["all", "--no-out", "--cache", &cache]);
    assert!(all_cached(&vb), "{vb}");
    assert_eq!(image_digests(&vb), image_digests(&va));
    assert_eq!(vb["cache"]["hits"].as_u64(), Some(2), "{vb}");
    assert_eq!(vb["cache"]["downloads"].as_u64(), Some(1), "{vb}");
    assert_eq!(
        vb["requests"][&reg.addr]["blob_gets"].as_u64(),
        Some(1),
        "{vb}"
    );
}
