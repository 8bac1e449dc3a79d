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
//! TLS is always verified; plain HTTP is used only for loopback registries and registries
//! named in [`ClientOptions::insecure`].

// Errors carry registry, repository and blob names (owned strings): large, but only on the
// failure path, where an allocation more or less does not matter.
#![allow(clippy::result_large_err)]

pub mod credentials;
pub mod error;
pub mod pull;
pub mod push;
pub mod reference;

mod auth;
mod transport;
mod upload;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use credentials::{AuthEnv, Credential, Credentials, Secret, StoredIn};
pub use error::{RegistryError, Result};
pub use pull::PulledImage;
pub use push::{BlobOutcome, BlobReport, ImageReport, PushImage, PushReport};
pub use reference::Reference;
pub use transport::RetryPolicy;

use reference::normalize_registry;
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
        }
    }
}

/// A registry client: push, pull, resolve, login. Cheap to share between threads by reference.
pub struct Client {
    http: reqwest::blocking::Client,
    options: ClientOptions,
    credentials: Credentials,
    sessions: Mutex<BTreeMap<String, Arc<Session>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(options: ClientOptions, credentials: Credentials) -> Result<Client> {
        let http = reqwest::blocking::Client::builder()
            .user_agent(options.user_agent.clone())
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .map_err(|e| RegistryError::Protocol {
                registry: "-".into(),
                what: "creating the HTTP client".into(),
                message: transport::error_chain(&e),
            })?;
        Ok(Client {
            http,
            options,
            credentials,
            sessions: Mutex::new(BTreeMap::new()),
        })
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
        Session::new(
            registry,
            self.http.clone(),
            credential,
            self.options.retry.clone(),
            self.options
                .insecure
                .iter()
                .any(|r| normalize_registry(r) == registry),
        )
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
