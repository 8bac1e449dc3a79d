//! The `archive` layer source: a tar archive from the project unpacked into the
//! layer, as `ADD vendor/x.tar.gz /opt/x` does, but reproducibly.
//!
//! ```toml
//! [[layers]]
//! archive = { src = "vendor/client.tar.gz", dest = "/var/www/client", strip_components = 1, owner = "0:0" }
//! ```
//!
//! Plain, gzip, xz and zstd tars are read (recognised by their first bytes, not by
//! their name). Regular files, directories, symlinks and hard links within the archive
//! are kept with their permission bits (setuid/setgid/sticky included); owners
//! become `owner` (default root), times the build's `SOURCE_DATE_EPOCH`, like every
//! layer's. An entry that would leave `dest` (an absolute path, `..`), a device, a
//! FIFO, or a hard link to something outside the archive is an error naming the entry.
//!
//! The input is the archive's content hash (through the stat cache) and the options:
//! an unchanged archive is never decompressed again. On a cache miss the tar is
//! decompressed once into a store blob (kept by `gc` with the layer) and the layer's
//! files point into it, so a large archive is streamed, never held in memory.

use std::io::{BufReader, Read};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use imgbuild_layer::{Content, Meta, Node, Tree, TreePath};
use imgbuild_store::Store;
use serde::Deserialize;
use toml::Spanned;

use super::{Contribution, Input, LayerCx, LayerSource, SourceKind, SourcePlan};
use crate::recipe::{OwnerSpec, Pos, RecipeCx, RecipeError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArchive {
    pub src: Spanned<String>,
    pub dest: Spanned<String>,
    #[serde(default)]
    pub strip_components: usize,
    pub owner: Option<Spanned<String>>,
}

crate::single_key_table!(RawArchiveTable, "archive", RawArchive);

#[derive(Debug)]
pub struct ArchiveSource {
    rel: PathBuf,
    abs: PathBuf,
    dest: String,
    strip_components: usize,
    owner: Option<OwnerSpec>,
    pos: Pos,
}

impl SourceKind for ArchiveSource {
    type Raw = RawArchiveTable;

    fn parse(
        cx: &RecipeCx,
        raw: &RawArchiveTable,
        _layer: &Pos,
    ) -> Result<Option<Self>, RecipeError> {
        let Some(a) = &raw.0 else {
            return Ok(None);
        };
        let ra = a.get_ref();
        let (rel, abs) = cx.project_path(&ra.src, "src")?;
        if !abs.is_file() {
            return Err(cx.err(&ra.src, format!("src \"{}\" is not a file: `archive` takes a tar archive (plain, .gz, .xz or .zst)", rel.display())));
        }
        Ok(Some(ArchiveSource {
            rel,
            abs,
            dest: cx.image_path(&ra.dest, "dest")?,
            strip_components: ra.strip_components,
            owner: ra.owner.as_ref().map(|o| cx.owner(o)).transpose()?,
            pos: cx.pos(a),
        }))
    }
}

struct ArchivePlan {
    source: PathBuf,
    label: String,
    dest: TreePath,
    strip_components: usize,
    owner: (u32, u32),
    store: Store,
}

impl LayerSource for ArchiveSource {
    fn kind(&self) -> &'static str {
        "archive"
    }

    fn describe(&self) -> Option<String> {
        Some(format!("archive: {}", self.rel.display()))
    }

    fn plan<'s>(&'s self, cx: &mut LayerCx<'_, 's>) -> Result<Box<dyn SourcePlan + 's>> {
        let at = cx.at(&self.pos);
        let meta = std::fs::symlink_metadata(&self.abs)
            .with_context(|| format!("{at}: src \"{}\"", self.rel.display()))?;
        let hash = cx
            .stat
            .hash(&self.abs, &meta)
            .with_context(|| format!("{at}: src \"{}\"", self.rel.display()))?;
        let owner = match &self.owner {
            Some(o) => {
                let spec = match &o.group {
                    Some(g) => format!("{}:{g}", o.user),
                    None => o.user.clone(),
                };
                cx.accounts
                    .resolve_owner(&spec)
                    .with_context(|| at.clone())?
            }
            None => (0, 0),
        };
        let dest = cx.resolve_dest(&self.dest)?;
        cx.input(Input::hash(
            self.rel.display().to_string(),
            hash.to_string(),
        ));
        cx.input(Input::shown(
            format!("archive options of {}", self.rel.display()),
            format!(
                "dest={} strip_components={} owner={}:{}",
                dest.as_str(),
                self.strip_components,
                owner.0,
                owner.1
            ),
        ));
        Ok(Box::new(ArchivePlan {
            source: self.abs.clone(),
            label: format!("{at}: archive \"{}\"", self.rel.display()),
            dest,
            strip_components: self.strip_components,
            owner,
            store: cx.session.store.clone(),
        }))
    }
}

/// A reader of the archive's tar, decompressed by what its first bytes say it is.
/// The tree node of one entry of a tar spooled (uncompressed) in the store at
/// `spool`: a directory, a file whose content is its byte range in the spool, or a
/// symlink, owned by `owner`; `None` for any other kind (hard links, pax and long-name
/// headers), which the caller handles or skips. Shared by the sources that place a
/// spooled tar's files: archives, git trees ([`super::git`]) and build step outputs
/// ([`super::build_step`]).
pub(super) fn spooled_entry_node<R: Read>(
    entry: &tar::Entry<'_, R>,
    spool: &std::path::Path,
    (uid, gid): (u32, u32),
) -> Result<Option<Node>> {
    let mode = entry.header().mode()? & 0o7777;
    let kind = entry.header().entry_type();
    Ok(Some(if kind.is_dir() {
        Node::Dir(Meta::new(mode, uid, gid))
    } else if kind.is_file() || kind == tar::EntryType::Continuous {
        Node::File {
            meta: Meta::new(mode, uid, gid),
            content: Content::Range {
                path: spool.to_path_buf(),
                offset: entry.raw_file_position(),
                size: entry.size(),
            },
        }
    } else if kind.is_symlink() {
        let raw = entry.path()?.to_string_lossy().into_owned();
        let target = entry
            .link_name()?
            .with_context(|| format!("symlink {raw} has no target"))?;
        Node::Symlink {
            meta: Meta::new(0o777, uid, gid),
            target: target.to_string_lossy().into_owned(),
        }
    } else {
        return Ok(None);
    }))
}

fn decompressed(path: &std::path::Path) -> Result<Box<dyn Read>> {
    let mut f = BufReader::new(
        std::fs::File::open(path).with_context(|| format!("failed to open {}", path.display()))?,
    );
    let magic = {
        use std::io::BufRead;
        f.fill_buf()?
            .get(..6)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    };
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(liblzma::read::XzDecoder::new_multi_decoder(f))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(f)?)
    } else {
        Box::new(f)
    })
}

impl SourcePlan for ArchivePlan {
    fn build(self: Box<Self>, tree: &mut Tree) -> Result<Contribution> {
        let label = &self.label;
        // the tar, decompressed once into the store: the layer's files point into it
        let mut spool = self.store.writer()?;
        std::io::copy(&mut decompressed(&self.source)?, &mut spool)
            .with_context(|| format!("{label}: decompressing"))?;
        let (digest, _) = spool.commit()?;
        let path = self.store.blob_path(&digest);
        let file = std::fs::File::open(&path)?;
        let mut archive = tar::Archive::new(BufReader::new(file));
        let (uid, gid) = self.owner;
        // hard links, by the file they link to: written once every entry is known,
        // so that the first of each group in path order is the file (tar order)
        let mut links: std::collections::BTreeMap<TreePath, Vec<TreePath>> = Default::default();
        for entry in archive
            .entries()
            .with_context(|| format!("{label}: not a tar archive"))?
        {
            let entry = entry.with_context(|| format!("{label}: reading the tar"))?;
            let raw = entry.path()?.to_string_lossy().into_owned();
            let Some(rel) = self.relative(&raw)? else {
                continue;
            };
            let at = if rel.is_empty() {
                self.dest.clone()
            } else {
                self.dest.join(&rel)?
            };
            let kind = entry.header().entry_type();
            let node = if let Some(node) = spooled_entry_node(&entry, &path, (uid, gid))
                .with_context(|| format!("{label}: {raw}"))?
            {
                node
            } else if kind.is_hard_link() {
                let target = entry
                    .link_name()?
                    .with_context(|| format!("{label}: hard link {raw} has no target"))?
                    .to_string_lossy()
                    .into_owned();
                let Some(t) = self.relative(&target)? else {
                    bail!(
                        "{label}: hard link {raw} points to {target}, which strip_components removes"
                    );
                };
                let t = if t.is_empty() {
                    self.dest.clone()
                } else {
                    self.dest.join(&t)?
                };
                if !matches!(tree.get(&t), Some(Node::File { .. })) {
                    bail!(
                        "{label}: hard link {raw} points to {target}, which is not a file earlier in the archive"
                    );
                }
                links.entry(t).or_default().push(at);
                continue;
            } else if matches!(
                kind,
                tar::EntryType::XGlobalHeader
                    | tar::EntryType::XHeader
                    | tar::EntryType::GNULongName
                    | tar::EntryType::GNULongLink
            ) {
                continue;
            } else {
                bail!(
                    "{label}: {raw} is a {kind:?} entry; only files, directories and links can be unpacked into an image"
                );
            };
            if matches!(node, Node::Dir(_)) && matches!(tree.get(&at), Some(Node::Dir(_))) {
                tree.insert(at, node)?;
                continue;
            }
            tree.insert(at, node)
                .with_context(|| format!("{label}: entry {raw}"))?;
        }
        for (target, mut group) in links {
            let Some(file) = tree.get(&target).cloned() else {
                continue;
            };
            group.push(target);
            group.sort();
            group.dedup();
            let first = group[0].clone();
            tree.insert(first.clone(), file)?;
            for p in &group[1..] {
                tree.insert(
                    p.clone(),
                    Node::Hardlink {
                        target: first.clone(),
                    },
                )?;
            }
        }
        Ok(Contribution {
            blobs: vec![digest],
            ..Default::default()
        })
    }
}

impl ArchivePlan {
    /// An entry's path below `dest` (`""` for `dest` itself), or `None` when
    /// `strip_components` removes it. A path that would leave `dest` is an error.
    fn relative(&self, raw: &str) -> Result<Option<String>> {
        let mut parts = vec![];
        for c in raw.split('/') {
            match c {
                "" | "." => {}
                ".." => bail!(
                    "{}: entry {raw} leaves the archive's directory (`..`)",
                    self.label
                ),
                c => parts.push(c),
            }
        }
        if raw.starts_with('/') {
            bail!("{}: entry {raw} is an absolute path", self.label);
        }
        if parts.len() < self.strip_components {
            return Ok(None);
        }
        if parts.len() == self.strip_components && !parts.is_empty() && self.strip_components > 0 {
            return Ok(None);
        }
        Ok(Some(parts[self.strip_components..].join("/")))
    }
}
