//! Byte-compiling Debian's Python standard library, as the python3.11 package's
//! postinst (`py3compile`) would: without it, every start of a Python image
//! compiles each stdlib module it imports again (the stack's app and workers spent
//! ~1.4 s on it per start, and every health check too).
//!
//! The `.py` files of `usr/lib/python3.11/` are copied out of the layer into a temp
//! directory and compiled by `imgbuild-python`'s bytecode compiler with a host
//! python3.11 (same `.pyc` format; unchecked-hash mode, so no mtimes; compiled twice
//! and any file whose two results differ is left out). Results are cached in the
//! store by a key naming every source file's bytes, so this runs once per package set.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use anyhow::{Context, Result};
use imgbuild_layer::{Content, Meta, Node, Tree, TreePath};
use imgbuild_python::Target;
use imgbuild_python::bytecode::{compile_wheel, find_host_python};
use imgbuild_store::{Digest, Store};

const STDLIB: &str = "usr/lib/python3.11";

/// Whether a Debian layer with these packages ships the CPython 3.11 stdlib.
pub fn ships_stdlib(package_names: impl IntoIterator<Item = impl AsRef<str>>) -> bool {
    package_names
        .into_iter()
        .any(|n| n.as_ref() == "libpython3.11-stdlib" || n.as_ref() == "libpython3.11-minimal")
}

/// The host interpreter's version, for fingerprints (`None`: none usable).
pub fn host_version() -> Option<String> {
    find_host_python(&Target::bookworm_cpython311())
        .ok()
        .map(|p| p.version)
}

/// Adds `__pycache__/*.cpython-311.pyc` for the stdlib in `tree`; returns notes.
pub fn compile(store: &Store, tree: &mut Tree) -> Result<Vec<String>> {
    let python = match find_host_python(&Target::bookworm_cpython311()) {
        Ok(p) => p,
        Err(why) => {
            return Ok(vec![format!(
                "standard library not byte-compiled ({why}): each start compiles the modules it imports; install python3.11 on the build host"
            )]);
        }
    };
    let prefix = format!("{STDLIB}/");
    let sources: Vec<(String, Content)> = tree
        .iter()
        .filter_map(|(p, n)| match n {
            Node::File { content, .. }
                if p.as_str().starts_with(&prefix) && p.as_str().ends_with(".py") =>
            {
                Some((p.as_str()[prefix.len()..].to_owned(), content.clone()))
            }
            _ => None,
        })
        .collect();
    if sources.is_empty() {
        return Ok(vec![]);
    }
    // The cache key names every source's bytes (spools and inline data are
    // content-addressed) and the compiler.
    let mut key = String::from("stdlib-pyc-v1\n");
    for (rel, c) in &sources {
        key.push_str(&match c {
            Content::Inline(b) => format!("{rel}\t{}\n", Digest::of_bytes(b)),
            Content::Host { path, size, .. } | Content::Range { path, size, .. } => {
                let offset = if let Content::Range { offset, .. } = c {
                    *offset
                } else {
                    0
                };
                format!(
                    "{rel}\t{}\t{offset}\t{size}\n",
                    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
                )
            }
        });
    }
    let key = Digest::of_bytes(key.as_bytes());
    let tmp = store.temp_dir()?;
    let result = (|| -> Result<_> {
        let mut host: Vec<(String, PathBuf)> = vec![];
        for (rel, c) in &sources {
            let dest = tmp.join(rel);
            std::fs::create_dir_all(dest.parent().expect("parent"))?;
            let mut out = std::fs::File::create(&dest)
                .with_context(|| format!("failed to write `{}`", dest.display()))?;
            match c {
                Content::Inline(b) => std::io::Write::write_all(&mut out, b)?,
                Content::Host { path, .. } => {
                    std::io::copy(&mut std::fs::File::open(path)?, &mut out)?;
                }
                Content::Range { path, offset, size } => {
                    let mut f = std::fs::File::open(path)
                        .with_context(|| format!("failed to read `{}`", path.display()))?;
                    f.seek(SeekFrom::Start(*offset))?;
                    std::io::copy(&mut f.take(*size), &mut out)?;
                }
            }
            host.push((rel.clone(), dest));
        }
        host.sort();
        Ok(compile_wheel(
            store,
            &python,
            &key,
            &format!("/{STDLIB}"),
            &host,
        )?)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    let compiled = result.context("byte-compiling the Python standard library")?;
    for f in &compiled.files {
        let path = TreePath::new(&format!("{STDLIB}/{}", f.path))?;
        tree.insert(
            path,
            Node::File {
                meta: Meta::FILE,
                content: Content::Host {
                    path: compiled.host_path(f),
                    size: f.size,
                    sha256: None,
                },
            },
        )?;
    }
    let mut notes = vec![format!(
        "standard library: {} .pyc files (python {})",
        compiled.files.len(),
        python.version
    )];
    notes.extend(
        compiled
            .warnings
            .iter()
            .map(|w| format!("standard library: {w}")),
    );
    Ok(notes)
}
