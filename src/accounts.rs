//! The users and groups of one image, for resolving `owner = "name:group"` against
//! the image's own `/etc/passwd` and `/etc/group` (never the build host's).
//!
//! The account state is derived from recipes alone (the Debian base set when a layer
//! applies the base fix-up, then each layer's `users` and `groups`), so it is known
//! for every layer without unpacking the layers below.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::recipe::{GroupSpec, OwnerSpec, UserSpec};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Accounts {
    pub users: BTreeMap<String, UserSpec2>,
    pub groups: BTreeMap<String, GroupSpec2>,
    /// Order of first appearance, so rendered files keep the conventional order.
    pub user_order: Vec<String>,
    pub group_order: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserSpec2 {
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupSpec2 {
    pub gid: u32,
    pub members: Vec<String>,
}

/// Debian's base accounts (base-passwd's passwd.master and group.master), which the
/// base-passwd postinst would have installed.
const BASE_USERS: &[(&str, u32, u32, &str, &str, &str)] = &[
    ("root", 0, 0, "root", "/root", "/bin/bash"),
    ("daemon", 1, 1, "daemon", "/usr/sbin", "/usr/sbin/nologin"),
    ("bin", 2, 2, "bin", "/bin", "/usr/sbin/nologin"),
    ("sys", 3, 3, "sys", "/dev", "/usr/sbin/nologin"),
    ("sync", 4, 65534, "sync", "/bin", "/bin/sync"),
    ("games", 5, 60, "games", "/usr/games", "/usr/sbin/nologin"),
    ("man", 6, 12, "man", "/var/cache/man", "/usr/sbin/nologin"),
    ("lp", 7, 7, "lp", "/var/spool/lpd", "/usr/sbin/nologin"),
    ("mail", 8, 8, "mail", "/var/mail", "/usr/sbin/nologin"),
    ("news", 9, 9, "news", "/var/spool/news", "/usr/sbin/nologin"),
    ("uucp", 10, 10, "uucp", "/var/spool/uucp", "/usr/sbin/nologin"),
    ("proxy", 13, 13, "proxy", "/bin", "/usr/sbin/nologin"),
    ("www-data", 33, 33, "www-data", "/var/www", "/usr/sbin/nologin"),
    ("backup", 34, 34, "backup", "/var/backups", "/usr/sbin/nologin"),
    ("list", 38, 38, "Mailing List Manager", "/var/list", "/usr/sbin/nologin"),
    ("irc", 39, 39, "ircd", "/run/ircd", "/usr/sbin/nologin"),
    ("_apt", 42, 65534, "", "/nonexistent", "/usr/sbin/nologin"),
    ("nobody", 65534, 65534, "nobody", "/nonexistent", "/usr/sbin/nologin"),
];

const BASE_GROUPS: &[(&str, u32)] = &[
    ("root", 0), ("daemon", 1), ("bin", 2), ("sys", 3), ("adm", 4), ("tty", 5), ("disk", 6), ("lp", 7),
    ("mail", 8), ("news", 9), ("uucp", 10), ("man", 12), ("proxy", 13), ("kmem", 15), ("dialout", 20),
    ("fax", 21), ("voice", 22), ("cdrom", 24), ("floppy", 25), ("tape", 26), ("sudo", 27), ("audio", 29),
    ("dip", 30), ("www-data", 33), ("backup", 34), ("operator", 37), ("list", 38), ("irc", 39), ("src", 40),
    ("shadow", 42), ("utmp", 43), ("video", 44), ("sasl", 45), ("plugdev", 46), ("staff", 50), ("games", 60),
    ("users", 100), ("nogroup", 65534),
];

impl Accounts {
    /// The accounts every Debian-based image starts with.
    pub fn debian_base() -> Accounts {
        let mut a = Accounts::default();
        for &(name, gid) in BASE_GROUPS {
            a.put_group(name, GroupSpec2 { gid, members: vec![] });
        }
        for &(name, uid, gid, gecos, home, shell) in BASE_USERS {
            a.put_user(name, UserSpec2 { uid, gid, gecos: gecos.into(), home: home.into(), shell: shell.into() });
        }
        a
    }

    /// A scratch image that declares users gets root and nobody/nogroup too.
    pub fn minimal() -> Accounts {
        let mut a = Accounts::default();
        a.put_group("root", GroupSpec2 { gid: 0, members: vec![] });
        a.put_group("nogroup", GroupSpec2 { gid: 65534, members: vec![] });
        a.put_user("root", UserSpec2 { uid: 0, gid: 0, gecos: "root".into(), home: "/root".into(), shell: "/bin/sh".into() });
        a.put_user("nobody", UserSpec2 { uid: 65534, gid: 65534, gecos: "nobody".into(), home: "/nonexistent".into(), shell: "/usr/sbin/nologin".into() });
        a
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }

    fn put_user(&mut self, name: &str, u: UserSpec2) {
        if self.users.insert(name.into(), u).is_none() {
            self.user_order.push(name.into());
        }
    }
    fn put_group(&mut self, name: &str, g: GroupSpec2) {
        if self.groups.insert(name.into(), g).is_none() {
            self.group_order.push(name.into());
        }
    }

    /// Adds declared groups then users. Redeclaring an identical account is fine;
    /// a different id for an existing name, or an id already taken by another name,
    /// is an error naming both.
    pub fn declare(&mut self, groups: &[GroupSpec], users: &[UserSpec]) -> Result<()> {
        for g in groups {
            if let Some(old) = self.groups.get(&g.name)
                && old.gid != g.gid
            {
                bail!("group `{}` is declared with gid {} but the image already has it with gid {}", g.name, g.gid, old.gid);
            }
            if let Some((other, _)) = self.groups.iter().find(|(n, x)| x.gid == g.gid && **n != g.name) {
                bail!("gid {} of group `{}` is already used by group `{other}` in this image", g.gid, g.name);
            }
            let mut members = self.groups.get(&g.name).map(|x| x.members.clone()).unwrap_or_default();
            for m in &g.members {
                if !members.contains(m) {
                    members.push(m.clone());
                }
            }
            self.put_group(&g.name, GroupSpec2 { gid: g.gid, members });
        }
        for u in users {
            if let Some(old) = self.users.get(&u.name)
                && old.uid != u.uid
            {
                bail!("user `{}` is declared with uid {} but the image already has it with uid {}", u.name, u.uid, old.uid);
            }
            if let Some((other, _)) = self.users.iter().find(|(n, x)| x.uid == u.uid && **n != u.name) {
                bail!("uid {} of user `{}` is already used by user `{other}` in this image", u.uid, u.name);
            }
            if !self.groups.values().any(|g| g.gid == u.gid) {
                // A user's primary group is created with the user's name, as adduser does.
                if self.groups.contains_key(&u.name) {
                    bail!("user `{}` has gid {}, but no group has that gid and group `{}` has another", u.name, u.gid, u.name);
                }
                self.put_group(&u.name, GroupSpec2 { gid: u.gid, members: vec![] });
            }
            self.users.insert(u.name.clone(), UserSpec2 {
                uid: u.uid,
                gid: u.gid,
                gecos: u.gecos.clone(),
                home: u.home.clone(),
                shell: u.shell.clone(),
            });
            if !self.user_order.contains(&u.name) {
                self.user_order.push(u.name.clone());
            }
        }
        Ok(())
    }

    /// Resolves an owner against this image's accounts.
    pub fn resolve(&self, o: &OwnerSpec) -> Result<(u32, u32)> {
        let uid = match o.user.parse::<u32>() {
            Ok(n) => n,
            Err(_) => match self.users.get(&o.user) {
                Some(u) => u.uid,
                None if o.user == "root" => 0,
                None => bail!(
                    "unknown user `{}` in owner: the image has no such account (declare it with `users = [...]` in this or a lower layer, or use a numeric uid)",
                    o.user
                ),
            },
        };
        let gid = match &o.group {
            None => match o.user.parse::<u32>() {
                Ok(n) => n,
                Err(_) => self.users.get(&o.user).map(|u| u.gid).unwrap_or(0),
            },
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => match self.groups.get(g) {
                    Some(x) => x.gid,
                    None if g == "root" => 0,
                    None => bail!(
                        "unknown group `{g}` in owner: the image has no such group (declare it with `groups = [...]`, or use a numeric gid)"
                    ),
                },
            },
        };
        Ok((uid, gid))
    }

    /// (path, mode, gid, content) of etc/passwd, group, shadow, gshadow.
    pub fn render(&self) -> Vec<(&'static str, u32, u32, String)> {
        let shadow_gid = self.groups.get("shadow").map(|g| g.gid).unwrap_or(0);
        let mut passwd = String::new();
        let mut shadow = String::new();
        for n in &self.user_order {
            let u = &self.users[n];
            passwd.push_str(&format!("{n}:x:{}:{}:{}:{}:{}\n", u.uid, u.gid, u.gecos, u.home, u.shell));
            // `*`: no password login; the date field is fixed (no clock in images).
            shadow.push_str(&format!("{n}:*:19000:0:99999:7:::\n"));
        }
        let mut group = String::new();
        let mut gshadow = String::new();
        for n in &self.group_order {
            let g = &self.groups[n];
            group.push_str(&format!("{n}:x:{}:{}\n", g.gid, g.members.join(",")));
            gshadow.push_str(&format!("{n}:*::{}\n", g.members.join(",")));
        }
        vec![
            ("etc/passwd", 0o644, 0, passwd),
            ("etc/group", 0o644, 0, group),
            ("etc/shadow", 0o640, shadow_gid, shadow),
            ("etc/gshadow", 0o640, shadow_gid, gshadow),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_resolve_against_the_image_not_the_host() {
        let mut a = Accounts::debian_base();
        a.declare(
            &[GroupSpec { name: "postgres".into(), gid: 999, members: vec![] }],
            &[UserSpec { name: "postgres".into(), uid: 999, gid: 999, gecos: "".into(), home: "/var/lib/postgresql".into(), shell: "/bin/sh".into() }],
        )
        .unwrap();
        let o = |u: &str, g: Option<&str>| OwnerSpec { user: u.into(), group: g.map(Into::into) };
        assert_eq!(a.resolve(&o("postgres", Some("postgres"))).unwrap(), (999, 999));
        assert_eq!(a.resolve(&o("root", Some("adm"))).unwrap(), (0, 4));
        assert_eq!(a.resolve(&o("postgres", None)).unwrap(), (999, 999));
        assert_eq!(a.resolve(&o("12", Some("34"))).unwrap(), (12, 34));
        assert!(a.resolve(&o("nosuch", None)).unwrap_err().to_string().contains("unknown user `nosuch`"));
        let err = a
            .declare(&[], &[UserSpec { name: "x".into(), uid: 999, gid: 999, gecos: "".into(), home: "/".into(), shell: "/".into() }])
            .unwrap_err();
        assert!(err.to_string().contains("already used by user `postgres`"), "{err}");
    }
}
