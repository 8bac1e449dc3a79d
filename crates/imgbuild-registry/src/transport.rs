//! One registry session: base URL (HTTPS, or HTTP only for loopback/insecure registries, as
//! the client decided), its auth challenge, the token cache, and the execution of requests
//! with retries.
//!
//! A request is described by a closure that builds it, so that it can be sent again: after a
//! 401 with an expired token (once, with a fresh token), and after transient failures —
//! connection errors, 408, 429 and 5xx — with exponential backoff and jitter, honouring
//! `Retry-After` (seconds or an HTTP date), for as long as the time budget of
//! [`RetryPolicy::timeout`] lasts ([`Retries`]). Requests whose body cannot be replayed (blob
//! uploads) use [`Session::attempt`] and do their own recovery (see `upload.rs`), against the
//! same budget.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::StatusCode;
use reqwest::Url;
use reqwest::blocking::{Client as HttpClient, RequestBuilder, Response};
use reqwest::header::{AUTHORIZATION, HeaderValue, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};

use crate::auth::{CachedToken, Challenge, TokenResponse, parse_www_authenticate, scope_key};
use crate::credentials::Credential;
use crate::error::{RegistryError, Result};
use crate::reference::{api_host, is_loopback};

/// How long to retry transient failures.
///
/// The budget is time, not a number of attempts: a registry that rate-limits with a
/// run of `429 Too Many Requests` and `Retry-After` is waited out for as long as the
/// budget lasts, however many answers that takes, while a registry that is down
/// still fails in bounded time.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// How long one request keeps being retried, from its first attempt (for a blob
    /// upload: from its last progress, so a long upload over a flaky link may fail
    /// many times in total but never stalls longer than this). Zero: no retries.
    pub timeout: Duration,
    /// Backoff before the first retry; doubles with each retry (with jitter).
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured; longer ones are cut to this.
    pub max_retry_after: Duration,
}

/// The default retry budget: five minutes rides out rate limiting and a registry
/// restart, and still fails a push to a registry that is down well within a CI job.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            timeout: DEFAULT_RETRY_TIMEOUT,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// The retries of one request (or one blob transfer since its last progress)
/// against the session's [`RetryPolicy`] budget.
pub(crate) struct Retries<'s> {
    sess: &'s Session,
    started: Instant,
    /// Failed attempts since `started`.
    failed: u32,
}

impl<'s> Retries<'s> {
    pub fn new(sess: &'s Session) -> Retries<'s> {
        Retries {
            sess,
            started: Instant::now(),
            failed: 0,
        }
    }

    /// After a failed attempt: waits (`Retry-After` if given, else backoff; never
    /// past the budget) and returns `Ok` if another attempt is due, or the final
    /// error, which says how many attempts were made over how long.
    pub fn retry(&mut self, error: RegistryError, retry_after: Option<Duration>) -> Result<()> {
        self.failed += 1;
        let elapsed = self.started.elapsed();
        let budget = self.sess.retry.timeout;
        if elapsed >= budget {
            return Err(RegistryError::RetriesExhausted {
                attempts: self.failed,
                seconds: elapsed.as_secs_f64(),
                budget_seconds: budget.as_secs(),
                last: Box::new(error),
            });
        }
        std::thread::sleep(
            self.sess
                .delay(self.failed, retry_after)
                .min(budget - elapsed),
        );
        Ok(())
    }

    /// The transfer made progress: the budget starts again.
    pub fn progress(&mut self) {
        self.started = Instant::now();
        self.failed = 0;
    }
}

/// The outcome of one failed attempt.
pub(crate) enum Failure {
    /// Worth another try (after `after` if the server said so).
    Retry {
        error: RegistryError,
        after: Option<Duration>,
    },
    Fatal(RegistryError),
}

impl Failure {
    pub fn into_error(self) -> RegistryError {
        match self {
            Failure::Retry { error, .. } | Failure::Fatal(error) => error,
        }
    }
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Failure {
        Failure::Fatal(e)
    }
}

pub(crate) fn retryable_status(s: StatusCode) -> bool {
    s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error()
}

/// A registry we talk to, shared by all threads of a push or pull.
pub(crate) struct Session {
    pub registry: String,
    pub base: Url,
    http: HttpClient,
    credential: Option<Credential>,
    pub retry: RetryPolicy,
    /// Listed as insecure by the user (not merely on loopback).
    insecure_explicit: bool,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<BTreeMap<String, CachedToken>>,
    /// Where every request sent is counted (shared by the client's sessions).
    pub counts: std::sync::Arc<crate::counts::RequestCounts>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("registry", &self.registry)
            .field("base", &self.base.as_str())
            .field(
                "user",
                &self.credential.as_ref().map(|c| c.username().to_owned()),
            )
            .finish_non_exhaustive()
    }
}

impl Session {
    /// `plain`: reach the registry over HTTP (the client allows it only for loopback
    /// registries and `insecure` ones, the registries the user listed).
    pub fn new(
        registry: &str,
        http: HttpClient,
        credential: Option<Credential>,
        retry: RetryPolicy,
        plain: bool,
        insecure: bool,
    ) -> Result<Session> {
        debug_assert!(!plain || insecure || is_loopback(registry));
        let scheme = if plain { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{}/", api_host(registry))).map_err(|e| {
            RegistryError::InvalidReference {
                input: registry.to_owned(),
                reason: format!("not a usable host: {e}"),
            }
        })?;
        Ok(Session {
            registry: registry.to_owned(),
            base,
            http,
            credential,
            retry,
            insecure_explicit: insecure,
            challenge: Mutex::new(None),
            tokens: Mutex::new(BTreeMap::new()),
            counts: Default::default(),
        })
    }

    pub fn user(&self) -> Option<&str> {
        self.credential.as_ref().map(Credential::username)
    }

    pub fn url(&self, path: &str) -> Url {
        self.base
            .join(path.trim_start_matches('/'))
            .expect("valid path")
    }

    /// The `Location` of a response, resolved against the registry's base URL.
    pub fn location(&self, resp: &Response, what: &str) -> Result<Url> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.protocol(what, "the answer has no Location header"))?;
        resp.url()
            .join(loc)
            .map_err(|e| self.protocol(what, &format!("bad Location `{loc}`: {e}")))
    }

    pub fn protocol(&self, what: &str, message: &str) -> RegistryError {
        RegistryError::Protocol {
            registry: self.registry.clone(),
            what: what.to_owned(),
            message: message.to_owned(),
        }
    }

    fn auth_failed(&self, what: &str) -> RegistryError {
        match &self.credential {
            Some(c) => RegistryError::AuthFailed {
                registry: self.registry.clone(),
                user: c.username().to_owned(),
            },
            None => RegistryError::AuthRequired {
                registry: self.registry.clone(),
                what: what.to_owned(),
            },
        }
    }

    fn transport_failure(&self, what: &str, e: reqwest::Error) -> Failure {
        let mut message = error_chain(&e);
        // A certificate that does not verify will not verify on a retry either, and a
        // server that answers TLS with plain HTTP will not start speaking TLS.
        let untrusted = message.contains("invalid peer certificate");
        let not_tls = message.contains("InvalidContentType");
        if untrusted {
            message.push_str(&format!(
                " (if {} uses a private CA, put the CA certificate in /etc/docker/certs.d/{}/ca.crt)",
                self.registry, self.registry
            ));
        } else if not_tls {
            message.push_str(&format!(
                " (the server does not speak TLS: if {} is a plain-HTTP registry, list it in \
                 IMGBUILD_INSECURE_REGISTRIES or `[registry] insecure` of imgbuild.toml)",
                self.registry
            ));
        }
        let error = RegistryError::Transport {
            registry: self.registry.clone(),
            what: what.to_owned(),
            message,
        };
        if e.is_builder() || e.is_redirect() || untrusted || not_tls {
            Failure::Fatal(error)
        } else {
            Failure::Retry { error, after: None }
        }
    }

    /// The registry's auth challenge, from `GET /v2/` (asked once per session).
    fn challenge(&self) -> Result<Challenge, Failure> {
        if let Some(c) = self.challenge.lock().unwrap().clone() {
            return Ok(c);
        }
        let what = "GET /v2/ (API check)";
        let resp = self
            .http
            .get(self.url("/v2/"))
            .send()
            .map_err(|e| self.transport_failure(what, e))?;
        let status = resp.status();
        let c = if status.is_success() {
            Challenge::Anonymous
        } else if status == StatusCode::UNAUTHORIZED {
            resp.headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_www_authenticate)
                .and_then(|w| w.challenge())
                .ok_or_else(|| {
                    self.protocol(what, "401 without a usable WWW-Authenticate header")
                })?
        } else {
            return Err(self.status_failure(what, "", resp));
        };
        *self.challenge.lock().unwrap() = Some(c.clone());
        Ok(c)
    }

    /// The Authorization header for a request needing `scopes`.
    fn authorization(
        &self,
        scopes: &[String],
        refresh: bool,
    ) -> Result<Option<HeaderValue>, Failure> {
        let value = match self.challenge()? {
            Challenge::Anonymous => return Ok(None),
            Challenge::Basic => match &self.credential {
                None => return Ok(None),
                Some(Credential::Basic { username, password }) => {
                    format!(
                        "Basic {}",
                        B64.encode(format!("{username}:{}", password.expose()))
                    )
                }
                Some(Credential::IdentityToken { username, token }) => {
                    format!(
                        "Basic {}",
                        B64.encode(format!("{username}:{}", token.expose()))
                    )
                }
            },
            Challenge::Bearer { realm, service } => {
                let key = scope_key(scopes);
                let cached = self.tokens.lock().unwrap().get(&key).cloned();
                let token = match cached {
                    Some(t) if t.fresh() && !refresh => t,
                    _ => {
                        let t = self.fetch_token(&realm, service.as_deref(), scopes)?;
                        self.tokens.lock().unwrap().insert(key, t.clone());
                        t
                    }
                };
                format!("Bearer {}", token.token.expose())
            }
        };
        let mut v = HeaderValue::from_str(&value).map_err(|_| {
            Failure::Fatal(self.protocol(
                "authorization",
                "credentials contain characters not allowed in a header",
            ))
        })?;
        v.set_sensitive(true);
        Ok(Some(v))
    }

    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<CachedToken, Failure> {
        let what = format!("token request to {realm}");
        let mut url = Url::parse(realm)
            .map_err(|e| self.protocol(&what, &format!("the realm is not a URL: {e}")))?;
        let realm_host = url.host_str().unwrap_or("").to_owned();
        // A loopback registry may point at a remote realm: only a loopback realm or one of a
        // registry the user listed as insecure may be plain HTTP.
        if url.scheme() != "https" && !(is_loopback(&realm_host) || self.insecure_explicit) {
            // Never send credentials in clear text to a non-local token server.
            return Err(Failure::Fatal(RegistryError::InsecureNotAllowed {
                registry: realm_host,
            }));
        }
        let mut scopes_sorted: Vec<&String> = scopes.iter().collect();
        scopes_sorted.sort();
        scopes_sorted.dedup();
        let resp = match &self.credential {
            Some(Credential::IdentityToken { token, .. }) => {
                let mut form: Vec<(&str, String)> = vec![
                    ("grant_type", "refresh_token".into()),
                    ("refresh_token", token.expose().to_owned()),
                    ("client_id", "imgbuild".into()),
                    (
                        "scope",
                        scopes_sorted
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(" "),
                    ),
                ];
                if let Some(s) = service {
                    form.push(("service", s.to_owned()));
                }
                self.http.post(url).form(&form).send()
            }
            cred => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in &scopes_sorted {
                        q.append_pair("scope", s);
                    }
                }
                let mut rb = self.http.get(url);
                if let Some(Credential::Basic { username, password }) = cred {
                    rb = rb.basic_auth(username, Some(password.expose()));
                }
                rb.send()
            }
        }
        .map_err(|e| self.transport_failure(&what, e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Failure::Fatal(self.auth_failed(&what)));
        }
        if !status.is_success() {
            return Err(self.status_failure(&what, "", resp));
        }
        let body = read_limited(resp, 1 << 20).map_err(|e| Failure::Retry {
            error: self.protocol(&what, &format!("reading the answer failed: {e}")),
            after: None,
        })?;
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            self.protocol(&what, &format!("the answer is not the expected JSON ({e})"))
        })?;
        CachedToken::from_response(parsed).ok_or_else(|| {
            Failure::Fatal(
                self.protocol(&what, "the answer has neither `token` nor `access_token`"),
            )
        })
    }

    /// One attempt: authorises, sends, and on a 401 re-authorises once (token expired or the
    /// challenge changed). Any other status is returned to the caller.
    pub fn attempt(
        &self,
        scopes: &[String],
        what: &str,
        make: &dyn Fn(&HttpClient) -> RequestBuilder,
    ) -> Result<Response, Failure> {
        let mut refreshed = false;
        loop {
            let auth = self.authorization(scopes, refreshed)?;
            let mut rb = make(&self.http);
            if let Some(a) = auth.clone() {
                rb = rb.header(AUTHORIZATION, a);
            }
            let (http, req) = rb.build_split();
            let req = req.map_err(|e| self.transport_failure(what, e))?;
            let (method, url) = (req.method().clone(), req.url().clone());
            let bytes_up = req
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .or_else(|| {
                    req.body()
                        .and_then(|b| b.as_bytes())
                        .map(|b| b.len() as u64)
                })
                .unwrap_or(0);
            let resp = http
                .execute(req)
                .map_err(|e| self.transport_failure(what, e))?;
            let bytes_down = if resp.status().is_success() && method != reqwest::Method::HEAD {
                resp.content_length().unwrap_or(0)
            } else {
                0
            };
            self.counts.record(
                &self.registry,
                &method,
                url.path(),
                url.query(),
                bytes_up,
                bytes_down,
            );
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let www = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_www_authenticate);
            if let Some(new) = www.as_ref().and_then(|w| w.challenge()) {
                let mut current = self.challenge.lock().unwrap();
                if current.as_ref() != Some(&new) {
                    // /v2/ was open but this resource is not, or the realm moved: start over.
                    *current = Some(new.clone());
                    drop(current);
                    if !refreshed {
                        refreshed = true;
                        continue;
                    }
                }
            }
            let bearer = matches!(
                self.challenge.lock().unwrap().as_ref(),
                Some(Challenge::Bearer { .. })
            );
            if bearer && !refreshed && auth.is_some() {
                refreshed = true;
                continue;
            }
            if www.as_ref().is_some_and(|w| w.insufficient_scope()) && self.credential.is_some() {
                return Err(Failure::Fatal(RegistryError::Denied {
                    registry: self.registry.clone(),
                    what: what.to_owned(),
                    user: self.user().map(str::to_owned),
                    message: "the token server did not grant this access (insufficient_scope): \
                              check the repository name, and that the account may pull and push it"
                        .into(),
                }));
            }
            return Err(Failure::Fatal(self.auth_failed(what)));
        }
    }

    /// Sends a replayable request, retrying transient failures; returns the final response,
    /// which may be any non-retryable status (the caller maps 404 etc.).
    pub fn send(
        &self,
        scopes: &[String],
        what: &str,
        make: &dyn Fn(&HttpClient) -> RequestBuilder,
    ) -> Result<Response> {
        let mut retries = Retries::new(self);
        loop {
            let failure = match self.attempt(scopes, what, make) {
                Ok(resp) if retryable_status(resp.status()) => self.status_failure(what, "", resp),
                Ok(resp) => return Ok(resp),
                Err(f) => f,
            };
            match failure {
                Failure::Fatal(e) => return Err(e),
                Failure::Retry { error, after } => retries.retry(error, after)?,
            }
        }
    }

    /// Sleeps before retry number `attempt` (1-based), as [`Session::delay`] says.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) {
        std::thread::sleep(self.delay(attempt, retry_after));
    }

    /// The wait before retry number `attempt` (1-based): `Retry-After` if given, else
    /// exponential backoff with jitter (50–100 % of the step) so parallel workers spread out.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(d) => d.min(self.retry.max_retry_after),
            None => {
                let step = self
                    .retry
                    .initial_backoff
                    .saturating_mul(1u32 << (attempt - 1).min(16))
                    .min(self.retry.max_backoff);
                step.mul_f64(0.5 + 0.5 * jitter())
            }
        }
    }

    /// Turns a non-success response into an error (retryable for 408/429/5xx), reading the
    /// registry's error body for the message.
    pub fn status_failure(&self, what: &str, repository: &str, resp: Response) -> Failure {
        let status = resp.status();
        let after = retry_after(&resp);
        let error = self.error_from(what, repository, resp);
        if retryable_status(status) {
            Failure::Retry { error, after }
        } else {
            Failure::Fatal(error)
        }
    }

    /// Maps a non-success response to the most specific error.
    pub fn error_from(&self, what: &str, repository: &str, resp: Response) -> RegistryError {
        let status = resp.status();
        let body = read_limited(resp, 64 << 10).unwrap_or_default();
        let errors = registry_errors(&body);
        let codes: Vec<&str> = errors.iter().map(|(c, _)| c.as_str()).collect();
        let message = if errors.is_empty() {
            String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(300)
                .collect()
        } else {
            errors
                .iter()
                .map(|(c, m)| {
                    if m.is_empty() {
                        c.clone()
                    } else {
                        format!("{c}: {m}")
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        if codes.contains(&"NAME_UNKNOWN") && !repository.is_empty() {
            return RegistryError::RepositoryUnknown {
                registry: self.registry.clone(),
                repository: repository.to_owned(),
            };
        }
        if status == StatusCode::FORBIDDEN || codes.contains(&"DENIED") {
            return RegistryError::Denied {
                registry: self.registry.clone(),
                what: what.to_owned(),
                user: self.user().map(str::to_owned),
                message,
            };
        }
        RegistryError::Http {
            registry: self.registry.clone(),
            what: what.to_owned(),
            status: status.as_u16(),
            message,
        }
    }
}

/// `(code, message)` pairs of a distribution-spec error body.
pub(crate) fn registry_errors(body: &[u8]) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    serde_json::from_slice::<Body>(body)
        .map(|b| b.errors.into_iter().map(|i| (i.code, i.message)).collect())
        .unwrap_or_default()
}

/// Reads at most `limit` bytes of a response body (error bodies, manifests, tokens).
pub(crate) fn read_limited(resp: Response, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    resp.take(limit).read_to_end(&mut buf)?;
    Ok(buf)
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date.
pub(crate) fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get(RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(v, SystemTime::now())
}

pub(crate) fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A reqwest error and its causes, as one line (URLs carry no credentials: we never put any
/// in a URL).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// A number in [0, 1) for backoff jitter: splitmix64 over a per-process random seed.
fn jitter() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut s = STATE.load(Ordering::Relaxed);
    if s == 0 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9);
        s = h.finish() | 1;
    }
    s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    STATE.store(s, Ordering::Relaxed);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:30 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn error_bodies() {
        let e = registry_errors(br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry","detail":{"name":"x"}}]}"#);
        assert_eq!(
            e,
            vec![(
                "NAME_UNKNOWN".into(),
                "repository name not known to registry".into()
            )]
        );
        assert!(registry_errors(b"<html>").is_empty());
    }

    #[test]
    fn plain_http_only_for_loopback_or_listed_registries() {
        let http = HttpClient::new();
        let s = |r: &str, plain: bool| {
            Session::new(r, http.clone(), None, RetryPolicy::default(), plain, plain)
                .unwrap()
                .base
                .to_string()
        };
        assert_eq!(s("docker.io", false), "https://registry-1.docker.io/");
        assert_eq!(s("ghcr.io", false), "https://ghcr.io/");
        assert_eq!(s("10.1.2.3:5000", false), "https://10.1.2.3:5000/");
        assert_eq!(s("10.1.2.3:5000", true), "http://10.1.2.3:5000/");
        assert_eq!(s("127.0.0.1:5000", false), "https://127.0.0.1:5000/");
    }

    #[test]
    fn jitter_in_range() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
