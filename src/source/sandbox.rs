//! The sandbox that build steps and sdist builds run in: bubblewrap (`bwrap`), never
//! Docker. The builder image's filesystem, unpacked once per manifest digest into the
//! store ([`Bucket::BuildRoots`]) and mounted read-only (each top-level entry bound onto
//! an empty root, which is then remounted read-only), the inputs read-only, a private
//! `/tmp`, `/proc` and `/dev`, and each output directory writable. `--unshare-all`
//! gives it new namespaces, among them a network namespace with only loopback;
//! `--clearenv` then a fixed environment (the image's PATH, `HOME=/tmp`,
//! `LANG=C.UTF-8`, `TZ=UTC`, `SOURCE_DATE_EPOCH`, plus the caller's); uid and gid 0
//! inside a user namespace; `--die-with-parent`, and a time limit after which it is
//! killed. No other host path is visible.
//!
//! Shared by [`super::build_step`] (a recipe's `build` layer) and
//! [`super::python_build`] (PEP 517 `build_wheel` of an sdist).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use imgbuild_layer::image::{Entry, ImageFiles};
use imgbuild_store::{Bucket, Digest, Store};

use crate::cache::ImageRecord;

/// How many lines of the command's output a failure shows.
const TAIL_LINES: usize = 30;
/// PATH when the builder image's config sets none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Image paths the sandbox provides itself: no input or output may be mounted there.
pub const RESERVED: &[&str] = &["/proc", "/dev", "/tmp"];

/// `SOURCE_DATE_EPOCH` as the project reads it (default 0).
pub fn epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One run of a command in the sandbox.
pub struct Sandbox<'a> {
    /// Names the step in messages (`recipes/x.toml:3:1: build step `make``).
    pub label: &'a str,
    /// The builder's unpacked filesystem ([`builder_root`]).
    pub root: &'a Path,
    /// The builder image's PATH ([`builder_path`]).
    pub path: String,
    /// Added to (and overriding) the fixed environment.
    pub env: BTreeMap<String, String>,
    /// (host path, sandbox path), read-only.
    pub inputs: Vec<(PathBuf, String)>,
    /// (host directory, sandbox path), writable.
    pub outputs: Vec<(PathBuf, String)>,
    pub workdir: String,
    pub command: Vec<String>,
    pub timeout_secs: u64,
}

/// A store temp dir removed when dropped (the sandbox's outputs and log).
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = make_writable(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A step may leave read-only directories; removing their contents needs `w`.
fn make_writable(dir: &Path) -> std::io::Result<()> {
    let m = std::fs::symlink_metadata(dir)?;
    if m.is_dir() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        for e in std::fs::read_dir(dir)? {
            make_writable(&e?.path())?;
        }
    }
    Ok(())
}

/// The builder image's filesystem, unpacked once per manifest digest into the store:
/// layers applied with their whiteouts, modes kept, owned by whoever builds. Made in a
/// temp dir and renamed into place whole.
pub fn builder_root(store: &Store, builder: &ImageRecord) -> Result<PathBuf> {
    let key = builder.manifest_digest.hex().to_owned();
    let dest = store.entry_path(Bucket::BuildRoots, &key);
    if dest.is_dir() {
        store.touch_entry(Bucket::BuildRoots, &key);
        return Ok(dest);
    }
    let layers: Vec<Digest> = builder
        .layers
        .iter()
        .map(|l| l.descriptor.digest.clone())
        .collect();
    let files = ImageFiles::from_layers(store, &layers)?;
    let tmp = TempDir(store.temp_dir()?);
    let mut plan = BTreeMap::new();
    let mut dirs = vec![];
    for (p, e) in files.below("") {
        let host = tmp.0.join(p);
        match e {
            Entry::Dir(m) => {
                std::fs::create_dir_all(&host)
                    .with_context(|| format!("failed to create {}", host.display()))?;
                dirs.push((host, m.mode));
            }
            Entry::Symlink(target) => {
                if let Some(parent) = host.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::os::unix::fs::symlink(target, &host)
                    .with_context(|| format!("failed to create {}", host.display()))?;
            }
            Entry::File { mode, source } => {
                plan.insert(p.to_owned(), (source.clone(), *mode));
            }
        }
    }
    files.copy_out(&plan, &tmp.0)?;
    // deepest first, so that a read-only directory is made so after what is in it
    for (d, mode) in dirs.iter().rev() {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(*mode))
            .with_context(|| format!("failed to set the mode of {}", d.display()))?;
    }
    let path = tmp.0.clone();
    std::mem::forget(tmp); // commit_dir moves it (or removes it on error)
    Ok(store.commit_dir(Bucket::BuildRoots, &key, &path)?)
}

/// PATH from the builder image's config, or the default.
pub fn builder_path(store: &Store, builder: &ImageRecord) -> String {
    let config = std::fs::read(store.blob_path(&builder.config_digest))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    config
        .as_ref()
        .and_then(|c| c.pointer("/config/Env"))
        .and_then(|e| e.as_array())
        .and_then(|env| {
            env.iter()
                .filter_map(|v| v.as_str())
                .find_map(|v| v.strip_prefix("PATH=").map(str::to_owned))
        })
        .unwrap_or_else(|| DEFAULT_PATH.to_owned())
}

/// The machine name (`uname -m`, qemu's name) of an OCI architecture.
fn machine_of(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "arm" => "arm",
        "386" => "i386",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        _ => return None,
    })
}

/// How a builder image's commands run here: `None` when the image is of this machine's
/// architecture (then never emulated), else `Some("qemu-aarch64")`, the binfmt_misc
/// entry that runs its binaries under user-mode emulation, once it is found enabled.
/// An image of another architecture without that entry is an error that says how to
/// enable it, before anything runs (its first exec would fail with a bare "Exec
/// format error" otherwise).
pub fn emulation(store: &Store, builder: &ImageRecord, image: &str) -> Result<Option<String>> {
    let config = std::fs::read(store.blob_path(&builder.config_digest))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let Some(arch) = config
        .as_ref()
        .and_then(|c| c["architecture"].as_str())
        .map(str::to_owned)
    else {
        return Ok(None);
    };
    let Some(machine) = machine_of(&arch) else {
        bail!("builder image `{image}` is for architecture `{arch}`, which imgbuild cannot run");
    };
    if machine == std::env::consts::ARCH {
        return Ok(None);
    }
    let entry = Path::new("/proc/sys/fs/binfmt_misc").join(format!("qemu-{machine}"));
    let enabled = std::fs::read_to_string(&entry)
        .map(|t| t.lines().next() == Some("enabled"))
        .unwrap_or(false);
    if !enabled {
        bail!(
            "builder image `{image}` is linux/{arch} and this machine is {}: its commands \
             run under qemu user-mode emulation, which is not enabled here ({} is missing or \
             disabled). Install it and enable it (as root: apt-get install qemu-user-static \
             binfmt-support; update-binfmts --enable qemu-{machine}; scripts/setup.sh does \
             both), or build only this machine's platform (--platform)",
            std::env::consts::ARCH,
            entry.display()
        );
    }
    Ok(Some(format!("qemu-{machine}")))
}

impl Sandbox<'_> {
    /// Runs the command in bubblewrap; its stdout and stderr go to `log`.
    pub fn run(&self, log: &Path) -> Result<()> {
        let root = self.root;
        let mut args: Vec<std::ffi::OsString> = vec![];
        let mut arg = |a: &dyn AsRef<std::ffi::OsStr>| args.push(a.as_ref().to_owned());
        for a in [
            "--unshare-all",
            // a user namespace always (not only "try"): uid 0 inside it, as root or not
            "--unshare-user",
            "--uid",
            "0",
            "--gid",
            "0",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
        ] {
            arg(&a);
        }
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("PATH".into(), self.path.clone());
        env.insert("HOME".into(), "/tmp".into());
        env.insert("LANG".into(), "C.UTF-8".into());
        env.insert("TZ".into(), "UTC".into());
        env.insert("SOURCE_DATE_EPOCH".into(), epoch().to_string());
        env.extend(self.env.clone());
        for (k, v) in &env {
            arg(&"--setenv");
            arg(k);
            arg(v);
        }
        // the root: an empty tmpfs with the builder's top-level entries bound read-only
        // (so that mount points can be made in it), remounted read-only at the end
        let mut names: Vec<_> = std::fs::read_dir(root)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        let top_mounts: Vec<String> = self
            .inputs
            .iter()
            .chain(&self.outputs)
            .map(|(_, dest)| dest.clone())
            .collect();
        for name in names {
            let Some(n) = name.to_str() else { continue };
            let image_path = format!("/{n}");
            if RESERVED.contains(&image_path.as_str()) || top_mounts.contains(&image_path) {
                continue;
            }
            let host = root.join(&name);
            let m = std::fs::symlink_metadata(&host)?;
            if m.file_type().is_symlink() {
                arg(&"--symlink");
                arg(&std::fs::read_link(&host)?);
                arg(&image_path);
            } else {
                arg(&"--ro-bind");
                arg(&host);
                arg(&image_path);
            }
        }
        for (kind, target) in [("--proc", "/proc"), ("--dev", "/dev"), ("--tmpfs", "/tmp")] {
            arg(&kind);
            arg(&target);
        }
        for m in &top_mounts {
            check_mount_point(root, m, self.label)?;
        }
        for (host, dest) in &self.inputs {
            arg(&"--ro-bind");
            arg(host);
            arg(dest);
        }
        for (host, dest) in &self.outputs {
            arg(&"--bind");
            arg(host);
            arg(dest);
        }
        arg(&"--remount-ro");
        arg(&"/");
        arg(&"--chdir");
        arg(&self.workdir);
        arg(&"--");
        for c in &self.command {
            arg(c);
        }
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        // found on imgbuild's own PATH: the child's environment is cleared, and exec
        // with no PATH would search a default one instead
        let Some(bwrap) = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("bwrap"))
            .find(|p| p.is_file())
        else {
            bail!(
                "{}: `bwrap` is not installed: build steps run in bubblewrap; install it (apt-get install bubblewrap)",
                self.label
            );
        };
        let mut child = match Command::new(bwrap)
            .args(&args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{}: `bwrap` is not installed: build steps run in bubblewrap; install it (apt-get install bubblewrap)",
                self.label
            ),
            Err(e) => return Err(e).context(format!("{}: failed to start bwrap", self.label)),
        };
        let deadline = Instant::now() + Duration::from_secs(self.timeout_secs);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if Instant::now() >= deadline {
                // --die-with-parent: the sandbox's init, and with it every process in
                // the sandbox's pid namespace, dies with bwrap
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let tail = log_tail(log);
        let Some(status) = status else {
            bail!(
                "{}: killed after timeout_secs = {} (raise it in the recipe if the step needs longer){tail}",
                self.label,
                self.timeout_secs
            );
        };
        if !status.success() {
            let code = status
                .code()
                .map(|c| format!("exit code {c}"))
                .unwrap_or_else(|| "killed by a signal".into());
            let hint = if tail.contains("bwrap:") {
                "\n(bwrap could not set up the sandbox: it needs root or unprivileged user namespaces, \
             e.g. sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0)"
            } else {
                ""
            };
            bail!("{}: failed with {code}{tail}{hint}", self.label);
        }
        Ok(())
    }
}

/// A mount point nested in a read-only builder directory must already exist there
/// (bwrap cannot create it in a read-only mount).
fn check_mount_point(root: &Path, image_path: &str, label: &str) -> Result<()> {
    let rel = image_path.trim_start_matches('/');
    let top = rel.split('/').next().unwrap_or("");
    if !rel.contains('/') || std::fs::symlink_metadata(root.join(top)).is_err() {
        return Ok(()); // made in the sandbox's own root (a tmpfs until remounted)
    }
    if !root.join(rel).is_dir() {
        bail!(
            "{label}: {image_path} is not a directory of the builder image: mount inputs and outputs at a new top-level path (e.g. /src, /out) or at an existing directory"
        );
    }
    Ok(())
}

/// The last lines of the step's output, as an indented block (empty if none).
fn log_tail(log: &Path) -> String {
    let mut f = match std::fs::File::open(log) {
        Ok(f) => f,
        Err(_) => return String::new(),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = vec![];
    let _ = f.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "\n  (no output)".into();
    }
    let from = lines.len().saturating_sub(TAIL_LINES);
    let mut s = format!("\n  last {} lines of its output:", lines.len() - from);
    for l in &lines[from..] {
        s.push_str("\n  | ");
        s.push_str(l);
    }
    s
}
