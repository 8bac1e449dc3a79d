//! The context every command works in: the project root, the store, the output
//! directory, the epoch and the parallelism, resolved once from flags and the
//! environment.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use imgbuild_store::{Digest, Store};

use crate::progress::Progress;

pub struct Project {
    /// Canonical project root.
    pub root: PathBuf,
    pub store: Store,
    pub out: PathBuf,
    /// `SOURCE_DATE_EPOCH`, default 0: every mtime and `created` in the images.
    pub epoch: u64,
    pub jobs: usize,
    /// Identifies this checkout in the store's per-project records.
    pub key: String,
    pub progress: Progress,
    /// The registry layer cache of this run (`--cache`, `[cache] repository`).
    pub remote_cache: Option<std::sync::Arc<crate::remote_cache::RemoteCache>>,
    /// Whether builds write `out/` (tarballs, `out/oci`); `--no-out` turns it off.
    pub write_out: bool,
    /// The requests every registry client of this command sent, by registry.
    pub registry_counts: std::sync::Arc<imgbuild_registry::RequestCounts>,
}

impl Project {
    pub fn open(
        root: &Path,
        store: Option<PathBuf>,
        out: Option<PathBuf>,
        jobs: Option<usize>,
        progress: Progress,
    ) -> Result<Project> {
        let root = root
            .canonicalize()
            .with_context(|| format!("project directory `{}` does not exist", root.display()))?;
        let store_dir = match store {
            Some(s) => s,
            None => default_store()?,
        };
        let store = Store::open(&store_dir)
            .with_context(|| format!("cannot open the store at `{}`", store_dir.display()))?;
        let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) if !v.is_empty() => v.trim().parse().with_context(|| {
                format!("SOURCE_DATE_EPOCH=`{v}` is not a whole number of seconds")
            })?,
            _ => 0,
        };
        let jobs = jobs
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1);
        let key = Digest::of_bytes(root.as_os_str().as_encoded_bytes()).hex()[..16].to_owned();
        Ok(Project {
            out: out.unwrap_or_else(|| root.join("out")),
            root,
            store,
            epoch,
            jobs,
            key,
            progress,
            remote_cache: None,
            write_out: true,
            registry_counts: imgbuild_registry::RequestCounts::new(),
        })
    }

    /// A shared lock on the store for the duration of a build: `gc` takes it
    /// exclusively, so it never deletes what a running build is about to use.
    pub fn lock_shared(&self) -> Result<File> {
        self.lock_store(true)
    }

    pub fn lock_exclusive(&self) -> Result<File> {
        self.lock_store(false)
    }

    fn lock_store(&self, shared: bool) -> Result<File> {
        lock_file(&self.store.lock_path(), shared)
    }
}

/// Locks (flock) the file at `path`, creating it if needed, until the returned file
/// is dropped: shared with other shared holders, or exclusive.
pub fn lock_file(path: &Path, shared: bool) -> Result<File> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("failed to open `{}`", path.display()))?;
    if shared { f.lock_shared() } else { f.lock() }
        .with_context(|| format!("failed to lock `{}`", path.display()))?;
    Ok(f)
}

/// Reads a project file (a recipe, `imgbuild.toml`, `imgbuild.lock`) as text,
/// refusing anything but a regular file (or a symlink to one). A FIFO would block
/// every command forever: opening one waits for a writer, reading it for data. So
/// the file is opened without blocking and checked on the open descriptor (a check
/// of the path before opening could be raced by a swap).
pub fn read_project_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let mut f = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let t = f.metadata()?.file_type();
    if !t.is_file() {
        let kind = if t.is_fifo() {
            "a FIFO"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "not a file"
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is {kind}, not a regular file: replace it with a regular file"),
        ));
    }
    // O_NONBLOCK means nothing for a regular file's reads.
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(text)
}

/// `$IMGBUILD_STORE`, else the user's cache directory. An empty variable counts as
/// unset (as an empty `XDG_CACHE_HOME` does), so `IMGBUILD_STORE= imgbuild ...` in a
/// script means "the default", not an error.
fn default_store() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("IMGBUILD_STORE").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x));
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("imgbuild"));
    }
    let home = std::env::var_os("HOME").context(
        "neither --store, IMGBUILD_STORE, XDG_CACHE_HOME nor HOME is set; pass --store DIR",
    )?;
    Ok(PathBuf::from(home).join(".cache/imgbuild"))
}
