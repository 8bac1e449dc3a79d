//! Where registry credentials come from, the way Docker and Podman users already have them,
//! and how `login` stores them.
//!
//! Lookup order for a registry (first hit wins):
//! 1. credentials given explicitly to [`Credentials::with`];
//! 2. environment, for CI: `IMGBUILD_REGISTRY_<HOST>_USER` / `IMGBUILD_REGISTRY_<HOST>_PASSWORD`
//!    where `<HOST>` is the registry name upper-cased with every character other than a letter or
//!    digit replaced by `_` (`docker.io` → `DOCKER_IO`, `127.0.0.1:5000` → `127_0_0_1_5000`);
//!    then `IMGBUILD_REGISTRY_USER` / `IMGBUILD_REGISTRY_PASSWORD`, which apply to every registry
//!    unless `IMGBUILD_REGISTRY_HOST` names one, in which case only to that one (so that a CI
//!    secret meant for the push target is not sent to the registry a base image comes from);
//! 3. Docker's `config.json` (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`):
//!    `credHelpers[<host>]`, then `credsStore` (both run `docker-credential-<name> get`), then
//!    `auths[<host>]` with `auth` (base64 `user:password`) or `identitytoken`;
//! 4. Podman's auth file: `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//!    `~/.config/containers/auth.json` (the `auths` map, host keys only).
//!
//! Docker Hub is looked up under `https://index.docker.io/v1/` and its aliases. Secrets are kept
//! in [`Secret`], which never prints its content.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::error::{RegistryError, Result};
use crate::reference::{DOCKER_HUB, DOCKER_HUB_CONFIG_KEY, normalize_registry};

/// A password or token. `Debug` is redacted and there is no `Display`, so it cannot end up in
/// a message by accident; [`Secret::expose`] is the only way to the content.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself, for putting it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Credentials for one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// User name and password (or a personal access token used as password).
    Basic { username: String, password: Secret },
    /// An OAuth2 refresh token (`identitytoken` in config.json, or `<token>` from a helper):
    /// exchanged at the token server with `grant_type=refresh_token`.
    IdentityToken { username: String, token: Secret },
}

impl Credential {
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Credential {
        Credential::Basic {
            username: username.into(),
            password: Secret::new(password),
        }
    }
    pub fn username(&self) -> &str {
        match self {
            Credential::Basic { username, .. } | Credential::IdentityToken { username, .. } => {
                username
            }
        }
    }
}

/// A snapshot of the environment variables auth lookup reads, so that lookups are
/// deterministic and tests need not mutate the process environment.
#[derive(Clone, Debug, Default)]
pub struct AuthEnv {
    vars: BTreeMap<String, String>,
}

impl AuthEnv {
    /// The current process environment.
    pub fn from_process() -> AuthEnv {
        AuthEnv {
            vars: std::env::vars().collect(),
        }
    }
    /// An explicit environment (tests, embedding).
    pub fn from_vars<I, K, V>(vars: I) -> AuthEnv
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        AuthEnv {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub fn docker_config_path(&self) -> Option<PathBuf> {
        if let Some(dir) = self.var("DOCKER_CONFIG") {
            return Some(Path::new(dir).join("config.json"));
        }
        self.var("HOME")
            .map(|h| Path::new(h).join(".docker/config.json"))
    }

    /// Podman's auth files, in the order Podman reads them.
    pub fn podman_auth_paths(&self) -> Vec<PathBuf> {
        let mut out = vec![];
        if let Some(p) = self.var("REGISTRY_AUTH_FILE") {
            out.push(PathBuf::from(p));
        }
        if let Some(d) = self.var("XDG_RUNTIME_DIR") {
            out.push(Path::new(d).join("containers/auth.json"));
        }
        if let Some(h) = self.var("HOME") {
            out.push(Path::new(h).join(".config/containers/auth.json"));
        }
        out
    }

    fn find_program(&self, name: &str) -> Option<PathBuf> {
        let path = self.var("PATH")?;
        std::env::split_paths(path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }
}

/// Where `login` put the credentials.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StoredIn {
    /// In config.json's `auths`.
    ConfigFile { path: PathBuf },
    /// In a credential helper (`credHelpers` / `credsStore`).
    Helper { helper: String },
}

/// Credential lookup over explicit values, environment, Docker and Podman config.
#[derive(Clone, Debug)]
pub struct Credentials {
    env: AuthEnv,
    explicit: BTreeMap<String, Credential>,
}

impl Credentials {
    /// Lookup in the process environment (and the files and helpers it points to).
    pub fn from_process_env() -> Credentials {
        Credentials::new(AuthEnv::from_process())
    }

    pub fn new(env: AuthEnv) -> Credentials {
        Credentials {
            env,
            explicit: BTreeMap::new(),
        }
    }

    /// No lookup at all: anonymous unless given with [`Credentials::with`].
    pub fn none() -> Credentials {
        Credentials::new(AuthEnv::default())
    }

    /// Uses `credential` for `registry`, before anything else.
    pub fn with(mut self, registry: &str, credential: Credential) -> Credentials {
        self.explicit
            .insert(normalize_registry(registry), credential);
        self
    }

    pub fn env(&self) -> &AuthEnv {
        &self.env
    }

    /// The credentials for a registry, if any source has them.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credential>> {
        let registry = normalize_registry(registry);
        if let Some(c) = self.explicit.get(&registry) {
            return Ok(Some(c.clone()));
        }
        if let Some(c) = self.env_credential(&registry) {
            return Ok(Some(c));
        }
        if let Some(path) = self.env.docker_config_path()
            && let Some(config) = read_json(&path)?
            && let Some(c) = self.docker_config_credential(&path, &config, &registry)?
        {
            return Ok(Some(c));
        }
        for path in self.env.podman_auth_paths() {
            if let Some(config) = read_json(&path)?
                && let Some(c) = auths_entry(&path, &config, &registry)?
            {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    fn env_credential(&self, registry: &str) -> Option<Credential> {
        let host = env_host(registry);
        let scoped = (
            self.env.var(&format!("IMGBUILD_REGISTRY_{host}_USER")),
            self.env.var(&format!("IMGBUILD_REGISTRY_{host}_PASSWORD")),
        );
        if let (Some(u), Some(p)) = scoped {
            return Some(Credential::basic(u, p));
        }
        let applies = self
            .env
            .var("IMGBUILD_REGISTRY_HOST")
            .is_none_or(|h| normalize_registry(h) == registry);
        match (
            self.env.var("IMGBUILD_REGISTRY_USER"),
            self.env.var("IMGBUILD_REGISTRY_PASSWORD"),
        ) {
            (Some(u), Some(p)) if applies => Some(Credential::basic(u, p)),
            _ => None,
        }
    }

    fn docker_config_credential(
        &self,
        path: &Path,
        config: &serde_json::Value,
        registry: &str,
    ) -> Result<Option<Credential>> {
        if let Some(helper) = helper_for(config, registry)
            && let Some(c) = self.helper_get(&helper, registry)?
        {
            return Ok(Some(c));
        }
        auths_entry(path, config, registry)
    }

    /// Runs `docker-credential-<helper> get`; `None` when the helper has nothing for the server.
    fn helper_get(&self, helper: &str, registry: &str) -> Result<Option<Credential>> {
        let server = server_url(registry);
        let out = self.run_helper(helper, registry, "get", server.as_bytes())?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            if text.to_ascii_lowercase().contains("credentials not found") {
                return Ok(None);
            }
            return Err(RegistryError::CredentialHelper {
                helper: helper_program(helper),
                registry: registry.to_owned(),
                message: format!("`get` exited with {}: {}", out.status, first_line(&text)),
            });
        }
        #[derive(serde::Deserialize)]
        struct HelperCreds {
            #[serde(rename = "Username", default)]
            username: String,
            #[serde(rename = "Secret", default)]
            secret: String,
        }
        let creds: HelperCreds =
            serde_json::from_slice(&out.stdout).map_err(|e| RegistryError::CredentialHelper {
                helper: helper_program(helper),
                registry: registry.to_owned(),
                message: format!("`get` printed something that is not the expected JSON ({e})"),
            })?;
        if creds.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(if creds.username == "<token>" {
            Credential::IdentityToken {
                username: creds.username,
                token: Secret::new(creds.secret),
            }
        } else {
            Credential::basic(creds.username, creds.secret)
        }))
    }

    fn run_helper(
        &self,
        helper: &str,
        registry: &str,
        verb: &str,
        stdin: &[u8],
    ) -> Result<std::process::Output> {
        let program = helper_program(helper);
        let path = self.env.find_program(&program).ok_or_else(|| RegistryError::CredentialHelper {
            helper: program.clone(),
            registry: registry.to_owned(),
            message: "not found on PATH (install it, or remove it from credHelpers/credsStore in config.json)".into(),
        })?;
        let fail = |message: String| RegistryError::CredentialHelper {
            helper: program.clone(),
            registry: registry.to_owned(),
            message,
        };
        let mut child = Command::new(&path)
            .arg(verb)
            .env_clear()
            .envs(&self.env.vars)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run `{}`: {e}", path.display())))?;
        // The helper reads all of stdin before answering; stdin is small, so writing it whole
        // before reading stdout cannot deadlock.
        let mut input = child.stdin.take().expect("piped");
        // A helper that exits without reading its input closes the pipe; what it
        // printed and its exit status say more than the EPIPE, so keep going.
        match input.write_all(stdin) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(fail(format!("cannot write to it: {e}")));
            }
            _ => {}
        }
        drop(input);
        child
            .wait_with_output()
            .map_err(|e| fail(format!("cannot read its output: {e}")))
    }

    /// Stores credentials as `docker login` does: in the credential helper configured for the
    /// registry (`credHelpers`, else `credsStore`), else base64 in config.json's `auths`,
    /// written atomically with mode 0600.
    pub fn store(&self, registry: &str, credential: &Credential) -> Result<StoredIn> {
        let registry = normalize_registry(registry);
        let path = self
            .env
            .docker_config_path()
            .ok_or_else(|| RegistryError::AuthConfig {
                path: PathBuf::from("~/.docker/config.json"),
                message: "neither DOCKER_CONFIG nor HOME is set: nowhere to store credentials"
                    .into(),
            })?;
        let mut config = read_json(&path)?.unwrap_or_else(|| serde_json::json!({}));
        if !config.is_object() {
            return Err(RegistryError::AuthConfig {
                path,
                message: "not a JSON object".into(),
            });
        }
        let (username, secret) = match credential {
            Credential::Basic { username, password } => (username.clone(), password.clone()),
            Credential::IdentityToken { username, token } => (username.clone(), token.clone()),
        };
        if let Some(helper) = helper_for(&config, &registry) {
            #[derive(serde::Serialize)]
            struct HelperStore<'a> {
                #[serde(rename = "ServerURL")]
                server: &'a str,
                #[serde(rename = "Username")]
                username: &'a str,
                #[serde(rename = "Secret")]
                secret: &'a str,
            }
            let input = serde_json::to_vec(&HelperStore {
                server: &server_url(&registry),
                username: &username,
                secret: secret.expose(),
            })
            .expect("serialisable");
            let out = self.run_helper(&helper, &registry, "store", &input)?;
            if !out.status.success() {
                return Err(RegistryError::CredentialHelper {
                    helper: helper_program(&helper),
                    registry,
                    message: format!("`store` exited with {}", out.status),
                });
            }
            return Ok(StoredIn::Helper {
                helper: helper_program(&helper),
            });
        }
        let obj = config.as_object_mut().expect("checked");
        let auths = obj
            .entry("auths")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .ok_or_else(|| RegistryError::AuthConfig {
                path: path.clone(),
                message: "`auths` is not a JSON object".into(),
            })?;
        // One entry per registry: drop aliases of the same registry so lookup is unambiguous.
        auths.retain(|k, _| normalize_registry(k) != registry);
        let mut entry = serde_json::Map::new();
        match credential {
            Credential::Basic { .. } => {
                entry.insert(
                    "auth".into(),
                    B64.encode(format!("{username}:{}", secret.expose())).into(),
                );
            }
            Credential::IdentityToken { .. } => {
                entry.insert("auth".into(), B64.encode(format!("{username}:")).into());
                entry.insert("identitytoken".into(), secret.expose().into());
            }
        }
        auths.insert(config_key(&registry), serde_json::Value::Object(entry));
        let bytes = serde_json::to_vec_pretty(&config).expect("serialisable");
        write_private_atomically(&path, &bytes)?;
        Ok(StoredIn::ConfigFile { path })
    }
}

/// The config.json key for a registry (`https://index.docker.io/v1/` for Docker Hub).
pub fn config_key(registry: &str) -> String {
    if registry == DOCKER_HUB {
        DOCKER_HUB_CONFIG_KEY.to_owned()
    } else {
        registry.to_owned()
    }
}

/// The server URL given to credential helpers (what `docker login` uses).
fn server_url(registry: &str) -> String {
    config_key(registry)
}

fn helper_program(helper: &str) -> String {
    format!("docker-credential-{helper}")
}

fn env_host(registry: &str) -> String {
    registry
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn first_line(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars().take(200).collect()
}

fn helper_for(config: &serde_json::Value, registry: &str) -> Option<String> {
    let from_helpers = config
        .get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| normalize_registry(k) == registry)
                .and_then(|(_, v)| v.as_str())
        })
        .filter(|s| !s.is_empty());
    from_helpers
        .or_else(|| {
            config
                .get("credsStore")
                .and_then(|s| s.as_str())
                .filter(|s| !s.is_empty())
        })
        .map(str::to_owned)
}

/// The `auths` entry for a registry in a Docker or Podman auth file.
fn auths_entry(
    path: &Path,
    config: &serde_json::Value,
    registry: &str,
) -> Result<Option<Credential>> {
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    // Prefer the exact canonical key, then any alias (sorted, for a deterministic pick).
    let key = config_key(registry);
    let entry = auths.get(&key).or_else(|| {
        auths
            .iter()
            .filter(|(k, _)| is_host_key(k))
            .find(|(k, _)| normalize_registry(k) == registry)
            .map(|(_, v)| v)
    });
    let Some(entry) = entry else { return Ok(None) };
    let bad = |message: String| RegistryError::AuthConfig {
        path: path.to_path_buf(),
        message,
    };
    let (mut username, mut password) = (None, None);
    if let Some(auth) = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
    {
        let decoded = B64
            .decode(auth.trim())
            .map_err(|_| bad(format!("`auths.{key}.auth` is not valid base64")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| bad(format!("`auths.{key}.auth` is not UTF-8")))?;
        let (u, p) = decoded.split_once(':').ok_or_else(|| {
            bad(format!(
                "`auths.{key}.auth` does not decode to `user:password`"
            ))
        })?;
        username = Some(u.to_owned());
        password = Some(p.to_owned());
    }
    if let Some(u) = entry.get("username").and_then(|u| u.as_str()) {
        username.get_or_insert_with(|| u.to_owned());
    }
    if let Some(p) = entry.get("password").and_then(|p| p.as_str()) {
        password.get_or_insert_with(|| p.to_owned());
    }
    if let Some(token) = entry
        .get("identitytoken")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
    {
        return Ok(Some(Credential::IdentityToken {
            username: username
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "<token>".into()),
            token: Secret::new(token),
        }));
    }
    match (username, password) {
        (Some(u), Some(p)) if !p.is_empty() => Ok(Some(Credential::basic(u, p))),
        _ => Ok(None),
    }
}

/// Whether an auth-file key names a whole registry (`host`, `https://host/v1/`), not one
/// namespace of it (Podman's `host/org/repo` keys, which we do not apply to the whole host).
fn is_host_key(key: &str) -> bool {
    let rest = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    match rest.split_once('/') {
        None => true,
        Some((_, path)) => matches!(path, "" | "v1/" | "v2/" | "v1" | "v2"),
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RegistryError::Io {
                op: "failed to open auth config",
                path: path.to_path_buf(),
                source: e,
            });
        }
    };
    let mut s = String::new();
    f.read_to_string(&mut s).map_err(|e| RegistryError::Io {
        op: "failed to read auth config",
        path: path.to_path_buf(),
        source: e,
    })?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    // The serde error names line and column only, never the content.
    serde_json::from_str(&s)
        .map(Some)
        .map_err(|e| RegistryError::AuthConfig {
            path: path.to_path_buf(),
            message: format!("invalid JSON at line {} column {}", e.line(), e.column()),
        })
}

/// Writes `bytes` to `path` atomically ([`imgbuild_store::AtomicFile`]) through a temp
/// file created 0600, so the credentials are never readable by others, not even
/// briefly. A missing directory is created 0700, as `docker login` does.
fn write_private_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| RegistryError::Io {
                op: "failed to create directory",
                path: dir.to_path_buf(),
                source,
            })?;
    }
    imgbuild_store::write_atomic(path, bytes, 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn env_with(dir: &Path, extra: &[(&str, &str)]) -> AuthEnv {
        let mut vars = vec![
            ("HOME".to_owned(), dir.join("home").display().to_string()),
            (
                "PATH".to_owned(),
                format!("{}:/usr/bin:/bin", dir.join("bin").display()),
            ),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        AuthEnv::from_vars(vars)
    }

    fn write(path: &Path, content: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn basic(c: Option<Credential>) -> (String, String) {
        match c {
            Some(Credential::Basic { username, password }) => {
                (username, password.expose().to_owned())
            }
            other => panic!("expected basic credentials, got {other:?}"),
        }
    }

    #[test]
    fn docker_config_auths_and_identity_token() {
        let dir = tempfile::tempdir().unwrap();
        let user_pass = B64.encode("alice:pa:ss");
        write(
            &dir.path().join("home/.docker/config.json"),
            &format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{user_pass}"}},
                    "http://127.0.0.1:5000": {{"auth": "{}"}},
                    "ghcr.io": {{"auth": "{}", "identitytoken": "refresh-xyz"}}
                }}}}"#,
                B64.encode("bob:pw"),
                B64.encode("carol:")
            ),
        );
        let creds = Credentials::new(env_with(dir.path(), &[]));
        assert_eq!(
            basic(creds.lookup("docker.io").unwrap()),
            ("alice".into(), "pa:ss".into())
        );
        assert_eq!(
            basic(creds.lookup("index.docker.io").unwrap()),
            ("alice".into(), "pa:ss".into())
        );
        assert_eq!(
            basic(creds.lookup("127.0.0.1:5000").unwrap()),
            ("bob".into(), "pw".into())
        );
        match creds.lookup("ghcr.io").unwrap() {
            Some(Credential::IdentityToken { username, token }) => {
                assert_eq!(username, "carol");
                assert_eq!(token.expose(), "refresh-xyz");
            }
            other => panic!("{other:?}"),
        }
        assert!(creds.lookup("quay.io").unwrap().is_none());
        // Debug never shows the secret
        let dbg = format!("{:?}", creds.lookup("docker.io").unwrap());
        assert!(!dbg.contains("pa:ss") && dbg.contains("alice"), "{dbg}");
    }

    #[test]
    fn docker_config_env_var_and_bad_json() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dc");
        write(
            &cfg.join("config.json"),
            r#"{"auths": {"quay.io": {"auth": "#,
        );
        let creds = Credentials::new(env_with(
            dir.path(),
            &[("DOCKER_CONFIG", cfg.to_str().unwrap())],
        ));
        let err = creds.lookup("quay.io").unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("line"), "{err}");
        write(
            &cfg.join("config.json"),
            &format!(
                r#"{{"auths": {{"quay.io": {{"auth": "{}"}}}}}}"#,
                B64.encode("q:w")
            ),
        );
        assert_eq!(
            basic(creds.lookup("quay.io").unwrap()),
            ("q".into(), "w".into())
        );
    }

    fn fake_helper(dir: &Path, name: &str, script_body: &str) {
        let p = dir.join("bin").join(format!("docker-credential-{name}"));
        write(&p, &format!("#!/bin/sh\n{script_body}\n"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn cred_helpers_and_creds_store() {
        let dir = tempfile::tempdir().unwrap();
        // The helper answers for one server URL and logs what it was asked, so the test can
        // check the protocol (verb as argument, server URL on stdin).
        let log = dir.path().join("helper.log");
        fake_helper(
            dir.path(),
            "test",
            &format!(
                r#"read server
echo "$1 $server" >> {log}
case "$server" in
  registry.example.com) echo '{{"ServerURL":"registry.example.com","Username":"helper-user","Secret":"helper-pass"}}' ;;
  https://index.docker.io/v1/) echo '{{"ServerURL":"https://index.docker.io/v1/","Username":"<token>","Secret":"hub-refresh"}}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac"#,
                log = log.display()
            ),
        );
        write(
            &dir.path().join("home/.docker/config.json"),
            &format!(
                r#"{{"credHelpers": {{"registry.example.com": "test"}}, "credsStore": "test",
                    "auths": {{"other.example.com": {{"auth": "{}"}}}}}}"#,
                B64.encode("file-user:file-pass")
            ),
        );
        let creds = Credentials::new(env_with(dir.path(), &[]));
        assert_eq!(
            basic(creds.lookup("registry.example.com").unwrap()),
            ("helper-user".into(), "helper-pass".into())
        );
        match creds.lookup("docker.io").unwrap() {
            Some(Credential::IdentityToken { token, .. }) => {
                assert_eq!(token.expose(), "hub-refresh")
            }
            other => panic!("{other:?}"),
        }
        // credsStore has nothing for it: falls back to auths
        assert_eq!(
            basic(creds.lookup("other.example.com").unwrap()),
            ("file-user".into(), "file-pass".into())
        );
        assert!(creds.lookup("nothing.example.com").unwrap().is_none());
        let asked = fs::read_to_string(&log).unwrap();
        assert!(asked.contains("get registry.example.com"), "{asked}");
        assert!(asked.contains("get https://index.docker.io/v1/"), "{asked}");
    }

    #[test]
    fn missing_or_failing_helper_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("home/.docker/config.json"),
            r#"{"credsStore": "absent"}"#,
        );
        let creds = Credentials::new(env_with(dir.path(), &[]));
        let err = creds.lookup("quay.io").unwrap_err().to_string();
        assert!(
            err.contains("docker-credential-absent") && err.contains("PATH"),
            "{err}"
        );
        fake_helper(dir.path(), "broken", "echo 'keychain locked' >&2; exit 3");
        write(
            &dir.path().join("home/.docker/config.json"),
            r#"{"credsStore": "broken"}"#,
        );
        let err = creds.lookup("quay.io").unwrap_err().to_string();
        assert!(
            err.contains("keychain locked") && err.contains("quay.io"),
            "{err}"
        );
    }

    #[test]
    fn podman_auth_files() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |u: &str| {
            format!(
                r#"{{"auths": {{"quay.io": {{"auth": "{}"}}}}}}"#,
                B64.encode(format!("{u}:pw"))
            )
        };
        write(
            &dir.path().join("home/.config/containers/auth.json"),
            &entry("home"),
        );
        let creds = Credentials::new(env_with(dir.path(), &[]));
        assert_eq!(basic(creds.lookup("quay.io").unwrap()).0, "home");
        write(
            &dir.path().join("run/containers/auth.json"),
            &entry("runtime"),
        );
        let xdg = dir.path().join("run");
        let creds = Credentials::new(env_with(
            dir.path(),
            &[("XDG_RUNTIME_DIR", xdg.to_str().unwrap())],
        ));
        assert_eq!(basic(creds.lookup("quay.io").unwrap()).0, "runtime");
        write(&dir.path().join("explicit.json"), &entry("explicit"));
        let f = dir.path().join("explicit.json");
        let creds = Credentials::new(env_with(
            dir.path(),
            &[
                ("XDG_RUNTIME_DIR", xdg.to_str().unwrap()),
                ("REGISTRY_AUTH_FILE", f.to_str().unwrap()),
            ],
        ));
        assert_eq!(basic(creds.lookup("quay.io").unwrap()).0, "explicit");
        // docker's config.json wins over podman's
        write(
            &dir.path().join("home/.docker/config.json"),
            &format!(
                r#"{{"auths": {{"quay.io": {{"auth": "{}"}}}}}}"#,
                B64.encode("docker:pw")
            ),
        );
        assert_eq!(basic(creds.lookup("quay.io").unwrap()).0, "docker");
    }

    #[test]
    fn environment_variables() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("home/.docker/config.json"),
            &format!(
                r#"{{"auths": {{"quay.io": {{"auth": "{}"}}}}}}"#,
                B64.encode("file:pw")
            ),
        );
        let creds = Credentials::new(env_with(
            dir.path(),
            &[
                ("IMGBUILD_REGISTRY_USER", "ci"),
                ("IMGBUILD_REGISTRY_PASSWORD", "ci-pass"),
                ("IMGBUILD_REGISTRY_127_0_0_1_5000_USER", "local"),
                ("IMGBUILD_REGISTRY_127_0_0_1_5000_PASSWORD", "local-pass"),
            ],
        ));
        assert_eq!(
            basic(creds.lookup("127.0.0.1:5000").unwrap()),
            ("local".into(), "local-pass".into())
        );
        assert_eq!(
            basic(creds.lookup("quay.io").unwrap()),
            ("ci".into(), "ci-pass".into())
        );
        // restricted to one host: other registries fall through to the files
        let creds = Credentials::new(env_with(
            dir.path(),
            &[
                ("IMGBUILD_REGISTRY_USER", "ci"),
                ("IMGBUILD_REGISTRY_PASSWORD", "ci-pass"),
                ("IMGBUILD_REGISTRY_HOST", "ghcr.io"),
            ],
        ));
        assert_eq!(basic(creds.lookup("quay.io").unwrap()).0, "file");
        assert_eq!(basic(creds.lookup("ghcr.io").unwrap()).0, "ci");
        assert!(creds.lookup("docker.io").unwrap().is_none());
        // Docker Hub's scoped variable
        let creds = Credentials::new(env_with(
            dir.path(),
            &[
                ("IMGBUILD_REGISTRY_DOCKER_IO_USER", "hub"),
                ("IMGBUILD_REGISTRY_DOCKER_IO_PASSWORD", "x"),
            ],
        ));
        assert_eq!(basic(creds.lookup("index.docker.io").unwrap()).0, "hub");
        // explicit beats everything
        let creds = creds.with("docker.io", Credential::basic("explicit", "y"));
        assert_eq!(basic(creds.lookup("docker.io").unwrap()).0, "explicit");
    }

    #[test]
    fn store_writes_config_atomically_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("home/.docker/config.json");
        write(
            &cfg,
            r#"{"auths": {"index.docker.io": {"auth": "b2xkOm9sZA=="}}, "psFormat": "table"}"#,
        );
        let creds = Credentials::new(env_with(dir.path(), &[]));
        let stored = creds
            .store("docker.io", &Credential::basic("new", "secret"))
            .unwrap();
        assert_eq!(stored, StoredIn::ConfigFile { path: cfg.clone() });
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&cfg).unwrap()).unwrap();
        assert_eq!(v["psFormat"], "table", "other settings are kept");
        let auths = v["auths"].as_object().unwrap();
        assert_eq!(
            auths.keys().collect::<Vec<_>>(),
            vec!["https://index.docker.io/v1/"]
        );
        assert_eq!(
            basic(creds.lookup("docker.io").unwrap()),
            ("new".into(), "secret".into())
        );
        assert_eq!(
            fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(cfg.parent().unwrap()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn store_uses_the_configured_helper() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stored");
        fake_helper(dir.path(), "test", &format!("cat > {}", log.display()));
        let cfg = dir.path().join("home/.docker/config.json");
        write(&cfg, r#"{"credsStore": "test"}"#);
        let creds = Credentials::new(env_with(dir.path(), &[]));
        let stored = creds
            .store("quay.io", &Credential::basic("u", "p"))
            .unwrap();
        assert_eq!(
            stored,
            StoredIn::Helper {
                helper: "docker-credential-test".into()
            }
        );
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&log).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ServerURL": "quay.io", "Username": "u", "Secret": "p"})
        );
        assert_eq!(
            fs::read_to_string(&cfg).unwrap(),
            r#"{"credsStore": "test"}"#
        );
    }
}
