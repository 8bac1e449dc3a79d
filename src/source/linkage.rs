//! The `linkage` layer source: the check that an image which builds also runs. It adds
//! nothing to the layer; its build, registered last in [`super::layer_sources!`], sees
//! the layer's finished tree and runs [`imgbuild_layer::linkage::check`] on it: every
//! ELF executable and shared object the layer adds must find each library it needs
//! (`DT_NEEDED`) and its program interpreter in the image (the layers below with this
//! layer on top), the way the dynamic loader searches (RPATH/RUNPATH, the image's
//! `/etc/ld.so.cache` as it is, the default directories; see that module's doc).
//!
//! It is present in every layer (like the files source) and owns one layer key:
//! `allow_missing = ["libcuda.so.1"]`, sonames the container runtime provides (GPU
//! drivers it injects), accepted as missing and listed in the layer's notes. Its one
//! input is that list (only when it is not empty, so layers that set none keep the
//! fingerprint they had before the check existed).
//!
//! A missing library is a build error naming the file, the soname and, where the
//! Debian index knows a package by the library's name
//! ([`imgbuild_debian::soname::packages_for_soname`]), the package to add; the builder
//! adds the recipe file and layer. The index is read only on that error path. The
//! result is a note on the layer that `imgbuild inspect` shows (`linkage: 812 ELF
//! files checked, all libraries found`); ELF files that start with the magic but do
//! not parse are a warning, not an error (test data, firmware).
//!
//! Cost: the layers below are read (decompressed, their tar headers and the first
//! bytes of their ELF files) only when the layer adds at least one ELF file; a layer
//! of Python sources or configuration files opens each of its files for 4 bytes and
//! nothing more.
//!
//! A cached layer is not re-checked. Its fingerprint covers the lower layers'
//! directories and symlinks under its paths (or the whole lower view, for packages
//! and venvs), not which libraries the layers below ship: a layer checked when built
//! on a base that had `libstdc++6` stays cached (and is not checked again) if only a
//! lower layer changes so that it drops the library without touching the upper
//! layer's view. The check holds for the image each layer was first built on top of;
//! a change that removes a library from a lower layer is caught by the layers that
//! are built again above it, not by the cached ones.

use anyhow::{Context, Result, bail};
use imgbuild_layer::image::ImageFiles;
use imgbuild_layer::linkage::{self, Report};
use imgbuild_layer::{Content, Node, Tree};
use imgbuild_store::Digest;
use toml::Spanned;

use super::{Contribution, Input, LayerCx, LayerSource, RawTable, Session, SourceKind, SourcePlan};
use crate::recipe::{Pos, RecipeCx, RecipeError};

/// The layer key `allow_missing`.
#[derive(Debug, Default)]
pub struct RawLinkage(pub Option<Spanned<Vec<Spanned<String>>>>);

impl RawTable for RawLinkage {
    const KEYS: &'static [&'static str] = &["allow_missing"];
    fn take<'de, A: serde::de::MapAccess<'de>>(
        &mut self,
        _key: &str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        self.0 = Some(map.next_value()?);
        Ok(())
    }
}

#[derive(Debug)]
pub struct LinkageSource {
    /// Sonames accepted as provided at run time, sorted, without duplicates.
    pub allow_missing: Vec<String>,
}

impl SourceKind for LinkageSource {
    type Raw = RawLinkage;

    fn parse(cx: &RecipeCx, raw: &RawLinkage, _layer: &Pos) -> Result<Option<Self>, RecipeError> {
        let mut allow_missing = vec![];
        for s in raw.0.iter().flat_map(|l| l.get_ref()) {
            let name = s.get_ref();
            // a soname is a file name: the loader searches for it in directories
            if name.is_empty() || name.contains('/') || name.chars().any(char::is_whitespace) {
                return Err(cx.err(
                    s,
                    format!(
                        "`allow_missing` takes sonames as ELF files name them (`libcuda.so.1`), not {name:?}"
                    ),
                ));
            }
            allow_missing.push(name.clone());
        }
        allow_missing.sort();
        allow_missing.dedup();
        Ok(Some(LinkageSource { allow_missing }))
    }
}

impl LayerSource for LinkageSource {
    fn kind(&self) -> &'static str {
        "linkage"
    }

    /// None: the check adds nothing to the layer, and the image history stays as it was.
    fn describe(&self) -> Option<String> {
        None
    }

    fn plan<'s>(&'s self, cx: &mut LayerCx<'_, 's>) -> Result<Box<dyn SourcePlan + 's>> {
        if !self.allow_missing.is_empty() {
            cx.input(Input::shown("allow_missing", self.allow_missing.join(" ")));
        }
        Ok(Box::new(LinkagePlan {
            source: self,
            session: cx.session,
            lower: cx
                .lower_layers
                .iter()
                .map(|l| l.descriptor.digest.clone())
                .collect(),
            label: cx.label(),
        }))
    }
}

struct LinkagePlan<'s> {
    source: &'s LinkageSource,
    session: &'s Session,
    /// The blobs of the image's layers below, bottom first.
    lower: Vec<Digest>,
    label: String,
}

impl SourcePlan for LinkagePlan<'_> {
    fn build(self: Box<Self>, tree: &mut Tree) -> Result<Contribution> {
        if !adds_elf(tree)? {
            return Ok(Contribution::default());
        }
        let progress = &self.session.progress;
        progress.status(format!("{}: linkage check", self.label));
        let lower = if self.lower.is_empty() {
            ImageFiles::default()
        } else {
            ImageFiles::from_layers(&self.session.store, &self.lower)
                .context("linkage check: reading the layers below")?
        };
        let report = linkage::check(&lower, tree, &self.source.allow_missing)?;
        for u in &report.unreadable {
            progress.warn(format!(
                "{}: linkage check: `{}` starts like an ELF file but could not be read ({}); not checked",
                self.label, u.file, u.why
            ));
        }
        if !report.is_ok() {
            let index = debian_index(self.session);
            let msg = report
                .error_message(|so| match &index {
                    Some(i) => imgbuild_debian::soname::packages_for_soname(i, so),
                    None => vec![],
                })
                .expect("not ok: a message");
            bail!("linkage check: {msg}");
        }
        Ok(Contribution {
            blobs: vec![],
            notes: notes(&report),
        })
    }
}

/// The Debian index a missing library's package is looked up in (only on the error
/// path): the project's mirror, release (`[debian] suite`) and architecture, the index
/// the layers' packages come from.
/// `None` (no suggestion, the error still names the soname) when it cannot be read.
fn debian_index(session: &Session) -> Option<imgbuild_debian::Index> {
    let d = &session.debian;
    session
        .progress
        .status("linkage check: reading the Debian index for the package to suggest");
    let fetched = session.http.client().and_then(|http| {
        imgbuild_debian::Index::fetch_for(&d.mirror, d.suite, d.arch, &session.store, http)
            .map_err(Into::into)
    });
    match fetched {
        Ok(i) => Some(i),
        Err(e) => {
            session.progress.warn(format!(
                "linkage check: no package suggestion, the Debian index could not be read: {e:#}"
            ));
            None
        }
    }
}

/// The layer's notes for `inspect`: how many files were checked, and what was allowed.
fn notes(report: &Report) -> Vec<String> {
    let mut out = vec![format!(
        "linkage: {} ELF file(s) checked, all libraries found{}",
        report.checked,
        if report.allowed.is_empty() {
            ""
        } else {
            " but those allowed"
        }
    )];
    let mut allowed: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for m in &report.allowed {
        allowed.entry(&m.soname).or_default().push(&m.file);
    }
    for (soname, files) in allowed {
        let more = files.len().saturating_sub(3);
        out.push(format!(
            "linkage: `{soname}` not in the image, allowed (allow_missing): needed by {}{}",
            files[..files.len().min(3)].join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    for u in &report.unreadable {
        out.push(format!("linkage: `{}` not checked: {}", u.file, u.why));
    }
    out
}

/// Whether the layer has a file that starts with the ELF magic: only then are the
/// layers below read.
fn adds_elf(tree: &Tree) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    const MAGIC: &[u8; 4] = b"\x7fELF";
    for (path, node) in tree.iter() {
        let Node::File { content, .. } = node else {
            continue;
        };
        if content.size() < MAGIC.len() as u64 {
            continue;
        }
        let elf = match content {
            Content::Inline(b) => b.starts_with(MAGIC),
            Content::Host { path: p, .. } | Content::Range { path: p, .. } => {
                let offset = match content {
                    Content::Range { offset, .. } => *offset,
                    _ => 0,
                };
                let mut head = [0u8; 4];
                std::fs::File::open(p)
                    .and_then(|f| f.read_exact_at(&mut head, offset))
                    .with_context(|| {
                        format!(
                            "linkage check: failed to read `{}` (the content of `/{}`)",
                            p.display(),
                            path.as_str()
                        )
                    })?;
                &head == MAGIC
            }
        };
        if elf {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgbuild_layer::linkage::{Missing, Need, Unreadable};

    fn missing(file: &str, soname: &str) -> Missing {
        Missing {
            file: file.into(),
            soname: soname.into(),
            need: Need::Library,
            searched: vec![],
        }
    }

    #[test]
    fn notes_say_what_was_checked_and_allowed() {
        let ok = Report {
            checked: 812,
            ..Default::default()
        };
        assert_eq!(
            notes(&ok),
            ["linkage: 812 ELF file(s) checked, all libraries found"]
        );
        let r = Report {
            checked: 5,
            allowed: (1..=5)
                .map(|i| missing(&format!("/opt/x{i}.so"), "libcuda.so.1"))
                .collect(),
            unreadable: vec![Unreadable {
                file: "/fw.bin".into(),
                why: "truncated".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            notes(&r),
            [
                "linkage: 5 ELF file(s) checked, all libraries found but those allowed",
                "linkage: `libcuda.so.1` not in the image, allowed (allow_missing): needed by /opt/x1.so, /opt/x2.so, /opt/x3.so and 2 more",
                "linkage: `/fw.bin` not checked: truncated",
            ]
        );
    }

    #[test]
    fn elf_files_are_found_by_their_magic() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("app.py");
        std::fs::write(&text, "print('hi')\n").unwrap();
        let mut tree = Tree::new();
        let meta = imgbuild_layer::Meta::new(0o644, 0, 0);
        let host = |p: &std::path::Path| Content::Host {
            path: p.to_owned(),
            size: std::fs::metadata(p).unwrap().len(),
            hash: None,
        };
        tree.insert(
            imgbuild_layer::TreePath::new("srv/app.py").unwrap(),
            Node::File {
                meta,
                content: host(&text),
            },
        )
        .unwrap();
        tree.insert(
            imgbuild_layer::TreePath::new("etc/x").unwrap(),
            Node::File {
                meta,
                content: Content::inline("\x7fEL"),
            },
        )
        .unwrap();
        assert!(!adds_elf(&tree).unwrap());
        // the real thing: the test binary itself is an ELF file
        let exe = std::env::current_exe().unwrap();
        tree.insert(
            imgbuild_layer::TreePath::new("bin/t").unwrap(),
            Node::File {
                meta,
                content: host(&exe),
            },
        )
        .unwrap();
        assert!(adds_elf(&tree).unwrap());
    }
}
