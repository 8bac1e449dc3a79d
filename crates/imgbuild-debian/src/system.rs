//! System set-up that Debian's base-files, base-passwd and libc-bin maintainer scripts would
//! have done, done declaratively instead: the image's accounts (read and written by
//! [`crate::accounts`], re-exported here) and [`base_fixup`] (nsswitch.conf, `/tmp` & co.,
//! `/var/run` and `/var/lock` symlinks, merged-/usr symlinks).
//!
//! Per release and architecture (checked against the real packages, December 2026):
//! - base-passwd's `passwd.master` and `group.master` are byte for byte the same in
//!   bookworm (3.6.1) and trixie (3.6.7), so both releases get the same base accounts;
//!   trixie's postinst also creates empty `/etc/subuid` and `/etc/subgid` (0644).
//! - trixie's base-files ships the merged-/usr links itself (`/lib64` on amd64 only;
//!   its postinst's `rtlddir`), bookworm's left them to usrmerge; either way the image
//!   gets `/bin`, `/sbin`, `/lib` and, on amd64, `/lib64`. arm64 has no `/lib64`.
//! - `/var/local` comes from base-files' own archive (root:staff 2775 in bookworm,
//!   root:root 0755 in trixie, whose postinst sets staff only on request) and is left
//!   as shipped.

use imgbuild_layer::{Content, Meta, Node, Tree, TreePath};

pub use crate::accounts::{Accounts, Group, SHADOW_GID, User};
use crate::error::{Error, Result};
use crate::platform::{Arch, Suite};

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

/// [`base_fixup_for`] bookworm on amd64 (what imgbuild did before releases and
/// architectures could be chosen).
pub fn base_fixup(tree: &mut Tree) -> Result<()> {
    base_fixup_for(tree, Suite::Bookworm, Arch::Amd64)
}

/// The generic post-unpack fixups of a maintainer-script-free Debian image of a release
/// and architecture (see the module doc). Accounts are separate: render them with
/// [`Accounts::render`].
pub fn base_fixup_for(tree: &mut Tree, suite: Suite, arch: Arch) -> Result<()> {
    crate::deb::ensure_merged_usr_for(tree, arch)?;
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
    if suite >= Suite::Trixie {
        // trixie's base-passwd postinst: empty subordinate-id files, root 0644
        for f in ["etc/subuid", "etc/subgid"] {
            let p = TreePath::new(f)?;
            if tree.get(&p).is_none() {
                tree.insert(
                    p,
                    Node::File {
                        meta: Meta::FILE,
                        content: Content::inline(""),
                    },
                )?;
            }
        }
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
        // bookworm has no subuid/subgid
        assert!(t.get(&TreePath::new("etc/subuid").unwrap()).is_none());
    }

    #[test]
    fn fixup_per_release_and_architecture() {
        let mut t = Tree::new();
        base_fixup_for(&mut t, Suite::Trixie, Arch::Arm64).unwrap();
        let get = |p: &str| t.get(&TreePath::new(p).unwrap()).cloned();
        assert!(matches!(get("lib"), Some(Node::Symlink { target, .. }) if target == "usr/lib"));
        assert_eq!(get("lib64"), None, "arm64 has no /lib64");
        for f in ["etc/subuid", "etc/subgid"] {
            assert_eq!(
                file_text(&t, f),
                (String::new(), Meta::new(0o644, 0, 0)),
                "{f}"
            );
        }
        let mut t = Tree::new();
        base_fixup_for(&mut t, Suite::Trixie, Arch::Amd64).unwrap();
        assert!(matches!(
            t.get(&TreePath::new("lib64").unwrap()),
            Some(Node::Symlink { target, .. }) if target == "usr/lib64"
        ));
        assert_eq!(
            Accounts::debian_base_for(Suite::Trixie),
            Accounts::debian_base_for(Suite::Bookworm)
        );
    }
}
