//! `out/NAME.tar`: one file that every engine and tool loads.
//!
//! It is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) plus
//! Docker's `manifest.json`, whose `Config` and `Layers` paths point into
//! `blobs/sha256/`, the way Docker 25+ writes `docker save` output. An image built for
//! several platforms holds every platform's blobs; its `index.json` names the image
//! index and `manifest.json` the build machine's platform's image. Docker 20.10
//! reads only `manifest.json`; podman and `skopeo copy oci-archive:` read the OCI
//! index; `skopeo copy docker-archive:` reads `manifest.json`.
//!
//! The tar itself is deterministic (sorted entries, fixed headers) and is rewritten
//! only when its content would change: an unchanged image costs no copying. That
//! the file on disk still is what was written is proven, not assumed from its
//! first bytes: a record in the store (bucket [`RECORD_BUCKET`], keyed by the
//! tarball's path) keeps its sha256 and its identity then (device, inode, size,
//! mtime, ctime). While the identity is unchanged and the ctime is older than the
//! check by [`TIMESTAMP_MARGIN`] (so a write in the same timestamp tick is still
//! seen), the file is trusted; otherwise it is hashed again, and rewritten if the
//! hash differs. Any write, `touch` or replacement moves ctime, so a same-size
//! corruption anywhere in the file is found on the next build.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use imgbuild_store::{Digest, HashingWriter, Store, TIMESTAMP_MARGIN};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ImageOut;
use crate::oci;

pub fn write(dest: &Path, store: &Store, img: &ImageOut, mtime: u64) -> Result<bool> {
    let (oci_layout, index, manifest_json) = documents(img);
    let mut blobs: BTreeMap<&Digest, u64> = BTreeMap::new();
    for d in img.blobs() {
        blobs.insert(d, store.blob_size(d)?);
    }
    let expected_size = {
        let entry = |n: u64| 512 + n.div_ceil(512) * 512;
        let mut s = entry(oci_layout.len() as u64)
            + entry(index.len() as u64)
            + entry(manifest_json.len() as u64);
        s += 512 * 2; // blobs/ and blobs/sha256/
        s += blobs.values().map(|&n| entry(n)).sum::<u64>();
        s + 1024
    };
    let content = content_key(&[&oci_layout, &index, &manifest_json], &blobs, mtime);
    let record_key = record_key(dest);
    if is_current(store, &record_key, dest, &content, expected_size)? {
        return Ok(false);
    }
    let mut out = imgbuild_store::AtomicFile::create(dest, 0o666)?;
    let mut written = None;
    let r = (|| -> io::Result<()> {
        let w = HashingWriter::new(BufWriter::with_capacity(1 << 20, out.file()));
        let mut b = tar::Builder::new(w);
        let header = |size: u64, kind: tar::EntryType, mode: u32| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(mode);
            h.set_mtime(mtime);
            h.set_uid(0);
            h.set_gid(0);
            h
        };
        for (name, bytes) in [
            ("oci-layout", &oci_layout),
            ("index.json", &index),
            ("manifest.json", &manifest_json),
        ] {
            b.append_data(
                &mut header(bytes.len() as u64, tar::EntryType::Regular, 0o644),
                name,
                &bytes[..],
            )?;
        }
        for dir in ["blobs/", "blobs/sha256/"] {
            b.append_data(
                &mut header(0, tar::EntryType::Directory, 0o755),
                dir,
                io::empty(),
            )?;
        }
        for (d, size) in &blobs {
            let src = store.open_verified(d).map_err(io::Error::other)?;
            b.append_data(
                &mut header(*size, tar::EntryType::Regular, 0o644),
                format!("blobs/sha256/{}", d.hex()),
                src,
            )?;
        }
        let (w, digest, _) = b.into_inner()?.finish();
        written = Some(digest);
        w.into_inner().map_err(|e| e.into_error())?.flush()
    })();
    r.with_context(|| format!("failed to write `{}`", dest.display()))?;
    out.commit()?;
    let digest = written.expect("a written tarball has a digest");
    // The ctime of a file just written is within the margin of now: the next build
    // hashes it once more, and trusts it from then on.
    let now = SystemTime::now();
    if let Ok(m) = fs::metadata(dest) {
        remember(
            store,
            &record_key,
            dest,
            content,
            digest,
            Identity::of(&m),
            now,
        )?;
    }
    Ok(true)
}

/// Where the record of a tarball lives in the store; the bucket's version names the
/// record's format and the tar layout it vouches for.
pub const RECORD_BUCKET: imgbuild_store::Bucket = imgbuild_store::Bucket::Tarballs;

/// What the store remembers of a tarball it wrote or checked.
#[derive(Serialize, Deserialize)]
struct TarballRecord {
    /// The tarball path (the record key is its hash).
    path: String,
    /// [`content_key`] of what the tarball holds.
    content: Digest,
    /// sha256 of the whole file.
    sha256: Digest,
    identity: Identity,
    /// When `sha256` was last known to be the file's (seconds, nanoseconds since
    /// the epoch).
    checked_at: (u64, u32),
}

/// The identity of one version of a file: a write, truncation, `touch` or
/// replacement changes at least one of these.
#[derive(Serialize, Deserialize, PartialEq, Eq, Clone, Copy)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    fn of(m: &fs::Metadata) -> Identity {
        use std::os::unix::fs::MetadataExt;
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    fn ctime(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + Duration::new(
                self.ctime.0.max(0) as u64,
                self.ctime.1.clamp(0, 999_999_999) as u32,
            )
    }
}

/// Names exactly the bytes the tarball holds: its documents, its blobs in order
/// with their sizes (the blobs' own digests name their bytes) and the entries'
/// mtime.
fn content_key(docs: &[&[u8]], blobs: &BTreeMap<&Digest, u64>, mtime: u64) -> Digest {
    let mut s = format!("imgbuild tarball v1\nmtime {mtime}\n");
    for d in docs {
        s.push_str(&format!("doc {}\n", Digest::of_bytes(d)));
    }
    for (d, size) in blobs {
        s.push_str(&format!("blob {d} {size}\n"));
    }
    Digest::of_bytes(s.as_bytes())
}

fn record_key(dest: &Path) -> String {
    // `dest` is absolute whenever the project root is (it is canonical); the
    // parent is canonicalised in case `--out` was given relative or via a symlink.
    let path = dest
        .parent()
        .and_then(|p| p.canonicalize().ok())
        .zip(dest.file_name())
        .map(|(p, n)| p.join(n))
        .unwrap_or_else(|| dest.to_path_buf());
    Digest::of_bytes(path.as_os_str().as_encoded_bytes())
        .hex()
        .to_owned()
}

/// Records that `dest` held `sha256` when it had `identity`, at `checked_at` or
/// later (the time is taken before the stat or the hashing it vouches for).
fn remember(
    store: &Store,
    key: &str,
    dest: &Path,
    content: Digest,
    sha256: Digest,
    identity: Identity,
    checked_at: SystemTime,
) -> Result<()> {
    let t = checked_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let rec = TarballRecord {
        path: dest.display().to_string(),
        content,
        sha256,
        identity,
        checked_at: (t.as_secs(), t.subsec_nanos()),
    };
    store.write_record(RECORD_BUCKET, key, &serde_json::to_vec(&rec)?)?;
    Ok(())
}

/// The three small documents of the tarball.
fn documents(img: &ImageOut) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    // an image built for several platforms: the index (podman and skopeo pick the
    // platform); Docker 20.10 reads manifest.json, the build machine's platform
    let desc = img.top();
    let ann = BTreeMap::from([
        // podman names the loaded image after ref.name; a full reference keeps it
        // from being guessed. containerd and Docker 25+ read io.containerd.image.name.
        (super::layout::REF_NAME.to_owned(), img.reference.clone()),
        ("io.containerd.image.name".to_owned(), img.reference.clone()),
    ]);
    let index = oci::image_index(vec![oci::index_entry(&desc, &ann)]);
    let manifest_json = oci::canonical(&json!([{
        "Config": format!("blobs/sha256/{}", img.config.hex()),
        "RepoTags": img.repo_tags,
        "Layers": img.layers.iter().map(|d| format!("blobs/sha256/{}", d.hex())).collect::<Vec<_>>(),
    }]));
    (
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        index,
        manifest_json,
    )
}

/// Whether `dest` already is this exact tarball, proven by its record: the same
/// content and an unchanged, settled identity, or else the same sha256 when hashed
/// again now (and the record is renewed).
fn is_current(store: &Store, key: &str, dest: &Path, content: &Digest, size: u64) -> Result<bool> {
    let Ok(m) = fs::metadata(dest) else {
        return Ok(false);
    };
    if !m.is_file() || m.len() != size {
        return Ok(false);
    }
    let Some(rec) = store
        .read_record(RECORD_BUCKET, key)?
        .and_then(|b| serde_json::from_slice::<TarballRecord>(&b).ok())
    else {
        return Ok(false);
    };
    if &rec.content != content {
        return Ok(false);
    }
    let identity = Identity::of(&m);
    let checked_at = SystemTime::UNIX_EPOCH + Duration::new(rec.checked_at.0, rec.checked_at.1);
    if identity == rec.identity && identity.ctime() + TIMESTAMP_MARGIN < checked_at {
        return Ok(true);
    }
    // Hashed again: `identity` was taken before, so a write during the hashing
    // leaves the record naming an identity the file no longer has.
    let started = SystemTime::now();
    let Ok((digest, _)) = File::open(dest).and_then(imgbuild_store::digest_reader) else {
        return Ok(false);
    };
    if digest != rec.sha256 {
        return Ok(false);
    }
    remember(store, key, dest, rec.content, digest, identity, started)?;
    Ok(true)
}
