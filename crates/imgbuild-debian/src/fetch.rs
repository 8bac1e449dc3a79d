//! Downloads: the one HTTP helper of the crate ([`download`]: status handling, bounded
//! retries of transient failures with backoff, every attempt verified by its consumer) and
//! [`Fetcher`], which brings locked `.deb`s into the store in parallel, each checked against
//! the SHA256 and size the signed index gave. A lock is enough: no index is downloaded here.
//!
//! Timeouts are the client's: the blocking `reqwest` client's `timeout` bounds the wait for
//! the answer and then each read of the body, so a stalled transfer fails while a large
//! `.deb` on a slow but moving link is never cut off.
//!
//! Layers of one command that need the same `.deb` at the same time share one download
//! through an [`InFlight`] registry: one thread downloads, the others wait for it and then
//! use the verified blob.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use imgbuild_store::{Digest, Store};

use crate::error::{Error, Result, from_store};
use crate::{DEBIAN, LockedPackage, Mirror};

/// Attempts per URL before a transient failure is reported.
pub const ATTEMPTS: u32 = 4;

/// Pause before attempt `n + 1`: 0.5 s, 1 s, 2 s, ...
fn backoff(n: u32) -> Duration {
    Duration::from_millis(250 << n.min(6))
}

/// A response body that remembers whether reading it failed: a dropped connection or a
/// read timeout is worth another attempt, unlike what the consumer makes of good bytes
/// (a checksum mismatch, a parse error).
pub(crate) struct Body {
    inner: reqwest::blocking::Response,
    read_failed: bool,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner
            .read(buf)
            .inspect_err(|_| self.read_failed = true)
    }
}

/// GETs `url` and hands the body to `consume`, up to [`ATTEMPTS`] times. Connection errors,
/// timeouts (also while the body is read), 408, 429 and 5xx answers are retried after a
/// growing pause; any other status, and any error of `consume` that is not a failed read,
/// is returned at once. `consume` must check what it read and store nothing unverified,
/// so that a failed attempt leaves nothing behind.
pub(crate) fn download<T>(
    http: &reqwest::blocking::Client,
    url: &str,
    mut consume: impl FnMut(&mut Body) -> Result<T>,
) -> Result<T> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let failure = match http.get(url).send() {
            Ok(r) if r.status().is_success() => {
                let mut body = Body {
                    inner: r,
                    read_failed: false,
                };
                match consume(&mut body) {
                    Ok(v) => return Ok(v),
                    Err(e) if body.read_failed => e,
                    Err(e) => return Err(e),
                }
            }
            Ok(r) => {
                let status = r.status();
                let e = Error::HttpStatus {
                    url: url.to_owned(),
                    status: status.as_u16(),
                };
                if !(status.is_server_error() || matches!(status.as_u16(), 408 | 429)) {
                    return Err(e);
                }
                e
            }
            Err(e) => {
                let transient = e.is_connect() || e.is_timeout() || e.is_request() || e.is_body();
                let e = Error::Http {
                    url: url.to_owned(),
                    source: e,
                };
                if !transient {
                    return Err(e);
                }
                e
            }
        };
        if attempt >= ATTEMPTS {
            return Err(Error::GaveUp {
                attempts: attempt,
                last: Box::new(failure),
            });
        }
        std::thread::sleep(backoff(attempt));
    }
}

/// The URL a locked package is fetched from: its repository's URL for a third-party
/// package (an error if the project no longer declares that repository), else the
/// archive or security mirror its `base` names.
pub fn deb_url(mirror: &Mirror, pkg: &LockedPackage) -> Result<String> {
    let base = if pkg.repository == DEBIAN {
        mirror.base_url(pkg.base)
    } else {
        let known: Vec<&str> = std::iter::once(DEBIAN)
            .chain(mirror.repositories.iter().map(|r| r.name.as_str()))
            .collect();
        mirror
            .repository(&pkg.repository)
            .ok_or_else(|| Error::UnknownRepository {
                what: format!("package {} {} (in the lock)", pkg.name, pkg.version),
                name: pkg.repository.clone(),
                known: known.join(", "),
            })?
            .url
            .trim_end_matches('/')
    };
    Ok(format!("{base}/{}", pkg.filename.trim_start_matches('/')))
}

/// The downloads in progress in this process, by sha256 (share one per command).
#[derive(Debug, Default)]
pub struct InFlight {
    flights: Mutex<HashMap<Digest, Arc<Flight>>>,
}

#[derive(Debug, Default)]
struct Flight {
    done: Mutex<bool>,
    landed: Condvar,
}

impl Flight {
    fn wait(&self) {
        let mut done = self.done.lock().expect("flight");
        while !*done {
            done = self.landed.wait(done).expect("flight");
        }
    }
}

/// The right to download one digest; waiters are woken when it is dropped, whether the
/// download succeeded or not (they then find the blob, or try themselves).
struct Claim<'a> {
    registry: &'a InFlight,
    digest: Digest,
    flight: Arc<Flight>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.registry
            .flights
            .lock()
            .expect("in-flight registry")
            .remove(&self.digest);
        *self.flight.done.lock().expect("flight") = true;
        self.flight.landed.notify_all();
    }
}

impl InFlight {
    pub fn new() -> InFlight {
        InFlight::default()
    }

    /// Claims a digest for download, or returns the flight already downloading it.
    fn try_claim(&self, digest: &Digest) -> Result<Claim<'_>, Arc<Flight>> {
        let mut flights = self.flights.lock().expect("in-flight registry");
        if let Some(f) = flights.get(digest) {
            return Err(f.clone());
        }
        let flight = Arc::new(Flight::default());
        flights.insert(digest.clone(), flight.clone());
        Ok(Claim {
            registry: self,
            digest: digest.clone(),
            flight,
        })
    }
}

/// Brings locked `.deb`s into the store (see the module doc).
pub struct Fetcher<'a> {
    pub mirror: &'a Mirror,
    pub store: &'a Store,
    pub http: &'a reqwest::blocking::Client,
    pub in_flight: &'a InFlight,
    /// Parallel downloads (clamped to 1..=16).
    pub jobs: usize,
}

impl Fetcher<'_> {
    /// Makes sure every package's `.deb` is in the store, verified. Cached blobs are
    /// re-hashed ([`Store::verify`] removes a tampered one, which is then fetched again);
    /// missing ones are downloaded by up to `jobs` threads and committed only if SHA256 and
    /// size match. A `.deb` another caller is downloading is waited for, not fetched again.
    /// `progress` is called with a short line per download.
    pub fn fetch(&self, pkgs: &[LockedPackage], progress: &(dyn Fn(&str) + Sync)) -> Result<()> {
        let mut todo: Vec<&LockedPackage> = vec![];
        let mut seen = std::collections::BTreeSet::new();
        for p in pkgs {
            if !seen.insert(&p.sha256) {
                continue;
            }
            if self.store.has_blob(&p.sha256) && self.store.verify(&p.sha256)? {
                continue;
            }
            todo.push(p);
        }
        todo.reverse(); // popped from the back: fetch in the given order
        let queue = Mutex::new(todo);
        // downloads someone else had started: waited for once ours are done
        let elsewhere: Mutex<Vec<&LockedPackage>> = Mutex::new(vec![]);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let workers = self.jobs.clamp(1, 16);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        if first_error.lock().unwrap().is_some() {
                            return;
                        }
                        let Some(p) = queue.lock().unwrap().pop() else {
                            return;
                        };
                        let res = match self.in_flight.try_claim(&p.sha256) {
                            Ok(claim) => self.fetch_claimed(p, &claim, progress),
                            Err(_) => {
                                elsewhere.lock().unwrap().push(p);
                                Ok(())
                            }
                        };
                        if let Err(e) = res {
                            first_error.lock().unwrap().get_or_insert(e);
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().unwrap() {
            return Err(e);
        }
        for p in elsewhere.into_inner().unwrap() {
            loop {
                match self.in_flight.try_claim(&p.sha256) {
                    Ok(claim) => {
                        self.fetch_claimed(p, &claim, progress)?;
                        break;
                    }
                    Err(flight) => flight.wait(),
                }
            }
        }
        Ok(())
    }

    /// Downloads one package unless a download that ended just before the claim brought it.
    fn fetch_claimed(
        &self,
        p: &LockedPackage,
        _claim: &Claim<'_>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<()> {
        if self.store.has_blob(&p.sha256) && self.store.verify(&p.sha256)? {
            return Ok(());
        }
        let url = deb_url(self.mirror, p)?;
        progress(&format!(
            "fetch {} {} ({} bytes)",
            p.name, p.version, p.size
        ));
        let res = download(self.http, &url, |body| {
            self.store
                .put_verified(
                    BufReader::with_capacity(1 << 20, body),
                    &p.sha256,
                    Some(p.size),
                    &url,
                )
                .map_err(from_store)
        });
        match res {
            // a third-party repository has no snapshot service to suggest
            Err(Error::HttpStatus {
                status: 404 | 410,
                url,
            }) if p.repository != DEBIAN => Err(Error::RepositoryDebGone {
                name: p.name.clone(),
                version: p.version.clone(),
                repository: p.repository.clone(),
                url,
            }),
            Err(Error::HttpStatus {
                status: 404 | 410,
                url,
            }) => Err(Error::DebGone {
                name: p.name.clone(),
                version: p.version.clone(),
                url,
                snapshot: None,
            }),
            other => other.map(|_| ()),
        }
    }
}

/// [`Fetcher::fetch`] with a registry of its own (one caller, nothing to share).
pub fn fetch_debs(
    mirror: &Mirror,
    pkgs: &[LockedPackage],
    store: &Store,
    http: &reqwest::blocking::Client,
    jobs: usize,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    Fetcher {
        mirror,
        store,
        http,
        in_flight: &InFlight::new(),
        jobs,
    }
    .fetch(pkgs, progress)
}
