//! System set-up that Debian's base-files, base-passwd and libc-bin maintainer scripts would
//! have done, done declaratively instead: the image's accounts ([`Accounts`], rendered to
//! `etc/passwd`, `etc/group`, `etc/shadow`, `etc/gshadow`), owner names resolved against
//! THIS image's accounts (never the host's), and [`base_fixup`] (nsswitch.conf, `/tmp` & co.,
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

use crate::error::{Error, Result};
use crate::platform::{Arch, Suite};

/// The static users and groups of base-passwd 3.6.1 (`/usr/share/base-passwd/*.master`).
const PASSWD_MASTER: &str = include_str!("passwd.master");
const GROUP_MASTER: &str = include_str!("group.master");

/// gid of group `shadow`, which owns `etc/shadow` and `etc/gshadow`.
pub const SHADOW_GID: u32 = 42;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The users and groups of one image, carried from layer to layer (serde).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Accounts {
    pub users: Vec<User>,
    pub groups: Vec<Group>,
}

impl Default for Accounts {
    fn default() -> Accounts {
        Accounts::debian_base()
    }
}

fn bad_name(kind: &str, name: &str) -> Option<Error> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.$".contains(&b));
    (!ok).then(|| {
        Error::Accounts(format!(
            "invalid {kind} name `{name}`: use letters, digits, `_`, `-`, `.`"
        ))
    })
}

impl Accounts {
    /// No users or groups at all.
    pub fn empty() -> Accounts {
        Accounts {
            users: vec![],
            groups: vec![],
        }
    }

    /// The base accounts of a release's base-passwd (the same for bookworm and trixie,
    /// see the module doc).
    pub fn debian_base_for(suite: Suite) -> Accounts {
        match suite {
            Suite::Bookworm | Suite::Trixie => Accounts::debian_base(),
        }
    }

    /// The standard Debian base accounts: root 0, daemon 1, bin 2, sys 3, adm 4, tty 5,
    /// disk 6, ..., www-data 33, shadow 42, staff 50, users 100, nogroup/nobody 65534.
    pub fn debian_base() -> Accounts {
        let mut a = Accounts::empty();
        for l in GROUP_MASTER.lines().filter(|l| !l.is_empty()) {
            let f: Vec<&str> = l.split(':').collect();
            a.groups.push(Group {
                name: f[0].into(),
                gid: f[2].parse().expect("group.master gid"),
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            });
        }
        for l in PASSWD_MASTER.lines().filter(|l| !l.is_empty()) {
            let f: Vec<&str> = l.split(':').collect();
            a.users.push(User {
                name: f[0].into(),
                uid: f[2].parse().expect("passwd.master uid"),
                gid: f[3].parse().expect("passwd.master gid"),
                gecos: f[4].into(),
                home: f[5].into(),
                shell: f[6].into(),
            });
        }
        a
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Adds a user with a fixed uid. Re-adding a user with the same name and uid updates
    /// its gid, gecos, home and shell (recipes may declare base users such as www-data);
    /// a name or uid already taken by another account is an error naming both. The
    /// primary group must exist (add it first).
    pub fn add_user(&mut self, user: User) -> Result<()> {
        if let Some(e) = bad_name("user", &user.name) {
            return Err(e);
        }
        if !self.groups.iter().any(|g| g.gid == user.gid) {
            return Err(Error::Accounts(format!(
                "user `{}`: primary group gid {} does not exist in this image; add the group first",
                user.name, user.gid
            )));
        }
        for u in &mut self.users {
            if u.name == user.name && u.uid == user.uid {
                *u = user;
                return Ok(());
            }
            if u.name == user.name || u.uid == user.uid {
                return Err(Error::Accounts(format!(
                    "user `{}` (uid {}) conflicts with existing user `{}` (uid {})",
                    user.name, user.uid, u.name, u.uid
                )));
            }
        }
        self.users.push(user);
        Ok(())
    }

    /// Adds a group with a fixed gid; same rules as [`Accounts::add_user`] (members are merged).
    pub fn add_group(&mut self, group: Group) -> Result<()> {
        if let Some(e) = bad_name("group", &group.name) {
            return Err(e);
        }
        for g in &mut self.groups {
            if g.name == group.name && g.gid == group.gid {
                for m in group.members {
                    if !g.members.contains(&m) {
                        g.members.push(m);
                    }
                }
                return Ok(());
            }
            if g.name == group.name || g.gid == group.gid {
                return Err(Error::Accounts(format!(
                    "group `{}` (gid {}) conflicts with existing group `{}` (gid {})",
                    group.name, group.gid, g.name, g.gid
                )));
            }
        }
        self.groups.push(group);
        Ok(())
    }

    /// Resolves `user:group`, `uid:gid` (or mixed) or `user` (its primary group) to numeric
    /// ids against this image's accounts.
    pub fn resolve_owner(&self, spec: &str) -> Result<(u32, u32)> {
        let unknown = |what: &str, n: &str| {
            Error::Accounts(format!(
                "owner `{spec}`: no {what} `{n}` in this image's accounts; declare it in the recipe (or use numeric ids)"
            ))
        };
        let (u, g) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let uid = match u.parse::<u32>() {
            Ok(n) => n,
            Err(_) => self.user(u).ok_or_else(|| unknown("user", u))?.uid,
        };
        let gid = match g {
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => self.group(g).ok_or_else(|| unknown("group", g))?.gid,
            },
            None => match self
                .users
                .iter()
                .find(|x| x.name == u || u.parse() == Ok(x.uid))
            {
                Some(x) => x.gid,
                None => {
                    return Err(Error::Accounts(format!(
                        "owner `{spec}`: uid {uid} is not a user of this image, so it has no primary group; write `{uid}:GID`"
                    )));
                }
            },
        };
        Ok((uid, gid))
    }

    /// Writes `etc/passwd` and `etc/group` (0644), `etc/shadow` and `etc/gshadow` (0640,
    /// root:shadow) into the tree, replacing what is there. Passwords are locked (`*`).
    pub fn render(&self, tree: &mut Tree) -> Result<()> {
        let mut passwd = String::new();
        let mut shadow = String::new();
        for u in &self.users {
            passwd.push_str(&format!(
                "{}:x:{}:{}:{}:{}:{}\n",
                u.name, u.uid, u.gid, u.gecos, u.home, u.shell
            ));
            // a fixed "last change" day keeps the file reproducible
            shadow.push_str(&format!("{}:*:19000:0:99999:7:::\n", u.name));
        }
        let mut group = String::new();
        let mut gshadow = String::new();
        for g in &self.groups {
            let m = g.members.join(",");
            group.push_str(&format!("{}:x:{}:{m}\n", g.name, g.gid));
            gshadow.push_str(&format!("{}:*::{m}\n", g.name));
        }
        let secret = Meta::new(0o640, 0, SHADOW_GID);
        for (path, text, meta) in [
            ("etc/passwd", passwd, Meta::FILE),
            ("etc/group", group, Meta::FILE),
            ("etc/shadow", shadow, secret),
            ("etc/gshadow", gshadow, secret),
        ] {
            tree.insert(
                TreePath::new(path)?,
                Node::File {
                    meta,
                    content: Content::inline(text),
                },
            )?;
        }
        Ok(())
    }
}

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
    fn base_accounts_and_rendering() {
        let mut a = Accounts::debian_base();
        assert_eq!(a.user("root").unwrap().uid, 0);
        assert_eq!(a.group("staff").unwrap().gid, 50);
        assert_eq!(a.group("shadow").unwrap().gid, 42);
        assert_eq!(a.user("nobody").unwrap().gid, 65534);
        a.add_group(Group {
            name: "postgres".into(),
            gid: 999,
            members: vec![],
        })
        .unwrap();
        a.add_user(User {
            name: "postgres".into(),
            uid: 999,
            gid: 999,
            gecos: "".into(),
            home: "/var/lib/postgresql".into(),
            shell: "/bin/sh".into(),
        })
        .unwrap();
        a.add_group(Group {
            name: "ssl-cert".into(),
            gid: 101,
            members: vec!["postgres".into()],
        })
        .unwrap();
        // re-declaring a base user with the same uid updates it
        a.add_user(User {
            name: "www-data".into(),
            uid: 33,
            gid: 33,
            gecos: "www".into(),
            home: "/var/www".into(),
            shell: "/usr/sbin/nologin".into(),
        })
        .unwrap();
        let e = a
            .add_user(User {
                name: "redis".into(),
                uid: 999,
                gid: 999,
                gecos: "".into(),
                home: "/".into(),
                shell: "/bin/false".into(),
            })
            .unwrap_err();
        assert!(
            e.to_string().contains("`redis` (uid 999)")
                && e.to_string().contains("`postgres` (uid 999)"),
            "{e}"
        );
        let e = a
            .add_group(Group {
                name: "pg2".into(),
                gid: 999,
                members: vec![],
            })
            .unwrap_err();
        assert!(
            e.to_string().contains("pg2") && e.to_string().contains("postgres"),
            "{e}"
        );
        assert!(
            a.add_user(User {
                name: "x".into(),
                uid: 5000,
                gid: 5000,
                gecos: "".into(),
                home: "/".into(),
                shell: "/".into()
            })
            .is_err()
        );

        assert_eq!(a.resolve_owner("postgres:postgres").unwrap(), (999, 999));
        assert_eq!(a.resolve_owner("postgres").unwrap(), (999, 999));
        assert_eq!(a.resolve_owner("999:999").unwrap(), (999, 999));
        assert_eq!(a.resolve_owner("root:adm").unwrap(), (0, 4));
        assert_eq!(a.resolve_owner("33").unwrap(), (33, 33));
        assert!(
            a.resolve_owner("redis:redis")
                .unwrap_err()
                .to_string()
                .contains("no user `redis`")
        );
        assert!(a.resolve_owner("4242").is_err());

        // serde round trip (carried from layer to layer)
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Accounts>(&json).unwrap(), a);

        let mut t = Tree::new();
        a.render(&mut t).unwrap();
        let (passwd, m) = file_text(&t, "etc/passwd");
        assert_eq!(m, Meta::new(0o644, 0, 0));
        assert!(passwd.starts_with("root:x:0:0:root:/root:/bin/bash\n"));
        assert!(passwd.contains("postgres:x:999:999::/var/lib/postgresql:/bin/sh\n"));
        let (group, _) = file_text(&t, "etc/group");
        assert!(
            group.contains("ssl-cert:x:101:postgres\n") && group.contains("nogroup:x:65534:\n")
        );
        let (shadow, m) = file_text(&t, "etc/shadow");
        assert_eq!(m, Meta::new(0o640, 0, 42));
        assert!(shadow.contains("postgres:*:"));
        assert_eq!(file_text(&t, "etc/gshadow").1, Meta::new(0o640, 0, 42));
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
