//! The `files` layer source: files and directory trees from the project.
//!
//! Walks each `src` without following symlinks, in sorted order, and records what
//! the layer needs: normalised modes (exec and setuid/setgid/sticky bits kept; the
//! umask's effect on group/other write bits dropped), symlink targets, hardlinks
//! within the layer, and the sha256 of every regular file.
//!
//! Hashes come through a stat cache so that an unchanged tree is not reread: an
//! entry is trusted only if size, mtime, ctime, inode and device all match *and*
//! the file's mtime is older than the moment the entry was recorded by more than
//! the timestamp granularity. A file written in the same tick as the recording
//! ("racy" in git's terms) is rehashed every time until it ages.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use imgbuild_store::{Digest, Store, digest_reader};
use serde::{Deserialize, Serialize};

/// What the walk found at one path of a source tree.
#[derive(Clone, Debug)]
pub enum WalkedKind {
    Dir,
    File {
        host: PathBuf,
        size: u64,
        sha256: Digest,
        link_key: Option<(u64, u64)>,
    },
    Symlink {
        target: String,
    },
}

#[derive(Clone, Debug)]
pub struct Walked {
    /// Path relative to the walked source root ("" for the root itself).
    pub rel: String,
    pub kind: WalkedKind,
    /// Normalised permission bits (see module docs).
    pub mode: u32,
}

/// Normalises host permission bits so the umask never leaks in: anything
/// executable becomes 0755, anything else 0644, directories 0755; setuid,
/// setgid and sticky are kept because they are meaningful.
pub fn normalise_mode(host_mode: u32, is_dir: bool) -> u32 {
    let special = host_mode & 0o7000;
    let base = if is_dir || host_mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    special | base
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct StatKey {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl StatKey {
    fn of(m: &fs::Metadata) -> StatKey {
        StatKey {
            size: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StatEntry {
    key: StatKey,
    sha256: Digest,
    /// When the hash was taken (ns since the epoch).
    recorded_ns: i128,
}

/// The stat cache of one project: absolute host path -> (stat data, hash).
/// Shared by the images a build fingerprints in parallel: the lock is held only
/// to look up and record entries, never while a file is hashed.
#[derive(Default)]
pub struct StatCache {
    inner: std::sync::Mutex<StatEntries>,
}

#[derive(Default, Serialize, Deserialize)]
struct StatEntries {
    entries: BTreeMap<String, StatEntry>,
    #[serde(skip)]
    dirty: bool,
    #[serde(skip)]
    used: std::collections::BTreeSet<String>,
}

/// Timestamps on common filesystems are at worst this coarse; a file whose mtime
/// is this close to the recording time may still change without changing mtime.
const RACY_WINDOW_NS: i128 = 2_000_000_000;
const STAT_BUCKET: &str = "statcache-v1";

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

impl StatCache {
    pub fn load(store: &Store, project_key: &str) -> StatCache {
        let entries = store
            .read_record(STAT_BUCKET, project_key)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        StatCache {
            inner: std::sync::Mutex::new(entries),
        }
    }

    /// Saves the cache if anything changed. `prune` (a build of every recipe)
    /// drops the entries this run did not use: files no recipe reads any more. A
    /// build of some recipes keeps the others' entries.
    pub fn save(&self, store: &Store, project_key: &str, prune: bool) -> Result<()> {
        let mut c = self.inner.lock().expect("stat cache");
        let stale = prune && c.used.len() != c.entries.len();
        if !c.dirty && !stale {
            return Ok(());
        }
        if prune {
            let used = std::mem::take(&mut c.used);
            c.entries.retain(|k, _| used.contains(k));
        }
        store.write_record(STAT_BUCKET, project_key, &serde_json::to_vec(&*c)?)?;
        c.dirty = false;
        Ok(())
    }

    /// The sha256 of a file, from the cache when it can be trusted.
    pub fn hash(&self, path: &Path, meta: &fs::Metadata) -> Result<Digest> {
        let key = StatKey::of(meta);
        let name = path.to_string_lossy().into_owned();
        {
            let mut c = self.inner.lock().expect("stat cache");
            c.used.insert(name.clone());
            if let Some(e) = c.entries.get(&name)
                && e.key == key
                && key.mtime_ns < e.recorded_ns - RACY_WINDOW_NS
            {
                return Ok(e.sha256.clone());
            }
        }
        let recorded_ns = now_ns();
        let f = File::open(path).with_context(|| format!("failed to read `{}`", path.display()))?;
        let (sha256, size) = digest_reader(std::io::BufReader::with_capacity(256 * 1024, f))
            .with_context(|| format!("failed to read `{}`", path.display()))?;
        if size != key.size {
            anyhow::bail!(
                "`{}` changed while it was being read; run the build again",
                path.display()
            );
        }
        let mut c = self.inner.lock().expect("stat cache");
        c.entries.insert(
            name,
            StatEntry {
                key,
                sha256: sha256.clone(),
                recorded_ns,
            },
        );
        c.dirty = true;
        Ok(sha256)
    }
}

/// Walks a file or directory source. For a directory, the root itself comes
/// first with `rel == ""`; entries follow in sorted byte order of their paths.
pub fn walk(src: &Path, cache: &StatCache) -> Result<Vec<Walked>> {
    let meta =
        fs::symlink_metadata(src).with_context(|| format!("failed to stat `{}`", src.display()))?;
    let mut out = vec![];
    visit(src, String::new(), &meta, cache, &mut out)?;
    Ok(out)
}

fn visit(
    path: &Path,
    rel: String,
    meta: &fs::Metadata,
    cache: &StatCache,
    out: &mut Vec<Walked>,
) -> Result<()> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(path)
            .with_context(|| format!("failed to read link `{}`", path.display()))?;
        let target = target
            .to_str()
            .with_context(|| format!("symlink `{}` has a non-UTF-8 target", path.display()))?
            .to_owned();
        out.push(Walked {
            rel,
            kind: WalkedKind::Symlink { target },
            mode: 0o777,
        });
    } else if ft.is_dir() {
        out.push(Walked {
            rel: rel.clone(),
            kind: WalkedKind::Dir,
            mode: normalise_mode(meta.mode(), true),
        });
        // DirEntry::metadata stats relative to the open directory (fstatat), not
        // by resolving the full path again, and does not follow symlinks.
        let mut children: Vec<(String, PathBuf, fs::Metadata)> = vec![];
        for e in
            fs::read_dir(path).with_context(|| format!("failed to list `{}`", path.display()))?
        {
            let e = e.with_context(|| format!("failed to list `{}`", path.display()))?;
            let name = e.file_name();
            let name = name
                .to_str()
                .with_context(|| format!("`{}` has a non-UTF-8 name", e.path().display()))?
                .to_owned();
            let m = e
                .metadata()
                .with_context(|| format!("failed to stat `{}`", e.path().display()))?;
            children.push((name, e.path(), m));
        }
        // Sorted by the bytes of the full relative path, which for siblings is the
        // byte order of their names: independent of the filesystem's read order.
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, child, m) in children {
            let crel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            visit(&child, crel, &m, cache, out)?;
        }
    } else if ft.is_file() {
        let sha256 = cache.hash(path, meta)?;
        let link_key = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
        out.push(Walked {
            rel,
            kind: WalkedKind::File {
                host: path.to_path_buf(),
                size: meta.len(),
                sha256,
                link_key,
            },
            mode: normalise_mode(meta.mode(), false),
        });
    } else {
        anyhow::bail!(
            "`{}` is a device, socket or FIFO; only files, directories and symlinks can go into a layer",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_drop_umask_effects_but_keep_special_bits() {
        assert_eq!(normalise_mode(0o100664, false), 0o644);
        assert_eq!(normalise_mode(0o100700, false), 0o755);
        assert_eq!(normalise_mode(0o104750, false), 0o4755);
        assert_eq!(normalise_mode(0o41777, true), 0o1755);
        assert_eq!(normalise_mode(0o40700, true), 0o755);
    }

    #[test]
    fn stat_cache_rehashes_racy_and_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"one").unwrap();
        let c = StatCache::default();
        let m = fs::symlink_metadata(&f).unwrap();
        assert_eq!(c.hash(&f, &m).unwrap(), Digest::of_bytes(b"one"));
        // same size, same second: a racy entry is never trusted
        fs::write(&f, b"two").unwrap();
        let m = fs::symlink_metadata(&f).unwrap();
        assert_eq!(c.hash(&f, &m).unwrap(), Digest::of_bytes(b"two"));
    }
}
