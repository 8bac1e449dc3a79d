//! What an upper layer needs to know about the layers below it.
//!
//! A layer is written on top of others without unpacking them. Two facts about the
//! lower layers change what an upper layer must contain, and both are recorded with
//! every built layer (see [`crate::cache::LayerRecord`]):
//! - directories: a parent directory that an upper layer needs but does not declare
//!   is written with the *lower* layer's mode and owner (otherwise `/tmp` 1777 would
//!   silently become 0755 when something is added under it);
//! - symlinks: a destination under a lower symlink is written through it, as a real
//!   filesystem would (`/bin/x` lands in `/usr/bin/x` on a merged-/usr image, instead
//!   of a `bin/` directory entry replacing the `bin -> usr/bin` link).

use std::collections::BTreeMap;

use imgbuild_layer::Meta;
use serde::{Deserialize, Serialize};

/// (mode, uid, gid) of a directory.
pub type DirMeta = (u32, u32, u32);

/// What a layer writing some path depends on: each ancestor and its lower metadata.
pub type AncestorContext = Vec<(String, Option<DirMeta>)>;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LowerView {
    /// path (no leading `/`) -> (mode, uid, gid)
    pub dirs: BTreeMap<String, DirMeta>,
    /// path -> target
    pub symlinks: BTreeMap<String, String>,
}

impl LowerView {
    /// Lays a layer's directories and symlinks over this view.
    pub fn apply(&mut self, upper: &LowerView) {
        for (p, m) in &upper.dirs {
            self.symlinks.remove(p);
            self.dirs.insert(p.clone(), *m);
        }
        for (p, t) in &upper.symlinks {
            self.dirs.remove(p);
            self.symlinks.insert(p.clone(), t.clone());
        }
    }

    pub fn dir_meta(&self, path: &str) -> Option<Meta> {
        self.dirs.get(path).map(|&(m, u, g)| Meta::new(m, u, g))
    }

    /// Rewrites an image path (with or without leading `/`) so that no ancestor is a
    /// lower symlink. Returns the path without a leading `/`. A symlink loop leaves
    /// the path as it is (writing it then fails as it would in the image).
    pub fn resolve(&self, path: &str) -> String {
        imgbuild_layer::symlinks::resolve(path, imgbuild_layer::Follow::WRITE, |p| {
            self.symlinks.get(p).map(String::as_str)
        })
        .unwrap_or_else(|_| {
            path.split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect::<Vec<_>>()
                .join("/")
        })
    }

    /// The facts about `path`'s ancestors that a layer writing `path` depends on,
    /// for its fingerprint.
    pub fn context_for(&self, resolved: &str) -> AncestorContext {
        let mut out = vec![];
        let mut acc = String::new();
        let parts: Vec<&str> = resolved.split('/').collect();
        for c in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(c);
            out.push((acc.clone(), self.dirs.get(&acc).copied()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_through_merged_usr_links() {
        let mut v = LowerView::default();
        v.symlinks.insert("bin".into(), "usr/bin".into());
        v.symlinks.insert("var/run".into(), "/run".into());
        v.symlinks.insert("opt/x".into(), "../srv/x".into());
        assert_eq!(v.resolve("/bin/hello"), "usr/bin/hello");
        assert_eq!(v.resolve("/bin"), "bin");
        assert_eq!(v.resolve("/var/run/postgresql/x"), "run/postgresql/x");
        assert_eq!(v.resolve("/opt/x/y"), "srv/x/y");
        assert_eq!(v.resolve("/etc/motd"), "etc/motd");
    }
}
