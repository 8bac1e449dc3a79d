//! The dependency resolver: from root package names to the closure to install, the way
//! `apt-get install --no-install-recommends` does on an empty system, then `exclude` pruning.
//!
//! Phase 1 (apt-like): every root is marked first, then dependencies are walked depth-first
//! (Pre-Depends, then Depends, in field order). An or-group already satisfied by a marked
//! package (by name or through Provides, versions respected) adds nothing; otherwise the first
//! satisfiable alternative wins: the real package's candidate (newest across the suites) if it
//! meets the version constraint, else the best provider (Essential, then Priority, then name).
//! Recommends and Suggests are ignored; Essential packages are never added implicitly.
//! A root may pin a version (`name=version`); a dependency that needs another version of a
//! name already selected is a conflict error naming both requirements.
//!
//! Phase 2 (prune): the closure is walked again from the roots, skipping excluded packages,
//! so that whatever only excluded packages needed disappears too. An or-group whose first
//! alternative is excluded is satisfied by the next alternative already in the closure;
//! phase 2 never adds packages.

use std::collections::{BTreeMap, BTreeSet};

use imgbuild_store::Digest;

use crate::control::Atom;
use crate::error::{Error, Result};
use crate::index::{Base, DEBIAN, Index, PackageEntry};
use crate::platform::Arch;

/// One package of a resolution, as written to the lockfile. Enough to fetch and verify the
/// `.deb` with no index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Archive path, e.g. `pool/main/n/nginx/nginx_1.22.1-9+deb12u2_amd64.deb`.
    pub filename: String,
    pub size: u64,
    pub sha256: Digest,
    /// Which mirror base of the Debian archive serves it.
    pub base: Base,
    /// The repository it comes from: [`DEBIAN`] (the default, so locks written before
    /// repositories existed load as they were) or a `[[debian.repositories]]` name, whose
    /// URL the `.deb` is fetched from.
    #[serde(default = "debian_repository", skip_serializing_if = "is_debian")]
    pub repository: String,
}

fn debian_repository() -> String {
    DEBIAN.to_owned()
}

fn is_debian(r: &str) -> bool {
    r == DEBIAN
}

impl From<&PackageEntry> for LockedPackage {
    fn from(e: &PackageEntry) -> LockedPackage {
        LockedPackage {
            name: e.name.clone(),
            version: e.version.clone(),
            architecture: e.architecture.clone(),
            filename: e.filename.clone(),
            size: e.size,
            sha256: e.sha256.clone(),
            base: e.base,
            repository: e.repository.clone(),
        }
    }
}

/// The result of [`resolve`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resolution {
    /// The packages to install, sorted by name.
    pub packages: Vec<LockedPackage>,
    /// Packages of the full closure dropped because only excluded packages needed them
    /// (the excluded ones included), sorted.
    pub excluded_dropped: Vec<String>,
    /// For each excluded package that was needed: who needed it (for reports).
    pub excluded_required_by: BTreeMap<String, Vec<String>>,
    /// Excluded names that the closure never contained (probably a typo in the recipe).
    pub excluded_unused: Vec<String>,
}

/// Whether an atom's architecture qualifier (`:any`, `:native`, `:arm64`) fits the
/// architecture being resolved for.
fn arch_ok(a: &Atom, arch: Arch) -> bool {
    match a.arch.as_deref() {
        None | Some("any" | "native" | "all") => true,
        Some(q) => q == arch.as_str(),
    }
}

fn priority_rank(p: &str) -> u8 {
    match p {
        "required" => 0,
        "important" => 1,
        "standard" => 2,
        "optional" => 3,
        _ => 4,
    }
}

struct Resolver<'a> {
    index: &'a Index,
    selected: BTreeMap<String, &'a PackageEntry>,
    /// For each selected package, the requirement that selected it (for conflict errors).
    selected_for: BTreeMap<String, String>,
    /// provided name -> (provider, provided version) among selected packages
    provided: BTreeMap<String, Vec<(String, Option<String>)>>,
    visited: BTreeSet<String>,
}

impl<'a> Resolver<'a> {
    /// Marks a package for installation because of `why` (a root of the recipe or a
    /// dependency). One name can be installed in one version only: selecting another
    /// version of a name already selected (a pinned root that a dependency needs in a
    /// different version) is a conflict, never a silent replacement.
    fn select(&mut self, e: &'a PackageEntry, why: String) -> Result<()> {
        if let Some(prev) = self.selected.get(&e.name) {
            if prev.version == e.version {
                return Ok(());
            }
            return Err(Error::Conflict {
                name: e.name.clone(),
                first: self.selected_for[&e.name].clone(),
                second: why,
                versions: Box::new((prev.version.clone(), e.version.clone())),
            });
        }
        self.selected.insert(e.name.clone(), e);
        self.selected_for.insert(e.name.clone(), why);
        for p in &e.provides {
            self.provided.entry(p.name.clone()).or_default().push((
                e.name.clone(),
                p.constraint.as_ref().map(|c| c.version.clone()),
            ));
        }
        Ok(())
    }

    /// Whether an already selected package satisfies the atom (by name or by Provides).
    fn satisfied(&self, a: &Atom) -> bool {
        if !arch_ok(a, self.index.arch) {
            return false;
        }
        if let Some(e) = self.selected.get(&a.name)
            && a.constraint
                .as_ref()
                .is_none_or(|c| c.rel.holds(&e.version, &c.version))
        {
            return true;
        }
        self.provided
            .get(&a.name)
            .into_iter()
            .flatten()
            .any(|(_, pv)| match (&a.constraint, pv) {
                (None, _) => true,
                (Some(c), Some(v)) => c.rel.holds(v, &c.version),
                (Some(_), None) => false,
            })
    }

    /// The package apt would install for this atom, if any.
    fn choose(&self, a: &Atom) -> Option<&'a PackageEntry> {
        if !arch_ok(a, self.index.arch) {
            return None;
        }
        if let Some(c) = self.index.candidate(&a.name)
            && a.constraint
                .as_ref()
                .is_none_or(|k| k.rel.holds(&c.version, &k.version))
        {
            return Some(c);
        }
        let mut provs: Vec<&'a PackageEntry> = self
            .index
            .providers(&a.name)
            .into_iter()
            .filter(|(_, pv)| match (&a.constraint, pv) {
                (None, _) => true,
                (Some(c), Some(v)) => c.rel.holds(v, &c.version),
                (Some(_), None) => false,
            })
            .map(|(e, _)| e)
            .collect();
        provs.sort_by_key(|e| (!e.essential, priority_rank(&e.priority), e.name.clone()));
        provs.first().copied()
    }

    /// The packages of the phase-1 closure that satisfy the atom: the package of that
    /// name (if its version fits), then the providers, sorted by name.
    fn satisfiers_in_closure(&self, a: &Atom) -> Vec<String> {
        let mut out = vec![];
        if let Some(s) = self.selected.get(&a.name)
            && a.constraint
                .as_ref()
                .is_none_or(|c| c.rel.holds(&s.version, &c.version))
        {
            out.push(a.name.clone());
        }
        let mut provs: Vec<String> = self
            .provided
            .get(&a.name)
            .into_iter()
            .flatten()
            .filter(|(_, pv)| match (&a.constraint, pv) {
                (None, _) => true,
                (Some(c), Some(v)) => c.rel.holds(v, &c.version),
                (Some(_), None) => false,
            })
            .map(|(n, _)| n.clone())
            .collect();
        provs.sort();
        out.extend(provs);
        out
    }

    fn visit(&mut self, name: &str) -> Result<()> {
        if !self.visited.insert(name.to_owned()) {
            return Ok(());
        }
        let e = self.selected[name];
        for group in e.pre_depends.iter().chain(e.depends.iter()) {
            if group.iter().any(|a| self.satisfied(a)) {
                continue;
            }
            let Some(pick) = group.iter().find_map(|a| self.choose(a)) else {
                let dep = group
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(" | ");
                let why = group
                    .iter()
                    .map(|a| match self.index.candidate(&a.name) {
                        Some(c) => format!("{} has version {}", a.name, c.version),
                        None if !arch_ok(a, self.index.arch) => {
                            format!("{a} is for another architecture")
                        }
                        None => format!("no package provides {}", a.name),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Error::Unsatisfiable {
                    package: e.name.clone(),
                    version: e.version.clone(),
                    dep,
                    why,
                });
            };
            let dep = group
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" | ");
            self.select(pick, format!("`{dep}` of {} {}", e.name, e.version))?;
            let n = pick.name.clone();
            self.visit(&n)?;
        }
        Ok(())
    }
}

/// Resolves `roots` (package names, or `name=version` to pin one) against the index and
/// prunes what only `exclude`d packages needed. See the module doc for the rules.
pub fn resolve(index: &Index, roots: &[String], exclude: &[String]) -> Result<Resolution> {
    let excluded: BTreeSet<&str> = exclude.iter().map(String::as_str).collect();
    let mut r = Resolver {
        index,
        selected: BTreeMap::new(),
        selected_for: BTreeMap::new(),
        provided: BTreeMap::new(),
        visited: BTreeSet::new(),
    };
    let mut root_names = vec![];
    let repositories = index.repositories();
    for root in roots {
        let (spec, pin) = match root.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (root.trim(), None),
        };
        // `repo:name` takes the package from one repository (apt's pinning by origin)
        let (repository, name) = match spec.split_once(':') {
            Some((repo, name)) => {
                if !repositories.contains(&repo) {
                    return Err(Error::UnknownRepository {
                        what: format!("the recipe's `{}`", root.trim()),
                        name: repo.to_owned(),
                        known: repositories.join(", "),
                    });
                }
                (Some(repo), name)
            }
            None => (None, spec),
        };
        if excluded.contains(name) {
            return Err(Error::ExcludedRoot {
                name: name.to_owned(),
            });
        }
        let from_repo = |e: &&PackageEntry| repository.is_none_or(|r| e.repository == r);
        let entry = match (pin, repository) {
            (Some(v), _) => index
                .versions(name)
                .iter()
                .filter(from_repo)
                .find(|e| e.version == v)
                .ok_or_else(|| Error::Unsatisfiable {
                    package: "(recipe)".into(),
                    version: "-".into(),
                    dep: root.clone(),
                    why: format!(
                        "available versions: {}",
                        index
                            .versions(name)
                            .iter()
                            .filter(from_repo)
                            .map(|e| format!("{} ({})", e.version, e.repository))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })?,
            (None, Some(repo)) => {
                index
                    .candidate_in(name, repo)
                    .ok_or_else(|| Error::UnknownPackage {
                        name: name.to_owned(),
                        searched: format!("repository `{repo}` ({})", index.describe()),
                    })?
            }
            (None, None) => match index.candidate(name) {
                Some(c) => c,
                None => {
                    let provs = index.providers(name);
                    match provs.as_slice() {
                        [] => {
                            return Err(Error::UnknownPackage {
                                name: name.to_owned(),
                                searched: index.describe(),
                            });
                        }
                        [(one, _)] => *one,
                        many => {
                            return Err(Error::VirtualRoot {
                                name: name.to_owned(),
                                providers: many
                                    .iter()
                                    .map(|(e, _)| e.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            });
                        }
                    }
                }
            },
        };
        r.select(entry, format!("the recipe's `{}`", root.trim()))?;
        root_names.push(entry.name.clone());
    }
    for n in &root_names {
        r.visit(n)?;
    }

    // Phase 2: re-walk from the roots, skipping excluded packages. Each or-group is
    // satisfied by its first alternative (then provider) that phase 1 put in the closure
    // and that is not excluded; only when every such alternative is excluded does the
    // group go unsatisfied, and the excluded package it would have needed is reported.
    let full = &r.selected;
    let mut keep: BTreeSet<String> = BTreeSet::new();
    let mut why: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut todo: Vec<String> = root_names.iter().rev().cloned().collect();
    while let Some(p) = todo.pop() {
        if !keep.insert(p.clone()) {
            continue;
        }
        let e = full[&p];
        for group in e.pre_depends.iter().chain(e.depends.iter()) {
            let mut satisfiers = group
                .iter()
                .filter(|a| arch_ok(a, index.arch))
                .flat_map(|a| r.satisfiers_in_closure(a));
            let mut first_excluded = None;
            let kept = satisfiers.find(|n| {
                if excluded.contains(n.as_str()) {
                    first_excluded.get_or_insert_with(|| n.clone());
                    false
                } else {
                    true
                }
            });
            match (kept, first_excluded) {
                (Some(c), _) => {
                    if !keep.contains(&c) {
                        todo.push(c);
                    }
                }
                (None, Some(x)) => {
                    why.entry(x).or_default().insert(p.clone());
                }
                (None, None) => {} // cannot happen: phase 1 satisfied every group
            }
        }
    }
    let packages: Vec<LockedPackage> = keep.iter().map(|n| LockedPackage::from(full[n])).collect();
    Ok(Resolution {
        packages,
        excluded_dropped: full
            .keys()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect(),
        excluded_required_by: why
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect(),
        excluded_unused: excluded
            .iter()
            .filter(|n| !full.contains_key(**n))
            .map(|n| n.to_string())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an index from `name version [field: value]...` paragraphs.
    fn index(suites: &[(&str, Base, &str)]) -> Index {
        let mut idx = Index::new();
        for (i, (suite, base, text)) in suites.iter().enumerate() {
            let mut full = String::new();
            for (j, para) in text
                .split("\n\n")
                .filter(|p| !p.trim().is_empty())
                .enumerate()
            {
                let name = para
                    .lines()
                    .next()
                    .unwrap()
                    .trim_start_matches("Package: ")
                    .to_owned();
                full.push_str(para.trim());
                full.push_str(&format!(
                    "\nArchitecture: amd64\nFilename: pool/{name}.deb\nSize: 1\nSHA256: {:064x}\n\n",
                    i * 1000 + j
                ));
            }
            idx.add_packages(full.as_bytes(), *base, suite, suite)
                .unwrap();
        }
        idx
    }

    fn names(r: &Resolution) -> Vec<&str> {
        r.packages.iter().map(|p| p.name.as_str()).collect()
    }

    const BASE: &str = "
Package: app
Version: 1.0
Depends: libc6 (>= 2.34), awk | mawk, www-browser | lynx, libssl3 (>= 3.1) | libssl1.1, helper
Pre-Depends: init-tools

Package: libc6
Version: 2.36-9+deb12u9

Package: mawk
Version: 1.3.4
Provides: awk
Priority: required

Package: gawk
Version: 5.2
Provides: awk
Priority: optional
Depends: libsigsegv

Package: libsigsegv
Version: 1

Package: lynx
Version: 2.9
Depends: lynx-common

Package: lynx-common
Version: 2.9

Package: w3m
Version: 0.5
Provides: www-browser

Package: libssl3
Version: 3.0.15-1

Package: libssl1.1
Version: 1.1.1n

Package: helper
Version: 1
Depends: big-tool

Package: big-tool
Version: 1
Depends: big-lib

Package: big-lib
Version: 1

Package: init-tools
Version: 1
Depends: libc6 (>= 2.40) | libc6-compat

Package: libc6-compat
Version: 1
Provides: libc6-compat-virtual (= 1)
";

    #[test]
    fn alternatives_versions_provides_predepends() {
        let idx = index(&[("bookworm", Base::Debian, BASE)]);
        let r = resolve(&idx, &["app".into()], &[]).unwrap();
        assert_eq!(
            names(&r),
            // awk: provider mawk (required) beats gawk; www-browser: the only provider w3m;
            // libssl3 too old for >= 3.1 so libssl1.1; Pre-Depends: libc6 too old -> libc6-compat
            [
                "app",
                "big-lib",
                "big-tool",
                "helper",
                "init-tools",
                "libc6",
                "libc6-compat",
                "libssl1.1",
                "mawk",
                "w3m"
            ]
        );
        assert!(r.excluded_dropped.is_empty());
    }

    #[test]
    fn already_selected_alternative_wins() {
        let idx = index(&[("bookworm", Base::Debian, BASE)]);
        // gawk and lynx named explicitly: the awk and www-browser groups are satisfied by them
        let r = resolve(&idx, &["app".into(), "gawk".into(), "lynx".into()], &[]).unwrap();
        let n = names(&r);
        assert!(n.contains(&"gawk") && n.contains(&"libsigsegv") && n.contains(&"lynx-common"));
        assert!(!n.contains(&"mawk") && !n.contains(&"w3m"), "{n:?}");
    }

    #[test]
    fn exclude_prunes_the_subtree() {
        let idx = index(&[("bookworm", Base::Debian, BASE)]);
        let r = resolve(&idx, &["app".into()], &["helper".into(), "nosuch".into()]).unwrap();
        let n = names(&r);
        assert!(
            !n.contains(&"helper") && !n.contains(&"big-tool") && !n.contains(&"big-lib"),
            "{n:?}"
        );
        assert_eq!(r.excluded_dropped, ["big-lib", "big-tool", "helper"]);
        assert_eq!(r.excluded_required_by["helper"], ["app"]);
        assert_eq!(r.excluded_unused, ["nosuch"]);
        assert!(matches!(
            resolve(&idx, &["app".into()], &["app".into()]),
            Err(Error::ExcludedRoot { .. })
        ));
    }

    const ALTERNATIVES: &str = "
Package: app
Version: 1
Depends: x | y, w

Package: x
Version: 1

Package: y
Version: 1

Package: w
Version: 1
Depends: y
";

    #[test]
    fn exclude_falls_back_to_a_kept_alternative() {
        let idx = index(&[("bookworm", Base::Debian, ALTERNATIVES)]);
        // phase 1 picks x for `x | y` and y for w: all four are in the full closure
        let full = resolve(&idx, &["app".into()], &[]).unwrap();
        assert_eq!(names(&full), ["app", "w", "x", "y"]);
        // x and w excluded: `x | y` is still satisfied by y, which must stay
        let r = resolve(&idx, &["app".into()], &["x".into(), "w".into()]).unwrap();
        assert_eq!(names(&r), ["app", "y"]);
        assert_eq!(r.excluded_dropped, ["w", "x"]);
        // x was not needed (y stands in for it); w was
        assert_eq!(
            r.excluded_required_by.keys().collect::<Vec<_>>(),
            ["w"],
            "{:?}",
            r.excluded_required_by
        );
        // with both alternatives excluded the group goes unsatisfied, reported on the first
        let r = resolve(&idx, &["app".into()], &["x".into(), "y".into(), "w".into()]).unwrap();
        assert_eq!(names(&r), ["app"]);
        assert_eq!(r.excluded_required_by["x"], ["app"]);
        assert!(!r.excluded_required_by.contains_key("y"));
    }

    #[test]
    fn a_pinned_root_is_never_silently_replaced() {
        let idx = index(&[
            (
                "bookworm",
                Base::Debian,
                "Package: foo\nVersion: 1.0\n\nPackage: bar\nVersion: 1\nDepends: foo (>= 2)\n\nPackage: baz\nVersion: 1\nDepends: foo\n",
            ),
            (
                "bookworm-updates",
                Base::Debian,
                "Package: foo\nVersion: 2.0\n",
            ),
        ]);
        // a dependency needs another version than the pin
        let e = resolve(&idx, &["foo=1.0".into(), "bar".into()], &[]).unwrap_err();
        assert!(matches!(e, Error::Conflict { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("`foo=1.0`")
                && msg.contains("foo 1.0")
                && msg.contains("`foo (>= 2)` of bar 1")
                && msg.contains("foo 2.0"),
            "{msg}"
        );
        // the same name twice as roots, pinned and not
        let e = resolve(&idx, &["foo=1.0".into(), "foo".into()], &[]).unwrap_err();
        assert!(
            e.to_string().contains("`foo=1.0`") && e.to_string().contains("`foo`"),
            "{e}"
        );
        // a pin that every dependency accepts stays, and its own dependencies are walked
        let r = resolve(&idx, &["foo=1.0".into(), "baz".into()], &[]).unwrap();
        assert_eq!(
            r.packages
                .iter()
                .map(|p| (p.name.as_str(), p.version.as_str()))
                .collect::<Vec<_>>(),
            [("baz", "1"), ("foo", "1.0")]
        );
        // the pin of the candidate itself is no conflict
        assert_eq!(
            names(&resolve(&idx, &["foo=2.0".into(), "bar".into()], &[]).unwrap()),
            ["bar", "foo"]
        );
    }

    #[test]
    fn newest_across_suites_and_versioned_provides() {
        let idx = index(&[
            (
                "bookworm",
                Base::Debian,
                "Package: lib\nVersion: 1.0-1\n\nPackage: tool\nVersion: 1\nDepends: lib (>= 1.0-1+deb12u1), virt (>= 2)\n\nPackage: p1\nVersion: 1\nProvides: virt (= 1)\n\nPackage: p2\nVersion: 1\nProvides: virt (= 2)\n\nPackage: p0\nVersion: 1\nProvides: virt\n",
            ),
            (
                "bookworm-updates",
                Base::Debian,
                "Package: lib\nVersion: 1.0-1+deb12u1~bpo\n",
            ),
            (
                "bookworm-security",
                Base::DebianSecurity,
                "Package: lib\nVersion: 1.0-1+deb12u1\n",
            ),
        ]);
        let r = resolve(&idx, &["tool".into()], &[]).unwrap();
        assert_eq!(names(&r), ["lib", "p2", "tool"]);
        let lib = &r.packages[0];
        assert_eq!(
            (lib.version.as_str(), lib.base),
            ("1.0-1+deb12u1", Base::DebianSecurity)
        );
    }

    #[test]
    fn locked_package_serde_form() {
        let p = LockedPackage {
            name: "nginx".into(),
            version: "1.22.1-9+deb12u2".into(),
            architecture: "amd64".into(),
            filename: "pool/main/n/nginx/nginx_1.22.1-9+deb12u2_amd64.deb".into(),
            size: 1,
            sha256: Digest::of_bytes(b""),
            base: Base::DebianSecurity,
            repository: DEBIAN.into(),
        };
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(j["base"], "debian-security");
        assert_eq!(
            j["sha256"],
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(serde_json::from_value::<LockedPackage>(j).unwrap(), p);
    }

    #[test]
    fn errors_name_the_problem() {
        let idx = index(&[(
            "bookworm",
            Base::Debian,
            "Package: a\nVersion: 1\nDepends: b (>= 2) | c:i386\n\nPackage: b\nVersion: 1\n\nPackage: v1\nVersion: 1\nProvides: v\n\nPackage: v2\nVersion: 1\nProvides: v\n",
        )]);
        let e = resolve(&idx, &["a".into()], &[]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("b (>= 2) | c:i386") && msg.contains("b has version 1"),
            "{msg}"
        );
        assert!(matches!(
            resolve(&idx, &["zzz".into()], &[]),
            Err(Error::UnknownPackage { .. })
        ));
        let e = resolve(&idx, &["v".into()], &[]).unwrap_err();
        assert!(e.to_string().contains("v1, v2"), "{e}");
        assert_eq!(names(&resolve(&idx, &["b=1".into()], &[]).unwrap()), ["b"]);
    }
}
