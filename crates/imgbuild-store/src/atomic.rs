//! Atomic file writes, and the one way temp files are named and cleaned up.
//!
//! Every file imgbuild writes outside the store's blobs (store records, `out/`, the
//! lockfile, `deploy/.env`, `~/.docker/config.json`) goes through [`AtomicFile`]: a
//! temp file in the destination's directory (so the rename is atomic), written,
//! fsynced, renamed over the destination, and the directory fsynced. Readers see the
//! old file or the new one, never half of one, also after a crash.
//!
//! Temp files are owned ([`TempOwner`]): each name carries an owner, and the owner's
//! `.alive` file is locked (flock) by the owning process for as long as it writes.
//! The kernel drops the lock when the process dies, however it dies, so a cleaner
//! that can take the lock knows the owner is gone and removes its temp files
//! ([`remove_stale_temps`]). Unlike a PID check, this also holds for processes in
//! other PID namespaces (containers sharing a directory) and for reused PIDs.
//!
//! Names, in a directory `D` with a destination `D/NAME`:
//! ```text
//! D/.<owner>.alive             the owner's lock, there while it writes
//! D/.NAME.<owner>-<n>.tmp      a temp file for NAME
//! ```
//! The store keeps its temp files apart (`tmp/<owner>-<n>`, owners in `owners/`), with
//! the same owners and the same cleaner rules (see [`Store::clean_tmp`](crate::Store::clean_tmp)).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::{Result, io_err};

const ALIVE_SUFFIX: &str = ".alive";
const CLAIM_SUFFIX: &str = ".claim";
const TEMP_SUFFIX: &str = ".tmp";

/// Temp files older than this are removed even when their owner cannot be told
/// (left by versions without owners, or whose owner file is lost): no write of
/// imgbuild takes a day.
pub const STALE_AGE: Duration = Duration::from_secs(86400);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A claim on temp files: `<dir>/<prefix><name>.alive`, locked while this value lives
/// and removed when it is dropped. Every temp name starts with (or, beside a
/// destination, carries) the owner's name.
#[derive(Debug)]
pub struct TempOwner {
    name: String,
    alive: PathBuf,
    _lock: File,
}

impl Drop for TempOwner {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.alive);
    }
}

impl TempOwner {
    /// Claims a new owner with its lock file in `dir` (named `<prefix><owner>.alive`).
    /// The file is made under another name, locked, then renamed into place, so a
    /// cleaner never sees an unlocked `.alive` file of a live process.
    pub fn claim(dir: &Path, prefix: &str) -> Result<TempOwner> {
        let name = format!(
            "{}x{}x{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() % 1_000_000_000_000)
                .unwrap_or(0),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let claiming = dir.join(format!("{prefix}{name}{CLAIM_SUFFIX}"));
        let alive = dir.join(format!("{prefix}{name}{ALIVE_SUFFIX}"));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claiming)
            .map_err(io_err("failed to create temp owner file", &claiming))?;
        let claimed = f
            .lock()
            .map_err(io_err("failed to lock temp owner file", &claiming))
            .and_then(|()| {
                fs::rename(&claiming, &alive).map_err(io_err("failed to create", &alive))
            });
        if let Err(e) = claimed {
            let _ = fs::remove_file(&claiming);
            return Err(e);
        }
        Ok(TempOwner {
            name,
            alive,
            _lock: f,
        })
    }

    /// The owner's name (`<pid>x<time>x<n>`: no `.`, `-` or `/`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A fresh temp file named `<owner>-<n>` with `prefix` and `suffix`, in `dir`,
    /// created with `mode` (before the umask).
    pub fn create_temp(
        &self,
        dir: &Path,
        prefix: &str,
        suffix: &str,
        mode: u32,
    ) -> Result<(PathBuf, File)> {
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let p = dir.join(format!("{prefix}{}-{n}{suffix}", self.name));
            match OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .mode(mode)
                .open(&p)
            {
                Ok(f) => return Ok((p, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("failed to create temp file", &p)(e)),
            }
        }
    }
}

/// A file being written in place of `dest`: nothing is visible at `dest` until
/// [`AtomicFile::commit`]. Dropped without a commit, the temp file is removed.
pub struct AtomicFile {
    // Field order matters: the temp file goes (Drop) before its owner's lock.
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
    _owner: TempOwner,
}

impl AtomicFile {
    /// Starts writing `dest` through a temp file beside it, created with `mode`
    /// (before the umask: 0o600 for a file whose content must never be readable by
    /// others, not even briefly). Creates `dest`'s directory if needed.
    pub fn create(dest: &Path, mode: u32) -> Result<AtomicFile> {
        let dir = parent_dir(dest);
        fs::create_dir_all(dir).map_err(io_err("failed to create directory", dir))?;
        let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("out");
        let owner = TempOwner::claim(dir, ".")?;
        let (tmp, file) = owner.create_temp(dir, &format!(".{name}."), TEMP_SUFFIX, mode)?;
        Ok(AtomicFile {
            file: Some(file),
            tmp,
            dest: dest.to_path_buf(),
            _owner: owner,
        })
    }

    /// The temp file, to write to or to set permissions on.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("not committed")
    }

    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Fsyncs the file, renames it over the destination, fsyncs the directory.
    pub fn commit(self) -> Result<()> {
        self.commit_with(|tmp, dest| fs::rename(tmp, dest))
    }

    /// Like [`AtomicFile::commit`], with another way to put the synced temp file in
    /// place (`place(temp, dest)`; e.g. `link(2)`, which refuses to replace anything).
    /// The temp file is removed afterwards if it is still there.
    pub fn commit_with(mut self, place: impl FnOnce(&Path, &Path) -> io::Result<()>) -> Result<()> {
        let file = self.file.take().expect("not committed");
        file.sync_all()
            .map_err(io_err("failed to fsync", &self.tmp))?;
        drop(file);
        place(&self.tmp, &self.dest).map_err(io_err("failed to put in place", &self.dest))?;
        let _ = fs::remove_file(&self.tmp);
        crate::sync_dir(parent_dir(&self.dest))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() || self.tmp.exists() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `dest` atomically (see [`AtomicFile`]), the file created with `mode`.
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = AtomicFile::create(dest, mode)?;
    f.write_all(bytes)
        .map_err(io_err("failed to write", f.temp_path()))?;
    f.commit()
}

/// Puts a hard link to `src` at `dest`, replacing what is there in one rename (a
/// link beside `dest`, then renamed over it). `Ok(false)`: `src` cannot be linked
/// there (another filesystem, or links not allowed); nothing was changed.
pub fn link_atomic(src: &Path, dest: &Path) -> Result<bool> {
    let dir = parent_dir(dest);
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let owner = TempOwner::claim(dir, ".")?;
    let (tmp, f) = owner.create_temp(dir, &format!(".{name}."), TEMP_SUFFIX, 0o600)?;
    drop(f);
    // the name is reserved; link(2) needs it free
    fs::remove_file(&tmp).map_err(io_err("failed to remove", &tmp))?;
    if fs::hard_link(src, &tmp).is_err() {
        return Ok(false);
    }
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("failed to put in place", dest)(e));
    }
    crate::sync_dir(dir)?;
    Ok(true)
}

/// The owners in `dir` (lock files `<prefix><owner>.alive`) whose lock is free: their
/// process is gone. Their lock files are removed, and so are claims older than `age`
/// (a process killed while claiming). `mine` is never counted.
pub(crate) fn dead_owners(
    dir: &Path,
    prefix: &str,
    mine: Option<&str>,
    age: Duration,
) -> Vec<String> {
    let now = SystemTime::now();
    let mut dead = vec![];
    let Ok(listing) = fs::read_dir(dir) else {
        return dead;
    };
    for e in listing.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        if let Some(owner) = rest.strip_suffix(ALIVE_SUFFIX) {
            // only names of the form TempOwner::claim makes: a user's own hidden
            // `.something.alive` beside a destination is not ours to touch
            if Some(owner) == mine || !is_owner_name(owner) {
                continue;
            }
            let free = File::options()
                .write(true)
                .open(e.path())
                .is_ok_and(|f| f.try_lock().is_ok());
            if free {
                dead.push(owner.to_owned());
                let _ = fs::remove_file(e.path());
            }
        } else if rest.strip_suffix(CLAIM_SUFFIX).is_some_and(is_owner_name)
            && older_than(&e.path(), now, age)
        {
            let _ = fs::remove_file(e.path());
        }
    }
    dead
}

/// Whether `s` is an owner name as [`TempOwner::claim`] makes them (digits and `x`).
fn is_owner_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'x')
}

pub(crate) fn older_than(p: &Path, now: SystemTime, age: Duration) -> bool {
    fs::symlink_metadata(p)
        .and_then(|m| m.modified())
        .is_ok_and(|t| now.duration_since(t).unwrap_or_default() >= age)
}

/// Removes the temp files that killed processes left in `dir` (`.NAME.<owner>-<n>.tmp`):
/// those of every owner whose `.alive` lock is free, and any older than `age` (left
/// by versions without owners, or whose owner file is lost). Temp files of live
/// processes stay. Returns how many were removed.
pub fn remove_stale_temps(dir: &Path, age: Duration) -> usize {
    let dead = dead_owners(dir, ".", None, age);
    let now = SystemTime::now();
    let Ok(listing) = fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in listing.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `.NAME.<owner>-<n>.tmp`, and `.HEX.PID.link` of versions before owners
        let Some(rest) = name.strip_prefix('.').and_then(|r| {
            r.strip_suffix(TEMP_SUFFIX)
                .or_else(|| r.strip_suffix(".link"))
        }) else {
            continue;
        };
        let owner = rest
            .rsplit_once('.')
            .map(|(_, o)| o.split('-').next().unwrap_or(""))
            .unwrap_or("");
        let orphan = dead.iter().any(|d| d == owner);
        if (orphan || older_than(&e.path(), now, age)) && fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// The directory of a path (`.` for a bare file name).
fn parent_dir(p: &Path) -> &Path {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_write_replaces_whole_and_leaves_nothing_beside() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/config.json");
        write_atomic(&dest, b"one", 0o600).unwrap();
        write_atomic(&dest, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        assert_eq!(fs::metadata(&dest).unwrap().permissions().mode() & 0o077, 0);
        assert_eq!(names(dest.parent().unwrap()), ["config.json"]);
        // not committed: nothing changes, nothing is left
        let mut f = AtomicFile::create(&dest, 0o644).unwrap();
        f.write_all(b"three").unwrap();
        assert!(f.temp_path().exists());
        drop(f);
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        assert_eq!(names(dest.parent().unwrap()), ["config.json"]);
    }

    #[test]
    fn commit_with_link_refuses_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join(".env");
        fs::write(&dest, b"old").unwrap();
        let mut f = AtomicFile::create(&dest, 0o600).unwrap();
        f.write_all(b"new").unwrap();
        assert!(f.commit_with(|t, d| fs::hard_link(t, d)).is_err());
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert_eq!(names(dir.path()), [".env"]);
    }

    #[test]
    fn stale_temps_of_dead_owners_go_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // a live writer (this process, another owner)
        let mut live = AtomicFile::create(&d.join("a.tar"), 0o644).unwrap();
        live.write_all(b"in progress").unwrap();
        // a killed writer: its lock file is there but nobody holds it
        fs::write(d.join(".111x1x0.alive"), b"").unwrap();
        fs::write(d.join(".b.tar.111x1x0-5.tmp"), b"left").unwrap();
        // an old temp of an unknown owner, and a young one
        fs::write(d.join(".c.tar.1234.0.tmp"), b"old").unwrap();
        File::open(d.join(".c.tar.1234.0.tmp"))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(2 * 86400))
            .unwrap();
        fs::write(d.join(".d.tar.999x9x9-0.tmp"), b"young, owner unknown").unwrap();
        fs::write(d.join("keep.tar"), b"a real file").unwrap();
        fs::write(d.join(".user.alive"), b"not ours").unwrap();

        assert_eq!(remove_stale_temps(d, STALE_AGE), 2);
        let left = names(d);
        assert!(
            left.contains(&".d.tar.999x9x9-0.tmp".to_owned()),
            "{left:?}"
        );
        assert!(left.contains(&"keep.tar".to_owned()), "{left:?}");
        assert!(left.contains(&".user.alive".to_owned()), "{left:?}");
        assert!(live.temp_path().exists());
        assert!(!d.join(".111x1x0.alive").exists());
        assert!(!d.join(".b.tar.111x1x0-5.tmp").exists());
        assert!(!d.join(".c.tar.1234.0.tmp").exists());
        live.commit().unwrap();
        assert_eq!(fs::read(d.join("a.tar")).unwrap(), b"in progress");
    }

    #[test]
    fn link_atomic_replaces_with_a_link() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("blob");
        fs::write(&src, b"x").unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("b"), b"stale copy").unwrap();
        assert!(link_atomic(&src, &out.join("b")).unwrap());
        assert_eq!(
            fs::metadata(out.join("b")).unwrap().ino(),
            fs::metadata(&src).unwrap().ino()
        );
        assert_eq!(names(&out), ["b"]);
    }
}
