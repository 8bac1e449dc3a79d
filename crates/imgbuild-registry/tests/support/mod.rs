//! Test support: a real CNCF distribution registry (`/usr/bin/docker-registry`, Debian package
//! `docker-registry`) on 127.0.0.1, a token server issuing ES256 JWTs it trusts, a
//! fault-injecting HTTP proxy, small OCI images built into a temp store, and skopeo helpers.
//! Everything listens on 127.0.0.1 and is stopped by its own handle (child killed by PID on
//! drop, server threads stopped by a flag).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use imgbuild_registry::{Client, ClientOptions, Credential, Credentials, Reference, RetryPolicy};
use imgbuild_store::{Digest, Store};
use oci_spec::image::{Descriptor, MediaType};

pub const USER: &str = "alice";
pub const PASSWORD: &str = "Sup3r-s3cret-pa55";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How the registry authenticates.
pub enum Auth<'a> {
    Htpasswd,
    Token(&'a TokenServer),
}

/// A running `docker-registry serve`, killed when dropped.
pub struct Registry {
    pub port: u16,
    pub host: String,
    child: Child,
    pub dir: tempfile::TempDir,
}

/// A certificate and its key, PEM files.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test certificate authority and a server certificate it signed for 127.0.0.1.
pub struct TestCa {
    pub ca_pem: String,
    pub server: TlsFiles,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("imgbuild test CA {name}"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let server = params.signed_by(&server_key, &ca, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
        fs::write(&cert, server.pem()).unwrap();
        fs::write(&key, server_key.serialize_pem()).unwrap();
        TestCa {
            ca_pem: ca.pem(),
            server: TlsFiles { cert, key },
            _dir: dir,
        }
    }
}

impl Registry {
    pub fn start(auth: Auth) -> Registry {
        Registry::start_with(auth, None)
    }

    /// A registry serving HTTPS only, with the given certificate.
    pub fn start_tls(auth: Auth, tls: &TlsFiles) -> Registry {
        Registry::start_with(auth, Some(tls))
    }

    fn start_with(auth: Auth, tls: Option<&TlsFiles>) -> Registry {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.is_file(),
            "/usr/bin/docker-registry is missing: install the Debian package `docker-registry` (apt-get install -y docker-registry)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let auth_yaml = match auth {
            Auth::Htpasswd => {
                let hash = bcrypt::hash_with_result(PASSWORD, 5)
                    .unwrap()
                    .format_for_version(bcrypt::Version::TwoY);
                let htpasswd = dir.path().join("htpasswd");
                fs::write(&htpasswd, format!("{USER}:{hash}\n")).unwrap();
                format!(
                    "  htpasswd:\n    realm: imgbuild-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            Auth::Token(ts) => format!(
                "  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                ts.realm(),
                TokenServer::SERVICE,
                TokenServer::ISSUER,
                ts.cert_path.display()
            ),
        };
        let tls_yaml = match tls {
            Some(t) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.cert.display(),
                t.key.display()
            ),
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: imgbuild-test-secret\n{tls_yaml}auth:\n{auth_yaml}",
            root = dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).unwrap();
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut reg = Registry {
            port,
            host: format!("127.0.0.1:{port}"),
            child,
            dir,
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&mut self) {
        // Bounded wait for `/v2/` to answer (401 or 200 both mean it is serving).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("docker-registry exited with {status}: {}", self.log());
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                // (a TLS-only server answers plain HTTP with a 400: it is serving too)
                if buf.starts_with("HTTP/1.1 200")
                    || buf.starts_with("HTTP/1.1 401")
                    || buf.starts_with("HTTP/1.0 400")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on /v2/: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn reference(&self, repo: &str) -> Reference {
        format!("{}/{repo}", self.host).parse().unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn options() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            timeout: Duration::from_secs(20),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            max_retry_after: Duration::from_secs(5),
        },
        ..ClientOptions::default()
    }
}

pub fn client_for(host: &str, user: &str, password: &str) -> Client {
    Client::new(
        options(),
        Credentials::none().with(host, Credential::basic(user, password)),
    )
    .unwrap()
}

// ---------------------------------------------------------------- minimal HTTP plumbing

pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub head_bytes: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn content_length(&self) -> u64 {
        self.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Reads a request head; `None` at EOF.
pub fn read_request(r: &mut impl BufRead) -> Option<Request> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.lines();
    let first = lines.next()?;
    let mut parts = first.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Request {
        method,
        target,
        headers,
        head_bytes: head,
    })
}

fn respond(s: &mut TcpStream, status: &str, extra: &[(&str, String)], body: &[u8]) {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = s.write_all(out.as_bytes());
    let _ = s.write_all(body);
    let _ = s.flush();
}

/// A TCP server on 127.0.0.1 running `handle` per connection in its own thread, stopped on
/// drop (flag + a wake-up connection).
pub struct Server {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(handle);
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let h = handle.clone();
                std::thread::spawn(move || h(conn));
            }
        });
        Server {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- token server

/// A token server in the style of Docker's auth service: GET with basic auth, or POST with a
/// refresh token; issues ES256 JWTs carrying an `x5c` chain of one self-signed cert, which
/// the registry trusts through its `rootcertbundle`.
pub struct TokenServer {
    server: Server,
    pub cert_path: PathBuf,
    _dir: tempfile::TempDir,
    /// Every scope set requested, as sent (space-joined, sorted).
    pub requests: Arc<Mutex<Vec<String>>>,
}

pub const REFRESH_TOKEN: &str = "refresh-token-of-alice-0123456789";

impl TokenServer {
    pub const SERVICE: &'static str = "imgbuild-test-registry";
    pub const ISSUER: &'static str = "imgbuild-test-issuer";
    /// Repositories whose names start with this get no access in any token.
    pub const FORBIDDEN_PREFIX: &'static str = "forbidden/";

    pub fn start() -> TokenServer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["imgbuild-test-token".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("token-ca.pem");
        fs::write(&cert_path, cert.pem()).unwrap();
        let cert_der = B64.encode(cert.der());
        let rng = ring::rand::SystemRandom::new();
        let signer = Arc::new(
            ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
                &rng,
            )
            .unwrap(),
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        let counter = Arc::new(AtomicU64::new(0));
        let server = Server::start(move |mut conn| {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let Some(req) = read_request(&mut reader) else {
                return;
            };
            let mut body = vec![0; req.content_length() as usize];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
            assert_eq!(path, "/token");
            let mut params: Vec<(String, String)> = url_pairs(query);
            if req.method == "POST" {
                params.extend(url_pairs(&String::from_utf8_lossy(&body)));
            }
            let get = |k: &str| {
                params
                    .iter()
                    .filter(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .collect::<Vec<_>>()
            };
            // Who is asking?
            let user = if req.method == "POST" {
                (get("grant_type") == ["refresh_token"] && get("refresh_token") == [REFRESH_TOKEN])
                    .then(|| USER.to_owned())
            } else {
                req.header("authorization")
                    .and_then(|a| a.strip_prefix("Basic "))
                    .and_then(|b| B64.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|up| up == &format!("{USER}:{PASSWORD}"))
                    .map(|_| USER.to_owned())
            };
            let Some(user) = user else {
                respond(
                    &mut conn,
                    "401 Unauthorized",
                    &[],
                    br#"{"details":"incorrect username or password"}"#,
                );
                return;
            };
            if get("service") != [Self::SERVICE] {
                respond(&mut conn, "400 Bad Request", &[], b"wrong service");
                return;
            }
            // scope params (GET: repeated; POST: space-separated)
            let mut scopes: Vec<String> = get("scope")
                .iter()
                .flat_map(|s| s.split(' ').map(str::to_owned))
                .filter(|s| !s.is_empty())
                .collect();
            scopes.sort();
            reqs.lock().unwrap().push(scopes.join(" "));
            // Repositories under `forbidden/` are granted nothing (a repository the account
            // may not use): the token is valid, its `access` is empty for them.
            let access: Vec<serde_json::Value> = scopes
                .iter()
                .filter_map(|s| {
                    let mut p = s.splitn(3, ':');
                    let (t, name, actions) = (p.next()?, p.next()?, p.next()?);
                    if name.starts_with(Self::FORBIDDEN_PREFIX) {
                        return None;
                    }
                    Some(serde_json::json!({"type": t, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                })
                .collect();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [cert_der]});
            let claims = serde_json::json!({
                "iss": Self::ISSUER, "sub": user, "aud": Self::SERVICE,
                "exp": now + 600, "nbf": now - 10, "iat": now,
                "jti": format!("jti-{}", counter.fetch_add(1, Ordering::SeqCst)),
                "access": access,
            });
            let signing_input = format!(
                "{}.{}",
                B64URL.encode(serde_json::to_vec(&header).unwrap()),
                B64URL.encode(serde_json::to_vec(&claims).unwrap())
            );
            let sig = signer
                .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
                .unwrap();
            let jwt = format!("{signing_input}.{}", B64URL.encode(sig.as_ref()));
            let body = if req.method == "POST" {
                serde_json::json!({"access_token": jwt, "expires_in": 600})
            } else {
                serde_json::json!({"token": jwt, "expires_in": 600})
            };
            respond(
                &mut conn,
                "200 OK",
                &[("Content-Type", "application/json".into())],
                &serde_json::to_vec(&body).unwrap(),
            );
        });
        TokenServer {
            server,
            cert_path,
            _dir: dir,
            requests,
        }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.server.port)
    }
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{q}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

// ---------------------------------------------------------------- fault proxy

#[derive(Clone, Debug)]
pub enum Action {
    /// Answer this status (after reading the request body), optionally with `Retry-After`.
    Status {
        code: u16,
        retry_after: Option<&'static str>,
    },
    /// Answer `400 Bad Request` with a registry error body of this code (after reading
    /// the request body).
    RegistryError { code: &'static str },
    /// Forward the head and half of the body, then drop both connections.
    DropMidBody,
    /// Forward, then flip the last byte of the response body.
    CorruptBody,
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub method: &'static str,
    /// Substring of the request target (`/blobs/uploads/`, `?digest=`...).
    pub path_contains: &'static str,
    /// Matching requests to let through before this fault fires (once).
    pub skip: usize,
    pub action: Action,
}

struct FaultState {
    fault: Fault,
    seen: usize,
    fired: bool,
}

/// An HTTP proxy in front of a registry that injects the given faults, each once.
pub struct FaultProxy {
    server: Server,
    faults: Arc<Mutex<Vec<FaultState>>>,
    /// Every request seen: (method, target, Content-Range, arrival time), in arrival order.
    pub log: Arc<Log>,
}

impl FaultProxy {
    pub fn start(upstream: u16, faults: Vec<Fault>) -> FaultProxy {
        let faults = Arc::new(Mutex::new(
            faults
                .into_iter()
                .map(|fault| FaultState {
                    fault,
                    seen: 0,
                    fired: false,
                })
                .collect::<Vec<_>>(),
        ));
        let state = faults.clone();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let server = Server::start(move |conn| {
            let _ = proxy_connection(conn, upstream, &state, &log2);
        });
        FaultProxy {
            server,
            faults,
            log,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }

    /// Faults that have not fired (a test asserts this is empty, so it cannot pass vacuously).
    pub fn unfired(&self) -> Vec<Fault> {
        self.faults
            .lock()
            .unwrap()
            .iter()
            .filter(|f| !f.fired)
            .map(|f| f.fault.clone())
            .collect()
    }
}

/// (method, target, Content-Range, arrival time) of every request, in arrival order.
pub type Log = Mutex<Vec<(String, String, Option<String>, Instant)>>;

fn proxy_connection(
    conn: TcpStream,
    upstream: u16,
    faults: &Mutex<Vec<FaultState>>,
    log: &Log,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    // One request per connection: the upstream answer carries `Connection: close`.
    let Some(req) = read_request(&mut reader) else {
        return Ok(());
    };
    log.lock().unwrap().push((
        req.method.clone(),
        req.target.clone(),
        req.header("content-range").map(str::to_owned),
        Instant::now(),
    ));
    let action = {
        let mut fs = faults.lock().unwrap();
        let mut chosen = None;
        for f in fs.iter_mut() {
            if f.fired
                || f.fault.method != req.method
                || !req.target.contains(f.fault.path_contains)
            {
                continue;
            }
            if f.seen < f.fault.skip {
                f.seen += 1;
                continue;
            }
            f.fired = true;
            chosen = Some(f.fault.action.clone());
            break;
        }
        chosen
    };
    let len = req.content_length();
    match action {
        Some(Action::RegistryError { code }) => {
            std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink())?;
            let body = format!(
                r#"{{"errors":[{{"code":"{code}","message":"injected by the fault proxy"}}]}}"#
            );
            respond(
                &mut conn,
                "400 Bad Request",
                &[("Content-Type", "application/json".to_owned())],
                body.as_bytes(),
            );
        }
        Some(Action::Status { code, retry_after }) => {
            std::io::copy(&mut (&mut reader).take(len), &mut std::io::sink())?;
            let mut extra = vec![];
            if let Some(r) = retry_after {
                extra.push(("Retry-After", r.to_owned()));
            }
            let status = match code {
                500 => "500 Internal Server Error",
                502 => "502 Bad Gateway",
                503 => "503 Service Unavailable",
                429 => "429 Too Many Requests",
                408 => "408 Request Timeout",
                _ => panic!("status {code} not wired"),
            };
            respond(&mut conn, status, &extra, b"");
            return Ok(());
        }
        Some(Action::DropMidBody) => {
            let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
            up.write_all(&with_connection_close(&req))?;
            std::io::copy(&mut (&mut reader).take(len / 2), &mut up)?;
            let _ = up.shutdown(Shutdown::Both);
            let _ = conn.shutdown(Shutdown::Both);
            return Ok(());
        }
        _ => {}
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(&with_connection_close(&req))?;
    std::io::copy(&mut (&mut reader).take(len), &mut up)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    if matches!(action, Some(Action::CorruptBody)) {
        let body_start = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .unwrap_or(resp.len());
        if resp.len() > body_start {
            let last = resp.len() - 1;
            resp[last] ^= 0x01;
        }
    }
    if std::env::var_os("IMGBUILD_TEST_PROXY_TRACE").is_some() {
        let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
        let body = &resp[(head_end + 4).min(resp.len())..];
        eprintln!(
            "proxy: {} {} -> {} {}",
            req.method,
            req.target,
            String::from_utf8_lossy(&resp[..head_end])
                .lines()
                .next()
                .unwrap_or(""),
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    conn.write_all(&resp)?;
    let _ = conn.shutdown(Shutdown::Both);
    Ok(())
}

fn with_connection_close(req: &Request) -> Vec<u8> {
    let mut out = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        if !k.eq_ignore_ascii_case("connection") {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

// ---------------------------------------------------------------- test images

/// A gzip'd tar layer in the store, with its diff_id.
#[derive(Clone, Debug)]
pub struct Layer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
}

pub fn layer(store: &Store, files: &[(&str, Vec<u8>)]) -> Layer {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        tar.append(&h, &data[..]).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let diff_id = Digest::of_bytes(&tar);
    let mut gz =
        flate2::write::GzEncoder::new(store.writer().unwrap(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let (digest, size) = gz.finish().unwrap().commit().unwrap();
    Layer {
        descriptor: Descriptor::new(MediaType::ImageLayerGzip, size, oci_digest(&digest)),
        diff_id,
    }
}

/// Bytes that do not compress (so a layer of them is about as big on the wire).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn oci_digest(d: &Digest) -> oci_spec::image::Digest {
    d.to_string().parse().unwrap()
}

/// An image built in the store: manifest bytes (also stored), config and layers.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub manifest: Vec<u8>,
    pub digest: Digest,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

pub fn image(store: &Store, layers: &[&Layer], label: &str) -> TestImage {
    image_with_types(store, layers, label, false)
}

/// `docker`: Docker schema 2 media types instead of OCI ones.
pub fn image_with_types(store: &Store, layers: &[&Layer], label: &str, docker: bool) -> TestImage {
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"test": label}},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = store.put_bytes(&config_bytes).unwrap();
    let (mt_manifest, mt_config, mt_layer) = if docker {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    };
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt_manifest,
        "config": {"mediaType": mt_config, "digest": config_digest.to_string(), "size": config_bytes.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": mt_layer, "digest": l.descriptor.digest().to_string(), "size": l.descriptor.size()
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
    let digest = store.put_bytes(&manifest).unwrap();
    let parsed = oci_spec::image::ImageManifest::from_reader(&manifest[..]).unwrap();
    TestImage {
        digest,
        config: parsed.config().clone(),
        layers: parsed.layers().clone(),
        manifest,
    }
}

pub fn push_image(
    target: Reference,
    img: &TestImage,
    tags: &[&str],
) -> imgbuild_registry::PushImage {
    imgbuild_registry::PushImage {
        target,
        manifest: img.manifest.clone(),
        media_type: None,
        config: img.config.clone(),
        layers: img.layers.clone(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        mount_from: vec![],
    }
}

// ---------------------------------------------------------------- skopeo

fn skopeo() -> Command {
    assert!(
        Path::new("/usr/bin/skopeo").is_file(),
        "/usr/bin/skopeo is missing: install the Debian package `skopeo` (apt-get install -y skopeo)"
    );
    let mut c = Command::new("/usr/bin/skopeo");
    c.arg("--insecure-policy");
    c
}

/// `skopeo inspect --raw`: the manifest bytes as the registry serves them to another client.
pub fn skopeo_raw_manifest(image: &str, creds: &str) -> Vec<u8> {
    let out = skopeo()
        .args(["inspect", "--raw", "--tls-verify=false", "--creds", creds])
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `skopeo inspect` (not raw): parsed, includes the config-derived fields.
pub fn skopeo_inspect(image: &str, creds: &str) -> serde_json::Value {
    let out = skopeo()
        .args(["inspect", "--tls-verify=false", "--creds", creds])
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `skopeo copy docker://IMAGE oci:DIR:latest`; returns the OCI layout's index.json.
pub fn skopeo_copy_to_oci(image: &str, creds: &str, dir: &Path) -> serde_json::Value {
    let out = skopeo()
        .args(["copy", "--src-tls-verify=false", "--src-creds", creds])
        .arg(format!("docker://{image}"))
        .arg(format!("oci:{}:latest", dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap()
}

/// Blob counts per outcome in a report image: (uploaded, mounted, present, shared).
pub fn outcome_counts(
    r: &imgbuild_registry::ImageReport,
    only: Option<&[Descriptor]>,
) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for b in &r.blobs {
        if let Some(only) = only
            && !only
                .iter()
                .any(|d| d.digest().to_string() == b.digest.to_string())
        {
            continue;
        }
        let k = match b.outcome {
            imgbuild_registry::BlobOutcome::Uploaded => "uploaded",
            imgbuild_registry::BlobOutcome::Mounted { .. } => "mounted",
            imgbuild_registry::BlobOutcome::Present => "present",
            imgbuild_registry::BlobOutcome::Shared => "shared",
        };
        *m.entry(k).or_default() += 1;
    }
    m
}

pub fn store_blob_count(store: &Store) -> usize {
    store.list_blobs().unwrap().len()
}

pub fn tmp_is_empty(store: &Store) -> bool {
    fs::read_dir(store.root().join("tmp")).unwrap().count() == 0
}
