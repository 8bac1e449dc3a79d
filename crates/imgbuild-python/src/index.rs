//! Which package index to use (pip's own configuration sources, in pip's precedence) and
//! the simple repository API client: PEP 691 JSON first, PEP 503 HTML as the fallback.
//!
//! Precedence, as pip (`ConfigOptionParser`) applies it: every config file is read in
//! order (`/etc/xdg/pip/pip.conf`, `/etc/pip.conf`, then `~/.pip/pip.conf`,
//! `$XDG_CONFIG_HOME/pip/pip.conf`, then `PIP_CONFIG_FILE`, whose presence disables the
//! user files; `PIP_CONFIG_FILE=/dev/null` disables them all) into one map where a later
//! file's `section.key` replaces an earlier one's (an empty value clears it); then all
//! `[global]` values apply, then all `[install]` values (so `[install]` in
//! `/etc/pip.conf` beats `[global]` in the user's file), then the `PIP_*` variables;
//! finally `--index-url` in the requirements file replaces every index URL so far and
//! its `--extra-index-url`s are added. Index URLs may carry credentials: they are sent
//! (reqwest uses URL userinfo as basic auth) but never appear in messages.
//!
//! `cert` (`PIP_CERT`): a PEM CA bundle; as in pip, the index is then trusted through
//! that bundle only.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imgbuild_store::Digest;

use crate::error::{Error, Result, redact_url};
use crate::requirements::Requirements;

pub const PYPI_SIMPLE: &str = "https://pypi.org/simple";

/// The indexes to search, in order, and how to trust them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    pub index_url: String,
    pub extra_index_urls: Vec<String>,
    /// pip's `cert`: the CA bundle that replaces the built-in roots.
    pub cert: Option<PathBuf>,
}

/// The pip options this crate reads (pip's long option names).
const OPTIONS: [&str; 3] = ["index-url", "extra-index-url", "cert"];

impl IndexConfig {
    /// pip's configuration as seen from this process's environment and home directory,
    /// overridden by the requirements file's own index options.
    pub fn from_environment(reqs: &Requirements) -> Result<IndexConfig> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        IndexConfig::resolve(reqs, &env)
    }

    /// Like [`IndexConfig::from_environment`] with a custom variable lookup (for tests).
    pub fn resolve(
        reqs: &Requirements,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<IndexConfig> {
        // (section, key) -> value, later files replacing earlier ones
        let mut merged: BTreeMap<(String, String), String> = BTreeMap::new();
        for file in pip_config_files(env) {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::PipConfig {
                        path: file,
                        msg: e.to_string(),
                    });
                }
            };
            for (section, values) in parse_ini(&text) {
                for (key, value) in values {
                    merged.insert((section.clone(), key), value.trim().to_owned());
                }
            }
        }
        let mut opts: BTreeMap<&str, String> = BTreeMap::new();
        for section in ["global", "install"] {
            for key in OPTIONS {
                if let Some(v) = merged.get(&(section.to_owned(), key.to_owned()))
                    && !v.is_empty()
                {
                    opts.insert(key, v.clone());
                }
            }
        }
        for key in OPTIONS {
            let var = format!("PIP_{}", key.to_ascii_uppercase().replace('-', "_"));
            if let Some(v) = env(&var) {
                opts.insert(key, v);
            }
        }
        let mut index_url = opts
            .get("index-url")
            .cloned()
            .unwrap_or_else(|| PYPI_SIMPLE.to_owned());
        let mut extra: Vec<String> = opts
            .get("extra-index-url")
            .map(|v| v.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        if let Some(v) = &reqs.index_url {
            index_url = v.clone();
            extra.clear();
        }
        extra.extend(reqs.extra_index_urls.iter().cloned());
        Ok(IndexConfig {
            index_url: index_url.trim_end_matches('/').to_owned(),
            extra_index_urls: extra
                .iter()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            cert: opts.get("cert").map(PathBuf::from),
        })
    }

    pub fn all(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.index_url.as_str())
            .chain(self.extra_index_urls.iter().map(|s| s.as_str()))
    }

    /// An HTTP client that trusts exactly the CA certificates of the bundle `cert`.
    pub fn client_with_cert(&self, cert: &Path) -> Result<reqwest::blocking::Client> {
        let err = |msg: String| Error::PipConfig {
            path: cert.to_path_buf(),
            msg,
        };
        let pem = std::fs::read(cert).map_err(|e| err(format!("cert: {e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| err(format!("cert: not a PEM CA bundle: {e}")))?;
        if certs.is_empty() {
            return Err(err("cert: no certificate in the bundle".into()));
        }
        let mut b = reqwest::blocking::Client::builder()
            .user_agent(concat!("imgbuild-python/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
        b.build()
            .map_err(|e| err(format!("cert: cannot set up the HTTP client: {e}")))
    }
}

/// pip's config files in the order they are applied (later wins).
fn pip_config_files(env: &dyn Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let env_file = env("PIP_CONFIG_FILE");
    if env_file.as_deref() == Some("/dev/null") {
        return vec![];
    }
    let mut files = vec![];
    let xdg_dirs = env("XDG_CONFIG_DIRS").unwrap_or_else(|| "/etc/xdg".into());
    for d in xdg_dirs.split(':').filter(|d| !d.is_empty()) {
        files.push(Path::new(d).join("pip/pip.conf"));
    }
    files.push(PathBuf::from("/etc/pip.conf"));
    let env_file_exists = env_file.as_deref().is_some_and(|f| Path::new(f).exists());
    if !env_file_exists && let Some(home) = env("HOME") {
        files.push(Path::new(&home).join(".pip/pip.conf"));
        let xdg_home = env("XDG_CONFIG_HOME").unwrap_or_else(|| format!("{home}/.config"));
        files.push(Path::new(&xdg_home).join("pip/pip.conf"));
    }
    if let Some(f) = env_file {
        files.push(PathBuf::from(f));
    }
    files
}

/// A minimal INI reader as configparser reads pip.conf: `[section]`, `key = value` or
/// `key: value`, indented continuation lines, `#`/`;` comments. Keys are normalised
/// (`index_url` == `index-url`).
fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section = String::new();
    let mut last_key: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(k) = &last_key
                && let Some(v) = out.get_mut(&section).and_then(|s| s.get_mut(k))
            {
                v.push('\n');
                v.push_str(trimmed);
            }
            continue;
        }
        if let Some(s) = trimmed.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim().to_owned();
            last_key = None;
            continue;
        }
        let split = trimmed.find(['=', ':']);
        if let Some(i) = split {
            let key = trimmed[..i].trim().to_ascii_lowercase().replace('_', "-");
            out.entry(section.clone())
                .or_default()
                .insert(key.clone(), trimmed[i + 1..].trim().to_owned());
            last_key = Some(key);
        }
    }
    out
}

/// One file listed for a project on an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexFile {
    pub filename: String,
    /// Absolute URL (may carry the index's credentials when on the same host).
    pub url: String,
    pub sha256: Option<Digest>,
    pub requires_python: Option<String>,
}

const ACCEPT: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

/// Lists a project's files on one index (`None` when the index does not know it).
pub fn project_files(
    http: &reqwest::blocking::Client,
    index_url: &str,
    key: &str,
) -> Result<Option<Vec<IndexFile>>> {
    let url = format!("{}/{}/", index_url.trim_end_matches('/'), key);
    let base = reqwest::Url::parse(&url).map_err(|e| Error::Index {
        url: redact_url(index_url),
        msg: format!("not a valid URL: {e}"),
    })?;
    let resp = with_retries(&url, || {
        http.get(base.clone())
            .header(reqwest::header::ACCEPT, ACCEPT)
            .send()
    })?;
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(Error::Http {
            url: redact_url(&url),
            msg: format!("status {status}"),
        });
    }
    // the final URL after redirects is the base for relative file links
    let final_url = resp.url().clone();
    let ctype = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    // index pages are small (metadata only); a cap keeps a hostile server from ballooning memory
    let mut body = String::new();
    resp.take(256 << 20)
        .read_to_string(&mut body)
        .map_err(|e| Error::Http {
            url: redact_url(&url),
            msg: format!("reading the project page: {e}"),
        })?;
    let files = if ctype.starts_with("application/vnd.pypi.simple.v1+json") {
        parse_json_page(&body, &final_url)
    } else {
        Ok(parse_html_page(&body, &final_url))
    }
    .map_err(|msg| Error::Index {
        url: redact_url(&url),
        msg,
    })?;
    Ok(Some(files))
}

/// Runs a request up to three times on connection errors and 5xx/429 answers.
pub(crate) fn with_retries(
    url: &str,
    mut send: impl FnMut() -> reqwest::Result<reqwest::blocking::Response>,
) -> Result<reqwest::blocking::Response> {
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500 << attempt));
        }
        match send() {
            Ok(r)
                if r.status().is_server_error()
                    || r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                last = format!("status {}", r.status());
            }
            Ok(r) => return Ok(r),
            // a refused connection will not fix itself in a second: fail at once
            Err(e) if e.is_connect() && attempt == 0 && !e.is_timeout() => {
                last = error_chain(e);
                break;
            }
            Err(e) => last = error_chain(e),
        }
    }
    Err(Error::Http {
        url: redact_url(url),
        msg: last,
    })
}

/// The error and its causes, without the URL (which may carry credentials).
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        out = format!("{out}: {s}");
        src = s.source();
    }
    out
}

#[derive(serde::Deserialize)]
struct JsonPage {
    files: Vec<JsonFile>,
}
#[derive(serde::Deserialize)]
struct JsonFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: BTreeMap<String, String>,
    #[serde(rename = "requires-python", default)]
    requires_python: Option<String>,
}

fn parse_json_page(body: &str, base: &reqwest::Url) -> std::result::Result<Vec<IndexFile>, String> {
    let page: JsonPage =
        serde_json::from_str(body).map_err(|e| format!("invalid PEP 691 JSON: {e}"))?;
    let mut out = vec![];
    for f in page.files {
        let url = base
            .join(&f.url)
            .map_err(|e| format!("bad file URL for {}: {e}", f.filename))?;
        out.push(IndexFile {
            filename: f.filename,
            sha256: f
                .hashes
                .get("sha256")
                .and_then(|h| Digest::from_hex(&h.to_ascii_lowercase()).ok()),
            url: strip_fragment(url),
            requires_python: f.requires_python.filter(|s| !s.trim().is_empty()),
        });
    }
    Ok(out)
}

fn strip_fragment(mut u: reqwest::Url) -> String {
    u.set_fragment(None);
    u.to_string()
}

/// PEP 503: every `<a href="url#sha256=…" data-requires-python="…">filename</a>`.
fn parse_html_page(body: &str, base: &reqwest::Url) -> Vec<IndexFile> {
    let mut out = vec![];
    let lower = body.to_ascii_lowercase();
    let mut pos = 0;
    while let Some(i) = lower[pos..].find("<a").map(|i| i + pos) {
        let Some(tag_end) = lower[i..].find('>').map(|e| e + i) else {
            break;
        };
        let Some(close) = lower[tag_end..].find("</a").map(|e| e + tag_end) else {
            break;
        };
        let attrs = parse_attrs(&body[i + 2..tag_end]);
        let text = html_unescape(body[tag_end + 1..close].trim());
        pos = close;
        let Some(href) = attrs.get("href") else {
            continue;
        };
        let Ok(url) = base.join(href) else { continue };
        let sha256 = url
            .fragment()
            .and_then(|f| f.strip_prefix("sha256="))
            .and_then(|h| Digest::from_hex(h).ok());
        let filename = if text.is_empty() {
            url.path_segments()
                .and_then(|mut s| s.next_back())
                .unwrap_or("")
                .to_owned()
        } else {
            text
        };
        out.push(IndexFile {
            filename,
            url: strip_fragment(url),
            sha256,
            requires_python: attrs
                .get("data-requires-python")
                .cloned()
                .filter(|s| !s.trim().is_empty()),
        });
    }
    out
}

fn parse_attrs(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = s[ks..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            let val = if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                let vs = i + 1;
                i = vs;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                let v = &s[vs..i.min(b.len())];
                i += 1;
                v
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                &s[vs..i]
            };
            if !key.is_empty() {
                out.insert(key, html_unescape(val));
            }
        } else if !key.is_empty() {
            out.insert(key, String::new());
        }
    }
    out
}

fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let ent = &rest[1..end];
        let ch = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .or_else(|| ent.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requirements::parse_requirements_str;

    #[test]
    fn html_page() {
        let base = reqwest::Url::parse("https://u:p@idx.example/simple/six/").unwrap();
        let body = r#"<!DOCTYPE html><html><body>
<a href="../../packages/six-1.16.0-py2.py3-none-any.whl#sha256=8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254" data-requires-python="&gt;=2.7, !=3.0.*">six-1.16.0-py2.py3-none-any.whl</a><br/>
<A HREF='https://files.example/six-1.16.0.tar.gz'>six-1.16.0.tar.gz</A>
</body></html>"#;
        let files = parse_html_page(body, &base);
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].filename, "six-1.16.0-py2.py3-none-any.whl");
        assert_eq!(
            files[0].url,
            "https://u:p@idx.example/packages/six-1.16.0-py2.py3-none-any.whl"
        );
        assert_eq!(files[0].requires_python.as_deref(), Some(">=2.7, !=3.0.*"));
        assert!(files[0].sha256.is_some());
        assert_eq!(files[1].sha256, None);
        assert_eq!(
            redact_url(&files[0].url),
            "https://idx.example/packages/six-1.16.0-py2.py3-none-any.whl"
        );
    }

    #[test]
    fn json_page() {
        let base = reqwest::Url::parse("https://idx.example/simple/six/").unwrap();
        let body = r#"{"meta":{"api-version":"1.1"},"name":"six","files":[{"filename":"six-1.16.0-py2.py3-none-any.whl","url":"https://files.example/a/six-1.16.0-py2.py3-none-any.whl","hashes":{"sha256":"8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"},"requires-python":">=2.7","yanked":false}]}"#;
        let f = parse_json_page(body, &base).unwrap();
        assert_eq!(
            f[0].url,
            "https://files.example/a/six-1.16.0-py2.py3-none-any.whl"
        );
        assert_eq!(
            f[0].sha256.as_ref().unwrap().hex(),
            "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"
        );
    }

    #[test]
    fn config_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".config/pip")).unwrap();
        std::fs::write(home.join(".config/pip/pip.conf"), "[global]\nindex-url = https://user.example/simple/\nextra_index_url =\n  https://a.example/simple\n  https://b.example/simple\n").unwrap();
        let envfile = dir.path().join("env.conf");
        let none = parse_requirements_str("", Path::new("r.txt")).unwrap();
        let h = home.to_string_lossy().into_owned();
        let e = envfile.to_string_lossy().into_owned();

        let env = |k: &str| match k {
            "HOME" => Some(h.clone()),
            "XDG_CONFIG_DIRS" => Some("/nonexistent".into()),
            _ => None,
        };
        let c = IndexConfig::resolve(&none, &env).unwrap();
        assert_eq!(c.index_url, "https://user.example/simple");
        assert_eq!(
            c.extra_index_urls,
            ["https://a.example/simple", "https://b.example/simple"]
        );

        // PIP_CONFIG_FILE that exists replaces the user files
        std::fs::write(
            &envfile,
            "[install]\nindex_url: https://envfile.example/simple\n",
        )
        .unwrap();
        let env2 = |k: &str| match k {
            "PIP_CONFIG_FILE" => Some(e.clone()),
            _ => env(k),
        };
        let c = IndexConfig::resolve(&none, &env2).unwrap();
        assert_eq!(c.index_url, "https://envfile.example/simple");
        assert!(c.extra_index_urls.is_empty());

        let env3 = |k: &str| match k {
            "PIP_INDEX_URL" => Some("https://var.example/simple".into()),
            _ => env2(k),
        };
        assert_eq!(
            IndexConfig::resolve(&none, &env3).unwrap().index_url,
            "https://var.example/simple"
        );
        // the requirements file wins over everything, as in pip
        let withi =
            parse_requirements_str("-i https://file.example/simple\n", Path::new("r.txt")).unwrap();
        assert_eq!(
            IndexConfig::resolve(&withi, &env3).unwrap().index_url,
            "https://file.example/simple"
        );

        // a config file naming nothing leaves pip's default
        std::fs::write(&envfile, "[global]\ntimeout = 60\n").unwrap();
        let env4 = |k: &str| match k {
            "PIP_CONFIG_FILE" => Some(e.clone()),
            "XDG_CONFIG_DIRS" => Some("/nonexistent".into()),
            _ => None,
        };
        let c = IndexConfig::resolve(&none, &env4).unwrap();
        if !std::fs::read_to_string("/etc/pip.conf")
            .unwrap_or_default()
            .contains("index")
        {
            assert_eq!(c.index_url, PYPI_SIMPLE);
        }
    }

    #[test]
    fn config_merges_files_then_global_then_install_then_variables() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".pip")).unwrap();
        std::fs::create_dir_all(home.join(".config/pip")).unwrap();
        // the earlier file (pip's legacy ~/.pip/pip.conf) sets [install], the later one
        // [global]: pip applies every [global] value before any [install] value,
        // whatever file they come from (both are read after /etc/pip.conf)
        std::fs::write(
            home.join(".pip/pip.conf"),
            "[install]\nindex-url = https://site-install.example/simple\n[global]\ncert = /site/ca.pem\nextra-index-url = https://site-extra.example/simple\n",
        )
        .unwrap();
        std::fs::write(
            home.join(".config/pip/pip.conf"),
            "[global]\nindex-url = https://user-global.example/simple\n# an empty value clears the earlier file's\nextra-index-url =\n",
        )
        .unwrap();
        let none = parse_requirements_str("", Path::new("r.txt")).unwrap();
        let h = home.to_string_lossy().into_owned();
        let env = |k: &str| match k {
            "XDG_CONFIG_DIRS" => Some("/nonexistent".into()),
            "HOME" => Some(h.clone()),
            _ => None,
        };
        let c = IndexConfig::resolve(&none, &env).unwrap();
        assert_eq!(c.index_url, "https://site-install.example/simple");
        assert!(c.extra_index_urls.is_empty(), "{c:?}");
        assert_eq!(c.cert.as_deref(), Some(Path::new("/site/ca.pem")));

        // variables beat every file; PIP_CERT too
        let env2 = |k: &str| match k {
            "PIP_INDEX_URL" => Some("https://var.example/simple".into()),
            "PIP_EXTRA_INDEX_URL" => {
                Some("https://x.example/simple https://y.example/simple".into())
            }
            "PIP_CERT" => Some("/var/ca.pem".into()),
            _ => env(k),
        };
        let c = IndexConfig::resolve(&none, &env2).unwrap();
        assert_eq!(c.index_url, "https://var.example/simple");
        assert_eq!(
            c.extra_index_urls,
            ["https://x.example/simple", "https://y.example/simple"]
        );
        assert_eq!(c.cert.as_deref(), Some(Path::new("/var/ca.pem")));

        // `--index-url` in the requirements file replaces every index URL so far (the
        // configured extras too); its own extras are added
        let file = parse_requirements_str(
            "-ihttps://file.example/simple\n--extra-index-url https://file-extra.example/simple\n",
            Path::new("r.txt"),
        )
        .unwrap();
        let c = IndexConfig::resolve(&file, &env2).unwrap();
        assert_eq!(c.index_url, "https://file.example/simple");
        assert_eq!(c.extra_index_urls, ["https://file-extra.example/simple"]);
        // ...while an extra alone adds to the configured ones
        let extra_only = parse_requirements_str(
            "--extra-index-url https://file-extra.example/simple\n",
            Path::new("r.txt"),
        )
        .unwrap();
        let c = IndexConfig::resolve(&extra_only, &env2).unwrap();
        assert_eq!(c.index_url, "https://var.example/simple");
        assert_eq!(c.extra_index_urls.len(), 3);
    }

    #[test]
    fn cert_is_a_pem_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let c = IndexConfig {
            index_url: PYPI_SIMPLE.into(),
            extra_index_urls: vec![],
            cert: None,
        };
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a certificate\n").unwrap();
        let e = c.client_with_cert(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.pem") && e.contains("no certificate"), "{e}");
        let e = c
            .client_with_cert(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if system.is_file() {
            c.client_with_cert(system).unwrap();
        }
    }
}
