//! The file system of an image, read from its layers without unpacking them: what a
//! source needs to know about the layers it builds on. The Python source finds the
//! image's own interpreter, standard library, shared libraries and loader here and
//! copies just those files out; a registry base image gives its directories, symlinks
//! and account files to the layers built over it.
//!
//! Two sources:
//! - layer blobs in the store (gzip, zstd or plain tar), applied bottom to top with the
//!   OCI whiteouts: `.wh.NAME` deletes `NAME` from the layers below, `.wh..wh..opq`
//!   empties a directory of what the layers below put in it, and a non-directory
//!   replaces a lower directory with everything in it;
//! - a layer [`Tree`] being built (a Debian layer that ships the interpreter itself).
//!
//! Only metadata is held in memory. A file's bytes stay where they are (its layer blob,
//! or its [`Content`]) until [`ImageFiles::copy_out`] or [`ImageFiles::read_files`]
//! fetches the few files wanted: one more pass over just the layers that hold them.
//! Every blob is verified against its digest as it is read.
//!
//! One thing is kept of a lower layer's bytes: the first [`ELF_HEAD`] bytes of each
//! file that starts with the ELF magic (its class, byte order, type and machine), read
//! in the same pass, so that the linkage check ([`crate::linkage`]) can tell whether a
//! library in the image is one the loader would take without another pass over the
//! layer that holds it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use imgbuild_store::{Digest, Store, StoreError};

use crate::{Content, Meta, Node, Tree};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("layer {layer}: {msg}")]
    Layer { layer: Digest, msg: String },
    #[error("{op} `{path}`: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Error = ImageError;
type Result<T, E = ImageError> = std::result::Result<T, E>;

fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { op, path, source }
}

/// What is at a path of the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir(Meta),
    Symlink(String),
    File { mode: u32, source: FileSource },
}

/// Where a file's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileSource {
    /// The tar member `member` of lower layer number `layer` (a hard link names the
    /// member that carries the bytes).
    Layer { layer: usize, member: String },
    /// A file of a layer tree.
    Content(Content),
}

#[derive(Clone, Debug)]
struct Item {
    /// Which layer put it there (for whiteouts); a tree is above every layer.
    layer: usize,
    entry: Entry,
}

/// A lower layer decompressed into a store blob ([`ImageFiles::spool_layer`]).
#[derive(Clone, Debug)]
pub struct Spool {
    /// The blob's digest (the layer's diff_id).
    pub digest: Digest,
    pub path: PathBuf,
    /// (offset, size) of each regular-file member's bytes, by member name.
    pub members: BTreeMap<String, (u64, u64)>,
}

/// How many bytes of an ELF file's start [`ImageFiles::elf_head`] keeps: `e_ident`
/// (16), `e_type` (2) and `e_machine` (2).
pub const ELF_HEAD: usize = 20;

/// The merged view of an image's file system: relative paths (`usr/bin/python3.11`) to
/// entries.
#[derive(Clone, Debug, Default)]
pub struct ImageFiles {
    entries: BTreeMap<String, Item>,
    /// The first bytes of lower-layer files that start with the ELF magic, by path;
    /// set or cleared whenever a layer puts a file at the path, so it is current for
    /// every path whose entry is a [`FileSource::Layer`] file.
    heads: BTreeMap<String, [u8; ELF_HEAD]>,
    /// The owner (uid, gid) of each file and symlink, by path: set whenever a layer
    /// puts one there, so it is current for every such entry (directories carry theirs
    /// in their [`Meta`]). Kept beside the entries so that [`Entry`] stays as its
    /// readers match it.
    owners: BTreeMap<String, (u32, u32)>,
    store: Option<Store>,
    layers: Vec<Digest>,
}

impl ImageFiles {
    /// The image made of these layer blobs (bottom first).
    pub fn from_layers(store: &Store, layers: &[Digest]) -> Result<ImageFiles> {
        let mut files = ImageFiles {
            entries: BTreeMap::new(),
            heads: BTreeMap::new(),
            owners: BTreeMap::new(),
            store: Some(store.clone()),
            layers: layers.to_vec(),
        };
        for (i, d) in layers.iter().enumerate() {
            files.apply_layer(store, i, d)?;
        }
        Ok(files)
    }

    /// The files of one layer tree.
    pub fn from_tree(tree: &Tree) -> ImageFiles {
        let mut files = ImageFiles::default();
        files.overlay(tree);
        files
    }

    /// Puts a layer tree being built on top (a venv in the same layer as the Debian
    /// packages that bring its interpreter).
    pub fn overlay(&mut self, tree: &Tree) {
        let layer = self.layers.len();
        for (p, n) in tree.iter() {
            let path = p.as_str().to_owned();
            let entry = match n {
                Node::Dir(m) => Entry::Dir(*m),
                Node::Symlink { target, meta } => {
                    self.owners.insert(path.clone(), (meta.uid, meta.gid));
                    Entry::Symlink(target.clone())
                }
                Node::File { meta, content } => {
                    self.owners.insert(path.clone(), (meta.uid, meta.gid));
                    Entry::File {
                        mode: meta.mode,
                        source: FileSource::Content(content.clone()),
                    }
                }
                Node::Hardlink { target } => match tree.get(target) {
                    Some(Node::File { meta, content }) => {
                        self.owners.insert(path.clone(), (meta.uid, meta.gid));
                        Entry::File {
                            mode: meta.mode,
                            source: FileSource::Content(content.clone()),
                        }
                    }
                    _ => continue,
                },
            };
            if !matches!(entry, Entry::Dir(_)) {
                self.remove_below(&path, layer);
            }
            self.entries.insert(path, Item { layer, entry });
        }
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path).map(|i| &i.entry)
    }

    /// The owner (uid, gid) of the entry at `path` (symlinks not followed).
    pub fn owner(&self, path: &str) -> Option<(u32, u32)> {
        match &self.entries.get(path)?.entry {
            Entry::Dir(m) => Some((m.uid, m.gid)),
            _ => Some(self.owners.get(path).copied().unwrap_or((0, 0))),
        }
    }

    /// The digest of lower layer number `layer` (as [`FileSource::Layer`] names it).
    pub fn layer_digest(&self, layer: usize) -> Option<&Digest> {
        self.layers.get(layer)
    }

    /// Lower layer `layer` decompressed into a store blob (its digest is the layer's
    /// diff_id, so a layer spooled before is not written again), and where each
    /// regular-file member's bytes are in it: (offset, size) by member name. A file
    /// copied out of the image is then a [`Content::Range`] of that blob, streamed
    /// when the layer that holds it is written, never held in memory. The layer blob
    /// is verified against its digest as it is read.
    pub fn spool_layer(&self, layer: usize) -> Result<Spool> {
        let (store, digest) = match (&self.store, self.layers.get(layer)) {
            (Some(s), Some(d)) => (s, d),
            _ => unreachable!("layer sources come from from_layers"),
        };
        let mut spool = store.writer()?;
        io::copy(&mut open_layer(store, digest)?, &mut spool)
            .map_err(|e| self.layer_err(layer, format!("decompressing: {e}")))?;
        let (tar_digest, _) = spool.commit()?;
        let path = store.blob_path(&tar_digest);
        let file = File::open(&path).map_err(io_err("failed to open", &path))?;
        let mut archive = tar::Archive::new(BufReader::new(file));
        let mut members = BTreeMap::new();
        for entry in archive
            .entries()
            .map_err(|e| self.layer_err(layer, format!("not a tar stream: {e}")))?
        {
            let e = entry.map_err(|e| self.layer_err(layer, format!("reading: {e}")))?;
            if !matches!(
                e.header().entry_type(),
                tar::EntryType::Regular | tar::EntryType::Continuous
            ) {
                continue;
            }
            if let Some(name) = entry_path(&e) {
                members.insert(name, (e.raw_file_position(), e.size()));
            }
        }
        Ok(Spool {
            digest: tar_digest,
            path,
            members,
        })
    }

    /// `path` with every symlink in it followed, as the kernel would inside the image
    /// (absolute targets from the image's root, `..` never above it). `None` on a loop.
    pub fn resolve(&self, path: &str) -> Option<String> {
        crate::symlinks::resolve(path, crate::Follow::READ, |p| match self.get(p) {
            Some(Entry::Symlink(target)) => Some(target.as_str()),
            _ => None,
        })
        .ok()
    }

    /// The first [`ELF_HEAD`] bytes of the lower-layer file at `path` (symlinks not
    /// followed) when it starts with the ELF magic. `None` for anything else, and for a
    /// file of a tree put on top with [`ImageFiles::overlay`] (its bytes are at hand in
    /// its [`Content`]).
    pub fn elf_head(&self, path: &str) -> Option<&[u8; ELF_HEAD]> {
        match self.entries.get(path)?.entry {
            Entry::File {
                source: FileSource::Layer { .. },
                ..
            } => self.heads.get(path),
            _ => None,
        }
    }

    /// Every entry below directory `dir` (relative paths, sorted).
    pub fn below<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let len = prefix.len();
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(p, _)| p.starts_with(&prefix))
            .map(move |(p, i)| (&p[len..], &i.entry))
    }

    /// The file at `path` after following symlinks, if it is a regular file.
    pub fn file(&self, path: &str) -> Option<(String, u32, &FileSource)> {
        let real = self.resolve(path)?;
        match self.get(&real)? {
            Entry::File { mode, source } => Some((real, *mode, source)),
            _ => None,
        }
    }

    /// Writes each planned file (destination relative to `root` -> source, mode) below
    /// `root`, creating parent directories. Layer blobs are read once each, only those
    /// holding a planned file; several destinations of one source share an inode.
    pub fn copy_out(&self, plan: &BTreeMap<String, (FileSource, u32)>, root: &Path) -> Result<()> {
        let mut from_layers: BTreeMap<usize, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
        for (dest, (source, mode)) in plan {
            match source {
                FileSource::Content(c) => {
                    let path = prepare_dest(root, dest)?;
                    write_content(c, &path)?;
                    set_mode(&path, *mode)?;
                }
                FileSource::Layer { layer, member } => from_layers
                    .entry(*layer)
                    .or_default()
                    .entry(member.as_str())
                    .or_default()
                    .push(dest.as_str()),
            }
        }
        for (layer, mut wanted) in from_layers {
            self.for_members(layer, &mut wanted, |path, dests, e| {
                let first = prepare_dest(root, dests[0])?;
                let mut out = File::create(&first).map_err(io_err("failed to create", &first))?;
                io::copy(e, &mut out).map_err(|err| {
                    self.layer_err(layer, format!("{path}: failed to extract: {err}"))
                })?;
                set_mode(&first, plan[dests[0]].1)?;
                for d in &dests[1..] {
                    let p = prepare_dest(root, d)?;
                    fs::hard_link(&first, &p).map_err(io_err("failed to link", &p))?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The bytes of the regular files at `paths` (symlinks not followed: a link there
    /// counts as no file), each at most `max` bytes; `None` where there is none. One
    /// pass over each layer that holds any of them.
    pub fn read_files(&self, paths: &[&str], max: u64) -> Result<Vec<Option<Vec<u8>>>> {
        let too_big = |path: &str| ImageError::Io {
            op: "refusing to read",
            path: PathBuf::from(format!("/{path}")),
            source: io::Error::other(format!("more than {max} bytes")),
        };
        let mut out: Vec<Option<Vec<u8>>> = vec![None; paths.len()];
        let mut from_layers: BTreeMap<usize, BTreeMap<&str, usize>> = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            match self.get(path) {
                Some(Entry::File {
                    source: FileSource::Content(c),
                    ..
                }) => {
                    if c.size() > max {
                        return Err(too_big(path));
                    }
                    let mut bytes = Vec::with_capacity(c.size() as usize);
                    let (mut r, from) = content_reader(c)?;
                    r.read_to_end(&mut bytes)
                        .map_err(io_err("failed to read", from))?;
                    out[i] = Some(bytes);
                }
                Some(Entry::File {
                    source: FileSource::Layer { layer, member },
                    ..
                }) => {
                    from_layers.entry(*layer).or_default().insert(member, i);
                }
                _ => {}
            }
        }
        for (layer, mut wanted) in from_layers {
            self.for_members(layer, &mut wanted, |path, i, e| {
                let mut bytes = vec![];
                e.take(max + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|err| self.layer_err(layer, format!("/{path}: {err}")))?;
                if bytes.len() as u64 > max {
                    return Err(too_big(path));
                }
                out[i] = Some(bytes);
                Ok(())
            })?;
        }
        Ok(out)
    }

    fn layer_err(&self, layer: usize, msg: String) -> ImageError {
        ImageError::Layer {
            layer: self.layers[layer].clone(),
            msg,
        }
    }

    /// One pass over lower layer `layer`: `each` gets every regular-file member named
    /// in `wanted` (taken out of it) with its bytes; a member not found is an error.
    /// The blob is read to its end, so that its digest is checked.
    fn for_members<T>(
        &self,
        layer: usize,
        wanted: &mut BTreeMap<&str, T>,
        mut each: impl FnMut(&str, T, &mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        let (store, digest) = match (&self.store, self.layers.get(layer)) {
            (Some(s), Some(d)) => (s, d),
            _ => unreachable!("layer sources come from from_layers"),
        };
        let mut archive = tar::Archive::new(open_layer(store, digest)?);
        for entry in archive
            .entries()
            .map_err(|e| self.layer_err(layer, format!("not a tar stream: {e}")))?
        {
            if wanted.is_empty() {
                break;
            }
            let mut e = entry.map_err(|e| self.layer_err(layer, format!("reading: {e}")))?;
            if !matches!(
                e.header().entry_type(),
                tar::EntryType::Regular | tar::EntryType::Continuous
            ) {
                continue;
            }
            let Some(path) = entry_path(&e) else { continue };
            let Some(value) = wanted.remove(path.as_str()) else {
                continue;
            };
            each(&path, value, &mut e)?;
        }
        if let Some(missing) = wanted.keys().next() {
            return Err(self.layer_err(
                layer,
                format!("`{missing}` was listed but its content was not found"),
            ));
        }
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink())
            .map_err(|e| self.layer_err(layer, format!("reading: {e}")))?;
        Ok(())
    }

    fn apply_layer(&mut self, store: &Store, layer: usize, digest: &Digest) -> Result<()> {
        let layer_err = |msg: String| Error::Layer {
            layer: digest.clone(),
            msg,
        };
        let mut archive = tar::Archive::new(open_layer(store, digest)?);
        for entry in archive
            .entries()
            .map_err(|e| layer_err(format!("not a tar stream: {e}")))?
        {
            let mut e = entry.map_err(|e| layer_err(format!("reading: {e}")))?;
            let Some(path) = entry_path(&e) else { continue };
            let (dir, name) = match path.rsplit_once('/') {
                Some((d, n)) => (d, n),
                None => ("", path.as_str()),
            };
            if let Some(hidden) = name.strip_prefix(".wh.") {
                if hidden == ".wh..opq" {
                    self.remove_below(dir, layer);
                } else {
                    let victim = join(dir, hidden);
                    self.remove_below(&victim, layer);
                    self.remove_lower(&victim, layer);
                }
                continue;
            }
            let entry = match e.header().entry_type() {
                tar::EntryType::Directory => Entry::Dir(Meta::new(
                    e.header().mode().unwrap_or(0o755),
                    e.header().uid().unwrap_or(0) as u32,
                    e.header().gid().unwrap_or(0) as u32,
                )),
                tar::EntryType::Symlink => match e.link_name() {
                    Ok(Some(t)) => {
                        self.owners.insert(path.clone(), header_owner(e.header()));
                        Entry::Symlink(t.to_string_lossy().into_owned())
                    }
                    _ => continue,
                },
                tar::EntryType::Link => {
                    let target = e
                        .link_name()
                        .ok()
                        .flatten()
                        .and_then(|t| normalise(&t.to_string_lossy()));
                    let Some(target) = target else { continue };
                    match self.entries.get(&target) {
                        Some(Item {
                            layer: l,
                            entry: f @ Entry::File { .. },
                        }) if *l == layer => {
                            let f = f.clone();
                            // a hard link shares its file's inode, hence its owner
                            match self.owners.get(&target).copied() {
                                Some(o) => self.owners.insert(path.clone(), o),
                                None => self.owners.remove(&path),
                            };
                            match self.heads.get(&target).copied() {
                                Some(h) => self.heads.insert(path.clone(), h),
                                None => self.heads.remove(&path),
                            };
                            f
                        }
                        _ => continue,
                    }
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut head = [0u8; ELF_HEAD];
                    let n = read_up_to(&mut e, &mut head)
                        .map_err(|err| layer_err(format!("/{path}: {err}")))?;
                    self.owners.insert(path.clone(), header_owner(e.header()));
                    if n == ELF_HEAD && head.starts_with(b"\x7fELF") {
                        self.heads.insert(path.clone(), head);
                    } else {
                        self.heads.remove(&path);
                    }
                    Entry::File {
                        mode: e.header().mode().unwrap_or(0o644) & 0o7777,
                        source: FileSource::Layer {
                            layer,
                            member: path.clone(),
                        },
                    }
                }
                // devices, fifos: nothing an interpreter is made of
                _ => continue,
            };
            match (&entry, self.entries.get(&path)) {
                // a directory over a directory merges with it
                (
                    Entry::Dir(_),
                    Some(Item {
                        entry: Entry::Dir(_),
                        ..
                    }),
                ) => {}
                // anything else replaces what was there, a directory with its contents
                _ => self.remove_below(&path, layer),
            }
            self.entries.insert(path, Item { layer, entry });
        }
        // read to the end, so that the blob's digest is checked
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(|e| layer_err(format!("reading: {e}")))?;
        Ok(())
    }

    /// Removes what layers below `layer` put under `dir/`.
    fn remove_below(&mut self, dir: &str, layer: usize) {
        let prefix = format!("{dir}/");
        let doomed: Vec<String> = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(_, i)| i.layer < layer)
            .map(|(p, _)| p.clone())
            .collect();
        for p in doomed {
            self.entries.remove(&p);
        }
    }

    fn remove_lower(&mut self, path: &str, layer: usize) {
        if self.entries.get(path).is_some_and(|i| i.layer < layer) {
            self.entries.remove(path);
        }
    }
}

fn header_owner(h: &tar::Header) -> (u32, u32) {
    (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32)
}

/// Fills as much of `buf` as `r` has (a short file gives fewer bytes, not an error).
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn components(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
}

/// A tar member name as a relative path without `.` components; `None` for the root
/// and for names that climb out with `..`.
fn normalise(name: &str) -> Option<String> {
    let parts: Vec<String> = components(name).collect();
    if parts.is_empty() || parts.iter().any(|c| c == "..") {
        return None;
    }
    Some(parts.join("/"))
}

fn entry_path<R: Read>(e: &tar::Entry<R>) -> Option<String> {
    let p = e.path().ok()?;
    normalise(&p.to_string_lossy())
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// A layer blob, verified as it is read, decompressed according to its first bytes.
fn open_layer(store: &Store, digest: &Digest) -> Result<Box<dyn Read>> {
    if !store.has_blob(digest) {
        return Err(Error::Layer {
            layer: digest.clone(),
            msg: "not in the store (build the image it belongs to again)".into(),
        });
    }
    let mut r = BufReader::with_capacity(1 << 20, store.open_verified(digest)?);
    let head = r
        .fill_buf()
        .map_err(io_err("failed to read", store.blob_path(digest)))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(r).map_err(|e| Error::Layer {
                layer: digest.clone(),
                msg: format!("zstd: {e}"),
            })?,
        )
    } else {
        Box::new(r)
    })
}

fn prepare_dest(root: &Path, dest: &str) -> Result<std::path::PathBuf> {
    let path = root.join(dest);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("failed to create directory", parent))?;
    }
    Ok(path)
}

/// A reader of exactly a content's bytes, and the file it reads (for messages).
fn content_reader(c: &Content) -> Result<(Box<dyn Read + '_>, PathBuf)> {
    Ok(match c {
        Content::Inline(b) => (Box::new(&b[..]), PathBuf::from("(inline content)")),
        Content::Host { path, size, .. } | Content::Range { path, size, .. } => {
            let mut f = File::open(path).map_err(io_err("failed to open", path))?;
            if let Content::Range { offset, .. } = c {
                f.seek(SeekFrom::Start(*offset))
                    .map_err(io_err("failed to read", path))?;
            }
            (Box::new(f.take(*size)), path.clone())
        }
    })
}

fn write_content(c: &Content, dest: &Path) -> Result<()> {
    let (mut r, from) = content_reader(c)?;
    let mut out = File::create(dest).map_err(io_err("failed to create", dest))?;
    let n = io::copy(&mut r, &mut out).map_err(io_err("failed to read", &from))?;
    if n != c.size() {
        return Err(io_err("failed to read", from)(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("expected {} bytes, found {n}", c.size()),
        )));
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    // readable by the build, executable where the image has it so; nothing else
    let mode = (mode & 0o755) | 0o600;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("failed to set the mode of", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Meta, TreePath, WriteOptions, write_layer};

    fn file(tree: &mut Tree, p: &str, body: &[u8]) {
        tree.insert(
            TreePath::new(p).unwrap(),
            Node::File {
                meta: Meta::FILE,
                content: Content::inline(body.to_vec()),
            },
        )
        .unwrap();
    }
    fn link(tree: &mut Tree, p: &str, target: &str) {
        tree.insert(
            TreePath::new(p).unwrap(),
            Node::Symlink {
                meta: Meta::new(0o777, 0, 0),
                target: target.into(),
            },
        )
        .unwrap();
    }

    #[test]
    fn layers_merge_with_whiteouts_and_symlinks_resolve_through_them() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let opts = WriteOptions {
            mtime: 0,
            threads: 1,
        };
        let mut one = Tree::new();
        link(&mut one, "lib", "usr/lib");
        link(&mut one, "lib64", "usr/lib64");
        file(&mut one, "usr/lib/x86_64-linux-gnu/ld.so", b"loader");
        link(&mut one, "usr/lib64/ld.so", "/lib/x86_64-linux-gnu/ld.so");
        file(&mut one, "usr/bin/py", b"old");
        file(&mut one, "usr/share/gone/a", b"a");
        file(&mut one, "usr/share/opaque/lower", b"lower");
        file(&mut one, "usr/share/replaced/child", b"c");
        one.insert(
            TreePath::new("usr/bin/z-hard").unwrap(),
            Node::Hardlink {
                target: TreePath::new("usr/bin/py").unwrap(),
            },
        )
        .unwrap();
        let mut two = Tree::new();
        file(&mut two, "usr/bin/py", b"new");
        file(&mut two, "usr/share/.wh.gone", b"");
        file(&mut two, "usr/share/opaque/.wh..wh..opq", b"");
        file(&mut two, "usr/share/opaque/upper", b"upper");
        file(&mut two, "usr/share/replaced", b"now a file");
        let l1 = write_layer(&one, &opts, &store).unwrap().descriptor.digest;
        let l2 = write_layer(&two, &opts, &store).unwrap().descriptor.digest;

        let img = ImageFiles::from_layers(&store, &[l1.clone(), l2.clone()]).unwrap();
        assert_eq!(
            img.resolve("/lib64/ld.so").as_deref(),
            Some("usr/lib/x86_64-linux-gnu/ld.so")
        );
        assert_eq!(
            img.resolve("lib/../lib64/./ld.so"),
            img.resolve("lib64/ld.so")
        );
        assert!(img.get("usr/share/gone").is_none() && img.get("usr/share/gone/a").is_none());
        assert!(img.get("usr/share/opaque/lower").is_none());
        assert!(img.get("usr/share/opaque/upper").is_some());
        assert!(img.get("usr/share/replaced/child").is_none());
        assert!(matches!(
            img.get("usr/share/replaced"),
            Some(Entry::File { .. })
        ));
        assert!(img.get("usr/share/opaque/.wh..wh..opq").is_none());

        let mut plan = BTreeMap::new();
        for (dest, src) in [
            ("bin/py", "usr/bin/py"),
            ("bin/hard", "usr/bin/z-hard"),
            ("ld.so", "lib64/ld.so"),
            ("ld2.so", "usr/lib64/ld.so"),
        ] {
            let (_, mode, source) = img.file(src).unwrap();
            plan.insert(dest.to_owned(), (source.clone(), mode));
        }
        let out = tmp.path().join("out");
        img.copy_out(&plan, &out).unwrap();
        assert_eq!(fs::read(out.join("bin/py")).unwrap(), b"new");
        // the hard link is to the lower layer's file, which the upper one replaced
        assert_eq!(fs::read(out.join("bin/hard")).unwrap(), b"old");
        assert_eq!(fs::read(out.join("ld.so")).unwrap(), b"loader");
        assert_eq!(fs::read(out.join("ld2.so")).unwrap(), b"loader");

        // a tree on top (a layer being built) replaces files, and directories with
        // their contents
        let mut img = img;
        let mut three = Tree::new();
        file(&mut three, "usr/bin/py", b"tree");
        file(&mut three, "usr/share/opaque", b"a file now");
        img.overlay(&three);
        assert!(matches!(
            img.file("/bin/../usr/bin/py"),
            Some((_, _, FileSource::Content(_)))
        ));
        assert!(img.get("usr/share/opaque/upper").is_none());
        assert_eq!(img.below("usr/share/opaque").count(), 0);
        assert!(img.get("usr/lib/x86_64-linux-gnu/ld.so").is_some());

        // a symlink loop is not followed forever
        let mut looped = Tree::new();
        link(&mut looped, "a", "b");
        link(&mut looped, "b", "/a");
        assert_eq!(ImageFiles::from_tree(&looped).resolve("a/x"), None);

        // a blob whose bytes are not its digest is refused, even when it still
        // decompresses to the same tar (here: one more, empty, gzip member)
        let p = store.blob_path(&l2);
        let mut bytes = fs::read(&p).unwrap();
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        bytes.extend(gz.finish().unwrap());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, &bytes).unwrap();
        let fresh = Store::open(tmp.path().join("store")).unwrap();
        assert!(ImageFiles::from_layers(&fresh, &[l1, l2]).is_err());
    }

    #[test]
    fn elf_heads_follow_the_file_that_is_there() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let opts = WriteOptions {
            mtime: 0,
            threads: 1,
        };
        let elf: Vec<u8> = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0\x3e\0rest".to_vec();
        let mut one = Tree::new();
        file(&mut one, "lib/a.so", &elf);
        file(&mut one, "lib/b.so", &elf);
        file(&mut one, "lib/short", b"\x7fELF\x02");
        file(&mut one, "lib/text", b"not an ELF file, but long enough");
        one.insert(
            TreePath::new("lib/c.so").unwrap(),
            Node::Hardlink {
                target: TreePath::new("lib/a.so").unwrap(),
            },
        )
        .unwrap();
        let mut two = Tree::new();
        file(
            &mut two,
            "lib/b.so",
            b"replaced by a text file of some length",
        );
        let l1 = write_layer(&one, &opts, &store).unwrap().descriptor.digest;
        let l2 = write_layer(&two, &opts, &store).unwrap().descriptor.digest;
        let img = ImageFiles::from_layers(&store, &[l1, l2]).unwrap();
        assert_eq!(img.elf_head("lib/a.so").unwrap()[..], elf[..ELF_HEAD]);
        assert_eq!(img.elf_head("lib/c.so"), img.elf_head("lib/a.so"));
        assert_eq!(img.elf_head("lib/b.so"), None);
        assert_eq!(img.elf_head("lib/short"), None);
        assert_eq!(img.elf_head("lib/text"), None);
        // a tree on top: its files' bytes are read from their content, not kept
        let mut img = img;
        let mut three = Tree::new();
        file(&mut three, "lib/a.so", &elf);
        img.overlay(&three);
        assert_eq!(img.elf_head("lib/a.so"), None);
    }
}
