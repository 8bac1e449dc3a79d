//! Turning one `[[layers]]` entry into a fingerprint, and on a cache miss into a
//! [`Tree`].
//!
//! [`prepare`] does the cheap part for every layer on every build: it walks the
//! project sources through the stat cache, resolves owners against the image's
//! accounts and destinations through the lower layers' symlinks, and hashes all of
//! it, with the write contract and the format version, into the layer's
//! fingerprint. [`Prepared::build_tree`] does the rest only when the fingerprint is
//! not in the cache. Each source kind (files, debian, python) contributes to both.

pub mod base;
pub mod debian;
pub mod files;
pub mod python;
pub mod stdlib_pyc;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use imgbuild_layer::{Content, FileHash, Meta, Node, Tree, TreePath};
use imgbuild_store::{Digest, HashingWriter};

use crate::lower::LowerView;
use crate::recipe::{FileSource, LayerSpec, Recipe};
use files::{StatCache, WalkedKind};
use imgbuild_debian::system::{Accounts, Group};

/// Bump when the way a layer is derived from its inputs changes.
const FINGERPRINT_VERSION: &str = "imgbuild-layer-fingerprint-v3";

/// A planned entry: its node, plus the content hash that stands in for the host
/// path in the fingerprint (paths differ between checkouts; content does not).
struct Planned {
    path: TreePath,
    node: Node,
    hash: Option<FileHash>,
    /// (device, inode) of a host file with several links, to find hardlinks.
    link_key: Option<(u64, u64)>,
}

/// A layer whose fingerprint is known and whose tree can be built on demand.
pub struct Prepared<'a> {
    pub fingerprint: Digest,
    pub description: String,
    /// The image's accounts after this layer (`None`: no layer wrote any yet).
    pub accounts_after: Option<Accounts>,
    planned: Vec<Planned>,
    accounts_written: bool,
    extra: Vec<Box<dyn ExtraSource + Send + 'a>>,
}

/// A source kind beyond plain files (Debian packages, Python wheels): states its
/// part of the fingerprint up front and fills the tree on a cache miss.
pub trait ExtraSource {
    /// Canonical text of everything this source's output depends on.
    fn fingerprint(&self) -> String;
    /// Adds this source's entries to the tree. Returns blobs used (for gc) and notes.
    fn build(&mut self, tree: &mut Tree) -> Result<(Vec<Digest>, Vec<String>)>;
}

/// Serialising fingerprint lines of different types through one closure.
mod erased {
    pub trait Line {
        fn write_to(&self, w: &mut dyn std::io::Write) -> serde_json::Result<()>;
    }
    impl<T: serde::Serialize> Line for T {
        fn write_to(&self, w: &mut dyn std::io::Write) -> serde_json::Result<()> {
            serde_json::to_writer(w, self)
        }
    }
}

/// Fingerprints and plans one layer.
#[allow(clippy::too_many_arguments)]
pub fn prepare<'a>(
    recipe: &Recipe,
    index: usize,
    spec: &LayerSpec,
    lower: &LowerView,
    accounts_before: &Option<Accounts>,
    write_contract: &str,
    stat: &StatCache,
    extra: Vec<Box<dyn ExtraSource + Send + 'a>>,
) -> Result<Prepared<'a>> {
    let at = |line: usize, col: usize| format!("{}:{line}:{col}", recipe.file.display());
    let base_fixup = spec.debian.as_ref().is_some_and(|d| d.base);
    let accounts_written = base_fixup || !spec.users.is_empty() || !spec.groups.is_empty();
    // An image has no accounts until a layer writes them; names then resolve
    // against Debian's standard base accounts plus what the recipe declares.
    let mut accounts = accounts_before
        .clone()
        .unwrap_or_else(Accounts::debian_base);
    let pos = spec
        .pos
        .clone()
        .unwrap_or(crate::recipe::Pos { line: 0, column: 0 });
    declare(&mut accounts, spec)
        .with_context(|| format!("{}: in layer {}", at(pos.line, pos.column), index + 1))?;

    let mut planned: Vec<Planned> = vec![];
    let mut context: crate::lower::AncestorContext = vec![];
    let mut resolve_dest = |dest: &str| -> Result<TreePath> {
        let resolved = lower.resolve(dest);
        context.extend(lower.context_for(&resolved));
        Ok(TreePath::new(&resolved)?)
    };

    for f in &spec.files {
        let owner = match &f.owner {
            Some(o) => resolve_owner(&accounts, o).with_context(|| at(f.pos.line, f.pos.column))?,
            None => (0, 0),
        };
        let dest = resolve_dest(&f.dest)?;
        match &f.source {
            FileSource::Inline(text) => {
                let meta = Meta::new(f.mode.unwrap_or(0o644), owner.0, owner.1);
                let bytes = text.as_bytes().to_vec();
                planned.push(Planned {
                    path: dest,
                    hash: Some(FileHash::of_bytes(&bytes)),
                    link_key: None,
                    node: Node::File {
                        meta,
                        content: Content::inline(bytes),
                    },
                });
            }
            FileSource::Host { abs, rel } => {
                let walked = files::walk(abs, stat).with_context(|| {
                    format!(
                        "{}: src \"{}\"",
                        at(f.pos.line, f.pos.column),
                        rel.display()
                    )
                })?;
                for w in walked {
                    let path = if w.rel.is_empty() {
                        dest.clone()
                    } else {
                        dest.join(&w.rel)?
                    };
                    let mode = if w.rel.is_empty() {
                        f.mode.unwrap_or(w.mode)
                    } else {
                        w.mode
                    };
                    let meta = Meta::new(mode, owner.0, owner.1);
                    let (node, hash) = match w.kind {
                        WalkedKind::Dir => (Node::Dir(meta), None),
                        WalkedKind::Symlink { target } => (Node::Symlink { meta, target }, None),
                        WalkedKind::File {
                            host,
                            size,
                            hash,
                            link_key,
                        } => {
                            let node = Node::File {
                                meta,
                                content: Content::Host {
                                    path: host,
                                    size,
                                    hash: Some(hash),
                                },
                            };
                            planned.push(Planned {
                                path,
                                node,
                                hash: Some(hash),
                                link_key,
                            });
                            continue;
                        }
                    };
                    planned.push(Planned {
                        path,
                        node,
                        hash,
                        link_key: None,
                    });
                }
            }
        }
    }
    for d in &spec.dirs {
        let owner = match &d.owner {
            Some(o) => resolve_owner(&accounts, o).with_context(|| at(d.pos.line, d.pos.column))?,
            None => (0, 0),
        };
        planned.push(Planned {
            path: resolve_dest(&d.path)?,
            node: Node::Dir(Meta::new(d.mode, owner.0, owner.1)),
            hash: None,
            link_key: None,
        });
    }
    for s in &spec.symlinks {
        let owner = match &s.owner {
            Some(o) => resolve_owner(&accounts, o).with_context(|| at(s.pos.line, s.pos.column))?,
            None => (0, 0),
        };
        planned.push(Planned {
            path: resolve_dest(&s.path)?,
            node: Node::Symlink {
                meta: Meta::new(0o777, owner.0, owner.1),
                target: s.target.clone(),
            },
            hash: None,
            link_key: None,
        });
    }
    link_hardlinks(&mut planned);

    // The fingerprint: a line-oriented description of every input, one JSON array
    // per line, serialised straight into the hasher (tuples and structs have a fixed
    // field order; maps are BTreeMaps), without building JSON values.
    let mut h = std::io::BufWriter::with_capacity(64 * 1024, HashingWriter::new(std::io::sink()));
    let mut line = |v: &dyn erased::Line| -> Result<()> {
        v.write_to(&mut h)?;
        std::io::Write::write_all(&mut h, b"\n")?;
        Ok(())
    };
    line(&(FINGERPRINT_VERSION, write_contract))?;
    context.sort();
    context.dedup();
    line(&("lower", &context))?;
    if accounts_written {
        line(&("accounts", &accounts, base_fixup))?;
    }
    for p in &planned {
        let path = p.path.as_str();
        match &p.node {
            Node::Dir(m) => line(&("d", path, m.mode, m.uid, m.gid))?,
            Node::File { meta, .. } => {
                line(&("f", path, meta.mode, meta.uid, meta.gid, p.hash.as_ref()))?
            }
            Node::Symlink { meta, target } => line(&("l", path, meta.uid, meta.gid, target))?,
            Node::Hardlink { target } => line(&("h", path, target.as_str()))?,
        }
    }
    if !extra.is_empty() {
        // Packages and venvs write anywhere: the whole lower view matters.
        line(&("lower-view", Digest::of_bytes(&serde_json::to_vec(lower)?)))?;
    }
    for e in &extra {
        line(&("source", e.fingerprint()))?;
    }
    let h = h.into_inner().map_err(|e| e.into_error())?;
    let (_, fingerprint, _) = h.finish();
    Ok(Prepared {
        fingerprint,
        description: spec.describe(),
        accounts_after: if accounts_written {
            Some(accounts)
        } else {
            accounts_before.clone()
        },
        planned,
        accounts_written,
        extra,
    })
}

fn resolve_owner(accounts: &Accounts, o: &crate::recipe::OwnerSpec) -> Result<(u32, u32)> {
    let spec = match &o.group {
        Some(g) => format!("{}:{g}", o.user),
        None => o.user.clone(),
    };
    Ok(accounts.resolve_owner(&spec)?)
}

/// Adds a layer's declared groups, then users; a user whose primary group does not
/// exist gets one of its own name, as `adduser` would create.
fn declare(accounts: &mut Accounts, spec: &LayerSpec) -> Result<()> {
    for g in &spec.groups {
        accounts.add_group(g.clone())?;
    }
    for u in &spec.users {
        if !accounts.groups.iter().any(|g| g.gid == u.gid) {
            accounts.add_group(Group {
                name: u.name.clone(),
                gid: u.gid,
                members: vec![],
            })?;
        }
        accounts.add_user(u.clone())?;
    }
    Ok(())
}

/// Files that share an inode within the layer become one file plus hardlinks to
/// it; the first in tar order is the file, so extraction order works. Only entries
/// with the same owner and mode are linked (a link has its target's metadata): the
/// same host file placed twice with different `mode` or `owner` stays two files.
fn link_hardlinks(planned: &mut [Planned]) {
    type LinkGroup = ((u64, u64), (u32, u32, u32));
    let mut groups: BTreeMap<LinkGroup, Vec<usize>> = BTreeMap::new();
    for (i, p) in planned.iter().enumerate() {
        if let (Some(k), Node::File { meta, .. }) = (p.link_key, &p.node) {
            groups
                .entry((k, (meta.mode, meta.uid, meta.gid)))
                .or_default()
                .push(i);
        }
    }
    for (_, mut idx) in groups {
        if idx.len() < 2 {
            continue;
        }
        idx.sort_by(|a, b| planned[*a].path.cmp(&planned[*b].path));
        let first = planned[idx[0]].path.clone();
        for &i in &idx[1..] {
            planned[i].node = Node::Hardlink {
                target: first.clone(),
            };
            planned[i].hash = None;
        }
    }
}

/// What building a layer produced besides the tree.
pub struct Built {
    pub tree: Tree,
    pub inputs: Vec<Digest>,
    pub notes: Vec<String>,
}

impl Prepared<'_> {
    /// Builds the layer's tree (on a cache miss).
    pub fn build_tree(mut self, lower: &LowerView) -> Result<Built> {
        let mut tree = Tree::new();
        let mut inputs = vec![];
        let mut notes = vec![];
        for e in &mut self.extra {
            let (i, n) = e.build(&mut tree)?;
            inputs.extend(i);
            notes.extend(n);
        }
        if self.accounts_written
            && let Some(a) = &self.accounts_after
        {
            a.render(&mut tree)?;
        }
        for p in self.planned {
            if let (Node::Dir(m), Some(Node::Dir(_))) = (&p.node, tree.get(&p.path)) {
                tree.insert(p.path, Node::Dir(*m))?;
                continue;
            }
            if tree.get(&p.path).is_some_and(|n| matches!(n, Node::Dir(_))) {
                // replacing a directory that an earlier source wrote: clear it first,
                // as writing a file over it on a real filesystem would require
                tree.remove(&p.path);
            }
            tree.insert(p.path, p.node)?;
        }
        tree.adopt_lower_dirs(|p| lower.dir_meta(p.as_str()));
        Ok(Built {
            tree,
            inputs,
            notes,
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
}

impl Session {
    pub fn new(project: &crate::project::Project, locked: bool, relock: bool) -> Result<Session> {
        let settings = crate::settings::Settings::load(&project.root)?;
        let lock = crate::lockfile::Lockfile::load(&project.root)?;
        let http = std::sync::Arc::new(Http::default());
        Ok(Session {
            debian: debian::DebianInputs::new(
                settings.mirror(),
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
            registry: settings.registry_options(&[], project.jobs.clamp(2, 8)),
        })
    }

    /// The non-file sources of a layer (Debian packages, Python wheels). `lower` are
    /// the image's layers below this one (a venv's `.pyc` files are written by the
    /// interpreter they contain).
    pub fn extra_sources<'a>(
        &'a self,
        recipe: &Recipe,
        index: usize,
        spec: &LayerSpec,
        lower: &[crate::cache::LayerReport],
    ) -> Result<Vec<Box<dyn ExtraSource + Send + 'a>>> {
        let mut v: Vec<Box<dyn ExtraSource + Send + 'a>> = vec![];
        if let Some(d) = &spec.debian {
            v.push(Box::new(debian::DebianSource::new(
                &self.debian,
                recipe,
                index,
                d,
            )?));
        }
        if let Some(p) = &spec.python {
            v.push(Box::new(python::PythonSource::new(
                recipe,
                index,
                p,
                lower,
                &self.store,
                &self.http,
                self.jobs,
                &self.progress,
            )?));
        }
        Ok(v)
    }
}
