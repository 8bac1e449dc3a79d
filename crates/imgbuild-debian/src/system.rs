//! System set-up that Debian's base-files, base-passwd and libc-bin maintainer scripts would
//! have done, done declaratively instead: the image's accounts (read and written by
//! [`crate::accounts`], re-exported here) and [`base_fixup`] (nsswitch.conf, `/tmp` & co.,
//! `/var/run` and `/var/lock` symlinks, merged-/usr symlinks).

use imgbuild_layer::{Content, Meta, Node, Tree, TreePath};

pub use crate::accounts::{Accounts, Group, SHADOW_GID, User};
use crate::error::{Error, Result};

/// What libc-bin's postinst installs as `/etc/nsswitch.conf`; without it glibc falls back
/// to `hosts: dns [!UNAVAIL=return] files`, and `/etc/hosts` would be read after DNS.
pub const NSSWITCH_CONF: &str = "\
passwd:         files
group:          files
shadow:         files
gshadow:        files

hosts:          files dns
networks:       files

protocols:      db files
services:       db files
ethers:         db files
rpc:            db files

netgroup:       nis
";

fn set_dir(tree: &mut Tree, path: &str, mode: u32) -> Result<()> {
    let p = TreePath::new(path)?;
    if let Some(n) = tree.get(&p)
        && !matches!(n, Node::Dir(_))
    {
        return Err(Error::Unpack {
            package: "(base fixup)".into(),
            path: path.into(),
            why: format!("must be a directory but is a {}", n.kind()),
        });
    }
    tree.insert(p, Node::Dir(Meta::new(mode, 0, 0)))?;
    Ok(())
}

/// Turns `from` into a symlink to `to`; entries under a real directory `from` move to `to`
/// (what base-files' postinst `migrate_directory` does for `/var/run` and `/var/lock`).
fn dir_to_symlink(tree: &mut Tree, from: &str, to: &str, to_rel: &str) -> Result<()> {
    let p = TreePath::new(from)?;
    match tree.get(&p) {
        Some(Node::Symlink { .. }) => return Ok(()),
        Some(Node::Dir(_)) => {
            let prefix = format!("{from}/");
            let moved: Vec<(TreePath, Node)> = tree
                .iter()
                .filter(|(k, _)| k.as_str().starts_with(&prefix))
                .map(|(k, n)| (k.clone(), n.clone()))
                .collect();
            tree.remove(&p);
            for (k, n) in moved {
                let dest = TreePath::new(&format!("{to_rel}/{}", &k.as_str()[prefix.len()..]))?;
                match n {
                    Node::Dir(m) => tree.insert_dir_if_absent(dest, m)?,
                    other => tree.insert(dest, other)?,
                }
            }
        }
        Some(other) => {
            return Err(Error::Unpack {
                package: "(base fixup)".into(),
                path: from.into(),
                why: format!(
                    "is a {}, expected a directory or a symlink to {to}",
                    other.kind()
                ),
            });
        }
        None => {}
    }
    tree.insert(
        p,
        Node::Symlink {
            meta: Meta::new(0o777, 0, 0),
            target: to.into(),
        },
    )?;
    Ok(())
}

/// The generic post-unpack fixups of a maintainer-script-free Debian image (see the module
/// doc). Accounts are separate: render them with [`Accounts::render`].
pub fn base_fixup(tree: &mut Tree) -> Result<()> {
    crate::deb::ensure_merged_usr(tree)?;
    for (d, mode) in [
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("run/lock", 0o1777),
        ("tmp", 0o1777),
        ("var", 0o755),
        ("var/tmp", 0o1777),
        ("root", 0o700),
    ] {
        set_dir(tree, d, mode)?;
    }
    dir_to_symlink(tree, "var/run", "/run", "run")?;
    dir_to_symlink(tree, "var/lock", "/run/lock", "run/lock")?;
    let nss = TreePath::new("etc/nsswitch.conf")?;
    if tree.get(&nss).is_none() {
        tree.insert(
            nss,
            Node::File {
                meta: Meta::FILE,
                content: Content::inline(NSSWITCH_CONF),
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_text(tree: &Tree, p: &str) -> (String, Meta) {
        match tree.get(&TreePath::new(p).unwrap()) {
            Some(Node::File {
                meta,
                content: Content::Inline(b),
            }) => (String::from_utf8(b.to_vec()).unwrap(), *meta),
            other => panic!("{p}: {other:?}"),
        }
    }

    #[test]
    fn fixup_layout() {
        let mut t = Tree::new();
        t.insert(
            TreePath::new("var/run/foo.pid").unwrap(),
            Node::File {
                meta: Meta::FILE,
                content: Content::inline(*b"1"),
            },
        )
        .unwrap();
        base_fixup(&mut t).unwrap();
        let get = |p: &str| t.get(&TreePath::new(p).unwrap()).cloned();
        assert_eq!(get("tmp"), Some(Node::Dir(Meta::new(0o1777, 0, 0))));
        assert_eq!(get("var/tmp"), Some(Node::Dir(Meta::new(0o1777, 0, 0))));
        assert_eq!(get("run/lock"), Some(Node::Dir(Meta::new(0o1777, 0, 0))));
        assert_eq!(get("run"), Some(Node::Dir(Meta::new(0o755, 0, 0))));
        assert_eq!(get("root"), Some(Node::Dir(Meta::new(0o700, 0, 0))));
        assert!(matches!(get("var/run"), Some(Node::Symlink { target, .. }) if target == "/run"));
        assert!(
            matches!(get("var/lock"), Some(Node::Symlink { target, .. }) if target == "/run/lock")
        );
        assert!(matches!(get("bin"), Some(Node::Symlink { target, .. }) if target == "usr/bin"));
        assert!(
            matches!(get("lib64"), Some(Node::Symlink { target, .. }) if target == "usr/lib64")
        );
        assert!(
            matches!(get("run/foo.pid"), Some(Node::File { .. })),
            "moved from var/run"
        );
        assert!(
            file_text(&t, "etc/nsswitch.conf")
                .0
                .contains("hosts:          files dns\n")
        );
        // idempotent
        base_fixup(&mut t).unwrap();
    }
}
