//! Moving one blob into one repository: a cross-repository mount, or an upload streamed from
//! the store that survives faults.
//!
//! Upload protocol: `POST /v2/<repo>/blobs/uploads/` opens a session. A blob of at most
//! `chunk_size` bytes then goes up whole in the closing `PUT <location>?digest=` (a
//! "monolithic" upload: two requests in all); a bigger one goes up in `PATCH` requests of at
//! most `chunk_size` bytes, each with a known `Content-Length` and a `Content-Range`, and an
//! empty closing `PUT`. Bodies are read straight from the store file (never whole in memory).
//! After a failed request the client backs off, asks the registry how much it has (`GET
//! <location>` → `Range: 0-N`) and continues from there in `PATCH`es; when the registry has
//! lost or cancelled the session it starts a new one from byte 0. A `PUT` whose answer was
//! lost is recognised by a `HEAD` of the blob.
//!
//! The local blob is not hashed before it is sent: the registry computes the digest of what it
//! received and refuses the closing `PUT` (`DIGEST_INVALID`) when it differs. Only then is the
//! local blob hashed, to tell a corrupt store (the blob is removed and reported) from a
//! transfer that went wrong (the upload starts again).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use imgbuild_store::{Digest, Store};
use reqwest::StatusCode;
use reqwest::Url;
use reqwest::blocking::Body;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName};

use crate::auth::repo_scope;
use crate::error::{RegistryError, Result};
use crate::transport::{Failure, Session, registry_errors, retryable_status};

const CONTENT_RANGE: HeaderName = HeaderName::from_static("content-range");
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// What a mount attempt achieved.
pub(crate) enum Mount {
    /// 201: the blob is now in the target repository.
    Mounted,
    /// 202: the registry did not mount but opened an upload session (at this URL).
    Upload(Url),
    /// The mount was refused (no access to the source): upload normally.
    Refused,
}

/// `POST /v2/<target>/blobs/uploads/?mount=<digest>&from=<source>`, with a token that has
/// pull on the source and push,pull on the target (Docker Hub mounts need both).
pub(crate) fn mount(sess: &Session, target: &str, source: &str, digest: &Digest) -> Result<Mount> {
    let scopes = [repo_scope(target, true), repo_scope(source, false)];
    let what = format!("mount of blob {digest} from {source} into {target}");
    let mut url = sess.url(&format!("/v2/{target}/blobs/uploads/"));
    url.query_pairs_mut()
        .append_pair("mount", &digest.to_string())
        .append_pair("from", source);
    let resp = match sess.send(&scopes, &what, &|c| {
        c.post(url.clone()).header(CONTENT_LENGTH, 0)
    }) {
        Ok(r) => r,
        // A token server may grant push on the target but not pull on the source.
        Err(RegistryError::Denied { .. }) => return Ok(Mount::Refused),
        Err(e) => return Err(e),
    };
    match resp.status() {
        StatusCode::CREATED => Ok(Mount::Mounted),
        StatusCode::ACCEPTED => Ok(Mount::Upload(sess.location(&resp, &what)?)),
        StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => Ok(Mount::Refused),
        _ => Err(sess.error_from(&what, target, resp)),
    }
}

/// Best effort: tells the registry an upload session will not be used (`DELETE`), so it does
/// not linger until the registry purges it. Failures are ignored.
pub(crate) fn cancel_upload(sess: &Session, repository: &str, url: Url) {
    let scopes = [repo_scope(repository, true)];
    let _ = sess.attempt(&scopes, "cancelling an unused upload session", &|c| {
        c.delete(url.clone())
    });
}

/// Whether the repository has the blob (`HEAD /v2/<repo>/blobs/<digest>`).
pub(crate) fn blob_exists(sess: &Session, repository: &str, digest: &Digest) -> Result<bool> {
    let scopes = [repo_scope(repository, true)];
    let what = format!("HEAD of blob {digest} in {repository}");
    let url = sess.url(&format!("/v2/{repository}/blobs/{digest}"));
    let resp = sess.send(&scopes, &what, &|c| c.head(url.clone()))?;
    match resp.status() {
        s if s.is_success() => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        _ => Err(sess.error_from(&what, repository, resp)),
    }
}

enum State {
    /// No upload session: open one.
    Start,
    /// Sending from `offset` to the session at `url`.
    Send {
        url: Url,
        offset: u64,
    },
    /// Something failed: ask the registry where the session at `url` stands.
    Status {
        url: Url,
        offset: u64,
    },
    /// Close the session with the digest; `whole`: the `PUT` carries the whole blob (nothing
    /// was sent to this session yet), else everything was sent and the body is empty.
    Finish {
        url: Url,
        whole: bool,
    },
    Done,
}

/// Uploads a blob from the store to `repository`. `started` is an upload session the
/// registry already opened (a mount answered 202). Returns after the registry confirmed the
/// blob (201 to the final `PUT`, or a `HEAD` after a lost answer).
pub(crate) fn upload_blob(
    sess: &Session,
    store: &Store,
    repository: &str,
    digest: &Digest,
    size: u64,
    chunk_size: u64,
    started: Option<Url>,
) -> Result<()> {
    let path = store.blob_path(digest);
    let local_err = |corrupt: bool| {
        let (registry, repository, digest) =
            (sess.registry.clone(), repository.to_owned(), digest.clone());
        if corrupt {
            RegistryError::LocalBlobCorrupt {
                registry,
                repository,
                digest,
            }
        } else {
            RegistryError::LocalBlobMissing {
                registry,
                repository,
                digest,
            }
        }
    };
    if !store.has_blob(digest) {
        return Err(local_err(false));
    }
    let actual = store.blob_size(digest)?;
    if actual != size {
        return Err(RegistryError::InvalidInput {
            repository: format!("{}/{repository}", sess.registry),
            message: format!(
                "descriptor of blob {digest} says {size} bytes, the stored blob has {actual}"
            ),
        });
    }

    let scopes = [repo_scope(repository, true)];
    let chunk_size = chunk_size.max(1);
    // Failures since the last progress, against the retry budget: a long upload over a flaky
    // link may fail many times in total, but never for longer than the budget in a row.
    let retries = std::cell::RefCell::new(crate::transport::Retries::new(sess));
    let mut restarts = 0u32;
    let mut state = match started {
        Some(url) => State::Send { url, offset: 0 },
        None => State::Start,
    };
    // Counts a failure; returns the error when out of attempts or not retryable.
    let fail = |f: Failure| -> Result<()> {
        match f {
            Failure::Fatal(e) => Err(e),
            Failure::Retry { error, after } => retries.borrow_mut().retry(error, after),
        }
    };
    loop {
        state = match state {
            State::Start => {
                let what = format!("starting the upload of blob {digest} to {repository}");
                let url = sess.url(&format!("/v2/{repository}/blobs/uploads/"));
                let resp = sess.send(&scopes, &what, &|c| {
                    c.post(url.clone()).header(CONTENT_LENGTH, 0)
                })?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(sess.error_from(&what, repository, resp));
                }
                State::Send {
                    url: sess.location(&resp, &what)?,
                    offset: 0,
                }
            }
            State::Done => return Ok(()),
            State::Send { url, offset } if offset >= size => State::Finish { url, whole: false },
            // Small enough for one request: all of it in the closing PUT.
            State::Send { url, offset: 0 } if size <= chunk_size => {
                State::Finish { url, whole: true }
            }
            State::Send { url, offset } => {
                let end = (offset + chunk_size).min(size);
                let what = format!(
                    "upload of blob {digest} to {repository} (bytes {offset}-{})",
                    end - 1
                );
                let result = sess.attempt(&scopes, &what, &|c| {
                    let body =
                        Body::sized(FileRange::new(&path, offset, end - offset), end - offset);
                    c.patch(url.clone())
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_RANGE, format!("{offset}-{}", end - 1))
                        // stated, so that the request counts see the bytes sent
                        .header(CONTENT_LENGTH, end - offset)
                        .body(body)
                });
                match result {
                    Ok(resp) if resp.status() == StatusCode::ACCEPTED => {
                        let next = sess.location(&resp, &what)?;
                        retries.borrow_mut().progress();
                        // Trust the registry's count over ours if it says.
                        let confirmed = match range_end(&resp) {
                            Some(e) if e > 0 && e < size => e + 1,
                            _ => end,
                        };
                        State::Send {
                            url: next,
                            offset: confirmed,
                        }
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let f = sess.status_failure(&what, repository, resp);
                        if retryable_status(status) {
                            fail(f)?;
                        } else if status == StatusCode::UNAUTHORIZED
                            || status == StatusCode::FORBIDDEN
                        {
                            return Err(f.into_error());
                        } else {
                            // 404 (session gone), 416 (offset disagreement), 400: ask the
                            // registry where it stands; count it so a loop cannot be endless.
                            fail(match f {
                                Failure::Fatal(error) => Failure::Retry { error, after: None },
                                r => r,
                            })?;
                        }
                        State::Status { url, offset }
                    }
                    Err(f) => {
                        fail(f)?;
                        State::Status { url, offset }
                    }
                }
            }
            State::Status { url, offset } => {
                let what = format!("status of the upload of blob {digest} to {repository}");
                match sess.attempt(&scopes, &what, &|c| c.get(url.clone())) {
                    Ok(resp)
                        if resp.status() == StatusCode::NO_CONTENT
                            || resp.status().is_success() =>
                    {
                        let next = sess.location(&resp, &what).unwrap_or(url);
                        // `Range: 0-0` is ambiguous (0 or 1 byte) in distribution 2.x: read it as
                        // 0 unless we know more was confirmed; a wrong guess ends in a digest
                        // error at the PUT, which restarts the blob.
                        let have = match range_end(&resp) {
                            Some(0) if offset == 0 => 0,
                            Some(e) => e + 1,
                            None => 0,
                        };
                        if have > size {
                            restart(&mut restarts, sess, repository, digest)?;
                            State::Start
                        } else {
                            State::Send {
                                url: next,
                                offset: have,
                            }
                        }
                    }
                    Ok(resp) if retryable_status(resp.status()) => {
                        fail(sess.status_failure(&what, repository, resp))?;
                        State::Status { url, offset }
                    }
                    // The session is unknown or was cancelled: start over.
                    Ok(_) => {
                        restart(&mut restarts, sess, repository, digest)?;
                        State::Start
                    }
                    Err(Failure::Fatal(e)) => return Err(e),
                    Err(f) => {
                        fail(f)?;
                        State::Status { url, offset }
                    }
                }
            }
            State::Finish { url, whole } => {
                let what = if whole {
                    format!("upload of blob {digest} to {repository}")
                } else {
                    format!("completing the upload of blob {digest} to {repository}")
                };
                let mut put = url.clone();
                put.query_pairs_mut()
                    .append_pair("digest", &digest.to_string());
                match sess.attempt(&scopes, &what, &|c| {
                    if whole {
                        c.put(put.clone())
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header(CONTENT_LENGTH, size)
                            .body(Body::sized(FileRange::new(&path, 0, size), size))
                    } else {
                        c.put(put.clone()).header(CONTENT_LENGTH, 0)
                    }
                }) {
                    Ok(resp)
                        if resp.status() == StatusCode::CREATED || resp.status().is_success() =>
                    {
                        if let Some(d) = resp
                            .headers()
                            .get(DOCKER_CONTENT_DIGEST)
                            .and_then(|v| v.to_str().ok())
                            && d != digest.to_string()
                        {
                            return Err(RegistryError::DigestMismatch {
                                registry: sess.registry.clone(),
                                repository: repository.to_owned(),
                                what: format!("uploaded blob {digest}"),
                                expected: digest.to_string(),
                                actual: d.to_owned(),
                            });
                        }
                        State::Done
                    }
                    Ok(resp) if resp.status() == StatusCode::BAD_REQUEST => {
                        let body =
                            crate::transport::read_limited(resp, 64 << 10).unwrap_or_default();
                        let codes = registry_errors(&body);
                        if codes.iter().any(|(c, _)| {
                            c == "DIGEST_INVALID"
                                || c == "SIZE_INVALID"
                                || c == "BLOB_UPLOAD_INVALID"
                        }) {
                            // The registry assembled something else than the blob's name: the
                            // local bytes are wrong (reported, removed from the store), or
                            // the transfer was (a resume at a wrong offset): start again.
                            if !store.verify(digest)? {
                                return Err(local_err(true));
                            }
                            restart(&mut restarts, sess, repository, digest)?;
                            State::Start
                        } else {
                            return Err(RegistryError::Http {
                                registry: sess.registry.clone(),
                                what,
                                status: 400,
                                message: codes
                                    .into_iter()
                                    .map(|(c, m)| format!("{c}: {m}"))
                                    .collect::<Vec<_>>()
                                    .join("; "),
                            });
                        }
                    }
                    Ok(resp) if retryable_status(resp.status()) => {
                        fail(sess.status_failure(&what, repository, resp))?;
                        after_lost_put(sess, repository, digest, url)?
                    }
                    Ok(resp) if resp.status() == StatusCode::NOT_FOUND => {
                        // Session gone; maybe because an earlier PUT did succeed.
                        if blob_exists(sess, repository, digest)? {
                            return Ok(());
                        }
                        restart(&mut restarts, sess, repository, digest)?;
                        State::Start
                    }
                    Ok(resp) => return Err(sess.error_from(&what, repository, resp)),
                    Err(Failure::Fatal(e)) => return Err(e),
                    Err(f) => {
                        fail(f)?;
                        after_lost_put(sess, repository, digest, url)?
                    }
                }
            }
        };
        if matches!(state, State::Done) {
            return Ok(());
        }
    }
}

/// After a `PUT` failed in transit: done if the blob is there, else ask for the status.
fn after_lost_put(sess: &Session, repository: &str, digest: &Digest, url: Url) -> Result<State> {
    Ok(if blob_exists(sess, repository, digest)? {
        State::Done
    } else {
        State::Status { url, offset: 0 }
    })
}

/// Upload sessions a blob may start: a registry that keeps losing or rejecting them
/// (not a transient failure, which the time budget covers) will not stop doing so.
const MAX_RESTARTS: u32 = 6;

/// Gives up a session and starts the blob again from byte 0 (bounded).
fn restart(restarts: &mut u32, sess: &Session, repository: &str, digest: &Digest) -> Result<()> {
    *restarts += 1;
    if *restarts >= MAX_RESTARTS {
        return Err(sess.protocol(
            &format!("upload of blob {digest} to {repository}"),
            &format!(
                "the registry lost or rejected the upload session {restarts} times; giving up"
            ),
        ));
    }
    sess.backoff(*restarts, None);
    Ok(())
}

/// The end of a `Range: 0-N` (or `bytes=0-N`) header.
fn range_end(resp: &reqwest::blocking::Response) -> Option<u64> {
    let v = resp.headers().get("range")?.to_str().ok()?;
    let v = v.trim().trim_start_matches("bytes=");
    v.split_once('-')?.1.trim().parse().ok()
}

/// `len` bytes of a file from `offset`: the body of one PATCH, read as it is sent. The file
/// is opened on the first read, so that an error surfaces as a failed request.
struct FileRange {
    path: PathBuf,
    offset: u64,
    len: u64,
    inner: Option<std::io::Take<File>>,
}

impl FileRange {
    fn new(path: &Path, offset: u64, len: u64) -> FileRange {
        FileRange {
            path: path.to_path_buf(),
            offset,
            len,
            inner: None,
        }
    }
}

impl Read for FileRange {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.inner.is_none() {
            let mut f = File::open(&self.path)?;
            f.seek(SeekFrom::Start(self.offset))?;
            self.inner = Some(f.take(self.len));
        }
        self.inner.as_mut().expect("opened").read(buf)
    }
}
