//! Downloads against local mirrors on 127.0.0.1.
//!
//! - The trust chain: a real, validly signed `InRelease` (bookworm-security, saved as a
//!   fixture) with a `Packages` file that does not match it, or tampered: neither may enter
//!   the store. Its base has a path like a snapshot mirror's.
//! - Freshness: `Valid-Until` in the past is refused on a plain mirror, accepted on a
//!   snapshot mirror or with the check turned off (the fixture, and indexes signed here with
//!   a test key).
//! - Robustness: a mirror that fails the first request (503, a cut connection, a stalled
//!   body) is retried, a persistent failure gives up after a bounded number of attempts.
//! - Sharing: two concurrent fetches of overlapping package sets download each `.deb` once.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use imgbuild_debian::index::{Base, Index};
use imgbuild_debian::signature::Keyring;
use imgbuild_debian::{Error, Fetcher, InFlight, LockedPackage, Mirror, date, fetch_debs};
use imgbuild_store::{Digest, Store};

const INRELEASE: &str = include_str!("fixtures/bookworm-security.InRelease");

/// What a route does on its first request; later requests are answered normally.
#[derive(Clone, Copy)]
enum First {
    Serve,
    /// An HTTP status (503: a busy mirror).
    Status(u16),
    /// Half the body, then the connection is closed.
    Cut,
    /// Half the body, then nothing for this long.
    Stall(Duration),
}

#[derive(Clone)]
struct Route {
    suffix: String,
    body: Vec<u8>,
    first: First,
    /// Every request: wait this long before answering (to make downloads overlap).
    delay: Duration,
    /// Answer every request with this status instead.
    always: Option<u16>,
}

fn route(suffix: &str, body: impl Into<Vec<u8>>) -> Route {
    Route {
        suffix: suffix.into(),
        body: body.into(),
        first: First::Serve,
        delay: Duration::ZERO,
        always: None,
    }
}

/// A mirror on 127.0.0.1 that counts requests per path. Runs until the test ends.
struct Server {
    addr: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    fn start(routes: Vec<Route>) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let routes = Arc::new(routes);
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counter = hits.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                let (routes, counter) = (routes.clone(), counter.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut line = String::new();
                    if r.read_line(&mut line).is_err() {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    let n = {
                        let mut hits = counter.lock().unwrap();
                        let n = hits.entry(path.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    let Some(rt) = routes.iter().find(|rt| path.ends_with(rt.suffix.as_str()))
                    else {
                        let _ = write!(
                            c,
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        return;
                    };
                    std::thread::sleep(rt.delay);
                    let first = if n == 1 { rt.first } else { First::Serve };
                    if let Some(status) = rt.always.or(match first {
                        First::Status(s) => Some(s),
                        _ => None,
                    }) {
                        let _ = write!(
                            c,
                            "HTTP/1.1 {status} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        return;
                    }
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        rt.body.len()
                    );
                    match first {
                        First::Cut => {
                            let _ = c.write_all(&rt.body[..rt.body.len() / 2]);
                        }
                        First::Stall(d) => {
                            let _ = c.write_all(&rt.body[..rt.body.len() / 2]);
                            let _ = c.flush();
                            std::thread::sleep(d);
                        }
                        _ => {
                            let _ = c.write_all(&rt.body);
                        }
                    }
                });
            }
        });
        Server { addr, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, suffix: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.ends_with(suffix))
            .map(|(_, n)| n)
            .sum()
    }
}

fn security_only(security: String) -> Mirror {
    Mirror {
        archive: "http://127.0.0.1:9/unused".into(),
        security,
        ..Mirror::default()
    }
}

fn fetch_with(mirror: &Mirror, store: &Store, keyring: &Keyring) -> Result<Index, Error> {
    Index::fetch_suites(
        mirror,
        store,
        &reqwest::blocking::Client::new(),
        &[("bookworm-security", Base::DebianSecurity)],
        keyring,
    )
}

fn fetch(security: String, store: &Store) -> Result<Index, Error> {
    fetch_with(&security_only(security), store, Keyring::debian())
}

fn signed_size_of_packages() -> usize {
    let line = INRELEASE
        .lines()
        .find(|l| l.ends_with(" main/binary-amd64/Packages"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const SNAPSHOT_PATH: &str = "/archive/debian-security/20261120T000000Z";

#[test]
fn packages_not_matching_the_signed_release_is_refused() {
    // right size, wrong content: only the digest check can catch it
    let size = signed_size_of_packages();
    let mut fake = "Package: evil\nVersion: 1\nArchitecture: amd64\nFilename: pool/evil.deb\nSize: 1\nSHA256: 00\n\n".repeat(size / 80 + 1).into_bytes();
    fake.truncate(size);
    assert_eq!(fake.len(), size);
    // by-hash answers 404, so the plain path is used (the fallback is exercised too)
    let s = Server::start(vec![
        route("/dists/bookworm-security/InRelease", INRELEASE),
        route(
            "/dists/bookworm-security/main/binary-amd64/Packages.xz",
            xz(&fake),
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = fetch(s.url(SNAPSHOT_PATH), &store).unwrap_err();
    match &err {
        Error::ChecksumMismatch { what, .. } => {
            assert!(
                what.contains("127.0.0.1") && what.contains("main/binary-amd64/Packages.xz"),
                "{what}"
            )
        }
        other => panic!("{other}"),
    }
    assert!(
        store.list_blobs().unwrap().is_empty(),
        "nothing unverified enters the store"
    );
    // a mismatch is not a network failure: asked once, not retried
    assert_eq!(s.hits("/binary-amd64/Packages.xz"), 1);
}

#[test]
fn tampered_inrelease_is_refused() {
    let tampered = INRELEASE.replacen("Label: Debian-Security", "Label: Debian-Securlty", 1);
    let s = Server::start(vec![route("/dists/bookworm-security/InRelease", tampered)]);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = fetch(s.url(SNAPSHOT_PATH), &store).unwrap_err();
    assert!(
        matches!(&err, Error::BadSignature { url, .. } if url.ends_with("/dists/bookworm-security/InRelease")),
        "{err}"
    );
    // One line that says which file, what failed and what to do; no library
    // assertion text.
    let msg = err.to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    for part in [
        "/dists/bookworm-security/InRelease: the signature does not verify: ",
        "the signature by debian-archive-bookworm-security-automatic (subkey ",
        "does not match the signed text",
        "another `mirror`",
    ] {
        assert!(msg.contains(part), "`{part}` not in: {msg}");
    }
    assert!(
        !msg.contains("assertion") && !msg.contains("not a Debian archive key"),
        "{msg}"
    );
    assert!(store.list_blobs().unwrap().is_empty());
}

#[test]
fn missing_index_names_the_url() {
    let s = Server::start(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(s.url(SNAPSHOT_PATH), &Store::open(dir.path()).unwrap()).unwrap_err();
    assert!(
        matches!(&err, Error::HttpStatus { status: 404, url } if url.contains("bookworm-security/InRelease")),
        "{err}"
    );
    assert_eq!(s.hits("/InRelease"), 1, "a 404 is not retried");
}

// ------------------------------------------------------------------ a test archive

fn xz(data: &[u8]) -> Vec<u8> {
    let mut w = liblzma::write::XzEncoder::new(Vec::new(), 1);
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn test_key() -> pgp::composed::SignedSecretKey {
    use pgp::composed::{EncryptionCaps, KeyType, SecretKeyParamsBuilder};
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id("imgbuild test archive <test@example.org>".into());
    params
        .build()
        .unwrap()
        .generate(rand::thread_rng())
        .unwrap()
}

/// A small bookworm-security archive signed by its own key: `InRelease` with the given
/// `Date`/`Valid-Until` (seconds from now), `Packages.xz` listing `debs`, and the `.deb`s.
struct Archive {
    keyring: Keyring,
    routes: Vec<Route>,
    packages: Vec<LockedPackage>,
    date: i64,
}

fn archive(date_from_now: i64, valid_for: Option<i64>, debs: &[(&str, Vec<u8>)]) -> Archive {
    let mut packages_text = String::new();
    let mut routes = vec![];
    let mut packages = vec![];
    for (name, bytes) in debs {
        let filename = format!("pool/updates/main/t/{name}/{name}_1.0-1_amd64.deb");
        let sha = Digest::of_bytes(bytes);
        packages_text.push_str(&format!(
            "Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\nFilename: {filename}\nSize: {}\nSHA256: {}\n\n",
            bytes.len(),
            sha.hex()
        ));
        routes.push(route(&format!("/{filename}"), bytes.clone()));
        packages.push(LockedPackage {
            name: name.to_string(),
            version: "1.0-1".into(),
            architecture: "amd64".into(),
            filename,
            size: bytes.len() as u64,
            sha256: sha,
            base: Base::DebianSecurity,
        });
    }
    let packages_xz = xz(packages_text.as_bytes());
    let date = date::now() + date_from_now;
    let rfc2822 = |t: i64| {
        // `2026-11-28T02:53:00Z` -> `Sat, 28 Nov 2026 02:53:00 UTC` (the weekday is optional)
        let iso = date::to_rfc3339(t);
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let m: usize = iso[5..7].parse().unwrap();
        format!(
            "{} {} {} {} UTC",
            &iso[8..10],
            months[m - 1],
            &iso[..4],
            &iso[11..19]
        )
    };
    let mut release = format!(
        "Origin: Debian\nLabel: Debian-Security\nCodename: bookworm-security\nDate: {}\n",
        rfc2822(date)
    );
    if let Some(v) = valid_for {
        release.push_str(&format!("Valid-Until: {}\n", rfc2822(date + v)));
    }
    release.push_str(&format!(
        "Architectures: amd64\nComponents: main\nSHA256:\n {} {} main/binary-amd64/Packages\n {} {} main/binary-amd64/Packages.xz\n",
        Digest::of_bytes(packages_text.as_bytes()).hex(),
        packages_text.len(),
        Digest::of_bytes(&packages_xz).hex(),
        packages_xz.len()
    ));
    let key = test_key();
    let msg = pgp::composed::CleartextSignedMessage::sign(
        rand::thread_rng(),
        &release,
        &*key,
        &pgp::types::Password::empty(),
    )
    .unwrap();
    let armored = msg.to_armored_string(Default::default()).unwrap();
    routes.push(route("/dists/bookworm-security/InRelease", armored));
    routes.push(route(
        "/dists/bookworm-security/main/binary-amd64/Packages.xz",
        packages_xz,
    ));
    Archive {
        keyring: Keyring::new(vec![("test archive".into(), key.to_public_key())]),
        routes,
        packages,
        date,
    }
}

fn set_first(routes: &mut [Route], suffix: &str, first: First) {
    routes
        .iter_mut()
        .find(|r| r.suffix.ends_with(suffix))
        .unwrap_or_else(|| panic!("no route {suffix}"))
        .first = first;
}

const DAY: i64 = 86_400;

#[test]
fn expired_index_is_refused_on_a_plain_mirror() {
    // signed here: a week-long Valid-Until that ended yesterday
    let a = archive(-8 * DAY, Some(7 * DAY), &[("pkg", b"deb".to_vec())]);
    let s = Server::start(a.routes.clone());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let plain = security_only(s.url("/debian-security"));
    let err = fetch_with(&plain, &store, &a.keyring).unwrap_err();
    assert!(
        matches!(&err, Error::Expired { suite, .. } if suite == "bookworm-security"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("bookworm-security")
            && msg.contains("/debian-security/dists/bookworm-security/InRelease")
            && msg.contains("Valid-Until")
            && msg.contains("check_valid_until = false")
            && msg.contains("snapshot.debian.org"),
        "{msg}"
    );
    assert!(store.list_blobs().unwrap().is_empty(), "nothing was used");
    assert_eq!(s.hits("Packages.xz"), 0);

    // the real bookworm-security InRelease of the fixture expired on 27 Nov 2026 too
    let real = Server::start(vec![route("/dists/bookworm-security/InRelease", INRELEASE)]);
    let err = fetch(real.url("/debian-security"), &store).unwrap_err();
    assert!(
        matches!(&err, Error::Expired { valid_until, .. } if valid_until == "Fri, 27 Nov 2026 00:12:41 UTC"),
        "{err}"
    );

    // a snapshot mirror serves old files on purpose: not checked
    let idx = fetch_with(
        &security_only(s.url("/archive/debian-security/20261120T000000Z")),
        &store,
        &a.keyring,
    )
    .unwrap();
    assert_eq!(idx.candidate("pkg").unwrap().version, "1.0-1");
    // nor when the project turns the check off
    let off = Mirror {
        check_valid_until: false,
        ..plain.clone()
    };
    fetch_with(&off, &store, &a.keyring).unwrap();
}

#[test]
fn fresh_index_is_accepted_and_its_date_kept() {
    let a = archive(-DAY, Some(7 * DAY), &[("pkg", b"deb".to_vec())]);
    // and one without Valid-Until (like bookworm and bookworm-updates)
    let b = archive(-400 * DAY, None, &[("pkg", b"deb".to_vec())]);
    for a in [a, b] {
        let s = Server::start(a.routes.clone());
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let idx = fetch_with(
            &security_only(s.url("/debian-security")),
            &store,
            &a.keyring,
        )
        .unwrap();
        assert_eq!(idx.suites[0].signed_by, "test archive");
        let dates = idx.dates();
        assert_eq!(
            dates,
            BTreeMap::from([("bookworm-security".to_owned(), date::to_rfc3339(a.date))])
        );
    }
}

#[test]
fn failed_first_requests_are_retried_and_verified() {
    let mut a = archive(
        -DAY,
        Some(7 * DAY),
        &[
            ("busy", vec![1u8; 300_000]),
            ("cut", vec![2u8; 300_000]),
            ("stall", vec![3u8; 300_000]),
        ],
    );
    set_first(&mut a.routes, "/InRelease", First::Status(503));
    set_first(&mut a.routes, "/Packages.xz", First::Cut);
    set_first(&mut a.routes, "busy_1.0-1_amd64.deb", First::Status(502));
    set_first(&mut a.routes, "cut_1.0-1_amd64.deb", First::Cut);
    set_first(
        &mut a.routes,
        "stall_1.0-1_amd64.deb",
        First::Stall(Duration::from_secs(4)),
    );
    let s = Server::start(a.routes.clone());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // reqwest's blocking timeout bounds each read: a stalled body fails after 1 s here
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mirror = security_only(s.url("/debian-security"));
    let idx = Index::fetch_suites(
        &mirror,
        &store,
        &http,
        &[("bookworm-security", Base::DebianSecurity)],
        &a.keyring,
    )
    .unwrap();
    assert_eq!(s.hits("/InRelease"), 2);
    assert_eq!(s.hits("/Packages.xz"), 2);
    assert!(idx.candidate("cut").is_some());
    fetch_debs(&mirror, &a.packages, &store, &http, 3, &|_| {}).unwrap();
    for p in &a.packages {
        assert_eq!(s.hits(&p.filename), 2, "{}", p.name);
        assert!(store.verify(&p.sha256).unwrap(), "{} stored intact", p.name);
    }
    // nothing half-written was left behind as a blob
    let mut blobs = store.list_blobs().unwrap();
    blobs.retain(|d| !a.packages.iter().any(|p| &p.sha256 == d));
    assert_eq!(blobs.len(), 1, "only the Packages index besides the .debs");
}

#[test]
fn persistent_failures_give_up_and_404_is_not_retried() {
    let mut a = archive(
        -DAY,
        Some(7 * DAY),
        &[("down", b"x".to_vec()), ("gone", b"y".to_vec())],
    );
    a.routes
        .iter_mut()
        .find(|r| r.suffix.ends_with("down_1.0-1_amd64.deb"))
        .unwrap()
        .always = Some(503);
    a.routes
        .retain(|r| !r.suffix.ends_with("gone_1.0-1_amd64.deb"));
    let s = Server::start(a.routes.clone());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mirror = security_only(s.url("/debian-security"));
    let http = reqwest::blocking::Client::new();
    let err = fetch_debs(&mirror, &a.packages[..1], &store, &http, 1, &|_| {}).unwrap_err();
    assert!(
        matches!(&err, Error::GaveUp { attempts: 4, last } if matches!(**last, Error::HttpStatus { status: 503, .. })),
        "{err}"
    );
    assert!(err.to_string().contains("down_1.0-1_amd64.deb"), "{err}");
    assert_eq!(s.hits("down_1.0-1_amd64.deb"), 4);

    // a version the mirror no longer serves: one request, and a snapshot of the lock's day
    let err = fetch_debs(&mirror, &a.packages[1..], &store, &http, 1, &|_| {}).unwrap_err();
    assert_eq!(s.hits("gone_1.0-1_amd64.deb"), 1);
    let dates = BTreeMap::from([
        ("bookworm".to_owned(), "2026-07-11T10:16:37Z".to_owned()),
        (
            "bookworm-updates".to_owned(),
            "2026-11-28T02:15:35Z".to_owned(),
        ),
        (
            "bookworm-security".to_owned(),
            "2026-11-28T02:53:00Z".to_owned(),
        ),
    ]);
    let msg = err.with_snapshot(Mirror::snapshot_for(&dates)).to_string();
    assert!(
        msg.contains("gone 1.0-1")
            && msg.contains("imgbuild lock")
            && msg.contains("mirror = \"https://snapshot.debian.org/archive/debian/20261128T141535Z\"")
            && msg.contains(
                "security_mirror = \"https://snapshot.debian.org/archive/debian-security/20261128T145300Z\""
            ),
        "{msg}"
    );
    // without dates (an old lock) the message still says what to do
    let err = fetch_debs(&mirror, &a.packages[1..], &store, &http, 1, &|_| {}).unwrap_err();
    let msg = err.with_snapshot(None).to_string();
    assert!(
        msg.contains("YYYYMMDDTHHMMSSZ") && msg.contains("imgbuild lock"),
        "{msg}"
    );
}

#[test]
fn concurrent_fetches_download_each_deb_once() {
    let debs: Vec<(String, Vec<u8>)> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| (n.to_string(), n.repeat(100_000).into_bytes()))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = debs.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let mut a = archive(-DAY, Some(7 * DAY), &refs);
    for r in &mut a.routes {
        r.delay = Duration::from_millis(300);
    }
    let s = Server::start(a.routes.clone());
    let mirror = security_only(s.url("/debian-security"));
    let http = reqwest::blocking::Client::new();
    let (first, second) = (&a.packages[..3], &a.packages[1..]);

    // two layers of one build, sharing the command's registry
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let in_flight = InFlight::new();
    let fetcher = Fetcher {
        mirror: &mirror,
        store: &store,
        http: &http,
        in_flight: &in_flight,
        jobs: 4,
    };
    let start = Barrier::new(2);
    let downloads = Mutex::new(vec![]);
    std::thread::scope(|sc| {
        for set in [first, second] {
            let (fetcher, start, downloads) = (&fetcher, &start, &downloads);
            sc.spawn(move || {
                start.wait();
                fetcher
                    .fetch(set, &|l| downloads.lock().unwrap().push(l.to_owned()))
                    .unwrap();
            });
        }
    });
    for p in &a.packages {
        assert_eq!(s.hits(&p.filename), 1, "{} downloaded once", p.name);
        assert!(store.verify(&p.sha256).unwrap());
    }
    assert_eq!(
        downloads.lock().unwrap().len(),
        4,
        "{:?}",
        downloads.lock().unwrap()
    );

    // the same two fetches without a shared registry download b and c twice: the
    // check above can fail
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let start = Barrier::new(2);
    std::thread::scope(|sc| {
        for set in [first, second] {
            let (store, start, mirror, http) = (&store, &start, &mirror, &http);
            sc.spawn(move || {
                start.wait();
                fetch_debs(mirror, set, store, http, 4, &|_| {}).unwrap();
            });
        }
    });
    assert_eq!(s.hits(&a.packages[1].filename), 3);
    assert_eq!(s.hits(&a.packages[2].filename), 3);
}
