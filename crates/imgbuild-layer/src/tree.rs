//! The layer tree: normalised paths mapped to nodes, kept sorted.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::FileHash;

/// Errors raised while filling a tree; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("invalid path `{path}` in layer: {why}")]
    InvalidPath { path: String, why: &'static str },
    #[error(
        "`{path}` would replace a directory with a {kind}; refusing (remove the directory first or pick another path)"
    )]
    ReplacesDirectory { path: String, kind: &'static str },
    #[error("`{path}` needs `{parent}` to be a directory, but it is a {kind}")]
    ParentNotDirectory {
        path: String,
        parent: String,
        kind: &'static str,
    },
    #[error("hardlink `{path}` points at `{target}`, which is not a regular file in this layer")]
    BadHardlink { path: String, target: String },
}

/// A normalised path inside the image: relative, `/`-separated, no `.`/`..`/empty
/// components, no trailing slash. The root itself is the empty path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TreePath(String);

impl TreePath {
    /// Normalises an image path such as `/usr/bin/x`, `./usr/bin/x` or `usr/bin/x/`.
    /// `..` components are refused, never resolved: a layer entry may not escape the root.
    pub fn new(raw: &str) -> Result<TreePath, TreeError> {
        // Already normal (the common case, once per entry of every layer): as is.
        if raw
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
        {
            return Ok(TreePath(raw.to_owned()));
        }
        let mut parts: Vec<&str> = Vec::new();
        for c in raw.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    return Err(TreeError::InvalidPath {
                        path: raw.to_owned(),
                        why: "`..` components would leave the image root",
                    });
                }
                c if c.contains('\0') => {
                    return Err(TreeError::InvalidPath {
                        path: raw.to_owned(),
                        why: "NUL byte",
                    });
                }
                c => parts.push(c),
            }
        }
        Ok(TreePath(parts.join("/")))
    }

    pub fn root() -> TreePath {
        TreePath(String::new())
    }
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// `a/b` joined with `c/d` (`rel` is normalised first).
    pub fn join(&self, rel: &str) -> Result<TreePath, TreeError> {
        let rel = TreePath::new(rel)?;
        Ok(match (self.is_root(), rel.is_root()) {
            (_, true) => self.clone(),
            (true, false) => rel,
            (false, false) => {
                let mut joined = String::with_capacity(self.0.len() + 1 + rel.0.len());
                joined.push_str(&self.0);
                joined.push('/');
                joined.push_str(&rel.0);
                TreePath(joined)
            }
        })
    }
    pub fn parent(&self) -> Option<TreePath> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => TreePath(self.0[..i].to_owned()),
            None => TreePath::root(),
        })
    }
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }
    /// This path and every ancestor, root excluded, shortest first.
    pub fn ancestors(&self) -> impl Iterator<Item = TreePath> + '_ {
        self.0
            .match_indices('/')
            .map(|(i, _)| TreePath(self.0[..i].to_owned()))
    }
}

impl fmt::Display for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}
impl fmt::Debug for TreePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

/// Ownership and permission bits of an entry. `mode` holds only the low 12 bits
/// (permissions plus setuid/setgid/sticky); the file type lives in [`Node`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    pub const fn new(mode: u32, uid: u32, gid: u32) -> Meta {
        Meta {
            mode: mode & 0o7777,
            uid,
            gid,
        }
    }
    /// root-owned, 0755: what implicit parent directories get.
    pub const DIR: Meta = Meta::new(0o755, 0, 0);
    /// root-owned, 0644.
    pub const FILE: Meta = Meta::new(0o644, 0, 0);
}

/// Where a regular file's bytes come from. Read once, streaming, at write time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Bytes held in memory (small generated files: passwd, pyvenv.cfg, scripts).
    Inline(Arc<[u8]>),
    /// A whole file on the host; `size` (and `hash`, when the tree's maker hashed
    /// the file, e.g. for a cache key) are what was seen when the tree was made. A
    /// file that differs when it is written is an error rather than a layer whose
    /// bytes disagree with the fingerprint it is stored under.
    Host {
        path: PathBuf,
        size: u64,
        hash: Option<FileHash>,
    },
    /// `size` bytes at `offset` of a file (an uncompressed tar spooled from a `.deb`).
    Range {
        path: PathBuf,
        offset: u64,
        size: u64,
    },
}

impl Content {
    pub fn inline(bytes: impl Into<Vec<u8>>) -> Content {
        Content::Inline(Arc::from(bytes.into()))
    }
    pub fn size(&self) -> u64 {
        match self {
            Content::Inline(b) => b.len() as u64,
            Content::Host { size, .. } | Content::Range { size, .. } => *size,
        }
    }
}

/// One entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir(Meta),
    File {
        meta: Meta,
        content: Content,
    },
    /// Symlink permissions are not meaningful on Linux; `meta` carries only the owner.
    Symlink {
        meta: Meta,
        target: String,
    },
    /// A hard link to a regular file elsewhere in the same layer.
    Hardlink {
        target: TreePath,
    },
}

impl Node {
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Dir(_) => "directory",
            Node::File { .. } => "file",
            Node::Symlink { .. } => "symlink",
            Node::Hardlink { .. } => "hardlink",
        }
    }
}

/// A layer's entries, sorted by path. Parents of inserted entries are created as
/// root-owned 0755 directories unless inserted explicitly (before or after).
#[derive(Clone, Debug, Default)]
pub struct Tree {
    entries: BTreeMap<TreePath, Node>,
    /// Directories that exist only because a child needed them.
    implicit: std::collections::BTreeSet<TreePath>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    pub fn get(&self, path: &TreePath) -> Option<&Node> {
        self.entries.get(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in the order they are written: sorted by path bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&TreePath, &Node)> {
        self.entries.iter()
    }

    /// Inserts or replaces an entry. Replacing a directory with a non-directory is
    /// refused (as dpkg does); a directory inserted over a directory takes the new
    /// metadata. An explicit directory replaces an implicit one's metadata.
    pub fn insert(&mut self, path: TreePath, node: Node) -> Result<(), TreeError> {
        if path.is_root() {
            return Err(TreeError::InvalidPath {
                path: "/".into(),
                why: "the root itself cannot be an entry",
            });
        }
        self.ensure_parents(&path)?;
        if let Some(Node::Dir(_)) = self.entries.get(&path)
            && !matches!(node, Node::Dir(_))
        {
            return Err(TreeError::ReplacesDirectory {
                path: path.to_string(),
                kind: node.kind(),
            });
        }
        self.implicit.remove(&path);
        self.entries.insert(path, node);
        Ok(())
    }

    /// Inserts a directory only if nothing is at that path yet (a package shipping a
    /// directory another package shipped already keeps the first one's metadata).
    pub fn insert_dir_if_absent(&mut self, path: TreePath, meta: Meta) -> Result<(), TreeError> {
        match self.entries.get(&path) {
            Some(Node::Dir(_)) if !self.implicit.contains(&path) => Ok(()),
            _ => self.insert(path, Node::Dir(meta)),
        }
    }

    /// Removes an entry and, if it is a directory, everything below it.
    pub fn remove(&mut self, path: &TreePath) -> usize {
        let prefix = format!("{}/", path.as_str());
        let doomed: Vec<TreePath> = self
            .entries
            .keys()
            .filter(|k| *k == path || k.as_str().starts_with(&prefix))
            .cloned()
            .collect();
        for k in &doomed {
            self.entries.remove(k);
            self.implicit.remove(k);
        }
        doomed.len()
    }

    fn ensure_parents(&mut self, path: &TreePath) -> Result<(), TreeError> {
        for anc in path.ancestors() {
            match self.entries.get(&anc) {
                None => {
                    self.entries.insert(anc.clone(), Node::Dir(Meta::DIR));
                    self.implicit.insert(anc);
                }
                Some(Node::Dir(_)) => {}
                Some(other) => {
                    return Err(TreeError::ParentNotDirectory {
                        path: path.to_string(),
                        parent: anc.to_string(),
                        kind: other.kind(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Gives directories that exist only as parents of other entries the metadata
    /// that the layers below have for them (so adding `/tmp/x` keeps `/tmp` 1777).
    pub fn adopt_lower_dirs(&mut self, lower: impl Fn(&TreePath) -> Option<Meta>) {
        for p in &self.implicit {
            if let Some(m) = lower(p) {
                self.entries.insert(p.clone(), Node::Dir(m));
            }
        }
    }

    /// Checks invariants that can only be checked once the tree is complete:
    /// every hardlink points at a regular file of this tree.
    pub fn validate(&self) -> Result<(), TreeError> {
        for (p, n) in &self.entries {
            if let Node::Hardlink { target } = n
                && !matches!(self.entries.get(target), Some(Node::File { .. }))
            {
                return Err(TreeError::BadHardlink {
                    path: p.to_string(),
                    target: target.to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_and_refuse_escape() {
        assert_eq!(
            TreePath::new("./usr//bin/x/").unwrap().as_str(),
            "usr/bin/x"
        );
        assert_eq!(TreePath::new("/").unwrap(), TreePath::root());
        assert!(TreePath::new("../etc/passwd").is_err());
        assert!(TreePath::new("usr/../../x").is_err());
        let p = TreePath::new("a/b/c").unwrap();
        let anc: Vec<_> = p.ancestors().map(|a| a.as_str().to_owned()).collect();
        assert_eq!(anc, ["a", "a/b"]);
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
    }

    #[test]
    fn parents_are_implicit_and_dirs_are_protected() {
        let mut t = Tree::new();
        t.insert(
            TreePath::new("a/b/f").unwrap(),
            Node::File {
                meta: Meta::FILE,
                content: Content::inline(*b"x"),
            },
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        let err = t
            .insert(
                TreePath::new("a/b").unwrap(),
                Node::File {
                    meta: Meta::FILE,
                    content: Content::inline(*b""),
                },
            )
            .unwrap_err();
        assert!(matches!(err, TreeError::ReplacesDirectory { .. }));
        t.insert_dir_if_absent(TreePath::new("a").unwrap(), Meta::new(0o1777, 0, 0))
            .unwrap();
        assert_eq!(
            t.get(&TreePath::new("a").unwrap()),
            Some(&Node::Dir(Meta::new(0o1777, 0, 0)))
        );
        assert_eq!(t.remove(&TreePath::new("a/b").unwrap()), 2);
    }
}
