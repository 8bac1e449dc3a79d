//! The `files` layer source: what a recipe places explicitly. It owns the layer keys
//! `files` (project files and trees, or inline content), `dirs`, `symlinks`, `users`
//! and `groups`, and writes the image's account files (`/etc/passwd` & co.) when the
//! layer declares accounts or a Debian base fix-up asks for them.
//!
//! It is built last in a layer, so what a recipe declares wins over what packages
//! or a venv wrote at the same path. Two entries of the layer at one destination (two
//! files, or a file and a directory) are an error; a `dirs` entry may set the mode of a
//! directory that a tree also writes.
//!
//! A `files` entry with `image = "NAME"` copies `src`, an absolute path of another
//! recipe's image, with that image's modes, owners, symlinks and hard links (the
//! multi-stage `COPY --from`): the image is read from its layer blobs
//! ([`ImageFiles`], whiteouts applied, metadata only), and each file's bytes are
//! streamed from the layer, decompressed once into a store spool, when the layer is
//! written. Its inputs are the image's manifest digest (`image NAME`) and the entry's
//! src, dest and owner: a change in the other image rebuilds the layer. Planning
//! states only those; the image's layers are read when the layer is built (a cache
//! miss), so a no-op build or `imgbuild plan` never decompresses the other image,
//! and a `src` missing from it is reported by the build.
//!
//! A `files` entry with `git = "https://…", rev = "<commit>"` copies that commit's tree
//! to `dest` ([`super::git::tree_nodes`]); its input is the URL and the commit, and
//! the tree is fetched (once per store) only when the layer is built.
//!
//! Inputs: every entry's destination (resolved through the lower layers' symlinks),
//! mode, owner and content hash, named by its project path (`layers/app/app.py`),
//! and the accounts the layer writes. Project trees are walked through the stat cache
//! ([`super::walk`]), so an unchanged tree is not reread.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry as MapEntry;

use anyhow::{Context, Result, bail};
use imgbuild_layer::image::{Entry, FileSource as ImageSource, ImageFiles, Spool};
use imgbuild_layer::{Content, FileHash, Meta, Node, Tree, TreePath};
use serde::Deserialize;
use toml::Spanned;

use super::walk::{self, WalkedKind};
use super::{Contribution, Input, LayerCx, LayerSource, RawTable, SourceKind, SourcePlan};
use crate::recipe::{OwnerSpec, Pos, RecipeCx, RecipeError};
use imgbuild_debian::system::{Accounts, Group};

/// Accounts are declared with the very types the image's account database uses.
pub use imgbuild_debian::system::{Group as GroupSpec, User as UserSpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub src: Option<Spanned<String>>,
    pub dest: Spanned<String>,
    pub content: Option<String>,
    /// Another recipe whose image `src` is copied out of.
    pub image: Option<Spanned<String>>,
    /// A git repository whose tree at `rev` (a commit) is copied to `dest`.
    pub git: Option<Spanned<String>>,
    pub rev: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub owner: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDir {
    pub path: Spanned<String>,
    pub mode: Option<Spanned<String>>,
    pub owner: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSymlink {
    pub path: Spanned<String>,
    pub target: String,
    pub owner: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: String,
    pub uid: u32,
    pub gid: Option<u32>,
    #[serde(default)]
    pub gecos: String,
    pub home: Option<String>,
    pub shell: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub name: String,
    pub gid: u32,
    #[serde(default)]
    pub members: Vec<String>,
}

/// The keys of `[[layers]]` this kind owns.
#[derive(Debug, Default)]
pub struct RawFiles {
    pub files: Vec<Spanned<RawFile>>,
    pub dirs: Vec<Spanned<RawDir>>,
    pub symlinks: Vec<Spanned<RawSymlink>>,
    pub users: Vec<Spanned<RawUser>>,
    pub groups: Vec<Spanned<RawGroup>>,
}

impl RawTable for RawFiles {
    const KEYS: &'static [&'static str] = &["files", "dirs", "symlinks", "users", "groups"];
    fn take<'de, A: serde::de::MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        match key {
            "files" => self.files = map.next_value()?,
            "dirs" => self.dirs = map.next_value()?,
            "symlinks" => self.symlinks = map.next_value()?,
            "users" => self.users = map.next_value()?,
            _ => self.groups = map.next_value()?,
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub enum FileSource {
    /// A file or directory in the project, relative to the project root.
    Host {
        rel: std::path::PathBuf,
        abs: std::path::PathBuf,
    },
    Inline(String),
    /// A path (absolute) of another recipe's image, copied with its metadata.
    Image {
        image: String,
        path: String,
        pos: Pos,
    },
    /// The tree of a git commit ([`super::git`]).
    Git {
        url: String,
        commit: String,
    },
}

#[derive(Clone, Debug)]
pub struct FileSpec {
    pub source: FileSource,
    pub dest: String,
    pub mode: Option<u32>,
    pub owner: Option<OwnerSpec>,
    pub pos: Pos,
}

#[derive(Clone, Debug)]
pub struct DirSpec {
    pub path: String,
    pub mode: u32,
    pub owner: Option<OwnerSpec>,
    pub pos: Pos,
}

#[derive(Clone, Debug)]
pub struct SymlinkSpec {
    pub path: String,
    pub target: String,
    pub owner: Option<OwnerSpec>,
    pub pos: Pos,
}

/// Every layer has one (possibly empty): it also writes the accounts.
#[derive(Debug, Default)]
pub struct FilesSource {
    pub files: Vec<FileSpec>,
    pub dirs: Vec<DirSpec>,
    pub symlinks: Vec<SymlinkSpec>,
    pub users: Vec<UserSpec>,
    pub groups: Vec<GroupSpec>,
    pub pos: Option<Pos>,
}

impl SourceKind for FilesSource {
    type Raw = RawFiles;

    fn parse(cx: &RecipeCx, raw: &RawFiles, layer: &Pos) -> Result<Option<Self>, RecipeError> {
        let mut s = FilesSource {
            pos: Some(layer.clone()),
            ..Default::default()
        };
        for f in &raw.files {
            let rf = f.get_ref();
            let dest = cx.image_path(&rf.dest, "dest")?;
            let source = match (&rf.src, &rf.content) {
                _ if rf.git.is_some() => {
                    let git = rf.git.as_ref().expect("checked");
                    if rf.src.is_some()
                        || rf.content.is_some()
                        || rf.image.is_some()
                        || rf.mode.is_some()
                    {
                        return Err(cx.err(f, "a file with `git` takes `rev`, `dest` and `owner` only: the whole tree of the commit is copied, with its modes"));
                    }
                    let Some(rev) = &rf.rev else {
                        return Err(cx.err(
                            git,
                            "a file with `git` needs `rev`, the 40-hex commit to copy",
                        ));
                    };
                    let r = rev.get_ref();
                    if r.len() != 40 || !r.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(cx.err(rev, format!("rev \"{r}\" is not a commit: a branch or tag can move, so pin the 40-hex commit it points to (git ls-remote <url> {r})")));
                    }
                    let url = git.get_ref();
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(cx.err(git, "`git` must be an https:// (or http://) URL"));
                    }
                    FileSource::Git {
                        url: url.clone(),
                        commit: r.to_ascii_lowercase(),
                    }
                }
                _ if rf.rev.is_some() => {
                    return Err(cx.err(rf.rev.as_ref().expect("checked"), "`rev` goes with `git`"));
                }
                (Some(src), None) if rf.image.is_some() => {
                    let image = rf.image.as_ref().expect("checked");
                    let name = image.get_ref();
                    if name.contains(['/', ':', '@']) {
                        return Err(cx.err(
                            image,
                            format!("image \"{name}\" is not a recipe name: files are copied out of recipes' images only; for a registry image, add a recipe with `from = \"{name}\"` (pinned) and name that recipe here"),
                        ));
                    }
                    FileSource::Image {
                        image: name.clone(),
                        path: cx.image_path(src, "src")?,
                        pos: cx.pos(image),
                    }
                }
                (None, _) if rf.image.is_some() => {
                    return Err(cx.err(
                        f,
                        "a file with `image` needs `src`, the absolute path in that image to copy",
                    ));
                }
                (Some(src), None) => {
                    let (rel, abs) = cx.project_path(src, "src")?;
                    FileSource::Host { rel, abs }
                }
                (None, Some(c)) => FileSource::Inline(c.clone()),
                (Some(_), Some(_)) => {
                    return Err(cx.err(f, "a file takes either `src` or `content`, not both"));
                }
                (None, None) => {
                    return Err(cx.err(
                        f,
                        "a file needs `src` (a path in the project) or `content` (inline text)",
                    ));
                }
            };
            if let (Some(m), FileSource::Image { .. }) = (&rf.mode, &source) {
                return Err(cx.err(
                    m,
                    "`mode` does not apply to files copied out of an image: they keep that image's modes",
                ));
            }
            let mode = rf.mode.as_ref().map(|m| cx.mode(m)).transpose()?;
            if let (Some(m), FileSource::Host { abs, .. }) = (&rf.mode, &source)
                && abs.symlink_metadata().is_ok_and(|md| md.is_dir())
            {
                return Err(cx.err(m, "`mode` applies to a single file; for a directory `src` the modes come from the files (exec bits kept), and `dirs` sets directory modes"));
            }
            let owner = rf.owner.as_ref().map(|o| cx.owner(o)).transpose()?;
            s.files.push(FileSpec {
                source,
                dest,
                mode,
                owner,
                pos: cx.pos(f),
            });
        }
        for d in &raw.dirs {
            let rd = d.get_ref();
            s.dirs.push(DirSpec {
                path: cx.image_path(&rd.path, "path")?,
                mode: rd
                    .mode
                    .as_ref()
                    .map(|m| cx.mode(m))
                    .transpose()?
                    .unwrap_or(0o755),
                owner: rd.owner.as_ref().map(|o| cx.owner(o)).transpose()?,
                pos: cx.pos(d),
            });
        }
        for l in &raw.symlinks {
            let rs = l.get_ref();
            if rs.target.is_empty() {
                return Err(cx.err(l, "symlink `target` may not be empty"));
            }
            s.symlinks.push(SymlinkSpec {
                path: cx.image_path(&rs.path, "path")?,
                target: rs.target.clone(),
                owner: rs.owner.as_ref().map(|o| cx.owner(o)).transpose()?,
                pos: cx.pos(l),
            });
        }
        for g in &raw.groups {
            let rg = g.get_ref();
            s.groups.push(GroupSpec {
                name: rg.name.clone(),
                gid: rg.gid,
                members: rg.members.clone(),
            });
        }
        for u in &raw.users {
            let ru = u.get_ref();
            s.users.push(UserSpec {
                name: ru.name.clone(),
                uid: ru.uid,
                gid: ru.gid.unwrap_or(ru.uid),
                gecos: ru.gecos.clone(),
                home: ru.home.clone().unwrap_or_else(|| "/nonexistent".into()),
                shell: ru
                    .shell
                    .clone()
                    .unwrap_or_else(|| "/usr/sbin/nologin".into()),
            });
        }
        s.refuse_declared_clashes(cx, raw)?;
        Ok(Some(s))
    }
}

/// A planned entry: its node, plus the content hash that stands in for the host
/// path in the fingerprint (paths differ between checkouts; content does not).
struct Planned {
    path: TreePath,
    node: Node,
    hash: Option<FileHash>,
    /// (device, inode) of a host file with several links, to find hardlinks.
    link_key: Option<(u64, u64)>,
    /// What names it in a reason: its project path, or `dir /x` for a declared entry.
    what: String,
    /// Where the recipe declares it.
    pos: Pos,
    /// Copied out of another image (its inputs are that image's digest and the entry).
    copied: bool,
    /// A file copied out of another image: which one (index into
    /// `FilesPlan::images`), and where its bytes are there; its content is filled in
    /// when the layer is built.
    from_image: Option<(usize, ImageSource)>,
}

struct FilesPlan<'s> {
    /// The recipe's `files` entries (copies name theirs by index).
    source_files: &'s [FileSpec],
    planned: Vec<Planned>,
    accounts: Option<Accounts>,
    /// Copies out of other images, read when the layer is built (planning states only
    /// each image's manifest digest and the entry: reading an image's layers is for a
    /// cache miss, never for a no-op build or `imgbuild plan`).
    copies: Vec<DeferredCopy>,
    /// Git trees, fetched when the layer is built.
    git_copies: Vec<DeferredGit>,
    /// Their archives and spools, for gc to keep with the layer.
    git_blobs: Vec<imgbuild_store::Digest>,
    /// The images files are copied out of, read once each (when built).
    images: Vec<ImageFiles>,
    store: imgbuild_store::Store,
    place: Place,
}

/// Where a layer's entries are declared, for errors raised when it is built.
struct Place {
    file: std::path::PathBuf,
    layer: usize,
}

impl Place {
    fn at(&self, pos: &Pos) -> String {
        format!("{}:{}:{}", self.file.display(), pos.line, pos.column)
    }
}

/// A `files` entry with `image`: planned without reading the image.
struct DeferredCopy {
    /// Index into the recipe's `files`.
    file: usize,
    image: String,
    /// The image's layer blobs, bottom first.
    layers: Vec<imgbuild_store::Digest>,
    manifest: imgbuild_store::Digest,
    src: String,
    dest: TreePath,
    owner: Option<(u32, u32)>,
    /// Position in `planned` where its entries go (declaration order).
    at: usize,
}

/// A git tree to copy, fetched and expanded when the layer is built.
struct DeferredGit {
    /// Index into the recipe's `files`.
    file: usize,
    url: String,
    commit: String,
    dest: TreePath,
    owner: (u32, u32),
    /// Position in `planned` where its entries go (declaration order).
    at: usize,
}

impl LayerSource for FilesSource {
    fn kind(&self) -> &'static str {
        "files"
    }

    fn describe(&self) -> Option<String> {
        let mut kinds = vec![];
        for (n, what) in [
            (self.files.len(), "file source(s)"),
            (self.dirs.len(), "dir(s)"),
            (self.symlinks.len(), "symlink(s)"),
            (self.users.len(), "user(s)"),
            (self.groups.len(), "group(s)"),
        ] {
            if n > 0 {
                kinds.push(format!("{n} {what}"));
            }
        }
        (!kinds.is_empty()).then(|| kinds.join(", "))
    }

    fn plan<'s>(&'s self, cx: &mut LayerCx<'_, 's>) -> Result<Box<dyn SourcePlan + 's>> {
        let pos = self.pos.clone().unwrap_or(Pos { line: 0, column: 0 });
        if !self.users.is_empty() || !self.groups.is_empty() {
            cx.write_accounts = true;
        }
        self.declare(&mut cx.accounts)
            .with_context(|| format!("{}: in layer {}", cx.at(&pos), cx.index + 1))?;
        let mut planned: Vec<Planned> = vec![];
        let mut copies: Vec<DeferredCopy> = vec![];
        let mut git_copies: Vec<DeferredGit> = vec![];
        let mut stated: BTreeMap<&str, ()> = BTreeMap::new();
        for (file_index, f) in self.files.iter().enumerate() {
            let owner = match &f.owner {
                Some(o) => resolve_owner(&cx.accounts, o).with_context(|| cx.at(&f.pos))?,
                None => (0, 0),
            };
            let dest = cx.resolve_dest(&f.dest)?;
            match &f.source {
                FileSource::Inline(text) => {
                    let meta = Meta::new(f.mode.unwrap_or(0o644), owner.0, owner.1);
                    let bytes = text.as_bytes().to_vec();
                    planned.push(Planned {
                        what: format!("content of {}", f.dest),
                        path: dest,
                        hash: Some(FileHash::of_bytes(&bytes)),
                        link_key: None,
                        node: Node::File {
                            meta,
                            content: Content::inline(bytes),
                        },
                        pos: f.pos.clone(),
                        from_image: None,
                        copied: false,
                    });
                }
                FileSource::Git { url, commit } => {
                    // the commit pins the tree: nothing is fetched to plan
                    cx.input(Input::shown(
                        format!("git {}", imgbuild_python::error::redact_url(url)),
                        format!("{commit} -> {} owner {}:{}", f.dest, owner.0, owner.1),
                    ));
                    git_copies.push(DeferredGit {
                        file: file_index,
                        url: url.clone(),
                        commit: commit.clone(),
                        dest,
                        owner,
                        at: planned.len(),
                    });
                }
                FileSource::Image { image, path, pos } => {
                    let record = built_image(cx, image, pos)?;
                    if stated.insert(image, ()).is_none() {
                        cx.input(Input::hash(
                            format!("image {image}"),
                            record.manifest_digest.to_string(),
                        ));
                    }
                    cx.input(Input::hash(
                        format!("{image}:{path}"),
                        format!("-> {} owner {:?}", f.dest, f.owner.as_ref().map(|_| owner)),
                    ));
                    copies.push(DeferredCopy {
                        file: file_index,
                        image: image.clone(),
                        layers: record
                            .layers
                            .iter()
                            .map(|l| l.descriptor.digest.clone())
                            .collect(),
                        manifest: record.manifest_digest.clone(),
                        src: path.clone(),
                        dest,
                        owner: f.owner.as_ref().map(|_| owner),
                        at: planned.len(),
                    });
                }
                FileSource::Host { abs, rel } => {
                    let walked = walk::walk(abs, cx.stat)
                        .with_context(|| format!("{}: src \"{}\"", cx.at(&f.pos), rel.display()))?;
                    for w in walked {
                        let (path, what) = if w.rel.is_empty() {
                            (dest.clone(), rel.display().to_string())
                        } else {
                            (dest.join(&w.rel)?, rel.join(&w.rel).display().to_string())
                        };
                        let mode = if w.rel.is_empty() {
                            f.mode.unwrap_or(w.mode)
                        } else {
                            w.mode
                        };
                        let meta = Meta::new(mode, owner.0, owner.1);
                        let (node, hash, link_key) = match w.kind {
                            WalkedKind::Dir => (Node::Dir(meta), None, None),
                            WalkedKind::Symlink { target } => {
                                (Node::Symlink { meta, target }, None, None)
                            }
                            WalkedKind::File {
                                host,
                                size,
                                hash,
                                link_key,
                            } => (
                                Node::File {
                                    meta,
                                    content: Content::Host {
                                        path: host,
                                        size,
                                        hash: Some(hash),
                                    },
                                },
                                Some(hash),
                                link_key,
                            ),
                        };
                        planned.push(Planned {
                            path,
                            node,
                            hash,
                            link_key,
                            what,
                            pos: f.pos.clone(),
                            from_image: None,
                            copied: false,
                        });
                    }
                }
            }
        }
        for d in &self.dirs {
            let owner = match &d.owner {
                Some(o) => resolve_owner(&cx.accounts, o).with_context(|| cx.at(&d.pos))?,
                None => (0, 0),
            };
            planned.push(Planned {
                path: cx.resolve_dest(&d.path)?,
                node: Node::Dir(Meta::new(d.mode, owner.0, owner.1)),
                hash: None,
                link_key: None,
                what: format!("dir {}", d.path),
                pos: d.pos.clone(),
                from_image: None,
                copied: false,
            });
        }
        for s in &self.symlinks {
            let owner = match &s.owner {
                Some(o) => resolve_owner(&cx.accounts, o).with_context(|| cx.at(&s.pos))?,
                None => (0, 0),
            };
            planned.push(Planned {
                path: cx.resolve_dest(&s.path)?,
                node: Node::Symlink {
                    meta: Meta::new(0o777, owner.0, owner.1),
                    target: s.target.clone(),
                },
                hash: None,
                link_key: None,
                what: format!("symlink {}", s.path),
                pos: s.pos.clone(),
                from_image: None,
                copied: false,
            });
        }
        let place = Place {
            file: cx.recipe.file.clone(),
            layer: cx.index,
        };
        // again, with the copies' entries, when the layer is built
        refuse_clashes(&place, &planned)?;
        link_hardlinks(&mut planned);

        let accounts = cx.write_accounts.then(|| cx.accounts.clone());
        if let Some(a) = &accounts {
            cx.input(Input::hash("accounts", Input::digest_of(a)));
        }
        // a copied entry's inputs are its image's digest and the entry (stated above)
        for p in planned.iter().filter(|p| !p.copied) {
            let path = p.path.as_str();
            let hash = match &p.node {
                Node::Dir(m) => format!("d {path} {:o} {}:{}", m.mode, m.uid, m.gid),
                Node::File { meta, .. } => format!(
                    "f {path} {:o} {}:{} {}",
                    meta.mode,
                    meta.uid,
                    meta.gid,
                    p.hash.map(|h| h.to_string()).unwrap_or_default()
                ),
                Node::Symlink { meta, target } => {
                    format!("l {path} {}:{} {target}", meta.uid, meta.gid)
                }
                Node::Hardlink { target } => format!("h {path} {}", target.as_str()),
            };
            cx.input(Input::hash(p.what.clone(), hash));
        }
        Ok(Box::new(FilesPlan {
            source_files: &self.files,
            planned,
            accounts,
            copies,
            git_copies,
            git_blobs: vec![],
            images: vec![],
            store: cx.session.store.clone(),
            place,
        }))
    }

    fn depends_on(&self) -> Vec<(String, Pos)> {
        self.files
            .iter()
            .filter_map(|f| match &f.source {
                FileSource::Image { image, pos, .. } => Some((image.clone(), pos.clone())),
                _ => None,
            })
            .collect()
    }
}

/// The last build in this session of recipe `name` (built before the images that
/// copy files out of it).
fn built_image(cx: &LayerCx, name: &str, pos: &Pos) -> Result<crate::cache::ImageRecord> {
    cx.image(name).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: image `{name}` has not been built in this session (it is built before the images that copy files out of it; build it with `imgbuild build {name}`)",
            cx.at(pos)
        )
    })
}

/// Plans the copy of `src` (a file, a symlink's target, or a directory and everything
/// below it) out of `files` to `dest`, with the image's modes and owners (or `owner`
/// when the entry sets one); files that share a layer member (hard links) stay linked.
#[allow(clippy::too_many_arguments)]
fn plan_image_copy(
    place: &Place,
    files: &ImageFiles,
    index: usize,
    (image, src): (&str, &str),
    f: &FileSpec,
    dest: TreePath,
    owner: Option<(u32, u32)>,
    planned: &mut Vec<Planned>,
    link_ids: &mut BTreeMap<(usize, usize, String), u64>,
) -> Result<()> {
    let rel = src.trim_matches('/');
    let missing = || {
        anyhow::anyhow!(
            "{}: src \"{src}\" is not in image `{image}` (no such path after its layers' whiteouts; `imgbuild inspect {image}` lists its layers)",
            place.at(&f.pos)
        )
    };
    // `COPY --from` follows symlinks in `src` (the path itself included)
    let real = files.resolve(rel).ok_or_else(missing)?;
    let top = files.get(&real).ok_or_else(missing)?.clone();
    let mut entries: Vec<(String, Entry)> = vec![(String::new(), top.clone())];
    if matches!(top, Entry::Dir(_)) {
        entries.extend(files.below(&real).map(|(p, e)| (p.to_owned(), e.clone())));
    }
    for (sub, entry) in entries {
        let at = if sub.is_empty() {
            real.clone()
        } else {
            format!("{real}/{sub}")
        };
        let (uid, gid) = owner.unwrap_or_else(|| files.owner(&at).unwrap_or((0, 0)));
        let path = if sub.is_empty() {
            dest.clone()
        } else {
            dest.join(&sub)?
        };
        let (node, from_image, link_key) = match entry {
            Entry::Dir(m) => (Node::Dir(Meta::new(m.mode, uid, gid)), None, None),
            Entry::Symlink(target) => (
                Node::Symlink {
                    meta: Meta::new(0o777, uid, gid),
                    target,
                },
                None,
                None,
            ),
            Entry::File { mode, source } => {
                // a layer member placed at several paths is one inode (a hard link)
                let link_key = match &source {
                    ImageSource::Layer { layer, member } => {
                        let next = link_ids.len() as u64;
                        let id = *link_ids
                            .entry((index, *layer, member.clone()))
                            .or_insert(next);
                        // outside the range of host device numbers: never a host file's key
                        Some((u64::MAX, id))
                    }
                    ImageSource::Content(_) => None,
                };
                (
                    Node::File {
                        meta: Meta::new(mode, uid, gid),
                        // the bytes are found when the layer is built
                        content: Content::inline(Vec::new()),
                    },
                    Some((index, source)),
                    link_key,
                )
            }
        };
        planned.push(Planned {
            path,
            node,
            hash: None,
            link_key,
            what: format!("{image}:/{at}"),
            pos: f.pos.clone(),
            from_image,
            copied: true,
        });
    }
    Ok(())
}

impl SourcePlan for FilesPlan<'_> {
    fn build(mut self: Box<Self>, tree: &mut Tree) -> Result<Contribution> {
        if let Some(a) = &self.accounts {
            a.render(tree)?;
        }
        self.plan_copies()?;
        let mut blobs = self.fill_copied()?;
        blobs.append(&mut self.git_blobs);
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
        Ok(Contribution {
            blobs,
            ..Default::default()
        })
    }
}

impl FilesPlan<'_> {
    /// Reads the images that files are copied out of (each once), expands every copy
    /// into its entries at its place in declaration order, then refuses clashes and
    /// links hard links over the whole layer, as planning does for a layer without
    /// copies.
    fn plan_copies(&mut self) -> Result<()> {
        if self.copies.is_empty() && self.git_copies.is_empty() {
            return Ok(());
        }
        let mut image_index: BTreeMap<String, usize> = BTreeMap::new();
        let mut link_ids: BTreeMap<(usize, usize, String), u64> = BTreeMap::new();
        let mut expanded: Vec<(usize, usize, Vec<Planned>)> = vec![];
        for c in std::mem::take(&mut self.copies) {
            let f = &self.source_files[c.file];
            let i = match image_index.get(&c.image) {
                Some(i) => *i,
                None => {
                    let files =
                        ImageFiles::from_layers(&self.store, &c.layers).with_context(|| {
                            format!(
                                "{}: reading the layers of image `{}` ({})",
                                self.place.at(&f.pos),
                                c.image,
                                c.manifest
                            )
                        })?;
                    self.images.push(files);
                    image_index.insert(c.image.clone(), self.images.len() - 1);
                    self.images.len() - 1
                }
            };
            let mut entries = vec![];
            plan_image_copy(
                &self.place,
                &self.images[i],
                i,
                (&c.image, &c.src),
                f,
                c.dest.clone(),
                c.owner,
                &mut entries,
                &mut link_ids,
            )?;
            expanded.push((c.at, c.file, entries));
        }
        for g in std::mem::take(&mut self.git_copies) {
            let f = &self.source_files[g.file];
            let shown = imgbuild_python::error::redact_url(&g.url);
            let tree = super::git::tree_nodes(&self.store, &g.url, &g.commit, g.owner)
                .with_context(|| format!("{}: git {shown} {}", self.place.at(&f.pos), g.commit))?;
            self.git_blobs.extend(tree.blobs);
            let mut entries = vec![];
            for (rel, node) in tree.nodes {
                entries.push(Planned {
                    path: if rel.is_empty() {
                        g.dest.clone()
                    } else {
                        g.dest.join(&rel)?
                    },
                    node,
                    hash: None,
                    link_key: None,
                    what: format!("{shown}@{}:/{rel}", &g.commit[..12]),
                    pos: f.pos.clone(),
                    copied: true,
                    from_image: None,
                });
            }
            expanded.push((g.at, g.file, entries));
        }
        // splice from the back, so the earlier positions stay valid (declaration
        // order among entries at one position)
        expanded.sort_by_key(|(at, file, _)| (*at, *file));
        for (at, _, entries) in expanded.into_iter().rev() {
            self.planned.splice(at..at, entries);
        }
        refuse_clashes(&self.place, &self.planned)?;
        link_hardlinks(&mut self.planned);
        Ok(())
    }

    /// Points each file copied out of an image at its bytes: every layer that holds
    /// one is decompressed once into a store spool, and the file becomes a range of
    /// it (streamed when the layer is written). Returns the spools, for gc to keep.
    fn fill_copied(&mut self) -> Result<Vec<imgbuild_store::Digest>> {
        let mut spools: BTreeMap<(usize, usize), Spool> = BTreeMap::new();
        let mut blobs = vec![];
        for p in &mut self.planned {
            let (Some((image, source)), Node::File { content, .. }) = (&p.from_image, &mut p.node)
            else {
                continue;
            };
            match source {
                ImageSource::Content(c) => *content = c.clone(),
                ImageSource::Layer { layer, member } => {
                    let spool = match spools.entry((*image, *layer)) {
                        MapEntry::Occupied(o) => o.into_mut(),
                        MapEntry::Vacant(v) => {
                            let spool = self.images[*image]
                                .spool_layer(*layer)
                                .with_context(|| format!("copying {}", p.what))?;
                            blobs.push(spool.digest.clone());
                            v.insert(spool)
                        }
                    };
                    let Some(&(offset, size)) = spool.members.get(member) else {
                        bail!(
                            "copying {}: layer {} of the image has no member `{member}` (its blob changed since it was read: build again)",
                            p.what,
                            self.images[*image]
                                .layer_digest(*layer)
                                .map(|d| d.to_string())
                                .unwrap_or_default()
                        );
                    };
                    *content = Content::Range {
                        path: spool.path.clone(),
                        offset,
                        size,
                    };
                }
            }
        }
        Ok(blobs)
    }
}

impl FilesSource {
    /// Two declared entries at one destination, found while parsing (so nothing is
    /// built): what trees expand to is checked when the layer is planned.
    fn refuse_declared_clashes(&self, cx: &RecipeCx, raw: &RawFiles) -> Result<(), RecipeError> {
        let norm = |p: &str| p.trim_end_matches('/').to_owned();
        let mut seen: BTreeMap<String, (bool, Pos)> = BTreeMap::new();
        let mut check =
            |dest: &str, is_dir: bool, pos: Pos, at: &dyn Fn(String) -> RecipeError| match seen
                .get(&norm(dest))
            {
                Some((was_dir, first)) if !(is_dir && *was_dir) => Err(at(format!(
                    "{dest} is written twice in this layer (first at line {}); keep one",
                    first.line
                ))),
                _ => {
                    seen.insert(norm(dest), (is_dir, pos));
                    Ok(())
                }
            };
        for (f, rf) in self.files.iter().zip(&raw.files) {
            // what an image path is only shows at plan time (checked there)
            let is_dir = match &f.source {
                FileSource::Host { abs, .. } => abs.is_dir(),
                FileSource::Image { .. } | FileSource::Git { .. } => true,
                FileSource::Inline(_) => false,
            };
            check(&f.dest, is_dir, f.pos.clone(), &|m| {
                cx.err(&rf.get_ref().dest, m)
            })?;
        }
        for (d, rd) in self.dirs.iter().zip(&raw.dirs) {
            check(&d.path, true, d.pos.clone(), &|m| {
                cx.err(&rd.get_ref().path, m)
            })?;
        }
        for (l, rl) in self.symlinks.iter().zip(&raw.symlinks) {
            check(&l.path, false, l.pos.clone(), &|m| {
                cx.err(&rl.get_ref().path, m)
            })?;
        }
        Ok(())
    }

    /// Adds a layer's declared groups, then users; a user whose primary group does
    /// not exist gets one of its own name, as `adduser` would create.
    fn declare(&self, accounts: &mut Accounts) -> Result<()> {
        for g in &self.groups {
            accounts.add_group(g.clone())?;
        }
        for u in &self.users {
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
}

fn resolve_owner(accounts: &Accounts, o: &OwnerSpec) -> Result<(u32, u32)> {
    let spec = match &o.group {
        Some(g) => format!("{}:{g}", o.user),
        None => o.user.clone(),
    };
    Ok(accounts.resolve_owner(&spec)?)
}

/// Two entries at one destination (two files, a file and a directory, ...) would
/// silently lose one: refused, naming both. Directories may be declared over a
/// directory a tree writes (`dirs` sets its mode).
fn refuse_clashes(place: &Place, planned: &[Planned]) -> Result<()> {
    let mut seen: BTreeMap<&str, &Planned> = BTreeMap::new();
    for p in planned {
        if let Some(first) = seen.get(p.path.as_str()) {
            let both_dirs = matches!(first.node, Node::Dir(_)) && matches!(p.node, Node::Dir(_));
            if !both_dirs {
                bail!(
                    "{}: layer {} writes /{} twice: as a {} from {} ({}) and as a {} from {}; keep one",
                    place.at(&p.pos),
                    place.layer + 1,
                    p.path.as_str(),
                    first.node.kind(),
                    first.what,
                    place.at(&first.pos),
                    p.node.kind(),
                    p.what
                );
            }
        }
        seen.insert(p.path.as_str(), p);
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
