//! Layer sources: one [`LayerSource`] per kind of layer content, and the one place
//! that turns a layer's sources into a fingerprint and, on a cache miss, a [`Tree`].
//!
//! A kind owns everything about itself, in one file: its recipe keys (the raw serde
//! table, parsed into a validated value), its lock entries ([`LayerSource::lock`]),
//! its inputs ([`LayerSource::plan`], which states them as named [`Input`]s) and the
//! filling of the layer tree ([`SourcePlan::build`]). The kinds are registered once,
//! in [`layer_sources!`] below, in the order their parts of a layer are built:
//! Debian packages, then a Python venv, then build steps, then archives and files
//! (with dirs, symlinks and the image's accounts), so that what a recipe declares
//! explicitly wins; last the linkage check, which adds nothing and checks the
//! finished layer's ELF files.
//!
//! ## Adding a kind of source
//! 1. Write `src/source/NAME.rs` with a raw table type implementing [`RawTable`]
//!    (its keys in `[[layers]]`) and a type implementing [`LayerSource`] and
//!    [`SourceKind`] (parse the raw table into it, with errors at `file:line:col`).
//! 2. Add `mod NAME;` and one line `NAME: NAME::Type` to [`layer_sources!`].
//!
//! Its inputs decide its cache key: cargo's contract, the same inputs if and only if
//! the same output. Anything the output depends on must be an input; anything else
//! must not be (or the cache misses for nothing).
//!
//! ## Fingerprints and reasons
//! [`plan_layer`] collects every source's inputs, plus what the layer depends on
//! below it (the lower view) and the write settings, and hashes them into the
//! layer's fingerprint. The inputs are kept in the layer record, so a rebuild can say
//! why ([`explain`]): `layers/app/app.py changed`, `nginx 1.22.1-9 -> 1.22.1-9+deb12u1`.

pub mod archive;
pub mod base;
pub mod build_step;
pub mod debian;
pub mod files;
pub mod git;
pub mod linkage;
pub mod native_python;
pub mod python;
pub mod python_build;
pub mod sandbox;
pub mod stdlib_pyc;
pub mod walk;

use std::collections::BTreeMap;
use std::fmt::Debug;

use anyhow::{Context, Result};
use imgbuild_layer::{Node, Tree, TreePath};
use imgbuild_store::{Digest, HashingWriter};
use serde::{Deserialize, Serialize};

use crate::cache::LayerReport;
use crate::lower::{AncestorContext, LowerView};
use crate::recipe::{Pos, Recipe, RecipeCx, RecipeError};
use imgbuild_debian::system::Accounts;
use walk::StatCache;

/// Bump when the way a layer is derived from its inputs changes.
const FINGERPRINT_VERSION: &str = "imgbuild-layer-fingerprint-v4";

/// A raw recipe table of one kind: the keys of `[[layers]]` it owns, taken out of
/// the layer table one by one (unknown keys are refused by the layer table).
pub trait RawTable: Default + Debug {
    const KEYS: &'static [&'static str];
    fn take<'de, A: serde::de::MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
    ) -> Result<(), A::Error>;
}

/// Parsing a kind's raw table into its source.
pub trait SourceKind: LayerSource + Sized + 'static {
    type Raw: RawTable;
    /// `None` when the layer does not use this kind.
    fn parse(cx: &RecipeCx, raw: &Self::Raw, layer: &Pos) -> Result<Option<Self>, RecipeError>;
}

/// One kind of layer content, parsed and validated.
pub trait LayerSource: Send + Sync + Debug {
    /// The kind, as plans name it (`files`, `debian`, `python`).
    fn kind(&self) -> &'static str;
    /// A short description for progress lines and the image history; `None` for a
    /// source with nothing in it. (History is part of the image: keep it stable.)
    fn describe(&self) -> Option<String>;
    /// Resolves what the lock does not pin yet and records it in the lock (a
    /// Debian layer's packages). Called for every layer by `lock` and before
    /// [`LayerSource::plan`]; the default pins nothing.
    fn lock(&self, _cx: &LockCx) -> Result<()> {
        Ok(())
    }
    /// Whether building this source reads the bytes of the layers below (a Python
    /// venv's `.pyc` by the image's interpreter, the linkage check): a registry cache
    /// hit below is then downloaded first.
    fn reads_lower_layers(&self) -> bool {
        false
    }
    /// The recipes whose images this source reads (a builder image, files copied out
    /// of another image), with where the recipe names them: they are built first.
    fn depends_on(&self) -> Vec<(String, Pos)> {
        vec![]
    }
    /// States this source's inputs (through `cx`) and returns what builds it.
    fn plan<'s>(&'s self, cx: &mut LayerCx<'_, 's>) -> Result<Box<dyn SourcePlan + 's>>;
}

/// A source whose inputs are known, ready to fill the layer on a cache miss.
pub trait SourcePlan: Send {
    fn build(self: Box<Self>, tree: &mut Tree) -> Result<Contribution>;
}

/// What a source's build produced besides its entries in the tree.
#[derive(Default)]
pub struct Contribution {
    /// Store blobs the layer was made from (.debs, wheels, spools), kept by gc.
    pub blobs: Vec<Digest>,
    /// Notes for `inspect` (e.g. maintainer scripts that did not run).
    pub notes: Vec<String>,
    /// What it installed, as the SBOM names it (packages, distributions).
    pub contents: crate::supply::contents::LayerContents,
}

/// One input of a layer, as its record keeps it and a reason names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// What it is: a project path, a package name, `requirement flask`, `lower layers`.
    pub what: String,
    /// A value shown when it changes: a version, a setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown: Option<String>,
    /// A compact value compared but not shown: a content hash.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl Input {
    /// Content, named by `what`: a change reads `what changed`.
    pub fn hash(what: impl Into<String>, hash: impl Into<String>) -> Input {
        Input {
            what: what.into(),
            shown: None,
            hash: hash.into(),
        }
    }
    /// A value shown on change: `what old -> new`.
    pub fn shown(what: impl Into<String>, shown: impl Into<String>) -> Input {
        Input {
            what: what.into(),
            shown: Some(shown.into()),
            hash: String::new(),
        }
    }
    /// A shown value with a hash behind it (a package version and its .deb's sha256).
    pub fn versioned(
        what: impl Into<String>,
        shown: impl Into<String>,
        hash: impl Into<String>,
    ) -> Input {
        Input {
            what: what.into(),
            shown: Some(shown.into()),
            hash: hash.into(),
        }
    }
    /// The hash of any serialisable value, as an input's hash.
    pub fn digest_of<T: Serialize + ?Sized>(v: &T) -> String {
        let mut w = HashingWriter::new(std::io::sink());
        serde_json::to_writer(&mut w, v).expect("in-memory JSON");
        let (_, d, _) = w.finish();
        d.hex().to_owned()
    }
}

/// Why a layer is built, against the inputs of the last build of the same layer
/// of the same recipe (`None`: there was none).
pub fn explain(old: Option<&[Input]>, new: &[Input]) -> Vec<String> {
    let Some(old) = old else {
        return vec!["new layer".into()];
    };
    let old_map: BTreeMap<&str, &Input> = old.iter().map(|i| (i.what.as_str(), i)).collect();
    let new_map: BTreeMap<&str, &Input> = new.iter().map(|i| (i.what.as_str(), i)).collect();
    let mut out = vec![];
    for i in new {
        match old_map.get(i.what.as_str()) {
            None => out.push(format!("{} added", i.what)),
            Some(o) if *o == i => {}
            Some(o) => match (&o.shown, &i.shown) {
                (Some(a), Some(b)) if a != b => out.push(format!("{} {a} -> {b}", i.what)),
                _ => out.push(format!("{} changed", i.what)),
            },
        }
    }
    for o in old {
        if !new_map.contains_key(o.what.as_str()) {
            out.push(format!("{} removed", o.what));
        }
    }
    if out.is_empty() {
        // same inputs, another key: the record was made by another imgbuild
        out.push("not in the cache".into());
    }
    const MAX: usize = 8;
    if out.len() > MAX {
        let more = out.len() - MAX;
        out.truncate(MAX);
        out.push(format!("and {more} more"));
    }
    out
}

/// What every layer source may read while locking: the command's session.
pub struct LockCx<'a> {
    pub session: &'a Session,
    pub recipe: &'a Recipe,
    /// 0-based index of the layer in its recipe.
    pub index: usize,
    /// The platform the layer is locked for (Debian pins are per architecture).
    pub platform: crate::platform::Platform,
}

/// What a source sees while planning one layer.
pub struct LayerCx<'c, 's> {
    pub session: &'s Session,
    pub stat: &'s StatCache,
    pub recipe: &'c Recipe,
    /// 0-based index of the layer in its recipe.
    pub index: usize,
    /// Directories and symlinks of the layers below.
    pub lower: &'c LowerView,
    /// The image's layers below this one (base image included).
    pub lower_layers: &'c [LayerReport],
    /// The image's accounts: those below plus what this layer declares so far
    /// (Debian's base accounts while no layer wrote any).
    pub accounts: Accounts,
    /// Whether this layer writes `/etc/passwd` & co. (declared accounts, or a
    /// Debian base fix-up).
    pub write_accounts: bool,
    /// The platform of the image being built. Only a source whose bytes depend on
    /// the architecture makes it an input (Debian packages, a venv's wheels): a layer
    /// of files is the same layer, byte for byte, on every platform.
    platform: crate::platform::Platform,
    inputs: Vec<Input>,
    context: AncestorContext,
    whole_lower_view: bool,
}

impl LayerCx<'_, '_> {
    /// `recipes/x.toml:LINE:COL`, for messages.
    pub fn at(&self, pos: &Pos) -> String {
        format!("{}:{}:{}", self.recipe.file.display(), pos.line, pos.column)
    }
    /// `[recipe] layer N`, for progress lines.
    pub fn label(&self) -> String {
        format!("[{}] layer {}", self.recipe.name, self.index + 1)
    }
    /// The platform of the image being built (see the field's doc: make it an input
    /// only if the source's bytes depend on it).
    #[allow(dead_code)] // for the sources to come (a base's platform-specific files)
    pub fn platform(&self) -> crate::platform::Platform {
        self.platform
    }
    /// The Debian architecture of the image being built.
    pub fn arch(&self) -> imgbuild_debian::Arch {
        self.platform.arch
    }
    pub fn input(&mut self, input: Input) {
        self.inputs.push(input);
    }
    /// An image path resolved through the lower layers' symlinks; what it was
    /// resolved through becomes an input.
    pub fn resolve_dest(&mut self, dest: &str) -> Result<TreePath> {
        let resolved = self.lower.resolve(dest);
        self.context.extend(self.lower.context_for(&resolved));
        Ok(TreePath::new(&resolved)?)
    }
    /// The last build of another recipe's image this command has made (or found
    /// entirely cached); only recipes named by [`LayerSource::depends_on`] are
    /// guaranteed to be there.
    /// (Of the same platform as the image being built.)
    pub fn image(&self, name: &str) -> Option<crate::cache::ImageRecord> {
        self.session
            .images
            .lock()
            .expect("images")
            .get(&(name.to_owned(), self.platform))
            .cloned()
    }
    /// The source writes anywhere (packages, a venv): the whole lower view is an input.
    pub fn depends_on_whole_lower_view(&mut self) {
        self.whole_lower_view = true;
    }
}

/// A layer whose fingerprint is known and whose tree can be built on demand.
pub struct PlannedLayer<'s> {
    pub fingerprint: Digest,
    pub inputs: Vec<Input>,
    pub description: String,
    /// The image's accounts after this layer (`None`: no layer wrote any yet).
    pub accounts_after: Option<Accounts>,
    plans: Vec<Box<dyn SourcePlan + 's>>,
}

/// The description of a layer from its sources (`empty` for none).
pub fn describe(sources: &[Box<dyn LayerSource>]) -> String {
    let parts: Vec<String> = sources.iter().filter_map(|s| s.describe()).collect();
    if parts.is_empty() {
        "empty".into()
    } else {
        parts.join(", ")
    }
}

/// Pins every source's unpinned inputs of one layer in the session's lock.
pub fn lock_layer(
    session: &Session,
    recipe: &Recipe,
    index: usize,
    platform: crate::platform::Platform,
) -> Result<()> {
    let cx = LockCx {
        session,
        recipe,
        index,
        platform,
    };
    for s in &recipe.layers[index].sources {
        s.lock(&cx)?;
    }
    Ok(())
}

/// Fingerprints one layer: every source states its inputs, in build order.
#[allow(clippy::too_many_arguments)]
pub fn plan_layer<'s>(
    session: &'s Session,
    stat: &'s StatCache,
    recipe: &'s Recipe,
    index: usize,
    lower: &LowerView,
    lower_layers: &[LayerReport],
    accounts_before: &Option<Accounts>,
    write_contract: &str,
    platform: crate::platform::Platform,
) -> Result<PlannedLayer<'s>> {
    lock_layer(session, recipe, index, platform)?;
    let spec = &recipe.layers[index];
    let mut cx = LayerCx {
        session,
        stat,
        recipe,
        index,
        lower,
        lower_layers,
        // An image has no accounts until a layer writes them; names then resolve
        // against Debian's standard base accounts plus what the recipe declares.
        accounts: accounts_before
            .clone()
            .unwrap_or_else(Accounts::debian_base),
        write_accounts: false,
        platform,
        inputs: vec![Input::shown(
            "imgbuild layer format",
            format!("{FINGERPRINT_VERSION} {write_contract}"),
        )],
        context: vec![],
        whole_lower_view: false,
    };
    let mut plans = Vec::with_capacity(spec.sources.len());
    for s in &spec.sources {
        plans.push(s.plan(&mut cx)?);
    }
    let LayerCx {
        mut inputs,
        mut context,
        whole_lower_view,
        accounts,
        write_accounts,
        ..
    } = cx;
    context.sort();
    context.dedup();
    inputs.push(Input::hash(
        "lower layers' directories and symlinks under this layer's paths",
        Input::digest_of(&context),
    ));
    if whole_lower_view {
        inputs.push(Input::hash(
            "lower layers' directories and symlinks",
            Input::digest_of(lower),
        ));
    }
    // The fingerprint: one JSON line per input, serialised straight into the hasher.
    let mut h = std::io::BufWriter::with_capacity(64 * 1024, HashingWriter::new(std::io::sink()));
    for i in &inputs {
        serde_json::to_writer(&mut h, &(&i.what, &i.shown, &i.hash))?;
        std::io::Write::write_all(&mut h, b"\n")?;
    }
    let (_, fingerprint, _) = h.into_inner().map_err(|e| e.into_error())?.finish();
    Ok(PlannedLayer {
        fingerprint,
        inputs,
        description: describe(&spec.sources),
        accounts_after: if write_accounts {
            Some(accounts)
        } else {
            accounts_before.clone()
        },
        plans,
    })
}

/// What building a layer produced besides the tree.
pub struct Built {
    pub tree: Tree,
    pub blobs: Vec<Digest>,
    pub notes: Vec<String>,
    /// What the sources installed (completed from the tree by the builder).
    pub contents: crate::supply::contents::LayerContents,
}

impl PlannedLayer<'_> {
    /// Builds the layer's tree (on a cache miss).
    pub fn build_tree(self, lower: &LowerView) -> Result<Built> {
        let mut tree = Tree::new();
        let mut blobs = vec![];
        let mut notes = vec![];
        let mut contents = crate::supply::contents::LayerContents::default();
        for p in self.plans {
            let c = p.build(&mut tree)?;
            blobs.extend(c.blobs);
            notes.extend(c.notes);
            contents.extend(c.contents);
        }
        tree.adopt_lower_dirs(|p| lower.dir_meta(p.as_str()));
        Ok(Built {
            tree,
            blobs,
            notes,
            contents,
        })
    }
}

/// The directories and symlinks a tree writes, for the layers above it.
pub fn view_of(tree: &Tree) -> LowerView {
    let mut v = LowerView::default();
    for (p, n) in tree.iter() {
        match n {
            Node::Dir(m) => {
                v.dirs.insert(p.as_str().to_owned(), (m.mode, m.uid, m.gid));
            }
            Node::Symlink { target, .. } => {
                v.symlinks.insert(p.as_str().to_owned(), target.clone());
            }
            _ => {}
        }
    }
    v
}

/// Declares the layer table and registers every kind of source, in build order:
/// `key: module::Type` where `key` names the kind's raw table in the layer.
macro_rules! layer_sources {
    ($($field:ident: $ty:ty),* $(,)?) => {
        /// One `[[layers]]` table: every kind's keys, each taken by its kind.
        #[derive(Debug, Default)]
        pub struct RawLayer {
            $(pub $field: <$ty as SourceKind>::Raw,)*
        }

        impl<'de> Deserialize<'de> for RawLayer {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visit;
                impl<'de> serde::de::Visitor<'de> for Visit {
                    type Value = RawLayer;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a layer table")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<RawLayer, A::Error> {
                        let mut raw = RawLayer::default();
                        while let Some(key) = map.next_key::<String>()? {
                            $(
                                if <<$ty as SourceKind>::Raw as RawTable>::KEYS.contains(&key.as_str()) {
                                    raw.$field.take(&key, &mut map)?;
                                    continue;
                                }
                            )*
                            let known: Vec<String> = [$(<<$ty as SourceKind>::Raw as RawTable>::KEYS),*]
                                .concat()
                                .iter()
                                .map(|k| format!("`{k}`"))
                                .collect();
                            return Err(serde::de::Error::custom(format!(
                                "unknown field `{key}`, expected one of {}",
                                known.join(", ")
                            )));
                        }
                        Ok(raw)
                    }
                }
                d.deserialize_map(Visit)
            }
        }

        /// The sources of one layer, in build order.
        pub fn parse_layer(
            cx: &RecipeCx,
            raw: &RawLayer,
            pos: &Pos,
        ) -> Result<Vec<Box<dyn LayerSource>>, RecipeError> {
            let mut sources: Vec<Box<dyn LayerSource>> = vec![];
            $(
                if let Some(s) = <$ty as SourceKind>::parse(cx, &raw.$field, pos)? {
                    sources.push(Box::new(s));
                }
            )*
            Ok(sources)
        }
    };
}

layer_sources! {
    debian: debian::DebianSource,
    python: python::PythonSource,
    build: build_step::BuildStep,
    archive: archive::ArchiveSource,
    files: files::FilesSource,
    // last: its build checks the finished layer's ELF files (src/source/linkage.rs)
    linkage: linkage::LinkageSource,
}

/// A raw table with a single key holding one table (`debian = {...}`).
#[macro_export]
macro_rules! single_key_table {
    ($name:ident, $key:literal, $inner:ty) => {
        #[derive(Debug, Default)]
        pub struct $name(pub Option<toml::Spanned<$inner>>);
        impl $crate::source::RawTable for $name {
            const KEYS: &'static [&'static str] = &[$key];
            fn take<'de, A: serde::de::MapAccess<'de>>(
                &mut self,
                _key: &str,
                map: &mut A,
            ) -> Result<(), A::Error> {
                self.0 = Some(map.next_value()?);
                Ok(())
            }
        }
    };
}

/// The HTTP client, made on first use: a build served from the cache never
/// starts one (it costs a runtime thread and TLS set-up).
#[derive(Default)]
pub struct Http(std::sync::OnceLock<reqwest::blocking::Client>);

impl Http {
    pub fn client(&self) -> Result<&reqwest::blocking::Client> {
        if let Some(c) = self.0.get() {
            return Ok(c);
        }
        let c = reqwest::blocking::Client::builder()
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            // The blocking client applies this to the wait for an answer and then to
            // each read of the body: an idle timeout, never a limit on a whole (large,
            // slow) download. Transient failures are retried by the downloaders.
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("failed to set up the HTTP client")?;
        Ok(self.0.get_or_init(|| c))
    }
}

/// What the sources of all layers of one command share: network client, Debian
/// index and lock, and where progress goes.
pub struct Session {
    pub debian: debian::DebianInputs,
    pub http: std::sync::Arc<Http>,
    pub store: imgbuild_store::Store,
    pub jobs: usize,
    pub progress: crate::progress::Progress,
    /// Registry client options for base images (insecure registries, CA directories).
    pub registry: imgbuild_registry::ClientOptions,
    /// The images this command has built (or found cached), by recipe name and
    /// platform, for the sources that read another image.
    pub images:
        std::sync::Mutex<BTreeMap<(String, crate::platform::Platform), crate::cache::ImageRecord>>,
    /// `--check-reproducible`: build steps run twice and compare their outputs.
    pub check_reproducible: bool,
    /// The registry layer cache, looked up after the store (see `remote_cache.rs`).
    pub remote_cache: Option<std::sync::Arc<crate::remote_cache::RemoteCache>>,
}

impl Session {
    pub fn new(project: &crate::project::Project, locked: bool, relock: bool) -> Result<Session> {
        let settings = crate::settings::Settings::load(&project.root)?;
        let lock = crate::lockfile::Lockfile::load(&project.root)?;
        let http = std::sync::Arc::new(Http::default());
        Ok(Session {
            debian: debian::DebianInputs::new(
                settings.mirror(),
                settings.suite(),
                lock,
                locked,
                relock,
                http.clone(),
                project.store.clone(),
                project.jobs,
                project.progress.clone(),
            ),
            http,
            store: project.store.clone(),
            jobs: project.jobs,
            progress: project.progress.clone(),
            registry: imgbuild_registry::ClientOptions {
                counts: project.registry_counts.clone(),
                ..settings.registry_options(&[], project.jobs.clamp(2, 8))
            },
            images: Default::default(),
            check_reproducible: false,
            remote_cache: project.remote_cache.clone(),
        })
    }
}
