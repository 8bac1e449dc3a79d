//! The `build` layer source: a build step run in a sandbox, with declared inputs and
//! no network, whose outputs become the layer's files; cached by its inputs, as Nix
//! runs a derivation.
//!
//! ```toml
//! [[layers]]
//! build = { image = "c-builder",                           # a recipe: the sandbox's root
//!           inputs = [ { src = "src/hello", dest = "/src" } ], # project paths, read-only
//!           workdir = "/src",
//!           command = ["gcc-12", "-O2", "-o", "/out/hello", "hello.c"],
//!           env = { CFLAGS = "-O2" },
//!           outputs = [ { path = "/out", dest = "/usr/local/bin" } ],
//!           timeout_secs = 600 }
//! ```
//!
//! The sandbox ([`super::sandbox`], shared with sdist builds) is bubblewrap (`bwrap`), never Docker: the builder image's filesystem,
//! unpacked once per manifest digest into the store ([`Bucket::BuildRoots`]) and
//! mounted read-only (each top-level entry bound onto an empty root, which is then
//! remounted read-only), the inputs read-only at their `dest`, a private `/tmp`,
//! `/proc` and `/dev`, and each output directory writable (an empty store temp dir).
//! `--unshare-all` gives it new namespaces, among them a network namespace with only
//! loopback; `--clearenv` then a fixed environment; uid and gid 0 inside a user
//! namespace; `--die-with-parent`, and a time limit after which it is killed. No other
//! host path is visible.
//!
//! The inputs of the fingerprint: the builder's manifest digest, every input file's
//! content and mode (named by project path: `src/hello/hello.c changed`), the command,
//! env, workdir, outputs, timeout and `SOURCE_DATE_EPOCH`. What the step does with
//! them beyond that (the clock, randomness, parallelism) is not hashed: a step that
//! writes the date gives other bytes at every run, and only its cache keeps its output
//! stable.
//!
//! The outputs are walked in sorted order into a tar spooled as a store blob (kept by
//! `gc` with the layer), modes normalised as a files layer's (exec bit -> 0755, else
//! 0644, dirs 0755, setuid/setgid/sticky kept), owners root; the layer's files point
//! into that blob, and the sandbox's temp dir is removed when the step is done.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use imgbuild_layer::{Tree, TreePath};
use imgbuild_store::Store;
use serde::Deserialize;
use toml::Spanned;

use super::sandbox::{RESERVED, Sandbox, TempDir, builder_path, builder_root, emulation, epoch};
use super::walk::{self, WalkedKind};
use super::{Contribution, Input, LayerCx, LayerSource, SourceKind, SourcePlan};
use crate::cache::ImageRecord;
use crate::recipe::{Pos, RecipeCx, RecipeError};

/// A step runs at most this long unless `timeout_secs` says otherwise.
const DEFAULT_TIMEOUT_SECS: u64 = 600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuild {
    pub image: Spanned<String>,
    #[serde(default)]
    pub inputs: Vec<Spanned<RawMount>>,
    pub workdir: Option<Spanned<String>>,
    pub command: Spanned<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub outputs: Spanned<Vec<Spanned<RawOutput>>>,
    pub timeout_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMount {
    pub src: Spanned<String>,
    pub dest: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    pub path: Spanned<String>,
    pub dest: Spanned<String>,
}

crate::single_key_table!(RawBuildTable, "build", RawBuild);

#[derive(Debug)]
struct StepInput {
    rel: PathBuf,
    abs: PathBuf,
    dest: String,
}

#[derive(Debug)]
pub struct BuildStep {
    image: String,
    image_pos: Pos,
    inputs: Vec<StepInput>,
    workdir: String,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    /// (path in the sandbox, dest in the layer)
    outputs: Vec<(String, String)>,
    timeout_secs: u64,
    pos: Pos,
}

impl SourceKind for BuildStep {
    type Raw = RawBuildTable;

    fn parse(
        cx: &RecipeCx,
        raw: &RawBuildTable,
        _layer: &Pos,
    ) -> Result<Option<Self>, RecipeError> {
        let Some(b) = &raw.0 else {
            return Ok(None);
        };
        let rb = b.get_ref();
        if rb.command.get_ref().is_empty() || rb.command.get_ref()[0].is_empty() {
            return Err(cx.err(
                &rb.command,
                "command may not be empty: name the program and its arguments, e.g. [\"make\"]",
            ));
        }
        if rb.outputs.get_ref().is_empty() {
            return Err(cx.err(&rb.outputs, "a build step needs at least one output: outputs = [ { path = \"/out\", dest = \"/usr/local/bin\" } ]"));
        }
        for k in rb.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(cx.err(b, format!("env name \"{k}\" is not a valid variable name")));
            }
        }
        // a mount point: absolute, not `/`, not a path the sandbox provides itself,
        // not inside or around another mount point
        let mut mounts: Vec<String> = vec![];
        let mut mount_point = |s: &Spanned<String>, what: &str| -> Result<String, RecipeError> {
            let p = cx.image_path(s, what)?;
            let p = format!("/{}", p.trim_matches('/'));
            for r in RESERVED {
                if is_within(&p, r) || is_within(r, &p) {
                    return Err(cx.err(s, format!("{what} \"{p}\" is {r} or around it, which the sandbox provides itself: choose another path")));
                }
            }
            for other in &mounts {
                if is_within(&p, other) || is_within(other, &p) {
                    return Err(cx.err(s, format!("{what} \"{p}\" overlaps the mount point {other}: inputs and outputs need separate paths")));
                }
            }
            mounts.push(p.clone());
            Ok(p)
        };
        let mut inputs = vec![];
        for i in &rb.inputs {
            let ri = i.get_ref();
            let (rel, abs) = cx.project_path(&ri.src, "src")?;
            inputs.push(StepInput {
                rel,
                abs,
                dest: mount_point(&ri.dest, "dest")?,
            });
        }
        let mut outputs = vec![];
        for o in rb.outputs.get_ref() {
            let ro = o.get_ref();
            let path = mount_point(&ro.path, "path")?;
            outputs.push((path, cx.image_path(&ro.dest, "dest")?));
        }
        let workdir = match &rb.workdir {
            Some(w) => {
                if !w.get_ref().starts_with('/') {
                    return Err(cx.err(
                        w,
                        format!(
                            "workdir \"{}\" must be an absolute path in the sandbox",
                            w.get_ref()
                        ),
                    ));
                }
                w.get_ref().clone()
            }
            None => "/".into(),
        };
        let timeout_secs = match &rb.timeout_secs {
            Some(t) if *t.get_ref() == 0 => {
                return Err(cx.err(t, "timeout_secs must be at least 1"));
            }
            Some(t) => *t.get_ref(),
            None => DEFAULT_TIMEOUT_SECS,
        };
        Ok(Some(BuildStep {
            image: rb.image.get_ref().clone(),
            image_pos: cx.pos(&rb.image),
            inputs,
            workdir,
            command: rb.command.get_ref().clone(),
            env: rb.env.clone(),
            outputs,
            timeout_secs,
            pos: cx.pos(b),
        }))
    }
}

/// Whether image path `p` is `dir` or below it.
fn is_within(p: &str, dir: &str) -> bool {
    p == dir || p.starts_with(&format!("{}/", dir.trim_end_matches('/')))
}

impl LayerSource for BuildStep {
    fn kind(&self) -> &'static str {
        "build"
    }

    fn describe(&self) -> Option<String> {
        Some(format!(
            "build: {} in {}",
            self.command.join(" "),
            self.image
        ))
    }

    fn depends_on(&self) -> Vec<(String, Pos)> {
        vec![(self.image.clone(), self.image_pos.clone())]
    }

    fn plan<'s>(&'s self, cx: &mut LayerCx<'_, 's>) -> Result<Box<dyn SourcePlan + 's>> {
        let at = cx.at(&self.pos);
        let Some(builder) = cx.image(&self.image) else {
            bail!(
                "{}: builder image `{}` has not been built (it should be built before this recipe)",
                cx.at(&self.image_pos),
                self.image
            );
        };
        cx.input(Input::shown(
            format!("builder image {}", self.image),
            builder.manifest_digest.to_string(),
        ));
        for i in &self.inputs {
            let walked = walk::walk(&i.abs, cx.stat)
                .with_context(|| format!("{at}: input \"{}\"", i.rel.display()))?;
            // the shape of the tree (directories, symlinks, modes) as one input; each
            // file's content and mode as its own, named by its project path
            let mut shape = vec![];
            for w in walked {
                let what = if w.rel.is_empty() {
                    i.rel.display().to_string()
                } else {
                    i.rel.join(&w.rel).display().to_string()
                };
                match w.kind {
                    WalkedKind::Dir => shape.push(format!("d {:o} {}", w.mode, w.rel)),
                    WalkedKind::Symlink { target } => {
                        shape.push(format!("l {} -> {target}", w.rel))
                    }
                    WalkedKind::File { hash, .. } => {
                        cx.input(Input::hash(what, format!("{hash} {:o}", w.mode)))
                    }
                }
            }
            cx.input(Input::hash(
                format!(
                    "input {} -> {} (directories and symlinks)",
                    i.rel.display(),
                    i.dest
                ),
                Input::digest_of(&shape),
            ));
        }
        cx.input(Input::shown(
            "build command",
            serde_json::to_string(&self.command)?,
        ));
        cx.input(Input::shown("build env", serde_json::to_string(&self.env)?));
        cx.input(Input::shown("build workdir", self.workdir.clone()));
        let mut outputs = vec![];
        for (path, dest) in &self.outputs {
            outputs.push((path.clone(), cx.resolve_dest(dest)?));
        }
        cx.input(Input::shown(
            "build outputs",
            outputs
                .iter()
                .map(|(p, d)| format!("{p} -> /{}", d.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
        ));
        cx.input(Input::shown(
            "build timeout_secs",
            self.timeout_secs.to_string(),
        ));
        cx.input(Input::shown("build SOURCE_DATE_EPOCH", epoch().to_string()));
        Ok(Box::new(StepPlan {
            step: self,
            label: format!("{at}: build step `{}`", self.command.join(" ")),
            builder,
            outputs,
            store: cx.session.store.clone(),
            check_reproducible: cx.session.check_reproducible,
            progress: cx.session.progress.clone(),
        }))
    }
}

struct StepPlan<'s> {
    step: &'s BuildStep,
    label: String,
    builder: ImageRecord,
    /// (path in the sandbox, resolved dest in the layer)
    outputs: Vec<(String, TreePath)>,
    store: Store,
    check_reproducible: bool,
    progress: crate::progress::Progress,
}

impl SourcePlan for StepPlan<'_> {
    fn build(self: Box<Self>, tree: &mut Tree) -> Result<Contribution> {
        let emulated = emulation(&self.store, &self.builder, &self.step.image)
            .with_context(|| self.label.clone())?;
        if let Some(q) = &emulated {
            self.progress.line(format!(
                "{}: runs under emulation ({q}): builder `{}` is of another architecture",
                self.label, self.step.image
            ));
        }
        let root = builder_root(&self.store, &self.builder).with_context(|| {
            format!(
                "{}: unpacking builder image `{}`",
                self.label, self.step.image
            )
        })?;
        let tmp = TempDir(self.store.temp_dir()?);
        let out_dirs: Vec<PathBuf> = (0..self.outputs.len())
            .map(|i| tmp.0.join(format!("out{i}")))
            .collect();
        for d in &out_dirs {
            std::fs::create_dir(d).with_context(|| format!("failed to create {}", d.display()))?;
        }
        run_sandbox(&self, &root, &out_dirs, &tmp.0.join("log"))?;
        if self.check_reproducible {
            self.check_reproducible(&root, &out_dirs, &tmp.0)?;
        }
        // the outputs, as one tar spooled into the store: the layer's files point into it
        let mut spool = self.store.writer()?;
        {
            let mut tar = tar::Builder::new(&mut spool);
            tar.mode(tar::HeaderMode::Deterministic);
            for (i, d) in out_dirs.iter().enumerate() {
                append_tree(
                    &mut tar,
                    d,
                    &format!("{i}"),
                    &self.label,
                    &self.outputs[i].0,
                )?;
            }
            tar.finish()?;
        }
        let (digest, _) = spool.commit()?;
        drop(tmp);
        let path = self.store.blob_path(&digest);
        let mut archive = tar::Archive::new(BufReader::new(std::fs::File::open(&path)?));
        for entry in archive.entries()? {
            let entry = entry?;
            let raw = entry.path()?.to_string_lossy().into_owned();
            let (index, rel) = match raw.trim_end_matches('/').split_once('/') {
                Some((i, r)) => (i.to_owned(), Some(r.to_owned())),
                None => (raw.trim_end_matches('/').to_owned(), None),
            };
            let dest = &self.outputs[index.parse::<usize>()?].1;
            let at = match &rel {
                Some(r) => dest.join(r)?,
                None => dest.clone(),
            };
            let Some(node) = super::archive::spooled_entry_node(&entry, &path, (0, 0))? else {
                continue; // long-name headers (append_tree writes nothing else)
            };
            tree.insert(at, node)
                .with_context(|| format!("{}: output {raw}", self.label))?;
        }
        Ok(Contribution {
            blobs: vec![digest],
            notes: emulated
                .map(|q| vec![format!("the step ran under emulation ({q})")])
                .unwrap_or_default(),
            ..Default::default()
        })
    }
}

/// Runs the step in the sandbox, its outputs bound to `out_dirs`; its stdout and
/// stderr go to `log`.
fn run_sandbox(plan: &StepPlan, root: &Path, out_dirs: &[PathBuf], log: &Path) -> Result<()> {
    let step = plan.step;
    Sandbox {
        label: &plan.label,
        root,
        path: builder_path(&plan.store, &plan.builder),
        env: step.env.clone(),
        inputs: step
            .inputs
            .iter()
            .map(|i| (i.abs.clone(), i.dest.clone()))
            .collect(),
        outputs: out_dirs
            .iter()
            .zip(&step.outputs)
            .map(|(d, (path, _))| (d.clone(), path.clone()))
            .collect(),
        workdir: step.workdir.clone(),
        command: step.command.clone(),
        timeout_secs: step.timeout_secs,
    }
    .run(log)
}

impl StepPlan<'_> {
    /// `--check-reproducible`: runs the step again in a fresh sandbox with fresh
    /// output directories and fails naming every output path whose bytes, kind, link
    /// target or normalised mode differ between the two runs.
    fn check_reproducible(&self, root: &Path, first: &[PathBuf], tmp: &Path) -> Result<()> {
        let second: Vec<PathBuf> = (0..first.len())
            .map(|i| tmp.join(format!("again{i}")))
            .collect();
        for d in &second {
            std::fs::create_dir(d).with_context(|| format!("failed to create {}", d.display()))?;
        }
        run_sandbox(self, root, &second, &tmp.join("log-again"))?;
        let mut differ = vec![];
        for (i, (a, b)) in first.iter().zip(&second).enumerate() {
            let (a, b) = (summary(a)?, summary(b)?);
            let paths: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for p in paths {
                if a.get(p) != b.get(p) {
                    differ.push(format!("{}/{p}", self.outputs[i].0));
                }
            }
        }
        if !differ.is_empty() {
            bail!(
                "{}: --check-reproducible: {} output file(s) differ between two runs:\n  {}",
                self.label,
                differ.len(),
                differ.join("\n  ")
            );
        }
        Ok(())
    }
}

/// Every path below `dir` -> what the layer would get of it: kind, normalised mode,
/// and the sha256 of a file's bytes or a symlink's target.
fn summary(dir: &Path) -> Result<BTreeMap<String, String>> {
    fn visit(dir: &Path, rel: &str, out: &mut BTreeMap<String, String>) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let m = std::fs::symlink_metadata(e.path())?;
            let v = if m.is_dir() {
                visit(&e.path(), &rel, out)?;
                format!("dir {:o}", walk::normalise_mode(m.mode(), true))
            } else if m.file_type().is_symlink() {
                format!("symlink {}", std::fs::read_link(e.path())?.display())
            } else {
                let mut h = imgbuild_store::HashingWriter::new(std::io::sink());
                std::io::copy(&mut std::fs::File::open(e.path())?, &mut h)?;
                let (_, d, _) = h.finish();
                format!("file {:o} {d}", walk::normalise_mode(m.mode(), false))
            };
            out.insert(rel, v);
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    visit(dir, "", &mut out)?;
    Ok(out)
}

/// Appends `dir`'s contents under `prefix`, sorted by name, modes normalised, owners
/// root; anything but files, directories and symlinks is an error naming it.
fn append_tree<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &str,
    label: &str,
    shown: &str,
) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    tar.append_data(&mut h, format!("{prefix}/"), std::io::empty())?;
    append_dir_contents(tar, dir, prefix, label, shown)
}

/// [`append_tree`] without the directory's own entry.
fn append_dir_contents<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &str,
    label: &str,
    shown: &str,
) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for name in names {
        let p = dir.join(&name);
        let name = name.to_str().with_context(|| {
            format!(
                "{label}: output {shown}/{} is not a UTF-8 name",
                name.to_string_lossy()
            )
        })?;
        let at = format!("{prefix}/{name}");
        let at_shown = format!("{shown}/{name}");
        let m = std::fs::symlink_metadata(&p)?;
        let ft = m.file_type();
        let mut h = tar::Header::new_gnu();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(walk::normalise_mode(m.mode(), true));
            h.set_size(0);
            tar.append_data(&mut h, format!("{at}/"), std::io::empty())?;
            append_dir_contents(tar, &p, &at, label, &at_shown)?;
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            tar.append_link(&mut h, &at, std::fs::read_link(&p)?)?;
        } else if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(walk::normalise_mode(m.mode(), false));
            h.set_size(m.len());
            tar.append_data(&mut h, &at, std::fs::File::open(&p)?)?;
        } else {
            bail!(
                "{label}: output {at_shown} is not a file, directory or symlink (a device, FIFO or socket cannot go into a layer)"
            );
        }
    }
    Ok(())
}
