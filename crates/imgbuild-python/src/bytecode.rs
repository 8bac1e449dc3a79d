//! Optional deterministic byte-compilation of `.py` files (a venv's wheels, or a Debian
//! layer's standard library) by the image's own interpreter
//! ([`crate::interpreter::ImageInterpreter`]), as Debian's postinst would inside the image.
//!
//! Each file is compiled with `py_compile` in unchecked-hash mode (PEP 552: no mtime in
//! the header, never revalidated against the source), recording the in-image path as the
//! source path shown in tracebacks.
//!
//! Determinism: the hash seed is fixed (`PYTHONHASHSEED=0`; before 3.11 frozenset
//! constants were marshalled in hash order, and 3.11 sorts them, checked by hand: three
//! seeds gave identical bytes), and every set of sources is compiled twice in two separate
//! processes; a `.pyc` whose two results differ (marshal's reference flags depend on
//! reference counts, which can vary) is left out of the layer and reported, so the layer
//! never carries a file whose bytes depend on the run. Python then compiles that module in
//! memory at import time (slower start-up, same behaviour).
//!
//! Results are cached per (sources key, in-image directory, interpreter identity) in
//! the store's [`Bucket::PythonBytecode`], written to a temp dir and renamed into place
//! whole ([`Store::commit_dir`]); a cache hit marks the entry used (`gc` keeps entries by
//! their last use: nothing else names them).
//!
//! Why bother: measured by hand on the celery/flask stack, the app's imports take
//! 1.3–1.6 s without `.pyc` (every start recompiles, and a read-only venv cannot cache),
//! and 0.3 s with them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use imgbuild_store::{Bucket, Digest, Store, digest_reader};
use sha2::Digest as _;

use crate::error::{Error, Result, io_err};
use crate::interpreter::ImageInterpreter;
use crate::unpack::digest_record_hash;

/// One compiled file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PycFile {
    /// Relative to site-packages: `redis/__pycache__/client.cpython-311.pyc`.
    pub path: String,
    pub size: u64,
    /// RECORD form (`sha256=…`).
    pub hash: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct PycManifest {
    format: u32,
    files: Vec<PycFile>,
    /// Sources that did not compile (syntax errors; pip ignores them too).
    failed: Vec<String>,
    /// Sources whose two compilations differed.
    unstable: Vec<String>,
}

/// The cached `.pyc` files of one set of sources.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub dir: PathBuf,
    pub files: Vec<PycFile>,
    pub warnings: Vec<String>,
}

impl Compiled {
    pub fn host_path(&self, f: &PycFile) -> PathBuf {
        self.dir.join(&f.path)
    }
}

/// (source on the host, .pyc to write, in-image source path)
type CompileJob = (String, String, String);

const COMPILE_SCRIPT: &str = r#"
import json, py_compile, sys
failed = []
for src, cfile, dfile in json.load(sys.stdin):
    try:
        py_compile.compile(src, cfile=cfile, dfile=dfile, doraise=True, optimize=0,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    except (py_compile.PyCompileError, SyntaxError, ValueError, UnicodeDecodeError) as e:
        failed.append(dfile)
json.dump(failed, sys.stdout)
"#;

/// The `.pyc` path (relative to site-packages) for a `.py` path.
pub fn pyc_path(py_rel: &str, cache_tag: &str) -> Option<String> {
    let stem = py_rel.strip_suffix(".py")?;
    Some(match stem.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/__pycache__/{name}.{cache_tag}.pyc"),
        None => format!("__pycache__/{stem}.{cache_tag}.pyc"),
    })
}

/// Compiles (or finds cached) a set of `.py` files: one wheel's, or a standard
/// library's. `key` names the sources' bytes (a wheel's digest); `sources` are (path
/// relative to `dir`, host file), `dir` the in-image directory they are in. With
/// `jobs` > 1 the two compilations run side by side.
pub fn compile_sources(
    store: &Store,
    python: &ImageInterpreter,
    key: &Digest,
    dir: &str,
    sources: &[(String, PathBuf)],
    jobs: usize,
) -> Result<Compiled> {
    let mut h = sha2::Sha256::new();
    h.update(format!("pyc-v2\n{key}\n{dir}\n{}\n", python.identity));
    let key = hex::encode(h.finalize());
    let dest = store.entry_path(Bucket::PythonBytecode, &key);
    if let Some(c) = load(&dest)? {
        // Nothing names this entry but its key, so `gc` keeps it by its last use.
        store.touch_entry(Bucket::PythonBytecode, &key);
        return Ok(c);
    }
    let tmp = store.temp_dir()?;
    let result = build(python, dir, sources, &tmp, jobs);
    match result {
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
        Ok(()) => {
            // another process may finish the same sources first: theirs is as good
            store.commit_dir(Bucket::PythonBytecode, &key, &tmp)?;
            load(&dest)?.ok_or_else(|| Error::Bytecode {
                interpreter: python.describe(),
                msg: format!("`{}` has no manifest", dest.display()),
            })
        }
    }
}

fn load(dest: &Path) -> Result<Option<Compiled>> {
    let mpath = dest.join("manifest.json");
    let bytes = match fs::read(&mpath) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("failed to read", mpath)(e)),
    };
    let Ok(m) = serde_json::from_slice::<PycManifest>(&bytes) else {
        fs::remove_dir_all(dest).map_err(io_err("failed to remove stale cache entry", dest))?;
        return Ok(None);
    };
    let mut warnings = vec![];
    if !m.failed.is_empty() {
        warnings.push(format!(
            "{} file(s) did not byte-compile (left as source, as pip does): {}",
            m.failed.len(),
            m.failed.join(", ")
        ));
    }
    if !m.unstable.is_empty() {
        warnings.push(format!(
            "{} .pyc file(s) differed between two compilations and were left out (compiled at import time instead): {}",
            m.unstable.len(),
            m.unstable.join(", ")
        ));
    }
    Ok(Some(Compiled {
        dir: dest.join("files"),
        files: m.files,
        warnings,
    }))
}

fn run_compile(python: &ImageInterpreter, jobs: &[CompileJob]) -> Result<Vec<String>> {
    let err = |msg: String| Error::Bytecode {
        interpreter: python.describe(),
        msg,
    };
    // a cleared environment (see ImageInterpreter::command): no PYTHONPATH, no
    // SOURCE_DATE_EPOCH (which would switch py_compile to timestamp mode)
    let mut child = python
        .command()
        .args(["-S", "-s", "-B", "-c", COMPILE_SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot start: {e}")))?;
    let input = serde_json::to_vec(jobs).expect("serialisable");
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || io::Write::write_all(&mut stdin, &input));
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting: {e}")))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(err(format!(
            "exit status {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| err(format!("unexpected output: {e}")))
}

fn build(
    python: &ImageInterpreter,
    site_packages: &str,
    sources: &[(String, PathBuf)],
    tmp: &Path,
    jobs: usize,
) -> Result<()> {
    let mut files = vec![];
    let mut unstable = vec![];
    let mut runs: Vec<(PathBuf, Vec<CompileJob>)> = vec![];
    for run in ["files", "check"] {
        let dir = tmp.join(run);
        let jobs: Vec<CompileJob> = sources
            .iter()
            .filter_map(|(rel, host)| {
                let pyc = pyc_path(rel, &python.cache_tag)?;
                Some((
                    host.to_string_lossy().into_owned(),
                    dir.join(&pyc).to_string_lossy().into_owned(),
                    format!("{}/{}", site_packages.trim_end_matches('/'), rel),
                ))
            })
            .collect();
        runs.push((dir, jobs));
    }
    // two independent processes (independent runs are the point); side by side when
    // allowed two jobs, which halves the wall time on two cores; none for no sources
    let (first, second) = if runs[0].1.is_empty() {
        (Ok(vec![]), Ok(vec![]))
    } else if jobs > 1 {
        std::thread::scope(|s| {
            let other = s.spawn(|| run_compile(python, &runs[1].1));
            let first = run_compile(python, &runs[0].1);
            (first, other.join().expect("compile thread panicked"))
        })
    } else {
        let first = run_compile(python, &runs[0].1);
        (first, run_compile(python, &runs[1].1))
    };
    let failed = first?;
    second?;
    let (a, b) = (&runs[0].0, &runs[1].0);
    for (rel, _) in sources {
        let Some(pyc) = pyc_path(rel, &python.cache_tag) else {
            continue;
        };
        let (pa, pb) = (a.join(&pyc), b.join(&pyc));
        let (ba, bb) = match (fs::read(&pa), fs::read(&pb)) {
            (Ok(x), Ok(y)) => (x, y),
            // not compiled (syntax error): listed in `failed`
            _ => {
                let _ = fs::remove_file(&pa);
                continue;
            }
        };
        if ba != bb {
            fs::remove_file(&pa).map_err(io_err("failed to remove", &pa))?;
            unstable.push(format!("{site_packages}/{rel}"));
            continue;
        }
        let f = fs::File::open(&pa).map_err(io_err("failed to open", &pa))?;
        f.sync_all().map_err(io_err("failed to fsync", &pa))?;
        let (d, size) = digest_reader(f).map_err(io_err("failed to read", &pa))?;
        files.push(PycFile {
            path: pyc,
            size,
            hash: digest_record_hash(&d),
        });
    }
    // absent when nothing compiled
    match fs::remove_dir_all(b) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_err("failed to remove", b)(e));
        }
        _ => {}
    }
    files.sort_by(|x, y| x.path.cmp(&y.path));
    let mut failed = failed;
    failed.sort();
    let m = PycManifest {
        format: 2,
        files,
        failed,
        unstable,
    };
    let mpath = tmp.join("manifest.json");
    let f = fs::File::create(&mpath).map_err(io_err("failed to create", &mpath))?;
    serde_json::to_writer_pretty(&f, &m)
        .map_err(|e| io_err("failed to write", &mpath)(e.into()))?;
    f.sync_all().map_err(io_err("failed to fsync", &mpath))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyc_names() {
        assert_eq!(
            pyc_path("redis/client.py", "cpython-311").unwrap(),
            "redis/__pycache__/client.cpython-311.pyc"
        );
        assert_eq!(
            pyc_path("six.py", "cpython-311").unwrap(),
            "__pycache__/six.cpython-311.pyc"
        );
        assert!(pyc_path("x.pyi", "cpython-311").is_none());
    }
}
