//! The store's layout: every kind of entry it keeps besides blobs, as one typed list.
//!
//! A [`Bucket`] is a directory of entries of one kind and one format version
//! (`records/layers-v2/`), as uv's `CacheBucket`: code names the bucket, never a path
//! or a string, so the list below is the whole store layout, and `imgbuild gc` walks it
//! all. When the format of a bucket's entries changes, its version goes up: the new
//! name starts empty, the old directory is left to `gc`, which removes directories
//! of buckets this version does not know ([`Store::stale_buckets`]).
//!
//! Two kinds of bucket:
//! - [`BucketKind::Records`]: small files (JSON or a binary encoding), one per key,
//!   under `records/`, replaced atomically by [`Store::write_record`];
//! - [`BucketKind::Directories`]: one directory per key under `unpacked/`, made in
//!   `tmp/` and renamed into place whole by [`Store::commit_dir`], never changed after.
//!
//! Keys are file names chosen by the bucket's owner (mostly a digest's hex).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::{Result, Store, io_err, sync_dir};

/// One kind of entry of the store. The on-disk name carries the format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bucket {
    /// Layer fingerprint (hex) -> the finished layer (`LayerRecord` of the binary).
    /// Bump its version when the meaning of any fingerprint input, or the record's
    /// format, changes.
    Layers,
    /// `<project key>-<image name>` -> the last build of that image (`ImageRecord`).
    Images,
    /// Pinned manifest digest of a registry base (hex) -> the manifest pulled for it.
    Bases,
    /// Manifest digest of a registry base (hex) -> what upper layers need of its
    /// filesystem (directories, symlinks, accounts).
    BaseContents,
    /// Project key -> the stat cache of the project's source files.
    StatCache,
    /// `.deb` sha256 (hex) -> its entry list and the spool blob of its `data.tar`.
    DebianUnpack,
    /// Hash of target + requirement -> the wheel chosen for it.
    PythonSelect,
    /// Hash of sdist sha256 + builder image + build requirements + target -> the wheel
    /// built from that sdist (the same record format as [`Bucket::PythonSelect`]).
    PythonBuilt,
    /// Hash of a git commit + archive prefix -> its tree archived (`filename`, blob
    /// `digest`, `tree` id).
    GitArchives,
    /// Wheel sha256 (hex) -> the wheel unpacked (`manifest.json`, `files/`).
    PythonWheels,
    /// Hash of sources + interpreter -> their `.pyc` files (`manifest.json`, `files/`).
    PythonBytecode,
    /// Hash of an `out/NAME.tar` path -> the digest and stat of the tarball written
    /// there (what proves it intact without reading it).
    Tarballs,
    /// Manifest digest of a build step's builder image (hex) -> its filesystem
    /// unpacked (whiteouts applied, modes kept), the read-only root of its sandboxes.
    BuildRoots,
    /// Hash of an image's SBOM and provenance inputs (hex) -> the documents' blobs;
    /// `image-<project key>-<image name>` -> those of the image's last build.
    Attestations,
}

/// How a bucket keeps its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketKind {
    /// One small file per key under `records/`.
    Records,
    /// One directory per key under `unpacked/`.
    Directories,
}

/// The parent directory of each kind of bucket, under the store root.
const RECORDS: &str = "records";
const DIRECTORIES: &str = "unpacked";

impl Bucket {
    /// Every bucket, in the order `gc` reports them.
    pub const ALL: [Bucket; 14] = [
        Bucket::Images,
        Bucket::Layers,
        Bucket::Bases,
        Bucket::BaseContents,
        Bucket::StatCache,
        Bucket::DebianUnpack,
        Bucket::PythonSelect,
        Bucket::PythonBuilt,
        Bucket::GitArchives,
        Bucket::PythonWheels,
        Bucket::PythonBytecode,
        Bucket::Tarballs,
        Bucket::BuildRoots,
        Bucket::Attestations,
    ];

    /// The directory name: the kind of entry and its format version. These names are
    /// on disk in existing stores: change one only with its format (a new version).
    pub const fn name(self) -> &'static str {
        match self {
            Bucket::Layers => "layers-v2",
            Bucket::Images => "images-v2",
            Bucket::Bases => "bases-v1",
            Bucket::BaseContents => "base-contents-v1",
            Bucket::StatCache => "statcache-v3",
            Bucket::DebianUnpack => "debian-unpack-v1",
            Bucket::PythonSelect => "pywheel-select-v1",
            Bucket::PythonBuilt => "pywheel-built-v1",
            Bucket::GitArchives => "git-archives-v1",
            Bucket::PythonWheels => "wheels-v1",
            Bucket::PythonBytecode => "pyc-v2",
            Bucket::Tarballs => "tarballs-v1",
            Bucket::BuildRoots => "build-roots-v1",
            Bucket::Attestations => "attestations-v1",
        }
    }

    pub const fn kind(self) -> BucketKind {
        match self {
            Bucket::PythonWheels | Bucket::PythonBytecode | Bucket::BuildRoots => {
                BucketKind::Directories
            }
            _ => BucketKind::Records,
        }
    }

    /// The format version (the number after the name's last `-v`).
    pub fn version(self) -> u32 {
        self.name()
            .rsplit_once("-v")
            .and_then(|(_, v)| v.parse().ok())
            .expect("every bucket name ends in -v<N>")
    }

    /// The bucket's directory relative to the store root (`records/layers-v2`).
    pub fn relative_dir(self) -> PathBuf {
        let parent = match self.kind() {
            BucketKind::Records => RECORDS,
            BucketKind::Directories => DIRECTORIES,
        };
        Path::new(parent).join(self.name())
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Store {
    /// The directory of a bucket (whether or not it exists yet).
    pub fn bucket_dir(&self, bucket: Bucket) -> PathBuf {
        self.root().join(bucket.relative_dir())
    }

    /// Where the entry `key` of a bucket lives: a file for a record bucket, a
    /// directory for a directory bucket (whether or not it exists).
    pub fn entry_path(&self, bucket: Bucket, key: &str) -> PathBuf {
        debug_assert!(
            !key.is_empty() && !key.contains('/') && key != "." && key != "..",
            "bucket key `{key}` must be one file name"
        );
        self.bucket_dir(bucket).join(key)
    }

    /// The keys of a bucket's entries, sorted.
    pub fn list_entries(&self, bucket: Bucket) -> Result<Vec<String>> {
        list_names(&self.bucket_dir(bucket))
    }

    /// Removes an entry (a record or a whole directory) if present.
    pub fn remove_entry(&self, bucket: Bucket, key: &str) -> Result<()> {
        remove_path(&self.entry_path(bucket, key))
    }

    /// When the entry was last written or used (its mtime; owners that read an
    /// entry without writing it move this forward with [`Store::touch_entry`]).
    pub fn entry_last_used(&self, bucket: Bucket, key: &str) -> Option<SystemTime> {
        fs::metadata(self.entry_path(bucket, key))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Marks an entry as used now (what `gc --keep-days` reads); a failure is
    /// ignored, as the worst outcome is that gc removes the entry and it is remade.
    pub fn touch_entry(&self, bucket: Bucket, key: &str) {
        let p = self.entry_path(bucket, key);
        let now = SystemTime::now();
        let _ = match bucket.kind() {
            BucketKind::Records => fs::File::options()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_modified(now)),
            BucketKind::Directories => fs::File::open(&p).and_then(|f| f.set_modified(now)),
        };
    }

    /// Bytes an entry takes (a directory's files summed; not following symlinks).
    pub fn entry_bytes(&self, bucket: Bucket, key: &str) -> u64 {
        disk_bytes(&self.entry_path(bucket, key))
    }

    /// Moves a finished directory (made with [`Store::temp_dir`]) into place as the
    /// entry `key` of a directory bucket, in one rename, so no one sees a half-made
    /// entry. If another process put the same entry in place first, theirs is kept
    /// (it has the same content: entries are named by what they are made from) and
    /// `tmp` is removed. On error `tmp` is removed too.
    pub fn commit_dir(&self, bucket: Bucket, key: &str, tmp: &Path) -> Result<PathBuf> {
        debug_assert_eq!(bucket.kind(), BucketKind::Directories, "{bucket}");
        let dir = self.bucket_dir(bucket);
        let dest = self.entry_path(bucket, key);
        let r = fs::create_dir_all(&dir)
            .map_err(io_err("failed to create directory", &dir))
            .and_then(|()| match fs::rename(tmp, &dest) {
                Ok(()) => sync_dir(&dir),
                Err(_) if dest.is_dir() => {
                    let _ = fs::remove_dir_all(tmp);
                    Ok(())
                }
                Err(e) => Err(io_err("failed to move into place", &dest)(e)),
            });
        if r.is_err() {
            let _ = fs::remove_dir_all(tmp);
        }
        r.map(|()| dest)
    }

    /// Directories under `records/` and `unpacked/` that no [`Bucket`] names: buckets
    /// of other format versions (or kinds this version no longer has). Nothing reads
    /// them; `gc` removes them.
    pub fn stale_buckets(&self) -> Result<Vec<PathBuf>> {
        let mut out = vec![];
        for parent in [RECORDS, DIRECTORIES] {
            let dir = self.root().join(parent);
            for name in list_names(&dir)? {
                let known = Bucket::ALL
                    .iter()
                    .any(|b| b.relative_dir() == Path::new(parent).join(&name));
                if !known {
                    out.push(dir.join(name));
                }
            }
        }
        Ok(out)
    }
}

/// Names in a directory, sorted; none if it does not exist.
pub(crate) fn list_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err("failed to list", dir)(e)),
    };
    let mut out = vec![];
    for e in rd {
        let e = e.map_err(io_err("failed to list", dir))?;
        if let Some(n) = e.file_name().to_str() {
            out.push(n.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Removes a file or a directory tree; absent is fine.
pub fn remove_path(p: &Path) -> Result<()> {
    let r = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("failed to remove", p)(e)),
    }
}

/// Bytes of a file, or of every file under a directory (symlinks not followed).
pub fn disk_bytes(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| disk_bytes(&e.path())).sum())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_versioned() {
        let mut dirs: Vec<PathBuf> = Bucket::ALL.iter().map(|b| b.relative_dir()).collect();
        dirs.sort();
        dirs.dedup();
        assert_eq!(
            dirs.len(),
            Bucket::ALL.len(),
            "two buckets share a directory"
        );
        for b in Bucket::ALL {
            assert!(b.version() >= 1, "{b}");
        }
        // the names existing stores have on disk
        assert_eq!(
            Bucket::Layers.relative_dir(),
            Path::new("records/layers-v2")
        );
        assert_eq!(
            Bucket::PythonWheels.relative_dir(),
            Path::new("unpacked/wheels-v1")
        );
        assert_eq!(Bucket::StatCache.version(), 3);
    }

    #[test]
    fn directory_entries_commit_whole_and_first_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.temp_dir().unwrap();
        fs::write(a.join("manifest.json"), b"a").unwrap();
        let dest = store.commit_dir(Bucket::PythonWheels, "k", &a).unwrap();
        assert_eq!(fs::read(dest.join("manifest.json")).unwrap(), b"a");
        // a second process finishing the same entry later: the first is kept
        let b = store.temp_dir().unwrap();
        fs::write(b.join("manifest.json"), b"b").unwrap();
        store.commit_dir(Bucket::PythonWheels, "k", &b).unwrap();
        assert_eq!(fs::read(dest.join("manifest.json")).unwrap(), b"a");
        assert!(!b.exists());
        assert_eq!(store.list_entries(Bucket::PythonWheels).unwrap(), ["k"]);
        assert_eq!(store.entry_bytes(Bucket::PythonWheels, "k"), 1);
        store.remove_entry(Bucket::PythonWheels, "k").unwrap();
        assert!(store.list_entries(Bucket::PythonWheels).unwrap().is_empty());
    }

    #[test]
    fn stale_buckets_are_the_unknown_directories() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.write_record(Bucket::Layers, "k", b"{}").unwrap();
        fs::create_dir_all(dir.path().join("records/layers-v0")).unwrap();
        fs::create_dir_all(dir.path().join("unpacked/pyc-v1")).unwrap();
        fs::create_dir_all(dir.path().join("unpacked/wheels-v1")).unwrap();
        assert_eq!(
            store.stale_buckets().unwrap(),
            [
                dir.path().join("records/layers-v0"),
                dir.path().join("unpacked/pyc-v1")
            ]
        );
    }
}
