//! The registry auth handshake: parsing `WWW-Authenticate` challenges and the bearer-token
//! flow of the distribution spec (token server at `realm`, with `service` and `scope`s).
//!
//! Tokens are fetched with HTTP basic credentials on a GET, or, for an identity token, with a
//! POST `grant_type=refresh_token` (the OAuth2 form Docker uses). The answer's `token` or
//! `access_token` is cached per (sorted) scope set until shortly before `expires_in` runs out.
//! Token values live in [`Secret`]s and never reach an error or a log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::credentials::Secret;

/// How a registry wants to be authenticated, from its `/v2/` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `/v2/` answered 200: no auth.
    Anonymous,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// A parsed `WWW-Authenticate` header: scheme and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WwwAuthenticate {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl WwwAuthenticate {
    pub fn challenge(&self) -> Option<Challenge> {
        match self.scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => Some(Challenge::Bearer {
                realm: self.params.get("realm")?.clone(),
                service: self.params.get("service").cloned(),
            }),
            _ => None,
        }
    }
    /// `error="insufficient_scope"`: the token was fine but lacks the permission.
    pub fn insufficient_scope(&self) -> bool {
        self.params
            .get("error")
            .is_some_and(|e| e == "insufficient_scope")
    }
}

/// Parses `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="a,b"`.
/// Quoted values may contain commas; the scheme is the first token.
pub(crate) fn parse_www_authenticate(header: &str) -> Option<WwwAuthenticate> {
    let header = header.trim();
    let (scheme, rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r.trim()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    Some(WwwAuthenticate {
        scheme: scheme.to_owned(),
        params,
    })
}

/// The token server's answer (Docker's and OAuth2's field names).
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenResponse(<redacted>)")
    }
}

/// A bearer token and when to stop using it.
#[derive(Clone, Debug)]
pub(crate) struct CachedToken {
    pub token: Secret,
    pub refresh_at: Instant,
}

impl CachedToken {
    pub fn from_response(resp: TokenResponse) -> Option<CachedToken> {
        let token = resp.token.or(resp.access_token).filter(|t| !t.is_empty())?;
        // The spec's default lifetime is 60 s; refresh with a margin so a long upload does not
        // start with a token about to expire.
        let lifetime = Duration::from_secs(resp.expires_in.unwrap_or(60).max(60));
        let margin = (lifetime / 5).min(Duration::from_secs(30));
        Some(CachedToken {
            token: Secret::new(token),
            refresh_at: Instant::now() + lifetime - margin,
        })
    }
    pub fn fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

/// Cache key of a scope set: sorted, deduplicated, space-joined.
pub(crate) fn scope_key(scopes: &[String]) -> String {
    let mut s: Vec<&str> = scopes.iter().map(String::as_str).collect();
    s.sort_unstable();
    s.dedup();
    s.join(" ")
}

/// `repository:NAME:pull` or `repository:NAME:pull,push`.
pub(crate) fn repo_scope(repository: &str, push: bool) -> String {
    if push {
        format!("repository:{repository}:pull,push")
    } else {
        format!("repository:{repository}:pull")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let h = parse_www_authenticate(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/python:pull,push""#,
        )
        .unwrap();
        assert_eq!(h.scheme, "Bearer");
        assert_eq!(h.params["scope"], "repository:library/python:pull,push");
        assert_eq!(
            h.challenge(),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert!(!h.insufficient_scope());
        let h = parse_www_authenticate(r#"Bearer realm="x",error="insufficient_scope""#).unwrap();
        assert!(h.insufficient_scope());
        let h = parse_www_authenticate(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(h.challenge(), Some(Challenge::Basic));
        assert_eq!(
            parse_www_authenticate("Basic").unwrap().challenge(),
            Some(Challenge::Basic)
        );
    }

    #[test]
    fn token_response_and_scopes() {
        let r: TokenResponse =
            serde_json::from_str(r#"{"access_token":"abc","expires_in":300}"#).unwrap();
        let t = CachedToken::from_response(r).unwrap();
        assert_eq!(t.token.expose(), "abc");
        assert!(t.fresh());
        let r: TokenResponse = serde_json::from_str(r#"{"token":"t"}"#).unwrap();
        assert_eq!(CachedToken::from_response(r).unwrap().token.expose(), "t");
        assert!(CachedToken::from_response(serde_json::from_str(r#"{}"#).unwrap()).is_none());
        assert_eq!(
            scope_key(&[
                repo_scope("b", true),
                repo_scope("a", false),
                repo_scope("b", true)
            ]),
            "repository:a:pull repository:b:pull,push"
        );
    }
}
