//! The target interpreter and platform (the image's, never the build host's), its marker
//! environment, its compatible wheel tags in pip's priority order (PEP 425, PEP 600
//! manylinux, PEP 656 musllinux), and wheel file name parsing (PEP 427).

use std::collections::BTreeMap;
use std::fmt;

use crate::marker::{MarkerEnv, normalize_name};
use crate::version::Version;

/// The C library of the target: decides manylinux vs. musllinux wheels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Libc {
    /// glibc (major, minor): manylinux_2_X for X up to minor.
    Glibc(u32, u32),
    /// musl (major, minor): musllinux_1_X for X up to minor.
    Musl(u32, u32),
}

/// A CPython target. Everything marker evaluation and wheel selection depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// `3.11.2`
    pub python_full_version: String,
    pub libc: Libc,
    /// `x86_64`, `aarch64`, `i686`, `armv7l`, `ppc64le`, `s390x`
    pub arch: String,
}

impl Target {
    /// Debian bookworm's python3.11 (3.11.2) on x86_64 with glibc 2.36: a fixed target
    /// for tests and examples. Builds read theirs from the image
    /// ([`crate::image_target::read_target`]).
    pub fn bookworm_cpython311() -> Target {
        Target {
            python_full_version: "3.11.2".into(),
            libc: Libc::Glibc(2, 36),
            arch: "x86_64".into(),
        }
    }

    /// (major, minor) of the interpreter; panics only if the struct was built with a
    /// version that is not `X.Y[.Z]` (checked by [`Target::validate`]).
    pub fn python_major_minor(&self) -> (u32, u32) {
        let mut it = self.python_full_version.split('.');
        let major = it.next().and_then(|s| s.parse().ok()).unwrap_or(3);
        let minor = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        (major, minor)
    }

    /// `3.11`
    pub fn python_version(&self) -> String {
        let (a, b) = self.python_major_minor();
        format!("{a}.{b}")
    }

    /// Checks that the fields make sense (a release version `X.Y.Z`, a known arch spelling).
    pub fn validate(&self) -> Result<(), String> {
        let v = Version::parse(&self.python_full_version)
            .map_err(|e| format!("target python version: {e}"))?;
        if v.release.len() < 2 || v.release[0] != 3 {
            return Err(format!(
                "target python version `{}` must look like 3.Y.Z",
                self.python_full_version
            ));
        }
        if self.arch.is_empty()
            || !self
                .arch
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!(
                "target arch `{}` is not a machine name such as x86_64",
                self.arch
            ));
        }
        Ok(())
    }

    /// The marker environment of this target (Linux, CPython).
    pub fn marker_env(&self) -> MarkerEnv {
        MarkerEnv::new(&[
            ("implementation_name", "cpython".into()),
            ("implementation_version", self.python_full_version.clone()),
            ("os_name", "posix".into()),
            ("platform_machine", self.arch.clone()),
            ("platform_python_implementation", "CPython".into()),
            // kernel release/version belong to the machine the container runs on: unknown here
            ("platform_release", String::new()),
            ("platform_system", "Linux".into()),
            ("platform_version", String::new()),
            ("python_full_version", self.python_full_version.clone()),
            ("python_version", self.python_version()),
            ("sys_platform", "linux".into()),
        ])
    }

    /// Platform tags, most specific first, as `packaging.tags` orders them for Linux.
    pub fn platform_tags(&self) -> Vec<String> {
        let arch = &self.arch;
        let mut out = vec![];
        match self.libc {
            Libc::Glibc(major, minor) => {
                // manylinux_2_X for X from the target's glibc down to the arch's first
                // manylinux glibc; legacy aliases right after their equivalent (PEP 600)
                let floor = if matches!(arch.as_str(), "x86_64" | "i686") {
                    5
                } else {
                    17
                };
                if major == 2 {
                    for m in (floor..=minor).rev() {
                        out.push(format!("manylinux_2_{m}_{arch}"));
                        let legacy = match m {
                            17 => Some("manylinux2014"),
                            12 => Some("manylinux2010"),
                            5 => Some("manylinux1"),
                            _ => None,
                        };
                        if let Some(l) = legacy
                            && (m == 17 || matches!(arch.as_str(), "x86_64" | "i686"))
                        {
                            out.push(format!("{l}_{arch}"));
                        }
                    }
                }
            }
            Libc::Musl(major, minor) => {
                if major == 1 {
                    for m in (0..=minor).rev() {
                        out.push(format!("musllinux_1_{m}_{arch}"));
                    }
                }
            }
        }
        out.push(format!("linux_{arch}"));
        out
    }

    /// Every tag the target accepts, in pip's priority order (index 0 = best).
    pub fn supported_tags(&self) -> Vec<Tag> {
        let (major, minor) = self.python_major_minor();
        let cp = format!("cp{major}{minor}");
        let plats = self.platform_tags();
        let mut out = vec![];
        let mut push = |i: &str, a: &str, p: &str| out.push(Tag::new(i, a, p));
        // cpython_tags()
        for p in &plats {
            push(&cp, &cp, p);
        }
        for p in &plats {
            push(&cp, "abi3", p);
        }
        for p in &plats {
            push(&cp, "none", p);
        }
        for m in (2..minor).rev() {
            for p in &plats {
                push(&format!("cp{major}{m}"), "abi3", p);
            }
        }
        // compatible_tags(): py311, py3, py310 … py30
        let mut py = vec![format!("py{major}{minor}"), format!("py{major}")];
        for m in (0..minor).rev() {
            py.push(format!("py{major}{m}"));
        }
        for v in &py {
            for p in &plats {
                push(v, "none", p);
            }
        }
        push(&cp, "none", "any");
        for v in &py {
            push(v, "none", "any");
        }
        out
    }

    /// Short human description: `CPython 3.11.2 on x86_64 glibc 2.36`.
    pub fn describe(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let libc = match self.libc {
            Libc::Glibc(a, b) => format!("glibc {a}.{b}"),
            Libc::Musl(a, b) => format!("musl {a}.{b}"),
        };
        write!(
            f,
            "CPython {} on {} {}",
            self.python_full_version, self.arch, libc
        )
    }
}

/// One (interpreter, abi, platform) triple.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag {
    pub interpreter: String,
    pub abi: String,
    pub platform: String,
}

impl Tag {
    pub fn new(i: &str, a: &str, p: &str) -> Tag {
        Tag {
            interpreter: i.to_owned(),
            abi: a.to_owned(),
            platform: p.to_owned(),
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.interpreter, self.abi, self.platform)
    }
}

/// Precomputed tag priorities of a target.
pub struct TagPriorities {
    rank: BTreeMap<Tag, usize>,
}

impl TagPriorities {
    pub fn new(target: &Target) -> TagPriorities {
        let mut rank = BTreeMap::new();
        for (i, t) in target.supported_tags().into_iter().enumerate() {
            rank.entry(t).or_insert(i);
        }
        TagPriorities { rank }
    }
    /// Best (lowest) rank among the wheel's tags; `None` if the wheel is incompatible.
    pub fn rank(&self, wheel: &WheelName) -> Option<usize> {
        wheel
            .tags()
            .filter_map(|t| self.rank.get(&t).copied())
            .min()
    }
}

/// A parsed wheel file name: `{name}-{ver}(-{build})?-{py}-{abi}-{plat}.whl`, where each
/// of the last three may be a `.`-separated set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WheelName {
    pub filename: String,
    pub name: String,
    pub version: String,
    /// (number, rest) of the optional build tag.
    pub build: Option<(u64, String)>,
    pub pythons: Vec<String>,
    pub abis: Vec<String>,
    pub platforms: Vec<String>,
}

impl WheelName {
    pub fn parse(filename: &str) -> Option<WheelName> {
        let stem = filename.strip_suffix(".whl")?;
        let parts: Vec<&str> = stem.split('-').collect();
        let (name, version, build, py, abi, plat) = match parts.as_slice() {
            [n, v, p, a, pl] => (*n, *v, None, *p, *a, *pl),
            [n, v, b, p, a, pl] => {
                let digits = b.bytes().take_while(|c| c.is_ascii_digit()).count();
                if digits == 0 {
                    return None;
                }
                (
                    *n,
                    *v,
                    Some((b[..digits].parse().ok()?, b[digits..].to_owned())),
                    *p,
                    *a,
                    *pl,
                )
            }
            _ => return None,
        };
        if name.is_empty() || version.is_empty() {
            return None;
        }
        let split = |s: &str| s.split('.').map(|x| x.to_owned()).collect::<Vec<_>>();
        Some(WheelName {
            filename: filename.to_owned(),
            name: name.to_owned(),
            version: version.to_owned(),
            build,
            pythons: split(py),
            abis: split(abi),
            platforms: split(plat),
        })
    }

    pub fn key(&self) -> String {
        normalize_name(&self.name)
    }

    /// All expanded tags of the file.
    pub fn tags(&self) -> impl Iterator<Item = Tag> + '_ {
        self.pythons.iter().flat_map(move |p| {
            self.abis
                .iter()
                .flat_map(move |a| self.platforms.iter().map(move |pl| Tag::new(p, a, pl)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(t: &Target, f: &str) -> Option<usize> {
        TagPriorities::new(t).rank(&WheelName::parse(f).unwrap())
    }

    #[test]
    fn bookworm_tag_order() {
        let t = Target::bookworm_cpython311();
        let tags: Vec<String> = t.supported_tags().iter().map(|t| t.to_string()).collect();
        assert_eq!(tags[0], "cp311-cp311-manylinux_2_36_x86_64");
        assert_eq!(tags.last().unwrap(), "py30-none-any");
        let pos = |s: &str| {
            tags.iter()
                .position(|t| t == s)
                .unwrap_or_else(|| panic!("{s} missing"))
        };
        assert!(pos("cp311-cp311-manylinux_2_17_x86_64") < pos("cp311-cp311-manylinux2014_x86_64"));
        assert!(pos("cp311-cp311-manylinux2014_x86_64") < pos("cp311-cp311-manylinux_2_12_x86_64"));
        assert!(pos("cp311-cp311-manylinux1_x86_64") < pos("cp311-cp311-linux_x86_64"));
        assert!(pos("cp311-cp311-linux_x86_64") < pos("cp311-abi3-manylinux_2_36_x86_64"));
        assert!(pos("cp311-none-linux_x86_64") < pos("cp310-abi3-manylinux_2_36_x86_64"));
        assert!(pos("cp32-abi3-linux_x86_64") < pos("py311-none-manylinux_2_36_x86_64"));
        assert!(pos("py3-none-linux_x86_64") < pos("cp311-none-any"));
        assert!(pos("cp311-none-any") < pos("py311-none-any"));
        assert!(pos("py311-none-any") < pos("py3-none-any"));
        assert!(pos("py3-none-any") < pos("py310-none-any"));
        assert!(
            !tags
                .iter()
                .any(|t| t.contains("manylinux_2_37") || t.contains("manylinux_2_4_"))
        );
        assert!(
            !tags
                .iter()
                .any(|t| t.contains("cp312") || t.contains("musllinux"))
        );
    }

    #[test]
    fn wheel_compatibility_for_target_unlike_host() {
        let t = Target::bookworm_cpython311();
        assert!(
            rank(
                &t,
                "MarkupSafe-2.1.5-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
            )
            .is_some()
        );
        assert!(
            rank(&t, "x-1-cp311-cp311-manylinux_2_38_x86_64.whl").is_none(),
            "glibc too new for bookworm"
        );
        assert!(rank(&t, "x-1-cp312-cp312-manylinux_2_17_x86_64.whl").is_none());
        assert!(rank(&t, "x-1-cp311-cp311-musllinux_1_1_x86_64.whl").is_none());
        assert!(rank(&t, "wcwidth-1-cp310-abi3-manylinux_2_17_x86_64.whl").is_some());
        assert!(rank(&t, "x-1-cp312-abi3-manylinux_2_17_x86_64.whl").is_none());
        assert!(rank(&t, "six-1.16.0-py2.py3-none-any.whl").is_some());
        assert!(rank(&t, "x-1-cp311-cp311-win_amd64.whl").is_none());
        assert!(
            rank(&t, "x-1-cp311-cp311-manylinux_2_17_x86_64.whl").unwrap()
                < rank(&t, "x-1-py3-none-any.whl").unwrap()
        );

        let musl = Target {
            python_full_version: "3.11.2".into(),
            libc: Libc::Musl(1, 2),
            arch: "x86_64".into(),
        };
        assert!(
            rank(
                &musl,
                "x-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
            )
            .is_none()
        );
        assert!(rank(&musl, "x-1-cp311-cp311-musllinux_1_1_x86_64.whl").is_some());
        assert!(rank(&musl, "x-1-cp311-cp311-musllinux_1_3_x86_64.whl").is_none());
        assert!(rank(&musl, "x-1-py3-none-any.whl").is_some());

        let arm = Target {
            python_full_version: "3.11.2".into(),
            libc: Libc::Glibc(2, 36),
            arch: "aarch64".into(),
        };
        assert!(
            rank(
                &arm,
                "x-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
            )
            .is_none()
        );
        assert!(rank(&arm, "x-1-cp311-cp311-manylinux2014_aarch64.whl").is_some());
        assert!(rank(&arm, "x-1-cp311-cp311-manylinux1_aarch64.whl").is_none());
        assert!(rank(&arm, "x-1-py3-none-any.whl").is_some());
    }

    #[test]
    fn markers_for_target_unlike_host() {
        use crate::marker::Marker;
        let bookworm = Target::bookworm_cpython311().marker_env();
        let newer = Target {
            python_full_version: "3.11.7".into(),
            ..Target::bookworm_cpython311()
        }
        .marker_env();
        let arm_musl = Target {
            python_full_version: "3.12.1".into(),
            libc: Libc::Musl(1, 2),
            arch: "aarch64".into(),
        }
        .marker_env();
        let m = |s: &str| Marker::parse(s).unwrap();
        // redis: async-timeout only below 3.11.3
        let redis = m("python_full_version < \"3.11.3\"");
        assert!(redis.evaluate(&bookworm, ""));
        assert!(!redis.evaluate(&newer, ""));
        assert!(m("python_version == \"3.11\"").evaluate(&bookworm, ""));
        assert!(m("python_version >= '3.8' and python_version < '3.12'").evaluate(&bookworm, ""));
        assert!(!m("python_version >= '3.8' and python_version < '3.12'").evaluate(&arm_musl, ""));
        assert!(m("python_version ~= '3.11'").evaluate(&bookworm, ""));
        assert!(m("python_full_version ~= '3.11.0'").evaluate(&bookworm, ""));
        assert!(!m("python_full_version ~= '3.11.3'").evaluate(&bookworm, ""));
        assert!(m("python_full_version == '3.11.*'").evaluate(&bookworm, ""));
        assert!(m("python_version == '3.*'").evaluate(&bookworm, ""));
        assert!(!m("python_version != '3.*'").evaluate(&bookworm, ""));
        assert!(m("python_full_version === '3.11.2'").evaluate(&bookworm, ""));
        assert!(!m("python_full_version === '3.11.2'").evaluate(&newer, ""));
        assert!(m("'3.10' < python_version").evaluate(&bookworm, ""));
        assert!(
            m("platform_system == 'Linux' and sys_platform == 'linux' and os_name == 'posix'")
                .evaluate(&bookworm, "")
        );
        assert!(
            !m("sys_platform == 'win32' or platform_system == 'Darwin'").evaluate(&bookworm, "")
        );
        assert!(m("platform_machine == 'x86_64'").evaluate(&bookworm, ""));
        assert!(!m("platform_machine == 'x86_64'").evaluate(&arm_musl, ""));
        assert!(m("platform_machine in 'x86_64 aarch64'").evaluate(&arm_musl, ""));
        assert!(m("platform_machine not in 'ppc64le s390x'").evaluate(&bookworm, ""));
        assert!(
            m("implementation_name == 'cpython' and platform_python_implementation == 'CPython'")
                .evaluate(&bookworm, "")
        );
        assert!(!m("implementation_name == 'pypy'").evaluate(&bookworm, ""));
        assert!(m("platform.python_implementation == 'CPython'").evaluate(&bookworm, ""));
        // extras: compared after normalisation, false without the extra
        let ex = m("extra == 'Hi_Redis' and python_version >= '3.8'");
        assert!(!ex.evaluate(&bookworm, ""));
        assert!(ex.evaluate(&bookworm, "hi-redis"));
        assert!(ex.evaluate_any_extra(&bookworm, ["sqs", "hi-redis"]));
        assert!(
            m("(extra == 'a' or extra == 'b') and python_version < '3.12'")
                .evaluate(&bookworm, "b")
        );
        // a non-version value never satisfies a version comparison
        assert!(!m("platform_release >= '5'").evaluate(&bookworm, ""));
    }

    #[test]
    fn wheel_names() {
        let w = WheelName::parse("click_plugins-1.1.1.2-3build-py2.py3-none-any.whl").unwrap();
        assert_eq!(w.key(), "click-plugins");
        assert_eq!(w.version, "1.1.1.2");
        assert_eq!(w.build, Some((3, "build".into())));
        assert_eq!(w.tags().count(), 2);
        assert!(WheelName::parse("six-1.16.0.tar.gz").is_none());
        assert!(WheelName::parse("bad-1-x-py3-none-any.whl").is_none());
    }
}
