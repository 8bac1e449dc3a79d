//! Walking project sources for the `files` layer source: files and directory trees.
//!
//! Walks each `src` without following symlinks, in sorted order, and records what
//! the layer needs: normalised modes (exec and setuid/setgid/sticky bits kept; the
//! umask's effect on group/other write bits dropped), symlink targets, hardlinks
//! within the layer, and the content hash ([`FileHash`]) of every regular file.
//!
//! Hashes come through a stat cache so that an unchanged tree is not reread: an
//! entry is trusted only if size, mtime, ctime, inode and device all match *and*
//! the file's mtime is older than the moment the entry was recorded by more than
//! the timestamp granularity. A file written in the same tick as the recording
//! ("racy" in git's terms) is rehashed every time until it ages.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use imgbuild_layer::FileHash;
use imgbuild_store::{Bucket, Store};

/// What the walk found at one path of a source tree.
#[derive(Clone, Debug)]
pub enum WalkedKind {
    Dir,
    File {
        host: PathBuf,
        size: u64,
        hash: FileHash,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

#[derive(Clone, Debug)]
struct StatEntry {
    key: StatKey,
    hash: FileHash,
    /// When the hash was taken (ns since the epoch).
    recorded_ns: i128,
    /// Looked up by this run (entries no run uses are dropped by a full build).
    used: bool,
}

/// The stat cache of one project: absolute host path -> (stat data, hash).
/// Shared by the images a build fingerprints in parallel: the lock is held only
/// to look up and record entries, never while a file is hashed.
#[derive(Default)]
pub struct StatCache {
    inner: std::sync::Mutex<StatEntries>,
    /// Threads that hash files a walk found changed (0 or 1: the walking thread).
    threads: usize,
}

#[derive(Default)]
struct StatEntries {
    entries: HashMap<String, StatEntry>,
    dirty: bool,
}

impl StatEntries {
    /// The record: one line per entry, `size mtime_ns ctime_ns ino dev recorded_ns
    /// blake3-hex path`, sorted by path. A line format rather than JSON because a
    /// no-op build of a 10,000-file tree reads it every time (JSON took 15% of it).
    fn encode(&self) -> Vec<u8> {
        let mut paths: Vec<&String> = self.entries.keys().collect();
        paths.sort();
        let mut out = Vec::with_capacity(self.entries.len() * 160);
        out.extend_from_slice(STAT_HEADER.as_bytes());
        for p in paths {
            let e = &self.entries[p];
            let k = &e.key;
            out.extend_from_slice(
                format!(
                    "{} {} {} {} {} {} {} {p}\n",
                    k.size,
                    k.mtime_ns,
                    k.ctime_ns,
                    k.ino,
                    k.dev,
                    e.recorded_ns,
                    e.hash.hex()
                )
                .as_bytes(),
            );
        }
        out
    }

    /// Reads [`StatEntries::encode`]'s format; anything else (another version, a
    /// damaged record) is an empty cache: every file is hashed again.
    fn decode(bytes: &[u8]) -> StatEntries {
        let parse = || -> Option<HashMap<String, StatEntry>> {
            let text = std::str::from_utf8(bytes).ok()?;
            let body = text.strip_prefix(STAT_HEADER)?;
            let mut entries = HashMap::with_capacity(body.len() / 160 + 1);
            for line in body.lines() {
                let mut f = line.splitn(8, ' ');
                let mut num = || f.next().and_then(|x| x.parse::<i128>().ok());
                let (size, mtime_ns, ctime_ns, ino, dev, recorded_ns) =
                    (num()?, num()?, num()?, num()?, num()?, num()?);
                let hash = FileHash::from_hex(f.next()?)?;
                let path = f.next()?;
                entries.insert(
                    path.to_owned(),
                    StatEntry {
                        key: StatKey {
                            size: size.try_into().ok()?,
                            mtime_ns,
                            ctime_ns,
                            ino: ino.try_into().ok()?,
                            dev: dev.try_into().ok()?,
                        },
                        hash,
                        recorded_ns,
                        used: false,
                    },
                );
            }
            Some(entries)
        };
        StatEntries {
            entries: parse().unwrap_or_default(),
            dirty: false,
        }
    }
}

/// Timestamps on common filesystems are at worst this coarse; a file whose mtime
/// is this close to the recording time may still change without changing mtime.
const RACY_WINDOW_NS: i128 = 2_000_000_000;
const STAT_HEADER: &str = "imgbuild-statcache-v3\n";

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

impl StatCache {
    /// The project's cache; files it must hash are hashed by `threads` threads.
    pub fn load(store: &Store, project_key: &str, threads: usize) -> StatCache {
        let entries = store
            .read_record(Bucket::StatCache, project_key)
            .ok()
            .flatten()
            .map(|b| StatEntries::decode(&b))
            .unwrap_or_default();
        StatCache {
            inner: std::sync::Mutex::new(entries),
            threads,
        }
    }

    /// Saves the cache if anything changed. `prune` (a build of every recipe)
    /// drops the entries this run did not use: files no recipe reads any more. A
    /// build of some recipes keeps the others' entries.
    pub fn save(&self, store: &Store, project_key: &str, prune: bool) -> Result<()> {
        let mut c = self.inner.lock().expect("stat cache");
        let stale = prune && c.entries.values().any(|e| !e.used);
        if !c.dirty && !stale {
            return Ok(());
        }
        if prune {
            c.entries.retain(|_, e| e.used);
        }
        store.write_record(Bucket::StatCache, project_key, &c.encode())?;
        c.dirty = false;
        Ok(())
    }

    /// The content hash of a file, from the cache when it can be trusted.
    pub fn hash(&self, path: &Path, meta: &fs::Metadata) -> Result<FileHash> {
        let key = StatKey::of(meta);
        let name = path.to_string_lossy();
        {
            let mut c = self.inner.lock().expect("stat cache");
            if let Some(e) = c.entries.get_mut(name.as_ref()) {
                e.used = true;
                if e.key == key && key.mtime_ns < e.recorded_ns - RACY_WINDOW_NS {
                    return Ok(e.hash);
                }
            }
        }
        let recorded_ns = now_ns();
        let f = File::open(path).with_context(|| format!("failed to read `{}`", path.display()))?;
        let (hash, size) = FileHash::of_reader(f, key.size)
            .with_context(|| format!("failed to read `{}`", path.display()))?;
        if size != key.size {
            anyhow::bail!(
                "`{}` changed while it was being read; run the build again",
                path.display()
            );
        }
        // a path with a line break cannot be a line of the record: never cached
        if !name.contains('\n') {
            let mut c = self.inner.lock().expect("stat cache");
            c.entries.insert(
                name.into_owned(),
                StatEntry {
                    key,
                    hash,
                    recorded_ns,
                    used: true,
                },
            );
            c.dirty = true;
        }
        Ok(hash)
    }
}

/// Walks a file or directory source. For a directory, the root itself comes
/// first with `rel == ""`; entries follow in sorted byte order of their paths.
pub fn walk(src: &Path, cache: &StatCache) -> Result<Vec<Walked>> {
    let meta =
        fs::symlink_metadata(src).with_context(|| format!("failed to stat `{}`", src.display()))?;
    // The syscalls (readdir, a stat per entry, readlink) run on the cache's threads,
    // directory by directory; the walk itself then runs over what they found.
    let listings = if meta.is_dir() {
        list_tree(src, cache.threads.max(1))?
    } else {
        HashMap::new()
    };
    let mut out = vec![];
    let mut files = vec![];
    let link = if meta.file_type().is_symlink() {
        Some(read_link(src)?)
    } else {
        None
    };
    visit(
        src,
        String::new(),
        &meta,
        link,
        &listings,
        &mut out,
        &mut files,
    )?;
    // Hash the regular files (stat-cache hits cost a lookup; misses read the file),
    // spread over the cache's threads: a cold build of a large tree is bound by it.
    let threads = cache.threads.clamp(1, files.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let hashed: Vec<Result<Vec<(usize, FileHash)>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<Vec<(usize, FileHash)>> {
                    let mut done = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((at, path, meta)) = files.get(i) else {
                            return Ok(done);
                        };
                        done.push((*at, cache.hash(path, meta)?));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("hashing thread panicked"))
            .collect()
    });
    for part in hashed {
        for (at, digest) in part? {
            if let WalkedKind::File { hash, .. } = &mut out[at].kind {
                *hash = digest;
            }
        }
    }
    Ok(out)
}

/// A regular file found by the walk: its index in the output, path and metadata.
type ToHash = (usize, PathBuf, fs::Metadata);

/// One entry of a listed directory, with its metadata (and link target).
struct Child {
    name: String,
    path: PathBuf,
    meta: fs::Metadata,
    link: Option<String>,
}

/// Lists every directory under `root` (not following symlinks) on `threads`
/// threads: directory path -> its entries, sorted by name bytes.
fn list_tree(root: &Path, threads: usize) -> Result<HashMap<PathBuf, Vec<Child>>> {
    use std::sync::{Condvar, Mutex};
    struct Work {
        queue: Vec<PathBuf>,
        busy: usize,
        error: Option<anyhow::Error>,
        done: HashMap<PathBuf, Vec<Child>>,
    }
    let work = Mutex::new(Work {
        queue: vec![root.to_path_buf()],
        busy: 0,
        error: None,
        done: HashMap::new(),
    });
    let wake = Condvar::new();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut w = work.lock().expect("walk");
                loop {
                    if w.error.is_some() {
                        break;
                    }
                    let Some(dir) = w.queue.pop() else {
                        if w.busy == 0 {
                            break;
                        }
                        w = wake.wait(w).expect("walk");
                        continue;
                    };
                    w.busy += 1;
                    drop(w);
                    let listed = list_dir(&dir);
                    w = work.lock().expect("walk");
                    w.busy -= 1;
                    match listed {
                        Ok(children) => {
                            for c in &children {
                                if c.meta.is_dir() {
                                    w.queue.push(c.path.clone());
                                }
                            }
                            w.done.insert(dir, children);
                        }
                        Err(e) => {
                            w.error.get_or_insert(e);
                        }
                    }
                    wake.notify_all();
                }
                drop(w);
                wake.notify_all();
            });
        }
    });
    let w = work.into_inner().expect("walk");
    match w.error {
        Some(e) => Err(e),
        None => Ok(w.done),
    }
}

fn list_dir(path: &Path) -> Result<Vec<Child>> {
    // DirEntry::metadata stats relative to the open directory (fstatat), not by
    // resolving the full path again, and does not follow symlinks.
    let mut children = vec![];
    for e in fs::read_dir(path).with_context(|| format!("failed to list `{}`", path.display()))? {
        let e = e.with_context(|| format!("failed to list `{}`", path.display()))?;
        let name = e.file_name();
        let name = name
            .to_str()
            .with_context(|| format!("`{}` has a non-UTF-8 name", e.path().display()))?
            .to_owned();
        let meta = e
            .metadata()
            .with_context(|| format!("failed to stat `{}`", e.path().display()))?;
        let path = e.path();
        let link = if meta.file_type().is_symlink() {
            Some(read_link(&path)?)
        } else {
            None
        };
        children.push(Child {
            name,
            path,
            meta,
            link,
        });
    }
    // Sorted by the bytes of the full relative path, which for siblings is the byte
    // order of their names: independent of the filesystem's read order.
    children.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(children)
}

fn read_link(path: &Path) -> Result<String> {
    let target =
        fs::read_link(path).with_context(|| format!("failed to read link `{}`", path.display()))?;
    Ok(target
        .to_str()
        .with_context(|| format!("symlink `{}` has a non-UTF-8 target", path.display()))?
        .to_owned())
}

fn visit(
    path: &Path,
    rel: String,
    meta: &fs::Metadata,
    link: Option<String>,
    listings: &HashMap<PathBuf, Vec<Child>>,
    out: &mut Vec<Walked>,
    files: &mut Vec<ToHash>,
) -> Result<()> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        out.push(Walked {
            rel,
            kind: WalkedKind::Symlink {
                target: link.expect("symlinks are read when listed"),
            },
            mode: 0o777,
        });
    } else if ft.is_dir() {
        out.push(Walked {
            rel: rel.clone(),
            kind: WalkedKind::Dir,
            mode: normalise_mode(meta.mode(), true),
        });
        let children = listings
            .get(path)
            .with_context(|| format!("`{}` was not listed", path.display()))?;
        for c in children {
            let crel = if rel.is_empty() {
                c.name.clone()
            } else {
                format!("{rel}/{}", c.name)
            };
            visit(&c.path, crel, &c.meta, c.link.clone(), listings, out, files)?;
        }
    } else if ft.is_file() {
        let link_key = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
        files.push((out.len(), path.to_path_buf(), meta.clone()));
        out.push(Walked {
            rel,
            kind: WalkedKind::File {
                host: path.to_path_buf(),
                size: meta.len(),
                // filled in by `walk` once every file is hashed
                hash: FileHash::of_bytes(b""),
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
        assert_eq!(c.hash(&f, &m).unwrap(), FileHash::of_bytes(b"one"));
        // same size, same second: a racy entry is never trusted
        fs::write(&f, b"two").unwrap();
        let m = fs::symlink_metadata(&f).unwrap();
        assert_eq!(c.hash(&f, &m).unwrap(), FileHash::of_bytes(b"two"));
    }
}
