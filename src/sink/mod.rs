//! Where finished images go: a multi-image OCI layout (`out/oci/`) and one
//! loadable tarball per image (`out/NAME.tar`). Sinks are plain functions of a
//! built image and the store; every file is written through
//! [`imgbuild_store::AtomicFile`] (a temp file in the target directory, fsynced and
//! renamed, owned by a lock so that a later build removes what a killed one left),
//! so readers never see half a file.

pub mod layout;
pub mod tarball;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};
use imgbuild_store::{AtomicFile, Digest, Store};

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
    /// An image built for several platforms: the image index over their manifests
    /// (the fields above are the build machine's platform's, what Docker's
    /// `manifest.json` names).
    pub index: Option<IndexOut>,
}

/// An image index and every platform's image.
#[derive(Clone, Debug)]
pub struct IndexOut {
    pub digest: Digest,
    pub size: u64,
    pub manifests: Vec<ImageOut>,
}

impl ImageOut {
    /// The blobs of the image: config, layers, manifest (of every platform, each
    /// once), then the index.
    pub fn blobs(&self) -> Vec<&Digest> {
        let mut v = vec![&self.config];
        v.extend(self.layers.iter());
        v.push(&self.manifest);
        if let Some(index) = &self.index {
            for m in &index.manifests {
                for d in m.blobs() {
                    if !v.contains(&d) {
                        v.push(d);
                    }
                }
            }
            v.push(&index.digest);
        }
        v
    }

    /// What the image's name points at in an OCI layout: the index of an image
    /// built for several platforms, else the manifest.
    pub fn top(&self) -> crate::oci::Descriptor {
        match &self.index {
            Some(i) => {
                crate::oci::Descriptor::new(crate::oci::MEDIA_INDEX, i.digest.clone(), i.size)
            }
            None => crate::oci::Descriptor::new(
                crate::oci::MEDIA_MANIFEST,
                self.manifest.clone(),
                self.manifest_size,
            ),
        }
    }
}

/// Writes `bytes` to `dest` atomically ([`imgbuild_store::AtomicFile`]), unless
/// `dest` already holds exactly them.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    if fs::read(dest).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    imgbuild_store::write_atomic(dest, bytes, 0o666)
        .with_context(|| format!("failed to write `{}`", dest.display()))
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
    if imgbuild_store::atomic::link_atomic(&src, dest)
        .with_context(|| format!("failed to write `{}`", dest.display()))?
    {
        return Ok(());
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
    let mut out = AtomicFile::create(dest, 0o666)?;
    let copied = (|| -> io::Result<()> {
        let mut src = store.open_verified(digest).map_err(io::Error::other)?;
        let mut w = io::BufWriter::with_capacity(1 << 20, out.file());
        io::copy(&mut src, &mut w)?;
        w.flush()
    })();
    copied.with_context(|| format!("failed to write `{}`", dest.display()))?;
    out.commit()?;
    Ok(())
}

/// An exclusive lock on the output directory while a command writes the shared
/// parts of it (`out/oci/index.json` is read, extended and rewritten, and blobs no
/// entry uses are pruned): two builds into one `out/` must not lose each other's
/// entries or delete blobs the other has just linked.
pub fn lock_out(out: &Path) -> Result<File> {
    fs::create_dir_all(out).with_context(|| format!("failed to create `{}`", out.display()))?;
    crate::project::lock_file(&out.join(".imgbuild.lock"), false)
}

/// Removes the temp files that killed processes left in `dir`: those of every
/// writer whose owner lock is free (its process is gone, see
/// [`imgbuild_store::atomic`]), and any older than a day. A running build's stay.
pub fn remove_stale_temps(dir: &Path) {
    imgbuild_store::atomic::remove_stale_temps(dir, imgbuild_store::atomic::STALE_AGE);
}
