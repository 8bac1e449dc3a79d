//! `imgbuild setup`: the `setup.sh` step of a compose stack. Creates the `.env`
//! file that the compose file reads, from a template (`deploy/.env.example`):
//!
//! - a `KEY=change-me...` value is a secret and gets a strong random value
//!   (48 hex characters, URL-safe since secrets end up inside connection URLs);
//! - a value ending in a run of at least four `X` (`stack_XXXXXXXX`, as mktemp
//!   templates) is a generated name: the `X`s become random hex digits;
//! - other values are defaults;
//! - `##` comment lines describe the template and are not copied.
//!
//! On a terminal each key is asked for (secrets without echo; Enter keeps the
//! generated or default value; an unusable answer is refused and asked again);
//! otherwise `--set KEY=VALUE` and the defaults are used (`--set` also fills
//! optional keys that the template lists commented out, like `#NGINX_PORT=8080`).
//! Every value is checked ([`check_value`]): the ones compose builds URLs from
//! must be URL-safe, and none may hold what an env file parser would change.
//!
//! The file is created with mode 0600 and never replaces anything without
//! `--force`: it is put in place with a hard link, which fails if the target
//! exists, even as a dangling symlink (never followed). Values are never printed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Template values starting with this are secrets to generate.
const SECRET_MARKER: &str = "change-me";

/// A template value ending in at least this many `X` is a name to generate.
const NAME_MARKER_MIN: usize = 4;

/// Variables that `deploy/compose.yaml` embeds in connection URLs
/// (`x-python-env`: `DATABASE_URL`, `CELERY_BROKER_URL`): their values may only
/// hold RFC 3986 unreserved characters, or the URL would mean something else.
const URL_EMBEDDED: &[&str] = &[
    "APP_DB_USER",
    "APP_DB_PASSWORD",
    "APP_DB_NAME",
    "RABBITMQ_DEFAULT_USER",
    "RABBITMQ_DEFAULT_PASS",
];

pub struct SetupOptions<'a> {
    pub template: &'a Path,
    pub env_file: &'a Path,
    pub force: bool,
    pub interactive: bool,
    pub set: Vec<(String, String)>,
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("failed to read /dev/urandom")?;
    Ok(hex::encode(buf))
}

/// What the template says about a value.
enum Kind {
    /// `change-me...`: 48 random hex characters.
    Secret,
    /// `prefix` + `n` `X`s: the prefix and `n` random hex digits.
    GeneratedName {
        prefix: String,
        n: usize,
    },
    Default,
}

fn kind_of(template_value: &str) -> Kind {
    if template_value.starts_with(SECRET_MARKER) {
        return Kind::Secret;
    }
    let prefix = template_value.trim_end_matches('X');
    let n = template_value.len() - prefix.len();
    if n >= NAME_MARKER_MIN {
        Kind::GeneratedName {
            prefix: prefix.to_owned(),
            n,
        }
    } else {
        Kind::Default
    }
}

/// Why `value` cannot be the value of `key`, naming the character but never the
/// value (it may be a secret).
pub fn check_value(key: &str, value: &str) -> Result<(), String> {
    let url = URL_EMBEDDED.contains(&key);
    if value.is_empty() && url {
        return Err(format!(
            "{key} may not be empty: deploy/compose.yaml builds a connection URL from it"
        ));
    }
    for c in value.chars() {
        let bad_anywhere = c.is_control() || c.is_whitespace() || "\"'`\\$#".contains(c);
        if bad_anywhere {
            let shown = match c {
                ' ' => "a space".to_owned(),
                c if c.is_control() || c.is_whitespace() => {
                    format!("`{}`", c.escape_default())
                }
                c => format!("`{c}`"),
            };
            return Err(format!(
                "{key}: {shown} cannot be used in the env file: compose reads spaces, control \
                 characters, quotes, backslashes, `$` and `#` differently; choose a value without them"
            ));
        }
        if url && !(c.is_ascii_alphanumeric() || "-._~".contains(c)) {
            return Err(format!(
                "{key}: `{c}` cannot be used: deploy/compose.yaml puts this value inside a \
                 connection URL (DATABASE_URL / CELERY_BROKER_URL); use only letters, digits and - . _ ~"
            ));
        }
    }
    Ok(())
}

/// Reads one answer from the terminal; `None` means keep the default.
fn ask(key: &str, secret: bool, default: &str) -> Result<Option<String>> {
    let answer = if secret {
        rpassword::prompt_password(format!("{key} (secret; Enter = generate): "))
            .context("failed to read from the terminal")?
    } else {
        eprint!("{key} [{default}]: ");
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .context("failed to read from the terminal")?;
        s
    };
    let a = answer.trim();
    Ok((!a.is_empty()).then(|| a.to_owned()))
}

pub fn setup(opts: &SetupOptions) -> Result<String> {
    // Early and friendly; the real guard is the no-replace link at the end.
    if !opts.force && std::fs::symlink_metadata(opts.env_file).is_ok() {
        bail!(
            "{} already exists; keeping it (pass --force to replace it: the stack's volumes keep the old passwords)",
            opts.env_file.display()
        );
    }
    let template = std::fs::read_to_string(opts.template)
        .with_context(|| format!("failed to read the template `{}`", opts.template.display()))?;
    let mut overrides: BTreeMap<String, String> = opts.set.iter().cloned().collect();
    for (k, v) in &overrides {
        check_value(k, v).map_err(|e| anyhow::anyhow!("--set {k}=...: {e}"))?;
    }
    let interactive =
        opts.interactive && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let mut out = String::from("# Written by `imgbuild setup`. Secrets: never commit this file.\n");
    let mut generated = 0;
    for (n, line) in template.lines().enumerate() {
        // `##` comments are about the template itself; they stay there.
        if line.starts_with("##") {
            continue;
        }
        // An optional key, commented out in the template (`#NGINX_PORT=8080`), is
        // written when `--set` names it.
        let uncommented = line.trim().trim_start_matches('#').trim_start();
        let line = match uncommented.split_once('=') {
            Some((k, _))
                if line.trim_start().starts_with('#') && overrides.contains_key(k.trim()) =>
            {
                uncommented
            }
            _ => line,
        };
        let t = line.trim();
        let Some((key, value)) = t.split_once('=').filter(|_| !t.starts_with('#')) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!(
                "{}:{}: `{key}` is not a variable name",
                opts.template.display(),
                n + 1
            );
        }
        let value = value.split(" #").next().unwrap_or("").trim();
        let kind = kind_of(value);
        let default = match &kind {
            Kind::Secret => random_hex(24)?,
            Kind::GeneratedName { prefix, n } => {
                let mut h = random_hex(n.div_ceil(2))?;
                h.truncate(*n);
                format!("{prefix}{h}")
            }
            Kind::Default => value.to_owned(),
        };
        let secret = matches!(kind, Kind::Secret);
        let chosen = match overrides.remove(key) {
            Some(v) => v,
            None if interactive => loop {
                let Some(answer) = ask(key, secret, &default)? else {
                    break default;
                };
                match check_value(key, &answer) {
                    Ok(()) => break answer,
                    Err(e) => eprintln!("{e}; try again"),
                }
            },
            None => default,
        };
        // A template default is checked too: a bad template must not yield a broken stack.
        check_value(key, &chosen)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", opts.template.display(), n + 1))?;
        generated += !matches!(kind, Kind::Default) as usize;
        out.push_str(&format!("{key}={chosen}\n"));
    }
    if let Some(k) = overrides.keys().next() {
        bail!(
            "--set {k}=...: `{k}` is not in the template {}",
            opts.template.display()
        );
    }
    write_private_file(opts.env_file, out.as_bytes(), opts.force)?;
    Ok(format!(
        "wrote {} (mode 0600) with {generated} generated value(s)",
        opts.env_file.display()
    ))
}

/// Writes `bytes` to `path` with mode 0600 from the start (the content is never
/// readable by others, not even briefly): a temp file in the same directory,
/// fsynced, then put in place, then the directory fsynced.
///
/// `replace = false`: the temp file is hard-linked to `path`, which fails if
/// anything exists there, a dangling symlink included (link(2) never follows the
/// new path), so a file appearing after any earlier check is never replaced.
/// `replace = true`: renamed over `path` (a symlink at `path` is replaced itself,
/// not followed).
pub fn write_private_file(path: &Path, bytes: &[u8], replace: bool) -> Result<()> {
    let mut f = imgbuild_store::AtomicFile::create(path, 0o600)?;
    let tmp = f.temp_path().to_path_buf();
    (|| -> std::io::Result<()> {
        // the umask may only have removed bits; make it exactly 0600
        f.file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)
    })()
    .with_context(|| format!("failed to write `{}`", tmp.display()))?;
    if replace {
        return f
            .commit()
            .with_context(|| format!("failed to replace `{}`", path.display()));
    }
    let mut exists = false;
    f.commit_with(|tmp, dest| {
        let linked = std::fs::hard_link(tmp, dest);
        exists = matches!(&linked, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists);
        linked
    })
    .map_err(|e| {
        if exists {
            anyhow::anyhow!(
                "{} already exists; keeping it (pass --force to replace it: the stack's volumes keep the old passwords)",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!(
                "failed to create `{}` (it is put in place with a hard link, so that an existing file is never replaced)",
                path.display()
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_values_are_unreserved_only_and_never_echoed() {
        assert!(check_value("APP_DB_PASSWORD", "abc-DEF_0.9~").is_ok());
        for bad in ["p@ss", "a/b", "a:b", "a?b", "a%b", "a+b", "a&b"] {
            let e = check_value("RABBITMQ_DEFAULT_PASS", bad).unwrap_err();
            assert!(e.starts_with("RABBITMQ_DEFAULT_PASS: "), "{e}");
            assert!(!e.contains(bad), "{e}");
        }
        assert!(check_value("APP_DB_USER", "").is_err());
        // not in a URL: URL characters are fine, env-file hazards are not
        assert!(check_value("ADMIN_PASSWORD", "p@ss:w/rd?").is_ok());
        assert!(check_value("JOB_QUEUES", "default,python3").is_ok());
        for bad in ["a b", "a$b", "a#b", "a\"b", "a'b", "a\\b", "a\tb", "a\nb"] {
            assert!(check_value("ADMIN_PASSWORD", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn template_kinds() {
        assert!(matches!(kind_of("change-me-x"), Kind::Secret));
        assert!(
            matches!(kind_of("stack_XXXXXXXX"), Kind::GeneratedName { prefix, n } if prefix == "stack_" && n == 8)
        );
        assert!(matches!(kind_of("XXX"), Kind::Default));
        assert!(matches!(kind_of("app"), Kind::Default));
    }
}
