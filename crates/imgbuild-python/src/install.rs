//! Installing verified, unpacked wheels into a layer [`Tree`] as a venv, the way
//! `python3.Y -m venv` plus `pip install` would lay it out on Debian, without running
//! Python in the image:
//!
//! - `pyvenv.cfg`, `bin/python{,3,3.Y}` symlinks, `lib64 -> lib`, `include/`,
//!   `lib/python3.Y/site-packages/`;
//! - wheel files (PEP 427) into site-packages, `.data/{purelib,platlib}` too,
//!   `.data/scripts` into `bin/` with `#!python` rewritten, `.data/headers` into
//!   `include/site/python3.Y/<name>/`, `.data/data` into the venv root;
//! - `console_scripts`/`gui_scripts` entry points as launcher scripts;
//! - `INSTALLER` and a regenerated, sorted `RECORD` per distribution;
//! - optionally `.pyc` files (see [`crate::bytecode`]).
//!
//! It also owns the dependency-closure check: every `Requires-Dist` of every selected
//! wheel that applies to the target must be pinned in the requirements file.
//!
//! File contents are referenced (`Content::Host`) from the unpacked-wheel cache; only
//! generated files are held in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::PathBuf;

use imgbuild_layer::{Content, Meta, Node, Tree, TreePath};
use imgbuild_store::Store;
use sha2::Digest as _;

use crate::VenvSpec;
use crate::bytecode;
use crate::error::{Error, Result, io_err};
use crate::fetch::{SelectedWheel, applicable};
use crate::interpreter::ImageInterpreter;
use crate::marker::DepSpec;
use crate::requirements::Requirements;
use crate::unpack::{csv_field, record_hash};
use crate::version::{SpecifierSet, Version};

/// What [`install`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstallReport {
    /// `(name, version, wheel file)` in install order (sorted by name).
    pub packages: Vec<(String, String, String)>,
    /// Regular files written under the venv (pyc included).
    pub files: usize,
    /// Scripts in `bin/` (entry points and `.data/scripts`), sorted.
    pub scripts: Vec<String>,
    pub pyc_files: usize,
    /// Things the caller should show the user (no bytecode compiler, overwritten files…).
    pub warnings: Vec<String>,
}

/// RECORD rows of one distribution: path relative to site-packages -> (hash, size).
type RecordRows = BTreeMap<String, (String, u64)>;

/// A file to be placed, relative to the venv.
#[derive(Clone)]
struct Planned {
    content: Content,
    mode: u32,
    /// RECORD hash and size
    hash: String,
    size: u64,
}

fn sha_record(bytes: &[u8]) -> String {
    record_hash(sha2::Sha256::digest(bytes).into())
}

/// Parsed core metadata (the header part of METADATA).
#[derive(Clone, Debug, Default)]
pub struct CoreMetadata {
    pub name: String,
    pub version: String,
    pub requires_dist: Vec<String>,
    pub requires_python: Option<String>,
}

pub fn parse_metadata(text: &str) -> CoreMetadata {
    let mut m = CoreMetadata::default();
    let mut headers: Vec<(String, String)> = vec![];
    for line in text.lines() {
        if line.is_empty() {
            break; // the body (long description) follows
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = headers.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    for (k, v) in headers {
        match k.as_str() {
            "name" => m.name = v,
            "version" => m.version = v,
            "requires-dist" => m.requires_dist.push(v),
            "requires-python" if !v.is_empty() => m.requires_python = Some(v),
            _ => {}
        }
    }
    m
}

fn wheel_metadata(w: &SelectedWheel) -> Result<CoreMetadata> {
    let text = w
        .unpacked
        .read_meta("METADATA")?
        .ok_or_else(|| Error::BadWheel {
            wheel: w.filename.clone(),
            msg: format!("no {}/METADATA", w.unpacked.manifest.dist_info),
        })?;
    Ok(parse_metadata(&text))
}

/// Checks that every dependency of every selected wheel that applies to the target (with
/// the extras requested for it, directly or by other packages) is pinned in the
/// requirements file at a version that satisfies it, and that each wheel accepts the
/// target's Python. All problems are reported at once.
pub fn check_closure(spec: &VenvSpec, reqs: &Requirements, wheels: &[SelectedWheel]) -> Result<()> {
    let env = spec.target.marker_env();
    let file_name = reqs.file_name();
    let pinned: BTreeMap<&str, &crate::requirements::Requirement> = applicable(reqs, &spec.target)
        .into_iter()
        .map(|r| (r.key.as_str(), r))
        .collect();
    let by_key: BTreeMap<&str, &SelectedWheel> =
        wheels.iter().map(|w| (w.key.as_str(), w)).collect();
    let py =
        Version::parse(&spec.target.python_full_version).map_err(|e| Error::Spec(e.to_string()))?;

    let mut metas = BTreeMap::new();
    let mut problems = BTreeSet::new();
    for w in wheels {
        let m = wheel_metadata(w)?;
        if let Some(rp) = &m.requires_python
            && let Ok(set) = SpecifierSet::parse(rp)
            && !set.contains(&py, &spec.target.python_full_version)
        {
            return Err(Error::RequiresPython {
                package: w.name.clone(),
                version: w.version.clone(),
                requires: rp.clone(),
                target: spec.target.to_string(),
            });
        }
        let mut deps = vec![];
        for rd in &m.requires_dist {
            deps.push(DepSpec::parse(rd).map_err(|e| Error::BadWheel {
                wheel: w.filename.clone(),
                msg: format!("METADATA: {e}"),
            })?);
        }
        let display = if m.name.is_empty() {
            w.name.clone()
        } else {
            m.name.clone()
        };
        metas.insert(w.key.as_str(), (display, deps));
    }

    // extras requested per package: from the file, then from dependencies, to a fixpoint
    let mut extras: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in pinned.values() {
        extras
            .entry(r.key.clone())
            .or_default()
            .extend(r.extras.iter().cloned());
    }
    let mut queue: Vec<String> = pinned.keys().map(|k| (*k).to_owned()).collect();
    let mut visited_with: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    while let Some(k) = queue.pop() {
        let ex = extras.get(&k).cloned().unwrap_or_default();
        if visited_with.get(&k) == Some(&ex) {
            continue;
        }
        visited_with.insert(k.clone(), ex.clone());
        let Some((who, deps)) = metas.get(k.as_str()) else {
            continue;
        };
        let who_version = by_key
            .get(k.as_str())
            .map(|w| w.version.as_str())
            .unwrap_or("?");
        for d in deps {
            let active = d
                .marker
                .as_ref()
                .is_none_or(|m| m.evaluate_any_extra(&env, ex.iter().map(|s| s.as_str())));
            if !active {
                continue;
            }
            let via = if ex.is_empty() {
                String::new()
            } else {
                format!("[{}]", ex.iter().cloned().collect::<Vec<_>>().join(","))
            };
            match pinned.get(d.key.as_str()) {
                None => match reqs.requirements.iter().find(|r| r.key == d.key) {
                    // pinned, but only for other targets
                    Some(r) => {
                        problems.insert(format!(
                            "{who}{via} {who_version} requires {d} but {file_name} line {} pins {}=={} only when `{}`, which is false for the target {}",
                            r.line,
                            r.name,
                            r.version,
                            r.marker.as_ref().map(|m| m.to_string()).unwrap_or_default(),
                            spec.target
                        ));
                    }
                    None => {
                        problems.insert(format!(
                            "{who}{via} {who_version} requires {d} but it is not in {file_name}"
                        ));
                    }
                },
                Some(r) => {
                    let v = r.parsed_version();
                    // a git requirement's version is whatever its commit declares
                    if r.git.is_none() && !d.specifiers.contains(&v, &r.version) {
                        problems.insert(format!(
                            "{who}{via} {who_version} requires {d} but {file_name} line {} pins {}=={}",
                            r.line, r.name, r.version
                        ));
                    }
                    let e = extras.entry(d.key.clone()).or_default();
                    let before = e.len();
                    e.extend(d.extras.iter().cloned());
                    if e.len() != before {
                        queue.push(d.key.clone());
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Closure {
            file: reqs.path.clone(),
            problems: problems.into_iter().collect(),
        })
    }
}

/// Launcher script for an entry point `module:attr.sub`, as pip (distlib) writes it.
pub fn entry_point_script(
    shebang_python: &str,
    reference: &str,
) -> std::result::Result<String, String> {
    // drop `[extras]`
    let reference = match reference.find('[') {
        Some(i) => reference[..i].trim(),
        None => reference.trim(),
    };
    let (module, attr) = reference
        .split_once(':')
        .map(|(m, a)| (m.trim(), a.trim()))
        .ok_or_else(|| format!("entry point `{reference}` has no `:callable`"))?;
    let ident = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'))
    };
    if !ident(module) || !ident(attr) {
        return Err(format!(
            "entry point `{reference}` is not `module:callable`"
        ));
    }
    let head = attr.split('.').next().unwrap_or(attr);
    Ok(format!(
        "{}# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom {module} import {head}\nif __name__ == '__main__':\n    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n    sys.exit({attr}())\n",
        shebang(shebang_python)
    ))
}

/// `#!/path/python\n`, or the `/bin/sh` trampoline distlib uses when the path is too long
/// for the kernel's shebang limit or contains spaces.
pub fn shebang(python: &str) -> String {
    if python.len() + 3 > 127 || python.contains(' ') {
        format!("#!/bin/sh\n'''exec' \"{python}\" \"$0\" \"$@\"\n' '''\n")
    } else {
        format!("#!{python}\n")
    }
}

/// Entry points of one section of `entry_points.txt`, in file order.
pub fn parse_entry_points(text: &str, section: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            cur = s.trim().to_owned();
            continue;
        }
        if cur == section
            && let Some((k, v)) = t.split_once('=')
        {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

/// The RECORD text for a distribution: one line per file, sorted by path, the RECORD
/// itself with empty hash and size.
pub fn record_text(entries: &RecordRows, record_path: &str) -> String {
    let mut all: BTreeMap<&str, (&str, String)> = entries
        .iter()
        .map(|(p, (h, s))| (p.as_str(), (h.as_str(), s.to_string())))
        .collect();
    all.insert(record_path, ("", String::new()));
    let mut out = String::new();
    for (p, (h, s)) in all {
        out.push_str(&format!("{},{},{}\n", csv_field(p), h, s));
    }
    out
}

/// Installs `wheels` into `tree` as the venv described by `spec`. Runs the closure
/// check first. With `spec.bytecode`, `interpreter` is the image's own interpreter that
/// writes the `.pyc` files (required then; see [`crate::interpreter`]), and `jobs`
/// bounds the compiler processes running at once.
pub fn install(
    spec: &VenvSpec,
    reqs: &Requirements,
    wheels: &[SelectedWheel],
    store: &Store,
    interpreter: Option<&ImageInterpreter>,
    jobs: usize,
    tree: &mut Tree,
) -> Result<InstallReport> {
    spec.validate()?;
    let python = match (spec.bytecode, interpreter) {
        (false, _) => None,
        (true, None) => {
            return Err(Error::Spec(
                "bytecode = true needs the image's interpreter to compile with".into(),
            ));
        }
        (true, Some(p)) => {
            // markers were evaluated and wheels chosen for the target version: an image
            // with another interpreter would get the wrong dependencies (redis needs
            // async-timeout below 3.11.3 only)
            if p.version != spec.target.python_full_version {
                return Err(Error::Spec(format!(
                    "{} is not the target CPython {}: markers and wheels were chosen for the target",
                    p.describe(),
                    spec.target.python_full_version
                )));
            }
            Some(p)
        }
    };
    check_closure(spec, reqs, wheels)?;
    let mut report = InstallReport::default();
    let pyver = spec.target.python_version();
    let venv = spec.venv.trim_end_matches('/').to_owned();
    let sp_rel = format!("lib/python{pyver}/site-packages");
    let sp_abs = format!("{venv}/{sp_rel}");
    let venv_python = format!("{venv}/bin/python");
    let interp_name = spec
        .interpreter
        .rsplit('/')
        .next()
        .unwrap_or("python3")
        .to_owned();
    // what the venv itself writes: a wheel may not replace it (an entry point called
    // `python` would silently become the venv's interpreter)
    let mut reserved: BTreeSet<String> = [
        "pyvenv.cfg".to_owned(),
        "lib64".to_owned(),
        "bin".to_owned(),
        "include".to_owned(),
        "lib".to_owned(),
        format!("lib/python{pyver}"),
        sp_rel.clone(),
        "bin/python".to_owned(),
        "bin/python3".to_owned(),
        format!("bin/python{pyver}"),
    ]
    .into_iter()
    .collect();
    reserved.insert(format!("bin/{interp_name}"));

    // venv-relative path -> (planned file, owning distribution)
    let mut files: BTreeMap<String, (Planned, String)> = BTreeMap::new();
    let mut records: Vec<(String, String, RecordRows)> = vec![];
    // venv-relative path of each .pyc compiled here -> the distribution it was compiled for
    let mut compiled_pycs: BTreeMap<String, String> = BTreeMap::new();

    let mut sorted: Vec<&SelectedWheel> = wheels.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    for w in sorted {
        let m = &w.unpacked.manifest;
        let dist_info = m.dist_info.clone();
        let dist_stem = dist_info.trim_end_matches(".dist-info");
        let dist_name = dist_stem
            .rsplit_once('-')
            .map(|(n, _)| n)
            .unwrap_or(dist_stem)
            .to_owned();
        let data_prefix = format!("{dist_stem}.data/");
        let mut rec: RecordRows = BTreeMap::new();
        let mut py_sources: Vec<(String, PathBuf)> = vec![];
        let mut place = |venv_rel: String,
                         p: Planned,
                         rec: &mut RecordRows,
                         report: &mut InstallReport|
         -> Result<()> {
            if reserved.contains(&venv_rel) || venv_rel.starts_with("lib64/") {
                return Err(Error::ReservedPath {
                    wheel: w.filename.clone(),
                    path: format!("{venv}/{venv_rel}"),
                });
            }
            let rp = record_rel(&venv_rel, &sp_rel);
            rec.insert(rp, (p.hash.clone(), p.size));
            if let Some((old, owner)) = files.get(&venv_rel)
                && old.hash != p.hash
            {
                report.warnings.push(format!(
                    "{venv}/{venv_rel}: {} overwrites the different file installed by {owner}",
                    w.name
                ));
            }
            files.insert(venv_rel, (p, w.name.clone()));
            Ok(())
        };
        for f in &m.files {
            let host = w.unpacked.host_path(&f.path);
            let mut planned = Planned {
                content: Content::Host {
                    path: host.clone(),
                    size: f.size,
                    hash: None,
                },
                mode: if f.executable { 0o755 } else { 0o644 },
                hash: f.hash.clone(),
                size: f.size,
            };
            let venv_rel = if let Some(rest) = f.path.strip_prefix(&data_prefix) {
                let (kind, rest) = rest.split_once('/').expect("checked when unpacked");
                match kind {
                    "purelib" | "platlib" => format!("{sp_rel}/{rest}"),
                    "scripts" => {
                        if rest.contains('/') {
                            return Err(Error::UnsafeWheelEntry {
                                wheel: w.filename.clone(),
                                entry: f.path.clone(),
                                why: "scripts must be directly in .data/scripts/",
                            });
                        }
                        planned.mode = 0o755;
                        if let Some(bytes) = rewrite_script(&host, &venv_python)? {
                            planned.hash = sha_record(&bytes);
                            planned.size = bytes.len() as u64;
                            planned.content = Content::inline(bytes);
                        }
                        report.scripts.push(rest.to_owned());
                        format!("bin/{rest}")
                    }
                    "headers" => format!("include/site/python{pyver}/{dist_name}/{rest}"),
                    "data" => rest.to_owned(),
                    _ => unreachable!("checked when unpacked"),
                }
            } else {
                format!("{sp_rel}/{}", f.path)
            };
            // belt and braces: the mapped path must stay below the venv (and below
            // site-packages for library files)
            TreePath::new(&venv_rel).map_err(|_| Error::UnsafeWheelEntry {
                wheel: w.filename.clone(),
                entry: f.path.clone(),
                why: "would escape the venv",
            })?;
            if let Some(sp_path) = venv_rel.strip_prefix(&format!("{sp_rel}/"))
                && sp_path.ends_with(".py")
            {
                py_sources.push((sp_path.to_owned(), host.clone()));
            }
            place(venv_rel, planned, &mut rec, &mut report)?;
        }

        // entry points
        if let Some(ep) = w.unpacked.read_meta("entry_points.txt")? {
            for section in ["console_scripts", "gui_scripts"] {
                for (name, reference) in parse_entry_points(&ep, section) {
                    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                        return Err(Error::UnsafeWheelEntry {
                            wheel: w.filename.clone(),
                            entry: format!("{dist_info}/entry_points.txt: {name}"),
                            why: "script name must be a plain file name",
                        });
                    }
                    let body = entry_point_script(&venv_python, &reference).map_err(|msg| {
                        Error::BadWheel {
                            wheel: w.filename.clone(),
                            msg,
                        }
                    })?;
                    let p = Planned {
                        hash: sha_record(body.as_bytes()),
                        size: body.len() as u64,
                        content: Content::inline(body.into_bytes()),
                        mode: 0o755,
                    };
                    report.scripts.push(name.clone());
                    place(format!("bin/{name}"), p, &mut rec, &mut report)?;
                }
            }
        }

        // INSTALLER
        let installer = b"imgbuild\n".to_vec();
        place(
            format!("{sp_rel}/{dist_info}/INSTALLER"),
            Planned {
                hash: sha_record(&installer),
                size: installer.len() as u64,
                content: Content::inline(installer),
                mode: 0o644,
            },
            &mut rec,
            &mut report,
        )?;

        // bytecode
        if let Some(py) = python {
            py_sources.sort();
            let compiled =
                bytecode::compile_sources(store, py, &w.digest, &sp_abs, &py_sources, jobs)?;
            report
                .warnings
                .extend(compiled.warnings.iter().map(|m| format!("{}: {m}", w.name)));
            for f in &compiled.files {
                let rel = format!("{sp_rel}/{}", f.path);
                compiled_pycs.insert(rel.clone(), w.name.clone());
                place(
                    rel,
                    Planned {
                        content: Content::Host {
                            path: compiled.host_path(f),
                            size: f.size,
                            hash: None,
                        },
                        mode: 0o644,
                        hash: f.hash.clone(),
                        size: f.size,
                    },
                    &mut rec,
                    &mut report,
                )?;
            }
        }

        records.push((w.name.clone(), format!("{sp_rel}/{dist_info}/RECORD"), rec));
        report
            .packages
            .push((w.name.clone(), w.version.clone(), w.filename.clone()));
    }

    // A .pyc belongs next to the source it was compiled from. When a later wheel
    // replaced a .py and its own copy did not compile (or was unstable), the earlier
    // wheel's .pyc would be used for the later source (unchecked-hash: never compared).
    let stale: Vec<(String, String)> = compiled_pycs
        .iter()
        .filter(|(rel, compiled_for)| {
            let owner = files.get(*rel).map(|(_, o)| o);
            let source_owner = pyc_source(rel).and_then(|s| files.get(&s)).map(|(_, o)| o);
            owner == Some(*compiled_for) && source_owner != owner
        })
        .map(|(rel, o)| (rel.clone(), o.clone()))
        .collect();
    for (rel, owner) in stale {
        files.remove(&rel);
        let rp = record_rel(&rel, &sp_rel);
        for (o, _, rec) in records.iter_mut() {
            if *o == owner {
                rec.remove(&rp);
            }
        }
        report.warnings.push(format!(
            "{owner}: {venv}/{rel} left out: its source is another distribution's file"
        ));
    }

    report.pyc_files = compiled_pycs
        .iter()
        .filter(|(rel, o)| files.get(*rel).is_some_and(|(_, owner)| owner == *o))
        .count();

    // RECORDs: written after every file is known, each listing its own distribution
    for (owner, record_venv_rel, rec) in records {
        let rp = record_rel(&record_venv_rel, &sp_rel);
        let text = record_text(&rec, &rp);
        let p = Planned {
            hash: String::new(),
            size: text.len() as u64,
            content: Content::inline(text.into_bytes()),
            mode: 0o644,
        };
        files.insert(record_venv_rel, (p, owner));
    }

    // the venv skeleton
    let root = TreePath::new(&venv)?;
    let dir = |rel: &str| -> Result<TreePath> {
        Ok(if rel.is_empty() {
            root.clone()
        } else {
            root.join(rel)?
        })
    };
    for d in [
        "",
        "bin",
        "include",
        "lib",
        &format!("lib/python{pyver}"),
        &sp_rel,
    ] {
        tree.insert(dir(d)?, Node::Dir(Meta::DIR))?;
    }
    tree.insert(
        root.join("lib64")?,
        Node::Symlink {
            meta: Meta::new(0o777, 0, 0),
            target: "lib".into(),
        },
    )?;
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    links.insert(interp_name.clone(), spec.interpreter.clone());
    for n in ["python", "python3", &format!("python{pyver}")] {
        links
            .entry(n.to_owned())
            .or_insert_with(|| interp_name.clone());
    }
    for (name, target) in links {
        tree.insert(
            root.join(&format!("bin/{name}"))?,
            Node::Symlink {
                meta: Meta::new(0o777, 0, 0),
                target,
            },
        )?;
    }
    let home = spec
        .interpreter
        .rsplit_once('/')
        .map(|(d, _)| d)
        .filter(|d| !d.is_empty())
        .unwrap_or("/");
    let cfg = format!(
        "home = {home}\ninclude-system-site-packages = false\nversion = {}\nexecutable = {}\ncommand = {} -m venv {venv}\n",
        spec.target.python_full_version, spec.interpreter, spec.interpreter
    );
    tree.insert(
        root.join("pyvenv.cfg")?,
        Node::File {
            meta: Meta::FILE,
            content: Content::inline(cfg.into_bytes()),
        },
    )?;
    for (rel, (p, _)) in files {
        tree.insert(
            root.join(&rel)?,
            Node::File {
                meta: Meta::new(p.mode, 0, 0),
                content: p.content,
            },
        )?;
        report.files += 1;
    }
    report.scripts.sort();
    report.scripts.dedup();
    Ok(report)
}

/// The source a `.pyc` in `__pycache__` was compiled from:
/// `a/__pycache__/b.cpython-311.pyc` -> `a/b.py`.
fn pyc_source(pyc: &str) -> Option<String> {
    let (dir, name) = pyc.rsplit_once("/__pycache__/")?;
    let stem = name.strip_suffix(".pyc")?;
    let (module, _tag) = stem.rsplit_once('.')?;
    Some(format!("{dir}/{module}.py"))
}

/// A venv-relative path as RECORD spells it: relative to site-packages.
fn record_rel(venv_rel: &str, sp_rel: &str) -> String {
    match venv_rel.strip_prefix(&format!("{sp_rel}/")) {
        Some(p) => p.to_owned(),
        None => {
            let depth = sp_rel.split('/').count();
            format!("{}{venv_rel}", "../".repeat(depth))
        }
    }
}

/// `#!python…` first line replaced by the venv interpreter, as pip does; `None` if the
/// script has no such shebang (installed unchanged).
fn rewrite_script(host: &std::path::Path, python: &str) -> Result<Option<Vec<u8>>> {
    let mut f = fs::File::open(host).map_err(io_err("failed to open", host))?;
    let mut head = [0u8; 8];
    let n = read_up_to(&mut f, &mut head).map_err(io_err("failed to read", host))?;
    if &head[..n] != b"#!python" {
        return Ok(None);
    }
    let mut all = head[..n].to_vec();
    // scripts are small; cap what is held so a hostile wheel cannot exhaust memory
    f.take(64 << 20)
        .read_to_end(&mut all)
        .map_err(io_err("failed to read", host))?;
    let rest = match all.iter().position(|&b| b == b'\n') {
        Some(i) => all[i + 1..].to_vec(),
        None => vec![],
    };
    let mut out = shebang(python).into_bytes();
    out.extend_from_slice(&rest);
    Ok(Some(out))
}

fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts() {
        let s = entry_point_script("/opt/venv/bin/python", "flask.cli:main").unwrap();
        assert_eq!(
            s,
            "#!/opt/venv/bin/python\n# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom flask.cli import main\nif __name__ == '__main__':\n    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n    sys.exit(main())\n"
        );
        let s = entry_point_script("/opt/venv/bin/python", "celery.__main__ : App.main [extra]")
            .unwrap();
        assert!(
            s.contains("from celery.__main__ import App\n") && s.contains("sys.exit(App.main())"),
            "{s}"
        );
        assert!(entry_point_script("/v/bin/python", "justamodule").is_err());
        assert!(entry_point_script("/v/bin/python", "os:system('rm -rf /')").is_err());
        let long = format!("/{}/bin/python", "x".repeat(130));
        assert!(shebang(&long).starts_with("#!/bin/sh\n'''exec' \"/xxx"));
        assert!(shebang("/opt/my venv/bin/python").starts_with("#!/bin/sh"));
    }

    #[test]
    fn entry_points_file() {
        let t = "[console_scripts]\ncelery = celery.__main__:main\n\n[gui_scripts]\ng=x:y\n[celery.commands]\nfoo = a:b\n";
        assert_eq!(
            parse_entry_points(t, "console_scripts"),
            [("celery".to_owned(), "celery.__main__:main".to_owned())]
        );
        assert_eq!(
            parse_entry_points(t, "gui_scripts"),
            [("g".to_owned(), "x:y".to_owned())]
        );
    }

    #[test]
    fn record_order_and_paths() {
        let sp = "lib/python3.11/site-packages";
        assert_eq!(
            record_rel("lib/python3.11/site-packages/six.py", sp),
            "six.py"
        );
        assert_eq!(record_rel("bin/flask", sp), "../../../bin/flask");
        let mut e = BTreeMap::new();
        e.insert("z.py".to_owned(), ("sha256=z".to_owned(), 1));
        e.insert("../../../bin/x".to_owned(), ("sha256=b".to_owned(), 2));
        e.insert("a,b.py".to_owned(), ("sha256=a".to_owned(), 3));
        e.insert(
            "d-1.dist-info/INSTALLER".to_owned(),
            ("sha256=i".to_owned(), 9),
        );
        assert_eq!(
            record_text(&e, "d-1.dist-info/RECORD"),
            "../../../bin/x,sha256=b,2\n\"a,b.py\",sha256=a,3\nd-1.dist-info/INSTALLER,sha256=i,9\nd-1.dist-info/RECORD,,\nz.py,sha256=z,1\n"
        );
    }

    #[test]
    fn metadata() {
        let m = parse_metadata(
            "Metadata-Version: 2.1\nName: redis\nVersion: 5.0.1\nRequires-Python: >=3.7\nRequires-Dist: async-timeout>=4.0.3; python_full_version < \"3.11.3\"\nRequires-Dist: hiredis>=1.0.0; extra == \"hiredis\"\n\nRequires-Dist: not-a-header\n",
        );
        assert_eq!((m.name.as_str(), m.version.as_str()), ("redis", "5.0.1"));
        assert_eq!(m.requires_dist.len(), 2);
        assert_eq!(m.requires_python.as_deref(), Some(">=3.7"));
    }
}
