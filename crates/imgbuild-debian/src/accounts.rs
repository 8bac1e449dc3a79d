//! An image's accounts: the one reader and writer of `/etc/passwd`, `/etc/group`,
//! `/etc/shadow` and `/etc/gshadow`.
//!
//! [`Accounts::parse`] reads the users and groups of an image's files (a registry base's,
//! or base-passwd's master files for [`Accounts::debian_base`]); recipes add to them
//! ([`Accounts::add_user`], [`Accounts::add_group`], checked for clashes); owner names
//! resolve against them ([`Accounts::resolve_owner`], never the build host's accounts);
//! [`Accounts::render`] writes the four files, deterministically and with every password
//! locked. What one renders, the other reads back unchanged (tested).

use imgbuild_layer::{Content, Meta, Node, Tree, TreePath};

use crate::error::{Error, Result};

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
    /// see the module doc of [`crate::system`]).
    pub fn debian_base_for(suite: crate::platform::Suite) -> Accounts {
        match suite {
            crate::platform::Suite::Bookworm | crate::platform::Suite::Trixie => {
                Accounts::debian_base()
            }
        }
    }

    /// The standard Debian base accounts: root 0, daemon 1, bin 2, sys 3, adm 4, tty 5,
    /// disk 6, ..., www-data 33, shadow 42, staff 50, users 100, nogroup/nobody 65534.
    pub fn debian_base() -> Accounts {
        Accounts::parse(PASSWD_MASTER.as_bytes(), GROUP_MASTER.as_bytes())
    }

    /// The users of a passwd file and the groups of a group file, as they are, in file
    /// order (comments, NIS `+`/`-` lines and malformed lines skipped; password fields
    /// are not kept: [`Accounts::render`] writes them locked). An image's own files are
    /// read this way, so that its accounts are the ones names resolve against.
    pub fn parse(passwd: &[u8], group: &[u8]) -> Accounts {
        let lines = |b: &[u8]| -> Vec<Vec<String>> {
            String::from_utf8_lossy(b)
                .lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty() && !l.starts_with(['#', '+', '-']))
                .map(|l| l.split(':').map(str::to_owned).collect())
                .collect()
        };
        let mut accounts = Accounts::empty();
        for f in lines(passwd) {
            if let [name, _, uid, gid, gecos, home, shell] = &f[..]
                && let (Ok(uid), Ok(gid)) = (uid.parse(), gid.parse())
            {
                accounts.users.push(User {
                    name: name.clone(),
                    uid,
                    gid,
                    gecos: gecos.clone(),
                    home: home.clone(),
                    shell: shell.clone(),
                });
            }
        }
        for f in lines(group) {
            if let [name, _, gid, members] = &f[..]
                && let Ok(gid) = gid.parse()
            {
                accounts.groups.push(Group {
                    name: name.clone(),
                    gid,
                    members: members
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect(),
                });
            }
        }
        accounts
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

    /// The text of `etc/passwd`, `etc/group`, `etc/shadow` and `etc/gshadow`, in that
    /// order: accounts in their order here, every password locked (`*`).
    pub fn files(&self) -> [String; 4] {
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
        [passwd, group, shadow, gshadow]
    }

    /// Writes `etc/passwd` and `etc/group` (0644), `etc/shadow` and `etc/gshadow` (0640,
    /// root:shadow) into the tree, replacing what is there. Passwords are locked (`*`).
    pub fn render(&self, tree: &mut Tree) -> Result<()> {
        let [passwd, group, shadow, gshadow] = self.files();
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
    fn what_is_rendered_parses_back_and_what_is_parsed_renders_back() {
        let mut a = Accounts::debian_base();
        a.add_group(Group {
            name: "app".into(),
            gid: 1000,
            members: vec!["www-data".into(), "nobody".into()],
        })
        .unwrap();
        a.add_user(User {
            name: "app".into(),
            uid: 1000,
            gid: 1000,
            gecos: "App,,,".into(),
            home: "/srv/app".into(),
            shell: "/usr/sbin/nologin".into(),
        })
        .unwrap();
        let mut t = Tree::new();
        a.render(&mut t).unwrap();
        let (passwd, _) = file_text(&t, "etc/passwd");
        let (group, _) = file_text(&t, "etc/group");
        assert_eq!(Accounts::parse(passwd.as_bytes(), group.as_bytes()), a);
        // the master files of base-passwd render back byte for byte
        let base = Accounts::debian_base();
        let [p, g, _, _] = base.files();
        assert_eq!(p, PASSWD_MASTER.replace(":*:", ":x:"));
        assert_eq!(g, GROUP_MASTER.replace(":*:", ":x:"));
    }

    #[test]
    fn parse_skips_what_is_not_an_account() {
        let passwd = b"# comment\nroot:x:0:0:root:/root:/bin/sh\n+nis\n-nis\nbad:x:zero:0::/:/bin/sh\nshort:x:1\n\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin \n";
        let group = b"root:x:0:\nadm:x:4:syslog,root\nbroken:x:\n";
        let a = Accounts::parse(passwd, group);
        let names: Vec<&str> = a.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["root", "daemon"]);
        assert_eq!(a.user("daemon").unwrap().shell, "/usr/sbin/nologin");
        assert_eq!(a.groups.len(), 2);
        assert_eq!(a.group("adm").unwrap().members, ["syslog", "root"]);
        assert!(a.group("root").unwrap().members.is_empty());
    }
}
