//! The unpacked-wheel cache: each verified wheel blob is unzipped once into an entry of
//! the store's [`Bucket::PythonWheels`] named by the wheel's sha256 (written under the
//! store's `tmp/`, then renamed into place by [`Store::commit_dir`], so a half-extracted
//! directory is never seen), with a `manifest.json` that
//! records every file's path, size, sha256 and executable bit. Layers then reference the
//! extracted files by path instead of holding their bytes.
//!
//! Entries are checked while extracting: no absolute paths, no `..`, no backslashes or
//! NUL, no symlinks, no duplicates, and each file's content must match the hash the
//! wheel's own RECORD gives for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use imgbuild_store::{Bucket, Digest, HashingWriter, Store};

use crate::error::{Error, Result, io_err};
use crate::marker::normalize_name;

const MANIFEST: &str = "manifest.json";

/// One extracted file of a wheel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestFile {
    /// Path inside the wheel (`redis/client.py`, `redis-5.0.1.dist-info/METADATA`).
    pub path: String,
    pub size: u64,
    /// `sha256=<urlsafe base64, no padding>` as RECORD files write it.
    pub hash: String,
    pub executable: bool,
}

/// What the cache knows about an unpacked wheel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub wheel: String,
    /// `redis-5.0.1.dist-info`
    pub dist_info: String,
    /// Sorted by path. RECORD and its signatures are not included (regenerated on install).
    pub files: Vec<ManifestFile>,
}

/// A wheel unpacked in the cache.
#[derive(Clone, Debug)]
pub struct Unpacked {
    /// Directory holding the wheel's files (`…/<sha256>/files`).
    pub files_dir: PathBuf,
    pub manifest: Manifest,
}

impl Unpacked {
    pub fn host_path(&self, wheel_path: &str) -> PathBuf {
        self.files_dir.join(wheel_path)
    }
    /// Reads a small metadata file of the wheel (METADATA, WHEEL, entry_points.txt).
    pub fn read_meta(&self, name: &str) -> Result<Option<String>> {
        let p = self.files_dir.join(&self.manifest.dist_info).join(name);
        match fs::read(&p) {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("failed to read", p)(e)),
        }
    }
}

pub fn record_hash(raw: [u8; 32]) -> String {
    format!(
        "sha256={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    )
}

pub fn digest_record_hash(d: &Digest) -> String {
    let mut raw = [0u8; 32];
    hex::decode_to_slice(d.hex(), &mut raw).expect("digest is 64 hex digits");
    record_hash(raw)
}

/// Returns the cached unpacked wheel, extracting the blob `digest` first if needed.
/// `project_key` is the PEP 503 name the wheel must be for.
pub fn unpack_cached(
    store: &Store,
    digest: &Digest,
    filename: &str,
    project_key: &str,
) -> Result<Unpacked> {
    let dest = store.entry_path(Bucket::PythonWheels, digest.hex());
    if let Some(u) = load(&dest)? {
        return Ok(u);
    }
    let tmp = store.temp_dir()?;
    let result = (|| {
        // the zip reader needs to seek, so it reads the blob file directly, after a full
        // verification pass so that a corrupt blob is never extracted
        if !store.verify(digest)? {
            return Err(Error::BadWheel {
                wheel: filename.to_owned(),
                msg: format!(
                    "the stored blob {digest} was corrupt and has been removed; run the build again to refetch it"
                ),
            });
        }
        let manifest = extract(
            &store.blob_path(digest),
            filename,
            project_key,
            &tmp.join("files"),
        )?;
        let mpath = tmp.join(MANIFEST);
        let mut f = File::create(&mpath).map_err(io_err("failed to create", &mpath))?;
        serde_json::to_writer_pretty(&mut f, &manifest)
            .map_err(|e| io_err("failed to write", &mpath)(e.into()))?;
        f.sync_all().map_err(io_err("failed to fsync", &mpath))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // another process may finish the same wheel first: theirs is as good as ours
    store.commit_dir(Bucket::PythonWheels, digest.hex(), &tmp)?;
    load(&dest)?.ok_or_else(|| Error::BadWheel {
        wheel: filename.to_owned(),
        msg: format!("unpacked directory `{}` has no manifest", dest.display()),
    })
}

fn load(dest: &Path) -> Result<Option<Unpacked>> {
    let mpath = dest.join(MANIFEST);
    let bytes = match fs::read(&mpath) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("failed to read", mpath)(e)),
    };
    match serde_json::from_slice::<Manifest>(&bytes) {
        Ok(m) if m.format == 1 => Ok(Some(Unpacked {
            files_dir: dest.join("files"),
            manifest: m,
        })),
        // unreadable manifest: drop the directory and extract again
        _ => {
            fs::remove_dir_all(dest)
                .map_err(io_err("failed to remove stale unpacked wheel", dest))?;
            Ok(None)
        }
    }
}

/// Why a zip entry name cannot be installed, if it cannot.
pub fn unsafe_entry_reason(name: &str) -> Option<&'static str> {
    if name.starts_with('/') {
        return Some("absolute path");
    }
    if name.contains('\\') {
        return Some("backslash in path (Windows separators are not allowed in wheels)");
    }
    if name.contains('\0') {
        return Some("NUL byte in path");
    }
    if name.split('/').any(|c| c == "..") {
        return Some("`..` component would escape the install directory");
    }
    if name
        .split('/')
        .next()
        .is_some_and(|c| c.len() == 2 && c.ends_with(':'))
    {
        return Some("drive letter");
    }
    None
}

/// Extracts a wheel into `out`, returning its manifest.
pub fn extract(
    wheel_path: &Path,
    filename: &str,
    project_key: &str,
    out: &Path,
) -> Result<Manifest> {
    let bad = |msg: String| Error::BadWheel {
        wheel: filename.to_owned(),
        msg,
    };
    let file = File::open(wheel_path).map_err(io_err("failed to open", wheel_path))?;
    let mut zip = zip::ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| bad(format!("not a valid zip: {e}")))?;

    // first pass over the central directory: names, safety, the .dist-info directory
    let mut names = Vec::with_capacity(zip.len());
    let mut seen = BTreeSet::new();
    for i in 0..zip.len() {
        let e = zip
            .by_index(i)
            .map_err(|e| bad(format!("entry {i}: {e}")))?;
        let name = e
            .name()
            .map_err(|e| bad(format!("entry {i} has an undecodable name: {e}")))?
            .into_owned();
        if let Some(why) = unsafe_entry_reason(&name) {
            return Err(Error::UnsafeWheelEntry {
                wheel: filename.to_owned(),
                entry: name,
                why,
            });
        }
        if e.is_symlink() {
            return Err(Error::UnsafeWheelEntry {
                wheel: filename.to_owned(),
                entry: name,
                why: "symlink entries are not allowed in wheels",
            });
        }
        let norm = normalize_entry(&name);
        if e.is_dir() || norm.is_empty() {
            names.push(None);
            continue;
        }
        if !seen.insert(norm.clone()) {
            return Err(Error::UnsafeWheelEntry {
                wheel: filename.to_owned(),
                entry: name,
                why: "duplicate entry",
            });
        }
        names.push(Some(norm));
    }
    let dist_info = seen
        .iter()
        .filter_map(|n| n.strip_suffix("/WHEEL"))
        .filter(|d| !d.contains('/') && d.ends_with(".dist-info"))
        .find(|d| {
            d.strip_suffix(".dist-info")
                .and_then(|s| s.rsplit_once('-'))
                .is_some_and(|(n, _)| normalize_name(n) == project_key)
        })
        .map(str::to_owned)
        .ok_or_else(|| {
            bad(format!(
                "no `<name>-<version>.dist-info/WHEEL` for project `{project_key}`"
            ))
        })?;
    let record_name = format!("{dist_info}/RECORD");
    if !seen.contains(&record_name) {
        return Err(bad(format!("missing {record_name}")));
    }
    let data_prefix = format!("{}.data/", dist_info.trim_end_matches(".dist-info"));
    for n in &seen {
        if let Some(rest) = n.strip_prefix(&data_prefix) {
            let kind = rest.split('/').next().unwrap_or("");
            if !matches!(kind, "purelib" | "platlib" | "scripts" | "headers" | "data")
                || !rest.contains('/')
            {
                return Err(Error::UnsafeWheelEntry {
                    wheel: filename.to_owned(),
                    entry: n.clone(),
                    why: "unknown .data category (expected purelib, platlib, scripts, headers or data)",
                });
            }
        }
    }

    // the wheel's RECORD: expected hashes of its files
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    {
        let idx = names
            .iter()
            .position(|n| n.as_deref() == Some(record_name.as_str()))
            .expect("checked above");
        let e = zip
            .by_index(idx)
            .map_err(|e| bad(format!("{record_name}: {e}")))?;
        for line in io::BufReader::new(e.take(64 << 20)).lines() {
            let line = line.map_err(|e| bad(format!("{record_name}: {e}")))?;
            let fields = parse_csv_line(&line);
            if let [path, hash, ..] = fields.as_slice()
                && !hash.is_empty()
            {
                expected.insert(normalize_entry(path), hash.clone());
            }
        }
    }

    fs::create_dir_all(out).map_err(io_err("failed to create directory", out))?;
    let mut files = vec![];
    for (i, name) in names.iter().enumerate() {
        let Some(name) = name else { continue };
        if name == &record_name
            || name == &format!("{dist_info}/RECORD.jws")
            || name == &format!("{dist_info}/RECORD.p7s")
        {
            continue;
        }
        let mut e = zip.by_index(i).map_err(|e| bad(format!("{name}: {e}")))?;
        let executable = e.unix_mode().is_some_and(|m| m & 0o111 != 0);
        let dest = out.join(name);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err("failed to create directory", parent))?;
        }
        let f = File::create(&dest).map_err(io_err("failed to create", &dest))?;
        let mut w = HashingWriter::new(io::BufWriter::new(f));
        io::copy(&mut e, &mut w).map_err(|err| bad(format!("{name}: failed to extract: {err}")))?;
        let (buf, digest, size) = w.finish();
        let f = buf
            .into_inner()
            .map_err(|err| io_err("failed to write", &dest)(err.into_error()))?;
        // the directory is renamed into the cache only when complete; fsync so that a
        // crash right after the rename cannot leave empty files behind a valid manifest
        f.sync_all().map_err(io_err("failed to fsync", &dest))?;
        let hash = digest_record_hash(&digest);
        if let Some(want) = expected.get(name)
            && want.starts_with("sha256=")
            && want.trim_end_matches('=') != hash
        {
            return Err(bad(format!(
                "{name}: content does not match the wheel's RECORD ({want}, got {hash})"
            )));
        }
        files.push(ManifestFile {
            path: name.clone(),
            size,
            hash,
            executable,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Manifest {
        format: 1,
        wheel: filename.to_owned(),
        dist_info,
        files,
    })
}

fn normalize_entry(name: &str) -> String {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Splits one CSV line (RECORD files are written by Python's csv module).
pub fn parse_csv_line(line: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Quotes a field for a RECORD line the way Python's csv module does (minimal quoting).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_roundtrip() {
        assert_eq!(
            parse_csv_line("a/b.py,sha256=x,12"),
            ["a/b.py", "sha256=x", "12"]
        );
        assert_eq!(
            parse_csv_line("\"a,\"\"b\"\".py\",,"),
            ["a,\"b\".py", "", ""]
        );
        assert_eq!(csv_field("a,\"b\".py"), "\"a,\"\"b\"\".py\"");
    }

    #[test]
    fn entry_names() {
        assert!(unsafe_entry_reason("pkg/../../etc/passwd").is_some());
        assert!(unsafe_entry_reason("/etc/passwd").is_some());
        assert!(unsafe_entry_reason("..").is_some());
        assert!(unsafe_entry_reason("pkg\\x.py").is_some());
        assert!(unsafe_entry_reason("c:/x").is_some());
        assert!(unsafe_entry_reason("pkg/..hidden/x.py").is_none());
        assert!(unsafe_entry_reason("pkg-1.0.data/data/share/x").is_none());
    }
}
