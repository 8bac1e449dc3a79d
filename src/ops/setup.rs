//! `imgbuild setup`: the `setup.sh` step of a compose stack. Creates the `.env`
//! file that the compose file reads, from a template (`deploy/.env.example`):
//! every `KEY=change-me...` value is a secret and gets a strong random value
//! (48 hex characters, URL-safe since secrets end up inside connection URLs);
//! other values are defaults. On a terminal each key is asked for (secrets without
//! echo; Enter keeps the generated or default value); otherwise `--set KEY=VALUE`
//! and the defaults are used (`--set` also fills optional keys that the template
//! lists commented out, like `#NGINX_PORT=8080`). The file is created with mode 0600 and never
//! overwritten without `--force`. Values are never printed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Template values starting with this are secrets to generate.
const SECRET_MARKER: &str = "change-me";

pub struct SetupOptions<'a> {
    pub template: &'a Path,
    pub env_file: &'a Path,
    pub force: bool,
    pub interactive: bool,
    pub set: Vec<(String, String)>,
}

fn random_secret() -> Result<String> {
    let mut buf = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("failed to read /dev/urandom")?;
    Ok(hex::encode(buf))
}

pub fn setup(opts: &SetupOptions) -> Result<String> {
    if opts.env_file.exists() && !opts.force {
        bail!(
            "{} already exists; keeping it (pass --force to replace it: the stack's volumes keep the old passwords)",
            opts.env_file.display()
        );
    }
    let template = std::fs::read_to_string(opts.template)
        .with_context(|| format!("failed to read the template `{}`", opts.template.display()))?;
    let mut overrides: BTreeMap<String, String> = opts.set.iter().cloned().collect();
    let interactive =
        opts.interactive && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let mut out = String::from("# Written by `imgbuild setup`. Secrets: never commit this file.\n");
    let mut secrets = 0;
    for (n, line) in template.lines().enumerate() {
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
        let secret = value.starts_with(SECRET_MARKER);
        let default = if secret {
            random_secret()?
        } else {
            value.to_owned()
        };
        let chosen = match overrides.remove(key) {
            Some(v) => v,
            None if interactive => {
                let prompt = if secret {
                    format!("{key} (secret; Enter = generate): ")
                } else {
                    format!("{key} [{default}]: ")
                };
                let answer = if secret {
                    rpassword::prompt_password(prompt)
                        .context("failed to read from the terminal")?
                } else {
                    eprint!("{prompt}");
                    let mut s = String::new();
                    std::io::stdin()
                        .read_line(&mut s)
                        .context("failed to read from the terminal")?;
                    s
                };
                let a = answer.trim();
                if a.is_empty() { default } else { a.to_owned() }
            }
            None => default,
        };
        if chosen.contains(['\n', '\r']) {
            bail!("the value for {key} contains a line break");
        }
        secrets += secret as usize;
        out.push_str(&format!("{key}={chosen}\n"));
    }
    if let Some(k) = overrides.keys().next() {
        bail!(
            "--set {k}=...: `{k}` is not in the template {}",
            opts.template.display()
        );
    }
    // 0600 from the start: the secrets are never readable by others, not even briefly.
    let dir = opts
        .env_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".env.{}.tmp", std::process::id()));
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(out.as_bytes())?;
        f.sync_all()
    })();
    crate::sink::finish_atomic(r, tmp, opts.env_file)?;
    Ok(format!(
        "wrote {} (mode 0600) with {secrets} generated secret(s)",
        opts.env_file.display()
    ))
}
