//! Choosing, downloading and caching the wheel of every requirement.
//!
//! Per requirement (those whose marker holds for the target): a selection record in the
//! store (`records/pywheel-select-v1/<key>`, keyed by target, name, version and hash set)
//! remembers which file was chosen; when it exists and its blob is in the store, nothing
//! touches the network, so a fully cached build is offline. Otherwise the simple API is
//! asked for the project's files, files are kept only if their version is the pin and
//! their sha256 is one of the requirement's hashes, and the one with the best tag for
//! the target wins (pip's order; build tag breaks ties). The download streams into the
//! store and is committed only if its sha256 is the expected one. Requirements are
//! fetched in parallel on a few connections, then unpacked on `jobs` threads.
//!
//! With a [`WheelBuilder`] ([`fetch_wheels_building`]), a requirement with no suitable
//! wheel falls back to its pinned sdist, which the builder turns into a wheel; the
//! selection record then names the sdist (under another key, so a build without a
//! builder never sees it) and the builder caches the wheel.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use imgbuild_store::{Bucket, Digest, HashingWriter, Store};
use sha2::Digest as _;

use crate::VenvSpec;
use crate::error::{Error, Result, io_err, redact_url};
use crate::index::{IndexConfig, IndexFile, project_files};
use crate::requirements::{Requirement, Requirements};
use crate::sdist::{Sdist, WheelBuilder, choose_sdist, is_sdist};
use crate::target::{TagPriorities, Target, WheelName};
use crate::unpack::{Unpacked, unpack_cached};
use crate::version::{SpecifierSet, Version};

/// A verified wheel in the store, unpacked in the cache, ready to install.
#[derive(Clone, Debug)]
pub struct SelectedWheel {
    /// PEP 503 name.
    pub key: String,
    /// Name as written in the requirements file.
    pub name: String,
    pub version: String,
    pub extras: Vec<String>,
    /// Line of the requirement.
    pub line: usize,
    pub filename: String,
    /// sha256 of the wheel file = its blob digest in the store.
    pub digest: Digest,
    pub size: u64,
    pub unpacked: Unpacked,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Selection {
    filename: String,
    digest: Digest,
}

/// The wheel a [`Bucket::PythonSelect`] record chose: the record is used only while
/// that blob is there, so `gc` keeps the record exactly as long as it keeps the wheel.
/// `None`: not a record of this format.
pub fn selection_wheel(record: &[u8]) -> Option<Digest> {
    serde_json::from_slice::<Selection>(record)
        .ok()
        .map(|s| s.digest)
}

/// Which requirements apply to the target (their marker holds), in file order.
pub fn applicable<'a>(reqs: &'a Requirements, target: &Target) -> Vec<&'a Requirement> {
    let env = target.marker_env();
    reqs.requirements
        .iter()
        .filter(|r| r.marker.as_ref().is_none_or(|m| m.evaluate(&env, "")))
        .collect()
}

fn selection_key(target: &Target, r: &Requirement, allow_sdist: bool) -> String {
    let mut h = sha2::Sha256::new();
    if allow_sdist {
        h.update("sdist allowed\n");
    }
    h.update(format!(
        "{}\n{target:?}\n{}\n{}\n",
        Bucket::PythonSelect.name(),
        r.key,
        r.version
    ));
    for d in &r.hashes {
        h.update(d.hex());
        h.update("\n");
    }
    hex::encode(h.finalize())
}

/// Downloads run on up to this many connections even with fewer `jobs`: they wait on
/// the network, not the CPU (hashing while streaming is cheap).
pub const MIN_CONNECTIONS: usize = 4;
/// ... and never more than this many, to be polite to the index.
pub const MAX_CONNECTIONS: usize = 16;

/// Fetches (or finds in the store) the best wheel of every applicable requirement,
/// verifies it and unpacks it into the cache. Sorted by name.
///
/// Concurrency: index queries and downloads use `jobs` clamped to
/// [`MIN_CONNECTIONS`]..=[`MAX_CONNECTIONS`] connections; unpacking (inflating zip
/// entries, hashing them: CPU work) uses `jobs` threads.
pub fn fetch_wheels(
    spec: &VenvSpec,
    reqs: &Requirements,
    store: &Store,
    http: &reqwest::blocking::Client,
    jobs: usize,
) -> Result<Vec<SelectedWheel>> {
    fetch_wheels_building(spec, reqs, store, http, jobs, None)
}

/// [`fetch_wheels`], where a requirement with no suitable wheel is built by `builder`
/// from its pinned sdist (one at a time: builds are CPU work of their own).
pub fn fetch_wheels_building(
    spec: &VenvSpec,
    reqs: &Requirements,
    store: &Store,
    http: &reqwest::blocking::Client,
    jobs: usize,
    builder: Option<&dyn WheelBuilder>,
) -> Result<Vec<SelectedWheel>> {
    spec.validate()?;
    let todo = applicable(reqs, &spec.target);
    let prio = TagPriorities::new(&spec.target);
    // index configuration is read lazily: a fully cached build reads no config and no network
    let index: Mutex<Option<(IndexConfig, Option<reqwest::blocking::Client>)>> = Mutex::new(None);
    let connections = jobs.clamp(MIN_CONNECTIONS, MAX_CONNECTIONS);
    let selections = in_parallel(connections, &todo, |r| match (&r.git, builder) {
        (Some(pin), Some(b)) => {
            let (filename, digest) = b.fetch_git(r, pin).map_err(|msg| Error::SdistBuild {
                package: r.name.clone(),
                version: pin.commit.clone(),
                line: r.line,
                sdist: redact_url(&pin.url),
                msg,
            })?;
            Ok(Selection { filename, digest })
        }
        _ => select_one(spec, reqs, r, store, http, &prio, &index, builder.is_some()),
    })?;
    let mut built = vec![];
    for (r, sel) in todo.iter().zip(selections) {
        built.push(match builder {
            Some(b) if is_sdist(&sel.filename) => build_from_sdist(spec, r, sel, b, &prio)?,
            _ => sel,
        });
    }
    let selections = built;
    let pairs: Vec<(&Requirement, Selection)> = todo.iter().copied().zip(selections).collect();
    let mut out = in_parallel(jobs.max(1), &pairs, |(r, sel)| {
        let size = store.blob_size(&sel.digest)?;
        let unpacked = unpack_cached(store, &sel.digest, &sel.filename, &r.key)?;
        Ok(SelectedWheel {
            key: r.key.clone(),
            name: r.name.clone(),
            version: r.version.clone(),
            extras: r.extras.clone(),
            line: r.line,
            filename: sel.filename.clone(),
            digest: sel.digest.clone(),
            size,
            unpacked,
        })
    })?;
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// `f` over `items` on up to `threads` threads; results in item order. Stops taking new
/// items after a failure and returns the first error in item order (a stable message).
fn in_parallel<T: Sync, U: Send>(
    threads: usize,
    items: &[T],
    f: impl Fn(&T) -> Result<U> + Sync,
) -> Result<Vec<U>> {
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Mutex<Option<Result<U>>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= items.len() || failed.load(Ordering::SeqCst) {
                        break;
                    }
                    let r = f(&items[i]);
                    if r.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    *results[i].lock().expect("result slot") = Some(r);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    for r in results {
        match r.into_inner().expect("result slot") {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    assert_eq!(out.len(), items.len(), "a worker stopped without an error");
    Ok(out)
}

/// The wheel `builder` builds from `r`'s sdist, checked to be `r`'s and the target's.
fn build_from_sdist(
    spec: &VenvSpec,
    r: &Requirement,
    sel: Selection,
    builder: &dyn WheelBuilder,
    prio: &TagPriorities,
) -> Result<Selection> {
    let failed = |msg: String| Error::SdistBuild {
        package: r.name.clone(),
        version: r.version.clone(),
        line: r.line,
        sdist: sel.filename.clone(),
        msg,
    };
    let sdist = Sdist {
        key: r.key.clone(),
        name: r.name.clone(),
        version: r.version.clone(),
        line: r.line,
        filename: sel.filename.clone(),
        digest: sel.digest.clone(),
    };
    let (filename, digest) = builder.build_wheel(&sdist).map_err(failed)?;
    let Some(w) = WheelName::parse(&filename) else {
        return Err(failed(format!(
            "the build wrote `{filename}`, which is not a wheel name"
        )));
    };
    // a git requirement's version is the one its source declares
    if w.key() != r.key
        || (r.git.is_none() && !Version::parse(&w.version).is_ok_and(|v| v == r.parsed_version()))
    {
        return Err(failed(format!(
            "the build wrote `{filename}`, not a wheel of {} {}",
            r.key, r.version
        )));
    }
    if prio.rank(&w).is_none() {
        return Err(failed(format!(
            "the built wheel `{filename}` is not compatible with {}: the builder image's interpreter is not the target's",
            spec.target
        )));
    }
    Ok(Selection { filename, digest })
}

/// The selection record of `r`, or (once) a query of the index and a verified download.
#[allow(clippy::too_many_arguments)]
fn select_one(
    spec: &VenvSpec,
    reqs: &Requirements,
    r: &Requirement,
    store: &Store,
    http: &reqwest::blocking::Client,
    prio: &TagPriorities,
    index: &Mutex<Option<(IndexConfig, Option<reqwest::blocking::Client>)>>,
    allow_sdist: bool,
) -> Result<Selection> {
    if let Some(pin) = &r.git {
        return Err(Error::SdistBuild {
            package: r.name.clone(),
            version: pin.commit.clone(),
            line: r.line,
            sdist: redact_url(&pin.url),
            msg: "a git requirement is built from source: add `build = { image = \"<builder recipe>\", requirements = \"<build-requirements.txt>\" }` to the python layer".into(),
        });
    }
    let key = selection_key(&spec.target, r, allow_sdist);
    let cached = store
        .read_record(Bucket::PythonSelect, &key)?
        .and_then(|b| serde_json::from_slice::<Selection>(&b).ok())
        .filter(|s| r.hashes.contains(&s.digest) && store.has_blob(&s.digest));
    if let Some(s) = cached {
        return Ok(s);
    }
    let (cfg, own_client) = {
        let mut g = index.lock().expect("index config");
        if g.is_none() {
            let cfg = IndexConfig::from_environment(reqs)?;
            // pip's `cert`: the index is trusted through that CA bundle only
            let client = cfg
                .cert
                .as_ref()
                .map(|c| cfg.client_with_cert(c))
                .transpose()?;
            *g = Some((cfg, client));
        }
        g.clone().expect("set above")
    };
    let http = own_client.as_ref().unwrap_or(http);
    let s = select_and_download(spec, r, store, http, prio, &cfg, allow_sdist)?;
    let bytes = serde_json::to_vec(&s).expect("selection serialises");
    store.write_record(Bucket::PythonSelect, &key, &bytes)?;
    Ok(s)
}

/// The candidates for `r` among `files`, best first: (rank, file, digest if known).
pub fn choose<'a>(
    target: &Target,
    r: &Requirement,
    files: &'a [IndexFile],
    prio: &TagPriorities,
) -> Result<&'a IndexFile> {
    let pin = r.parsed_version();
    let same_version: Vec<(&IndexFile, Option<WheelName>)> = files
        .iter()
        .filter(|f| file_version_matches(&f.filename, &r.key, &pin))
        .map(|f| (f, WheelName::parse(&f.filename)))
        .collect();
    let hashed: Vec<&(&IndexFile, Option<WheelName>)> = same_version
        .iter()
        .filter(|(f, _)| f.sha256.as_ref().is_none_or(|d| r.hashes.contains(d)))
        .collect();
    if hashed.is_empty() {
        let mut names: Vec<String> = same_version
            .iter()
            .map(|(f, _)| f.filename.clone())
            .collect();
        if names.is_empty() {
            names = files.iter().map(|f| f.filename.clone()).collect();
            names.sort();
            let n = names.len();
            names.truncate(20);
            if n > 20 {
                names.push(format!(
                    "… {} more (version {} is not among them)",
                    n - 20,
                    r.version
                ));
            }
        }
        return Err(Error::NoHashMatch {
            package: r.name.clone(),
            version: r.version.clone(),
            line: r.line,
            files: names,
        });
    }
    let py = Version::parse(&target.python_full_version).expect("target validated");
    let mut excluded_by_python = None;
    let mut best: Option<(usize, i64, &IndexFile)> = None;
    for (f, w) in &hashed {
        let Some(w) = w else { continue };
        let Some(rank) = prio.rank(w) else { continue };
        if let Some(rp) = &f.requires_python
            && let Ok(set) = SpecifierSet::parse(rp)
            && !set.contains(&py, &target.python_full_version)
        {
            excluded_by_python = Some(rp.clone());
            continue;
        }
        let build = -(w.build.as_ref().map(|b| b.0 as i64).unwrap_or(-1));
        let cand = (rank, build, *f);
        if best
            .as_ref()
            .is_none_or(|b| (cand.0, cand.1, &cand.2.filename) < (b.0, b.1, &b.2.filename))
        {
            best = Some(cand);
        }
    }
    match best {
        Some((_, _, f)) => Ok(f),
        None => {
            let mut names: Vec<String> = hashed.iter().map(|(f, _)| f.filename.clone()).collect();
            names.sort();
            Err(Error::NoSuitableWheel {
                package: r.name.clone(),
                version: r.version.clone(),
                target: target.to_string(),
                files: names,
                requires_python: excluded_by_python,
            })
        }
    }
}

/// Whether a file name (wheel or sdist) is for this project and exactly this version.
fn file_version_matches(filename: &str, key: &str, pin: &Version) -> bool {
    if let Some(w) = WheelName::parse(filename) {
        return w.key() == key && Version::parse(&w.version).is_ok_and(|v| v == *pin);
    }
    // sdists: `{name}-{version}.tar.gz` / `.zip`; listed so error messages show them
    let stem = filename
        .strip_suffix(".tar.gz")
        .or_else(|| filename.strip_suffix(".zip"))
        .or_else(|| filename.strip_suffix(".tar.bz2"));
    stem.and_then(|s| s.rsplit_once('-')).is_some_and(|(n, v)| {
        crate::marker::normalize_name(n) == key && Version::parse(v).is_ok_and(|v| v == *pin)
    })
}

fn select_and_download(
    spec: &VenvSpec,
    r: &Requirement,
    store: &Store,
    http: &reqwest::blocking::Client,
    prio: &TagPriorities,
    cfg: &IndexConfig,
    allow_sdist: bool,
) -> Result<Selection> {
    let mut files: Vec<IndexFile> = vec![];
    let mut found = false;
    let mut seen = BTreeSet::new();
    for idx in cfg.all() {
        if let Some(fs) = project_files(http, idx, &r.key)? {
            found = true;
            for f in fs {
                if seen.insert(f.filename.clone()) {
                    files.push(f);
                }
            }
        }
    }
    if !found {
        return Err(Error::Index {
            url: cfg.all().map(redact_url).collect::<Vec<_>>().join(", "),
            msg: format!(
                "project `{}` (requirements line {}) is not on the index",
                r.name, r.line
            ),
        });
    }
    let f = match choose(&spec.target, r, &files, prio) {
        Ok(f) => f,
        Err(e @ Error::NoSuitableWheel { .. }) => {
            let pin = r.parsed_version();
            let pinned: Vec<&IndexFile> = files
                .iter()
                .filter(|f| {
                    file_version_matches(&f.filename, &r.key, &pin)
                        && f.sha256.as_ref().is_none_or(|d| r.hashes.contains(d))
                })
                .collect();
            match choose_sdist(&pinned) {
                Some(s) if allow_sdist => s,
                _ => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let what = format!("{} from {}", f.filename, redact_url(&f.url));
    if let Some(d) = &f.sha256 {
        if !store.has_blob(d) || !store.verify(d)? {
            download_expecting(http, &f.url, store, d, &what)?;
        }
        return Ok(Selection {
            filename: f.filename.clone(),
            digest: d.clone(),
        });
    }
    // the index gave no hash: spool, hash, and store only if the hash is one of the pins
    let d = download_checking_set(http, &f.url, store, &r.hashes, &what)?;
    Ok(Selection {
        filename: f.filename.clone(),
        digest: d,
    })
}

fn get(http: &reqwest::blocking::Client, url: &str) -> Result<reqwest::blocking::Response> {
    let resp = crate::index::with_retries(url, || http.get(url).send())?;
    if !resp.status().is_success() {
        return Err(Error::Http {
            url: redact_url(url),
            msg: format!("status {}", resp.status()),
        });
    }
    Ok(resp)
}

fn download_expecting(
    http: &reqwest::blocking::Client,
    url: &str,
    store: &Store,
    expected: &Digest,
    what: &str,
) -> Result<()> {
    let mut resp = get(http, url)?;
    let mut w = store.writer()?;
    io::copy(&mut resp, &mut w).map_err(|e| Error::Http {
        url: redact_url(url),
        msg: format!("download interrupted: {e}"),
    })?;
    w.commit_expecting(expected, None, what)
        .map_err(|e| match e {
            imgbuild_store::StoreError::DigestMismatch { actual, .. } => Error::HashMismatch {
                what: what.to_owned(),
                expected: expected.to_string(),
                expected_from: "the index and the requirements file",
                actual,
            },
            other => other.into(),
        })?;
    Ok(())
}

fn download_checking_set(
    http: &reqwest::blocking::Client,
    url: &str,
    store: &Store,
    allowed: &[Digest],
    what: &str,
) -> Result<Digest> {
    let mut resp = get(http, url)?;
    let (tmp, file) = store.temp_file()?;
    let result = (|| {
        let mut w = HashingWriter::new(io::BufWriter::new(file));
        io::copy(&mut resp, &mut w).map_err(|e| Error::Http {
            url: redact_url(url),
            msg: format!("download interrupted: {e}"),
        })?;
        let (buf, digest, size) = w.finish();
        drop(
            buf.into_inner()
                .map_err(|e| io_err("failed to write", &tmp)(e.into_error()))?,
        );
        if !allowed.contains(&digest) {
            return Err(Error::HashMismatch {
                what: what.to_owned(),
                expected: allowed
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
                expected_from: "the requirements file",
                actual: digest,
            });
        }
        let src = std::fs::File::open(&tmp).map_err(io_err("failed to open", &tmp))?;
        store.put_verified(
            io::BufReader::new(src).take(size),
            &digest,
            Some(size),
            what,
        )?;
        Ok(digest)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}
