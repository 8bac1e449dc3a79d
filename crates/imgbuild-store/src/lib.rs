//! The content-addressed store shared by every part of imgbuild.
//!
//! This crate owns four things and nothing else:
//! - [`Digest`]: a validated `sha256:<64 hex>` name for a blob;
//! - [`Store`]: a directory of blobs named by their digest, where every write is
//!   atomic (temp file in the same filesystem, fsync, rename, fsync of the directory)
//!   and every read can be verified against the name;
//! - the [`Bucket`]s: every other kind of entry of the store, one typed list with
//!   format versions (small records written with the same atomic discipline by
//!   [`Store::write_record`], and directories renamed into place whole); no other
//!   code names a path under the store root;
//! - [`atomic`]: the one atomic writer of files outside the store ([`AtomicFile`]) and
//!   the one temp naming scheme, owners locked with flock ([`TempOwner`]), that the
//!   store's own temp files use too.
//!
//! A blob whose bytes do not match its name is never handed out as good: [`Store::open_verified`]
//! returns a reader that fails at end of stream on a mismatch, and [`Store::verify`] deletes
//! a corrupt blob so that the next build fetches or rebuilds it.
//!
//! Concurrency: two processes may write the same blob at once; both write their own temp
//! file and the second rename simply replaces identical bytes. A process killed mid-write
//! leaves only a temp file under `tmp/`, which [`Store::clean_tmp`] removes once its
//! owner's lock is free (or when it is old).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

pub mod atomic;
mod bucket;
mod descriptor;
pub use atomic::{AtomicFile, TempOwner, write_atomic};
pub use bucket::{Bucket, BucketKind, disk_bytes, remove_path};
pub use descriptor::{Descriptor, media};

/// Errors of the store. Each names the path or digest involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid digest `{0}`: expected `sha256:` followed by 64 lowercase hex digits")]
    InvalidDigest(String),
    #[error("{op} `{path}`: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("content of {what} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("size of {what} does not match: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How much older than a reference time a file's ctime must be before the file is
/// trusted to be unchanged since then. File timestamps come from a coarse kernel
/// clock (a tick of up to 10 ms), and some filesystems store seconds only: 2 s
/// covers both, as git's and the build's stat caches do.
pub const TIMESTAMP_MARGIN: Duration = Duration::from_secs(2);

/// A sha256 content digest, always valid: `sha256:` and 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of a byte slice.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest::from_sha256(Sha256::digest(bytes).into())
    }

    pub fn from_sha256(raw: [u8; 32]) -> Digest {
        Digest {
            hex: hex::encode(raw),
        }
    }

    /// Parses a bare 64-digit hex string (as in `SHA256:` fields of Debian indexes).
    pub fn from_hex(hex: &str) -> Result<Digest> {
        if hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Digest {
                hex: hex.to_owned(),
            })
        } else {
            Err(StoreError::InvalidDigest(hex.to_owned()))
        }
    }

    /// The 64 hex digits, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Digest> {
        match s.strip_prefix("sha256:") {
            Some(hex) => Digest::from_hex(hex).map_err(|_| StoreError::InvalidDigest(s.to_owned())),
            None => Err(StoreError::InvalidDigest(s.to_owned())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that passes bytes through and computes their sha256 and count on the way.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }
    /// The inner writer, the digest and the byte count of everything written.
    pub fn finish(self) -> (W, Digest, u64) {
        (
            self.inner,
            Digest::from_sha256(self.hasher.finalize().into()),
            self.len,
        )
    }
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }
    pub fn finish(self) -> (Digest, u64) {
        (Digest::from_sha256(self.hasher.finalize().into()), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Digest and size of everything a reader yields.
pub fn digest_reader(mut r: impl Read) -> io::Result<(Digest, u64)> {
    let mut h = HashingReader::new(&mut r);
    io::copy(&mut h, &mut io::sink())?;
    Ok(h.finish())
}

/// A directory of blobs named by digest, plus versioned metadata records.
///
/// Layout:
/// ```text
/// blobs/sha256/<hex>      immutable content
/// records/<bucket>/<key>  small metadata (cache entries), replaced atomically
/// unpacked/<bucket>/<key> directories made once and renamed into place whole
/// tmp/                    temp files of writes in progress
/// lock                    flock: builds shared, gc exclusive
/// owners/<owner>.alive    locked by each process that has temp files (see TempOwner)
/// ```
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// Blobs this process wrote or hashed, with the identity of the file then
    /// (device, inode, ctime, size): while it is unchanged, hashing it again
    /// could only give the same answer.
    known_good: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Digest, FileId>>>,
    /// This process's claim on its temp files (made on first use).
    owner: std::sync::Arc<std::sync::OnceLock<TempOwner>>,
}

/// Who owns which temp files: every temp name under `tmp/` starts with `<owner>-`,
/// and `owners/<owner>.alive` is locked by the owning process for as long as it runs
/// ([`TempOwner`]: the kernel drops the lock when the process dies, however it dies).
const OWNERS: &str = "owners";

/// What identifies one version of a file: any write, truncation or replacement
/// changes the inode or moves ctime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    ctime_ns: i128,
    size: u64,
}

impl FileId {
    fn of(m: &fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            size: m.len(),
        }
    }
}

impl Store {
    /// Opens (creating if needed) a store at `root`.
    ///
    /// The root is made absolute (canonical) here, once: store paths are handed to
    /// child processes that run in other working directories (the image's
    /// interpreter byte-compiling in a temp dir), where a relative `--store ./x`
    /// would name nothing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for sub in ["blobs/sha256", "records", "tmp", "owners"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err("failed to create store directory", &p))?;
        }
        let root = root
            .canonicalize()
            .map_err(io_err("failed to resolve the store directory", &root))?;
        Ok(Store {
            root,
            known_good: Default::default(),
            owner: Default::default(),
        })
    }

    fn remember_good(&self, digest: &Digest) {
        if let Ok(m) = fs::metadata(self.blob_path(digest)) {
            self.known_good
                .lock()
                .expect("known_good")
                .insert(digest.clone(), FileId::of(&m));
        }
    }

    /// Whether this process wrote or hashed the blob and it has not changed since.
    fn is_known_good(&self, digest: &Digest, m: &fs::Metadata) -> bool {
        self.known_good.lock().expect("known_good").get(digest) == Some(&FileId::of(m))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob with this digest lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether a blob of that name is present (not verified; see [`Store::verify`]).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Size of a present blob.
    pub fn blob_size(&self, digest: &Digest) -> Result<u64> {
        let p = self.blob_path(digest);
        Ok(fs::metadata(&p)
            .map_err(io_err("failed to stat blob", &p))?
            .len())
    }

    /// Reads a whole blob and checks it against its name. A corrupt blob is deleted
    /// and `Ok(false)` returned, so that the caller refetches or rebuilds it.
    pub fn verify(&self, digest: &Digest) -> Result<bool> {
        let p = self.blob_path(digest);
        let f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("failed to open blob", &p)(e)),
        };
        if f.metadata().is_ok_and(|m| self.is_known_good(digest, &m)) {
            return Ok(true);
        }
        let (actual, _) = digest_reader(io::BufReader::with_capacity(1 << 20, f))
            .map_err(io_err("failed to read blob", &p))?;
        if &actual == digest {
            self.remember_good(digest);
            Ok(true)
        } else {
            let _ = fs::remove_file(&p);
            Ok(false)
        }
    }

    /// Like [`Store::verify`], but skips re-hashing a blob whose inode has not
    /// changed since `since` (its ctime is older by more than
    /// [`TIMESTAMP_MARGIN`]): a blob that was verified or written before `since`
    /// and not written to since still has the same bytes. Any write, truncation,
    /// rename or chmod moves ctime forward, so the blob is then hashed in full
    /// again. The margin covers the kernel's coarse file timestamps (a write in the
    /// same tick as `since` can carry a ctime slightly before it).
    pub fn verify_unless_unchanged_since(
        &self,
        digest: &Digest,
        since: SystemTime,
    ) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let p = self.blob_path(digest);
        let Ok(m) = fs::metadata(&p) else {
            return Ok(false);
        };
        let ctime = SystemTime::UNIX_EPOCH
            + Duration::new(
                m.ctime().max(0) as u64,
                m.ctime_nsec().clamp(0, 999_999_999) as u32,
            );
        if ctime + TIMESTAMP_MARGIN < since {
            return Ok(true);
        }
        self.verify(digest)
    }

    /// Opens a blob for reading; the reader fails with `InvalidData` at end of stream
    /// if the bytes do not match the digest (and the corrupt blob is then deleted).
    pub fn open_verified(&self, digest: &Digest) -> Result<VerifiedReader> {
        let p = self.blob_path(digest);
        let f = File::open(&p).map_err(io_err("failed to open blob", &p))?;
        // Already hashed (or written) by this process and unchanged: checked.
        let checked = f.metadata().is_ok_and(|m| self.is_known_good(digest, &m));
        Ok(VerifiedReader {
            file: f,
            hasher: (!checked).then(Sha256::new),
            expected: digest.clone(),
            path: p,
        })
    }

    /// Starts writing a new blob. Nothing is visible under `blobs/` until
    /// [`BlobWriter::commit`] succeeds.
    pub fn writer(&self) -> Result<BlobWriter> {
        let (path, file) = self.temp_file()?;
        Ok(BlobWriter {
            store: self.clone(),
            inner: Some(HashingWriter::new(io::BufWriter::with_capacity(
                1 << 20,
                file,
            ))),
            temp: path,
        })
    }

    /// Stores a blob from a reader, checking it against `expected` (digest and, if
    /// given, size) before it becomes visible. Returns the blob's size.
    pub fn put_verified(
        &self,
        mut src: impl Read,
        expected: &Digest,
        size: Option<u64>,
        what: &str,
    ) -> Result<u64> {
        if self.has_blob(expected) && self.verify(expected)? {
            return self.blob_size(expected);
        }
        let mut w = self.writer()?;
        io::copy(&mut src, &mut w).map_err(|e| StoreError::Io {
            op: "failed to download/copy",
            path: PathBuf::from(what),
            source: e,
        })?;
        let (_, n) = w.commit_expecting(expected, size, what)?;
        Ok(n)
    }

    /// Stores bytes held in memory (small blobs: configs, manifests).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of_bytes(bytes);
        if self.has_blob(&digest) && self.verify(&digest)? {
            return Ok(digest);
        }
        let mut w = self.writer()?;
        w.write_all(bytes)
            .map_err(io_err("failed to write", &w.temp.clone()))?;
        w.commit()?;
        Ok(digest)
    }

    /// Reads a small blob whole, verified.
    pub fn read_bytes(&self, digest: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(digest);
        let bytes = fs::read(&p).map_err(io_err("failed to read blob", &p))?;
        let actual = Digest::of_bytes(&bytes);
        if &actual != digest {
            let _ = fs::remove_file(&p);
            return Err(StoreError::DigestMismatch {
                what: format!("blob `{}`", p.display()),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Path of a metadata record of a record bucket.
    pub fn record_path(&self, bucket: Bucket, key: &str) -> PathBuf {
        debug_assert_eq!(bucket.kind(), BucketKind::Records, "{bucket}");
        self.entry_path(bucket, key)
    }

    /// Reads a metadata record; `None` if absent.
    pub fn read_record(&self, bucket: Bucket, key: &str) -> Result<Option<Vec<u8>>> {
        let p = self.record_path(bucket, key);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("failed to read record", &p)(e)),
        }
    }

    /// Writes a metadata record atomically (temp file, fsync, rename, fsync dir).
    pub fn write_record(&self, bucket: Bucket, key: &str, bytes: &[u8]) -> Result<()> {
        let dest = self.record_path(bucket, key);
        let dir = dest.parent().expect("record has a parent");
        fs::create_dir_all(dir).map_err(io_err("failed to create directory", dir))?;
        let (tmp, mut f) = self.temp_file()?;
        let r = (|| {
            f.write_all(bytes)
                .map_err(io_err("failed to write", &tmp))?;
            f.sync_all().map_err(io_err("failed to fsync", &tmp))?;
            drop(f);
            fs::rename(&tmp, &dest).map_err(io_err("failed to rename into place", &dest))?;
            sync_dir(dir)
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    /// The file whose flock guards the store as a whole: builds hold it shared,
    /// `gc` exclusively.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Every blob digest in the store.
    pub fn list_blobs(&self) -> Result<Vec<Digest>> {
        let dir = self.root.join("blobs/sha256");
        let mut out = vec![];
        for e in fs::read_dir(&dir).map_err(io_err("failed to list", &dir))? {
            let e = e.map_err(io_err("failed to list", &dir))?;
            if let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes a blob (used by garbage collection).
    pub fn remove_blob(&self, digest: &Digest) -> Result<()> {
        let p = self.blob_path(digest);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("failed to remove blob", &p)(e)),
        }
    }

    /// This process's temp-file owner, claimed on first use.
    fn owner(&self) -> Result<&TempOwner> {
        if let Some(o) = self.owner.get() {
            return Ok(o);
        }
        let owner = TempOwner::claim(&self.root.join(OWNERS), "")?;
        // Another thread may have claimed first: its owner wins, ours is dropped
        // (and its file removed).
        let _ = self.owner.set(owner);
        Ok(self.owner.get().expect("owner set"))
    }

    /// Removes temp files and directories left by killed processes: everything of
    /// an owner whose `.alive` lock is free (the process is gone), and anything
    /// older than `age` (left by versions without owner files, or whose owner
    /// file is lost).
    pub fn clean_tmp(&self, age: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let mine = self.owner.get().map(|o| o.name().to_owned());
        // Owners that no longer run (their lock is free), and claims that never
        // became owners (a process killed while claiming).
        let dead = atomic::dead_owners(&self.root.join(OWNERS), "", mine.as_deref(), age);
        let dir = self.root.join("tmp");
        let mut n = 0;
        for e in fs::read_dir(&dir)
            .map_err(io_err("failed to list", &dir))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(meta) = e.metadata() else { continue };
            let owner = name.split('-').next().unwrap_or("");
            if Some(owner) == mine.as_deref() {
                continue;
            }
            let orphan = dead.iter().any(|d| d == owner);
            let old = meta
                .modified()
                .map(|t| now.duration_since(t).unwrap_or_default() >= age)
                .unwrap_or(false);
            if !(orphan || old) {
                continue;
            }
            let removed = if meta.is_dir() {
                fs::remove_dir_all(e.path())
            } else {
                fs::remove_file(e.path())
            };
            if removed.is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// A fresh temp file under `tmp/` (same filesystem as the blobs, so rename is atomic).
    pub fn temp_file(&self) -> Result<(PathBuf, File)> {
        self.owner()?
            .create_temp(&self.root.join("tmp"), "", "", 0o666)
    }

    /// A fresh private temp directory under `tmp/` (for spooling); the caller removes it.
    pub fn temp_dir(&self) -> Result<PathBuf> {
        let (p, f) = self.temp_file()?;
        drop(f);
        fs::remove_file(&p).map_err(io_err("failed to remove", &p))?;
        fs::create_dir(&p).map_err(io_err("failed to create temp directory", &p))?;
        Ok(p)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("failed to fsync directory", dir))
}

/// A blob being written: hashes as it writes; becomes visible only on commit.
/// Dropped without commit, its temp file is removed.
pub struct BlobWriter {
    store: Store,
    inner: Option<HashingWriter<io::BufWriter<File>>>,
    temp: PathBuf,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.inner.as_ref().map(|w| w.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flushes, fsyncs and renames the blob into place under its digest.
    pub fn commit(self) -> Result<(Digest, u64)> {
        self.finish(None, None, "")
    }

    /// Like [`BlobWriter::commit`], but refuses (and deletes the temp file) when the
    /// content does not match the expected digest or size.
    pub fn commit_expecting(
        self,
        expected: &Digest,
        size: Option<u64>,
        what: &str,
    ) -> Result<(Digest, u64)> {
        self.finish(Some(expected), size, what)
    }

    fn finish(
        mut self,
        expected: Option<&Digest>,
        size: Option<u64>,
        what: &str,
    ) -> Result<(Digest, u64)> {
        let (buf, digest, len) = self.inner.take().expect("not finished").finish();
        let temp = self.temp.clone();
        let file = buf
            .into_inner()
            .map_err(|e| io_err("failed to write", &temp)(e.into_error()))?;
        if let Some(size) = size
            && size != len
        {
            return Err(StoreError::SizeMismatch {
                what: what.to_owned(),
                expected: size,
                actual: len,
            });
        }
        if let Some(expected) = expected
            && expected != &digest
        {
            return Err(StoreError::DigestMismatch {
                what: what.to_owned(),
                expected: expected.clone(),
                actual: digest,
            });
        }
        file.sync_all().map_err(io_err("failed to fsync", &temp))?;
        drop(file);
        let dest = self.store.blob_path(&digest);
        fs::rename(&temp, &dest).map_err(io_err("failed to rename blob into place", &dest))?;
        sync_dir(dest.parent().expect("blob has a parent"))?;
        self.store.remember_good(&digest);
        Ok((digest, len))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.as_mut().expect("not finished").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.as_mut().expect("not finished").flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.inner.is_some() {
            let _ = fs::remove_file(&self.temp);
        } else if self.temp.exists() {
            // finish() failed before the rename
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// A blob reader that checks the digest at end of stream (or a plain reader when
/// this process already hashed the unchanged blob: `hasher` is then `None`).
pub struct VerifiedReader {
    file: File,
    hasher: Option<Sha256>,
    expected: Digest,
    path: PathBuf,
}

impl Read for VerifiedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(n);
        };
        hasher.update(&buf[..n]);
        if n == 0 && !buf.is_empty() {
            let actual = Digest::from_sha256(self.hasher.take().expect("hasher").finalize().into());
            if actual != self.expected {
                let _ = fs::remove_file(&self.path);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "blob `{}` is corrupt (content is {actual}); it was removed, run the command again to rebuild or refetch it",
                        self.path.display()
                    ),
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parse_and_display() {
        let d = Digest::of_bytes(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!("sha256:E3B0".parse::<Digest>().is_err());
        assert!("md5:00".parse::<Digest>().is_err());
    }

    #[test]
    fn a_relative_root_is_made_absolute() {
        // cargo runs unit tests in the crate directory; a temp dir there is
        // reachable by a relative path without changing this process's cwd.
        let dir = tempfile::tempdir_in(".").unwrap();
        let name = dir.path().file_name().unwrap();
        let store = Store::open(Path::new(".").join(name)).unwrap();
        assert!(store.root().is_absolute(), "{}", store.root().display());
        assert_eq!(store.root(), dir.path().canonicalize().unwrap());
        assert!(store.blob_path(&Digest::of_bytes(b"")).is_absolute());
    }

    #[test]
    fn blob_roundtrip_and_corruption_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.writer().unwrap();
        w.write_all(b"hello").unwrap();
        let (d, n) = w.commit().unwrap();
        assert_eq!(n, 5);
        assert_eq!(d, Digest::of_bytes(b"hello"));
        assert!(store.verify(&d).unwrap());
        let mut s = String::new();
        store
            .open_verified(&d)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello");
        // corrupt it: the verified reader fails and the blob is removed
        fs::write(store.blob_path(&d), b"hellx").unwrap();
        let mut s = String::new();
        assert!(
            store
                .open_verified(&d)
                .unwrap()
                .read_to_string(&mut s)
                .is_err()
        );
        assert!(!store.has_blob(&d));
        // temp dir is empty: nothing half-written remains
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn put_verified_refuses_wrong_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let want = Digest::of_bytes(b"good");
        let err = store
            .put_verified(&b"evil"[..], &want, None, "x.deb")
            .unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(!store.has_blob(&want));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(
            store
                .put_verified(&b"good"[..], &want, Some(4), "x.deb")
                .unwrap(),
            4
        );
        assert!(store.verify(&want).unwrap());
    }

    #[test]
    fn records_are_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.read_record(Bucket::Layers, "k").unwrap().is_none());
        store.write_record(Bucket::Layers, "k", b"1").unwrap();
        store.write_record(Bucket::Layers, "k", b"2").unwrap();
        assert_eq!(
            store.read_record(Bucket::Layers, "k").unwrap().unwrap(),
            b"2"
        );
        assert_eq!(
            store.list_entries(Bucket::Layers).unwrap(),
            vec!["k".to_owned()]
        );
        assert!(dir.path().join("records/layers-v2/k").is_file());
    }

    #[test]
    fn temp_files_of_dead_owners_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // a live owner: another "process" holding its lock
        let live = dir.path().join("owners/111x1x0.alive");
        let held = File::create(&live).unwrap();
        held.lock().unwrap();
        fs::write(dir.path().join("tmp/111x1x0-0"), b"in progress").unwrap();
        // a dead owner: its lock file is there but nobody holds it
        fs::write(dir.path().join("owners/222x2x0.alive"), b"").unwrap();
        fs::write(dir.path().join("tmp/222x2x0-0"), b"left behind").unwrap();
        fs::create_dir(dir.path().join("tmp/222x2x0-1")).unwrap();
        fs::write(dir.path().join("tmp/222x2x0-1/spool"), b"x").unwrap();
        // this process's own temp file
        let (mine, _f) = store.temp_file().unwrap();

        let removed = store.clean_tmp(Duration::from_secs(86400)).unwrap();
        assert_eq!(removed, 2);
        assert!(dir.path().join("tmp/111x1x0-0").exists());
        assert!(live.exists());
        assert!(mine.exists());
        assert!(!dir.path().join("tmp/222x2x0-0").exists());
        assert!(!dir.path().join("tmp/222x2x0-1").exists());
        assert!(!dir.path().join("owners/222x2x0.alive").exists());

        // once the live owner's lock is released (its process died), it goes too
        drop(held);
        assert_eq!(store.clean_tmp(Duration::from_secs(86400)).unwrap(), 1);
        assert!(!dir.path().join("tmp/111x1x0-0").exists());
        assert!(mine.exists());
    }
}
