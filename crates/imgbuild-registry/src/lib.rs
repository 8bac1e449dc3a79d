//! imgbuild's OCI registry client: pushes a release of images from the content-addressed
//! store and pulls base images into it.
//!
//! This crate owns the conversation with registries (the OCI distribution API, Docker Hub
//! first): references, credentials and login, the basic/bearer auth handshake, retries, blob
//! uploads that resume, mounts between repositories, and manifest/tag ordering. It does not
//! build images: a push takes raw manifest bytes and descriptors whose blobs are in an
//! [`imgbuild_store::Store`], and a pull fills that store.
//!
//! Modules: [`reference`] (names), [`credentials`] (where credentials come from, `login`
//! storage), `auth` (challenges and tokens), `transport` (sessions, retries), `upload`
//! (one blob: streamed, chunked, resumable), [`push`] (a release), [`pull`] (one image).
//!
//! All I/O is blocking (reqwest with rustls); parallelism is a bounded number of std threads.
//! TLS is always verified, against the system trust store, the Mozilla roots compiled in, and
//! for a registry with a private CA the `*.crt` files of its directory in a Docker-style
//! `certs.d` ([`ClientOptions::certs_dirs`]). Plain HTTP is used only for loopback registries
//! without such a directory and for registries named in [`ClientOptions::insecure`].

// Errors carry registry, repository and blob names (owned strings): large, but only on the
// failure path, where an allocation more or less does not matter.
#![allow(clippy::result_large_err)]

pub mod counts;
pub mod credentials;
pub mod error;
pub mod pull;
pub mod push;
pub mod reference;
pub mod referrers;

mod auth;
mod transport;
mod upload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use counts::{RegistryCounts, RequestCounts};
pub use credentials::{AuthEnv, Credential, Credentials, Secret, StoredIn};
pub use error::{RegistryError, Result};
pub use pull::PulledImage;
pub use push::{
    BlobOutcome, BlobReport, ImageReport, IndexReport, PushImage, PushIndex, PushReport,
};
pub use reference::Reference;
pub use transport::{DEFAULT_RETRY_TIMEOUT, RetryPolicy};

use reference::{is_loopback, normalize_registry};
use transport::Session;

/// The platform chosen from a multi-platform image index when pulling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// Matched only when set (e.g. `v8` for arm64).
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Blob transfers running at once (uploads in a push, downloads in a pull). Default 4.
    pub parallelism: usize,
    /// Registries (`host[:port]`) reached over plain HTTP even though not on loopback.
    pub insecure: BTreeSet<String>,
    pub retry: RetryPolicy,
    /// Blobs larger than this are uploaded in several PATCH requests of this size, so an
    /// interruption costs at most one chunk (the upload resumes at the offset the registry
    /// reports). Default 64 MiB.
    pub chunk_size: u64,
    pub platform: Platform,
    pub user_agent: String,
    pub connect_timeout: Duration,
    /// Upper bound for one HTTP request (one upload chunk, one blob download). Default 1 h.
    pub request_timeout: Duration,
    /// Docker-style `certs.d` directories: `<dir>/<host[:port]>/*.crt` are extra CA
    /// certificates trusted for that registry only (as `docker` and `podman` read them). A
    /// loopback registry with such a directory is reached over HTTPS. Default:
    /// `/etc/docker/certs.d`, then `/etc/containers/certs.d`.
    pub certs_dirs: Vec<PathBuf>,
    /// Where the requests of this client are counted, by registry; share one between
    /// clients for one report of a whole command. Default: a table of its own.
    pub counts: Arc<RequestCounts>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            parallelism: 4,
            insecure: BTreeSet::new(),
            retry: RetryPolicy::default(),
            chunk_size: 64 << 20,
            platform: Platform::default(),
            user_agent: concat!("imgbuild/", env!("CARGO_PKG_VERSION")).into(),
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(3600),
            certs_dirs: vec![
                PathBuf::from("/etc/docker/certs.d"),
                PathBuf::from("/etc/containers/certs.d"),
            ],
            counts: RequestCounts::new(),
        }
    }
}

/// A registry client: push, pull, resolve, login. Cheap to share between threads by reference.
pub struct Client {
    options: ClientOptions,
    credentials: Credentials,
    sessions: Mutex<BTreeMap<String, Arc<Session>>>,
    /// For plain-HTTP registries: no system trust store (only the compiled-in roots, for
    /// an HTTPS redirect or token realm), so that a push to a local registry does not pay
    /// for reading `/etc/ssl/certs` (~20 ms).
    plain_http: OnceLock<reqwest::blocking::Client>,
    /// For HTTPS registries without a `certs.d` directory: system and compiled-in roots.
    tls_http: OnceLock<reqwest::blocking::Client>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client; HTTP connections and TLS roots are set up on first use, per registry.
    pub fn new(options: ClientOptions, credentials: Credentials) -> Result<Client> {
        Ok(Client {
            options,
            credentials,
            sessions: Mutex::new(BTreeMap::new()),
            plain_http: OnceLock::new(),
            tls_http: OnceLock::new(),
        })
    }

    fn http_builder(&self) -> reqwest::blocking::ClientBuilder {
        reqwest::blocking::Client::builder()
            .user_agent(self.options.user_agent.clone())
            .connect_timeout(self.options.connect_timeout)
            .timeout(self.options.request_timeout)
            .tcp_keepalive(Duration::from_secs(30))
    }

    fn build_http(
        &self,
        registry: &str,
        builder: reqwest::blocking::ClientBuilder,
    ) -> Result<reqwest::blocking::Client> {
        builder.build().map_err(|e| RegistryError::Protocol {
            registry: registry.to_owned(),
            what: "creating the HTTP client".into(),
            message: transport::error_chain(&e),
        })
    }

    fn cached_http(
        &self,
        cell: &OnceLock<reqwest::blocking::Client>,
        registry: &str,
        builder: impl FnOnce() -> reqwest::blocking::ClientBuilder,
    ) -> Result<reqwest::blocking::Client> {
        if let Some(c) = cell.get() {
            return Ok(c.clone());
        }
        let c = self.build_http(registry, builder())?;
        Ok(cell.get_or_init(|| c).clone())
    }

    /// The `*.crt` files of the registry's `certs.d` directories, sorted.
    fn ca_files(&self, registry: &str) -> Vec<PathBuf> {
        let mut out = vec![];
        for dir in &self.options.certs_dirs {
            let Ok(entries) = std::fs::read_dir(dir.join(registry)) else {
                continue;
            };
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "crt") && p.is_file())
                .collect();
            found.sort();
            out.extend(found);
        }
        out
    }

    /// The HTTP client for a registry's session, and whether it is reached over plain HTTP.
    fn http_for(
        &self,
        registry: &str,
        insecure: bool,
    ) -> Result<(reqwest::blocking::Client, bool)> {
        let cas = self.ca_files(registry);
        if insecure || (is_loopback(registry) && cas.is_empty()) {
            let c = self.cached_http(&self.plain_http, registry, || {
                self.http_builder().tls_built_in_native_certs(false)
            })?;
            return Ok((c, true));
        }
        if cas.is_empty() {
            return Ok((
                self.cached_http(&self.tls_http, registry, || self.http_builder())?,
                false,
            ));
        }
        let mut builder = self.http_builder();
        for path in &cas {
            for cert in read_ca_file(registry, path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok((self.build_http(registry, builder)?, false))
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The session for a registry, created on first use (credentials looked up then).
    pub(crate) fn session(&self, registry: &str) -> Result<Arc<Session>> {
        let registry = normalize_registry(registry);
        if let Some(s) = self.sessions.lock().unwrap().get(&registry) {
            return Ok(s.clone());
        }
        let credential = self.credentials.lookup(&registry)?;
        let session = Arc::new(self.new_session(&registry, credential)?);
        Ok(self
            .sessions
            .lock()
            .unwrap()
            .entry(registry)
            .or_insert(session)
            .clone())
    }

    fn new_session(&self, registry: &str, credential: Option<Credential>) -> Result<Session> {
        let insecure = self
            .options
            .insecure
            .iter()
            .any(|r| normalize_registry(r) == registry);
        let (http, plain) = self.http_for(registry, insecure)?;
        let mut session = Session::new(
            registry,
            http,
            credential,
            self.options.retry.clone(),
            plain,
            insecure,
        )?;
        session.counts = self.options.counts.clone();
        Ok(session)
    }

    /// The requests this client (and every client sharing its [`ClientOptions::counts`])
    /// sent, by registry.
    pub fn request_counts(&self) -> BTreeMap<String, RegistryCounts> {
        self.options.counts.snapshot()
    }

    /// Checks `username`/`password` against the registry (as `docker login` does: `/v2/` with
    /// basic auth, or a token from the registry's token server), then stores them where
    /// Docker would (credential helper or config.json, see [`Credentials::store`]).
    pub fn login(&self, registry: &str, username: &str, password: &str) -> Result<StoredIn> {
        let registry = normalize_registry(registry);
        let credential = Credential::basic(username, password);
        let session = self.new_session(&registry, Some(credential.clone()))?;
        let what = "GET /v2/ (login)";
        let url = session.url("/v2/");
        let resp = session.send(&[], what, &|c| c.get(url.clone()))?;
        if !resp.status().is_success() {
            return Err(session.error_from(what, "", resp));
        }
        let stored = self.credentials.store(&registry, &credential)?;
        // Later requests in this process use the new credentials.
        self.sessions.lock().unwrap().remove(&registry);
        Ok(stored)
    }
}

/// The certificates of one PEM file of a `certs.d` directory.
fn read_ca_file(registry: &str, path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let bad = |message: String| RegistryError::CaCertificate {
        registry: registry.to_owned(),
        path: path.to_path_buf(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(transport::error_chain(&e)))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Runs `f` over `items` on at most `parallelism` threads; results in input order. The first
/// error is returned (remaining items are still finished by running workers, but no new ones
/// start).
pub(crate) fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    parallelism: usize,
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<R>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    let workers = parallelism.max(1).min(items.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= items.len() {
                        break;
                    }
                    let r = f(&items[i]);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    let mut first_err = None;
    for r in results.into_inner().unwrap().into_iter().flatten() {
        match r {
            Ok(v) => out.push(v),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
