//! Following symlinks inside an image, without a filesystem: the one walk that
//! layer sources share (a file under `/bin` of a merged-/usr image, a `.deb` entry
//! below a directory another package made a symlink, the interpreter a venv points
//! at). The caller says where links are; this module says where a path ends up.
//!
//! Semantics are the kernel's, applied to the image root: components are resolved
//! left to right, an absolute target restarts at the root, `..` goes to the parent of
//! what was resolved so far. What differs between callers is stated per call
//! ([`Follow`]): whether the final component is followed (a writer creates it, a
//! reader opens it), and whether `..` above the root is clamped there (as the kernel
//! does) or refused (a package that writes through such a link is suspicious).

use std::collections::VecDeque;

/// Links followed in one resolution before it counts as a loop (Linux: 40).
pub const MAX_SYMLINKS: usize = 40;

/// How one resolution treats the edges of the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Follow {
    /// Follow a symlink in the last component too (reading), or leave it (writing).
    pub final_component: bool,
    /// `..` above the root stays at the root (true) or is an error (false).
    pub clamp_at_root: bool,
}

impl Follow {
    /// Where an entry a layer writes lands: ancestors followed, `..` clamped.
    pub const WRITE: Follow = Follow {
        final_component: false,
        clamp_at_root: true,
    };
    /// What a process opening the path inside the image gets.
    pub const READ: Follow = Follow {
        final_component: true,
        clamp_at_root: true,
    };
    /// Writing through links a package made, refusing any that leave the image.
    pub const WRITE_WITHIN_ROOT: Follow = Follow {
        final_component: false,
        clamp_at_root: false,
    };
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("too many levels of symlinks below `{at}`")]
    Loop { at: String },
    #[error(
        "`{link}` is a symlink to `{target}`, which leaves the image root; refusing to write through it"
    )]
    LeavesRoot { link: String, target: String },
}

/// Resolves `path` (relative to the image root, with or without a leading `/`)
/// through the symlinks `link_at` reports (it is asked for paths without a leading
/// `/` and answers with the link's target). Returns the path without a leading
/// `/`, `.` components and empty components dropped.
pub fn resolve<'a>(
    path: &str,
    follow: Follow,
    link_at: impl Fn(&str) -> Option<&'a str>,
) -> Result<String, ResolveError> {
    let mut todo: VecDeque<String> = components(path).collect();
    let mut out: Vec<String> = vec![];
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            if out.pop().is_none() && !follow.clamp_at_root {
                return Err(ResolveError::LeavesRoot {
                    link: path.trim_start_matches('/').to_owned(),
                    target: "..".to_owned(),
                });
            }
            continue;
        }
        out.push(c);
        if todo.is_empty() && !follow.final_component {
            break;
        }
        let here = out.join("/");
        let Some(target) = link_at(&here) else {
            continue;
        };
        hops += 1;
        if hops > MAX_SYMLINKS {
            return Err(ResolveError::Loop { at: here });
        }
        out.pop();
        if target.starts_with('/') {
            out.clear();
        }
        if !follow.clamp_at_root {
            // `..` in the target may not climb above the root from where the link is
            let mut depth = out.len() as i64;
            for t in components(target) {
                depth += if t == ".." { -1 } else { 1 };
                if depth < 0 {
                    return Err(ResolveError::LeavesRoot {
                        link: here,
                        target: target.to_owned(),
                    });
                }
            }
        }
        for t in components(target).collect::<Vec<_>>().into_iter().rev() {
            todo.push_front(t);
        }
    }
    Ok(out.join("/"))
}

fn components(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn links(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn run(map: &BTreeMap<String, String>, path: &str, f: Follow) -> Result<String, ResolveError> {
        resolve(path, f, |p| map.get(p).map(String::as_str))
    }

    #[test]
    fn merged_usr_and_relative_links() {
        let m = links(&[
            ("bin", "usr/bin"),
            ("lib64", "usr/lib64"),
            ("usr/bin/python3", "python3.11"),
            ("usr/share/doc/a", "b"),
            ("etc/alt", "/usr/bin/python3"),
        ]);
        assert_eq!(run(&m, "/bin/sh", Follow::WRITE).unwrap(), "usr/bin/sh");
        assert_eq!(run(&m, "bin", Follow::WRITE).unwrap(), "bin");
        assert_eq!(
            run(&m, "usr/share/doc/a/copyright", Follow::WRITE_WITHIN_ROOT).unwrap(),
            "usr/share/doc/b/copyright"
        );
        // the final component: left alone when writing, followed when reading
        assert_eq!(
            run(&m, "/bin/python3", Follow::WRITE).unwrap(),
            "usr/bin/python3"
        );
        assert_eq!(
            run(&m, "/bin/python3", Follow::READ).unwrap(),
            "usr/bin/python3.11"
        );
        assert_eq!(
            run(&m, "etc/alt", Follow::READ).unwrap(),
            "usr/bin/python3.11"
        );
        assert_eq!(
            run(&m, "./usr//bin/./x", Follow::READ).unwrap(),
            "usr/bin/x"
        );
    }

    #[test]
    fn dotdot_is_clamped_or_refused() {
        let m = links(&[("a/up", "../../.."), ("a/sib", "../b")]);
        assert_eq!(run(&m, "a/sib/x", Follow::WRITE).unwrap(), "b/x");
        assert_eq!(run(&m, "a/up/etc/x", Follow::WRITE).unwrap(), "etc/x");
        assert_eq!(run(&m, "../etc/x", Follow::READ).unwrap(), "etc/x");
        assert!(matches!(
            run(&m, "a/up/etc/x", Follow::WRITE_WITHIN_ROOT),
            Err(ResolveError::LeavesRoot { .. })
        ));
        assert_eq!(
            run(&m, "a/sib/x", Follow::WRITE_WITHIN_ROOT).unwrap(),
            "b/x"
        );
    }

    #[test]
    fn loops_are_errors() {
        let m = links(&[("a", "b"), ("b", "a")]);
        assert!(matches!(
            run(&m, "a/x", Follow::WRITE),
            Err(ResolveError::Loop { .. })
        ));
        let m = links(&[("self", "self")]);
        assert!(matches!(
            run(&m, "self", Follow::READ),
            Err(ResolveError::Loop { .. })
        ));
    }
}
