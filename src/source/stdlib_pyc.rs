//! Byte-compiling Debian's Python standard library, as the python3.11 package's
//! postinst (`py3compile`) would: without it, every start of a Python image
//! compiles each stdlib module it imports again (the stack's app and workers spent
//! ~1.4 s on it per start, and every health check too).
//!
//! The compiler is the layer's own `/usr/bin/python3.11`: the interpreter, its
//! standard library and shared libraries are copied out of the layer being built
//! and run through the layer's own loader (`imgbuild_python::interpreter`), so the
//! build host's Python (if any) takes no part and the locked packages alone decide
//! the bytes. Files are compiled in unchecked-hash mode (no mtimes), twice, and any
//! file whose two results differ is left out. Results are cached in the store by a
//! key naming every source file's bytes and the interpreter, so this runs once per
//! package set.
//!
//! When: `bytecode` of the `debian` source; by default whenever the layer ships the
//! standard library *and* the interpreter (`python3.11-minimal`). A layer with only
//! the standard library (an embedded interpreter, as PL/Python's `libpython3.11`)
//! has nothing to compile with and gets no `.pyc` files, on every machine alike;
//! `bytecode = true` there is an error.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use imgbuild_layer::{Content, Meta, Node, Tree, TreePath};
use imgbuild_python::bytecode::compile_sources;
use imgbuild_python::{ImageFiles, ImageInterpreter, Target};
use imgbuild_store::{Digest, Store};

const STDLIB: &str = "usr/lib/python3.11";
const INTERPRETER: &str = "/usr/bin/python3.11";
/// The packages that ship the standard library, and the one with the interpreter.
const STDLIB_PACKAGES: [&str; 2] = ["libpython3.11-stdlib", "libpython3.11-minimal"];
const INTERPRETER_PACKAGE: &str = "python3.11-minimal";

/// The interpreter's target: bookworm's CPython 3.11 on the layer's architecture (the
/// architecture picks the loader and the triplet, `aarch64-linux-gnu` for arm64).
fn target(arch: imgbuild_debian::Arch) -> Target {
    Target {
        arch: match arch {
            imgbuild_debian::Arch::Amd64 => "x86_64",
            imgbuild_debian::Arch::Arm64 => "aarch64",
        }
        .into(),
        ..Target::bookworm_cpython311()
    }
}

/// Whether a Debian layer with these packages gets a byte-compiled standard library,
/// given the recipe's `bytecode` (`None`: not set). `Err`: `bytecode = true` on a
/// layer that cannot have it.
pub fn wanted(
    option: Option<bool>,
    package_names: impl IntoIterator<Item = impl AsRef<str>>,
) -> std::result::Result<bool, String> {
    let names: Vec<String> = package_names
        .into_iter()
        .map(|n| n.as_ref().to_owned())
        .collect();
    let stdlib = names.iter().any(|n| STDLIB_PACKAGES.contains(&n.as_str()));
    let interpreter = names.iter().any(|n| n == INTERPRETER_PACKAGE);
    match option {
        Some(false) => Ok(false),
        None => Ok(stdlib && interpreter),
        Some(true) if stdlib && interpreter => Ok(true),
        Some(true) => Err(format!(
            "`bytecode = true`, but the layer does not ship {}: the standard library is byte-compiled by the layer's own {INTERPRETER} ({INTERPRETER_PACKAGE})",
            if stdlib {
                "the interpreter"
            } else {
                "CPython 3.11"
            }
        )),
    }
}

/// Adds `__pycache__/*.cpython-311.pyc` for the stdlib in `tree`; returns notes.
/// `arch` is the layer's architecture: its interpreter runs through that
/// architecture's loader, from its multiarch library directory.
pub fn compile(
    store: &Store,
    tree: &mut Tree,
    jobs: usize,
    arch: imgbuild_debian::Arch,
) -> Result<Vec<String>> {
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
        bail!("the layer has no standard library in /{STDLIB} to byte-compile");
    }
    let python = ImageInterpreter::materialise(
        &ImageFiles::from_tree(tree),
        INTERPRETER,
        &target(arch),
        store,
    )
    .context("byte-compiling the layer's Python standard library (`debian = { ..., bytecode = false }` turns it off)")?;
    let (stdlib, host_dir) = python.stdlib();
    if stdlib != STDLIB {
        bail!(
            "{} found its standard library in /{stdlib}, not /{STDLIB}",
            python.describe()
        );
    }
    // The cache key names every source's bytes (spools and inline data are
    // content-addressed); the compiler's identity is added by compile_sources.
    let mut key = String::from("stdlib-pyc-v2\n");
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
    // the interpreter's copy of the standard library is the set of sources
    let mut host: Vec<(String, PathBuf)> = sources
        .iter()
        .map(|(rel, _)| (rel.clone(), host_dir.join(rel)))
        .collect();
    host.sort();
    let compiled = compile_sources(store, &python, &key, &format!("/{STDLIB}"), &host, jobs)
        .context("byte-compiling the Python standard library")?;
    for f in &compiled.files {
        let path = TreePath::new(&format!("{STDLIB}/{}", f.path))?;
        tree.insert(
            path,
            Node::File {
                meta: Meta::FILE,
                content: Content::Host {
                    path: compiled.host_path(f),
                    size: f.size,
                    hash: None,
                },
            },
        )?;
    }
    let mut notes = vec![format!(
        "standard library: {} .pyc files (written by {})",
        compiled.files.len(),
        python.describe()
    )];
    notes.extend(
        compiled
            .warnings
            .iter()
            .map(|w| format!("standard library: {w}")),
    );
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_the_standard_library_is_compiled() {
        let full = ["libc6", "libpython3.11-stdlib", "python3.11-minimal"];
        let embedded = ["libc6", "libpython3.11", "libpython3.11-stdlib"];
        let none = ["nginx", "libc6"];
        assert_eq!(wanted(None, full), Ok(true));
        assert_eq!(wanted(Some(true), full), Ok(true));
        assert_eq!(wanted(Some(false), full), Ok(false));
        assert_eq!(wanted(None, embedded), Ok(false));
        assert!(
            wanted(Some(true), embedded)
                .unwrap_err()
                .contains("interpreter")
        );
        assert_eq!(wanted(Some(false), embedded), Ok(false));
        assert_eq!(wanted(None, none), Ok(false));
        assert!(
            wanted(Some(true), none)
                .unwrap_err()
                .contains("CPython 3.11")
        );
    }
}
