//! Where finished images go: a multi-image OCI layout (`out/oci/`) and one
//! loadable tarball per image (`out/NAME.tar`). Sinks are plain functions of a
//! built image and the store; every file is written to a temp file in the target
//! directory, fsynced and renamed, so readers never see half a file.

pub mod layout;
pub mod tarball;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use imgbuild_store::{Digest, Store};

/// Everything a sink needs to know about one built image.
#[derive(Clone, Debug)]
pub struct ImageOut {
    pub name: String,
    /// The full name engines give the loaded image, e.g. `imgbuild/app:latest`.
    pub reference: String,
    /// Every name for `docker load` (one per tag).
    pub repo_tags: Vec<String>,
    pub manifest: Digest,
    pub manifest_size: u64,
    pub config: Digest,
    pub layers: Vec<Digest>,
}

impl ImageOut {
    /// The blobs of the image: config, layers, manifest.
    pub fn blobs(&self) -> Vec<&Digest> {
        let mut v = vec![&self.config];
        v.extend(self.layers.iter());
        v.push(&self.manifest);
        v
    }
}

/// Writes `bytes` to `dest` atomically, unless `dest` already holds exactly them.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    if fs::read(dest).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let (tmp, mut f) = temp_beside(dest)?;
    let r = (|| -> io::Result<()> {
        f.write_all(bytes)?;
        f.sync_all()
    })();
    finish_atomic(r, tmp, dest)
}

/// A temp file in `dest`'s directory (so the final rename is atomic), named
/// `.NAME.PID.N.tmp` (see [`remove_stale_temps`]).
pub fn temp_beside(dest: &Path) -> Result<(PathBuf, File)> {
    temp_beside_with_mode(dest, 0o666)
}

/// [`temp_beside`] created with `mode` (before the umask), e.g. 0600 for a file whose
/// content must never be readable by others, not even briefly.
pub fn temp_beside_with_mode(dest: &Path, mode: u32) -> Result<(PathBuf, File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("failed to create `{}`", dir.display()))?;
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    for i in 0.. {
        let tmp = dir.join(format!(".{name}.{}.{i}.tmp", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("failed to create `{}`", tmp.display()));
            }
        }
    }
    unreachable!()
}

/// Renames a finished temp file into place, or removes it if writing failed.
pub fn finish_atomic(result: io::Result<()>, tmp: PathBuf, dest: &Path) -> Result<()> {
    match result.and_then(|_| fs::rename(&tmp, dest)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e).with_context(|| format!("failed to write `{}`", dest.display()))
        }
    }
}

/// Puts a store blob at `dest` unless `dest` already holds a file of the right
/// size: a hard link when the output is on the store's filesystem (no copy; if
/// anyone writes to the output file, the store sees the blob changed and hashes
/// it again before using it), else a copy verified on the way.
pub fn copy_blob(store: &Store, digest: &Digest, dest: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let src = store.blob_path(digest);
    let src_meta =
        fs::metadata(&src).with_context(|| format!("blob {digest} is not in the store"))?;
    if let Ok(d) = fs::metadata(dest)
        && d.ino() == src_meta.ino()
        && d.dev() == src_meta.dev()
    {
        return Ok(()); // already this very file
    }
    // Link beside dest, then rename over it: an older link or copy is replaced
    // atomically (a stale link to a replaced blob is never kept).
    let dir = dest.parent().context("output path has no directory")?;
    let tmp = dir.join(format!(".{}.{}.link", digest.hex(), std::process::id()));
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(&src, &tmp).is_ok() {
        return finish_atomic(Ok(()), tmp, dest);
    }
    // Another filesystem: a copy, verified on the way, unless one with exactly
    // these bytes is there (the size alone would keep a damaged copy).
    if fs::metadata(dest).is_ok_and(|m| m.len() == src_meta.len())
        && File::open(dest)
            .and_then(imgbuild_store::digest_reader)
            .is_ok_and(|(d, _)| &d == digest)
    {
        return Ok(());
    }
    let (tmp, f) = temp_beside(dest)?;
    let r = (|| -> io::Result<()> {
        let mut src = store.open_verified(digest).map_err(io::Error::other)?;
        let mut w = io::BufWriter::with_capacity(1 << 20, f);
        io::copy(&mut src, &mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    finish_atomic(r, tmp, dest)
}

/// An exclusive lock on the output directory while a command writes the shared
/// parts of it (`out/oci/index.json` is read, extended and rewritten, and blobs no
/// entry uses are pruned): two builds into one `out/` must not lose each other's
/// entries or delete blobs the other has just linked.
pub fn lock_out(out: &Path) -> Result<File> {
    fs::create_dir_all(out).with_context(|| format!("failed to create `{}`", out.display()))?;
    crate::project::lock_file(&out.join(".imgbuild.lock"), false)
}

/// Removes the temp files (`.NAME.PID.N.tmp`, `.HEX.PID.link`) that a killed
/// process left in `dir`: only those whose process no longer runs.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(listing) = fs::read_dir(dir) else {
        return;
    };
    for e in listing.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix('.') else {
            continue;
        };
        let pid = if let Some(r) = rest.strip_suffix(".tmp") {
            // NAME.PID.N
            let mut parts = r.rsplitn(3, '.');
            let _n = parts.next();
            parts.next()
        } else if let Some(r) = rest.strip_suffix(".link") {
            r.rsplit_once('.').map(|(_, pid)| pid)
        } else {
            None
        };
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(e.path());
        }
    }
}
