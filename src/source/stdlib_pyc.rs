//! Byte-compiling Debian's Python standard library, as the python3.Y package's
//! postinst (`py3compile`) would: without it, every start of a Python image
//! compiles each stdlib module it imports again (the stack's app and workers spent
//! ~1.4 s on it per start, and every health check too). Any CPython 3.Y Debian ships
//! (bookworm's 3.11, trixie's 3.13): the version comes from the layer's packages.
//!
//! The compiler is the layer's own `/usr/bin/python3.Y`: the interpreter, its
//! standard library and shared libraries are copied out of the layer being built
//! and run through the layer's own loader (`imgbuild_python::interpreter`), so the
//! build host's Python (if any) takes no part and the locked packages alone decide
//! the bytes. Files are compiled in unchecked-hash mode (no mtimes), twice, and any
//! file whose two results differ is left out. Results are cached in the store by a
//! key naming every source file's bytes and the interpreter, so this runs once per
//! package set.
//!
//! When: `bytecode` of the `debian` source; by default whenever the layer ships the
//! standard library (`libpython3.Y-stdlib`) *and* the interpreter
//! (`python3.Y-minimal`). A layer with only the standard library (an embedded
//! interpreter, as PL/Python's `libpython3.Y`) has nothing to compile with and gets no
//! `.pyc` files, on every machine alike; `bytecode = true` there is an error.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use imgbuild_layer::image::FileSource;
use imgbuild_layer::{Content, Meta, Node, Tree, TreePath};
use imgbuild_python::bytecode::compile_sources;
use imgbuild_python::{ImageFiles, read_target};
use imgbuild_store::{Digest, Store};

/// The `3.Y` of Debian's packages of CPython 3.Y: `libpython3.13-stdlib` ->
/// (`3.13`, stdlib), `python3.13-minimal` -> (`3.13`, interpreter).
/// `libpython3.Y-minimal` alone is not the standard library: without `-stdlib` the
/// interpreter lacks modules the byte-compiler needs (`json`), and there is little to
/// compile.
fn python_package(name: &str) -> Option<(String, bool)> {
    let (v, interpreter) = if let Some(rest) = name.strip_prefix("libpython") {
        (rest.strip_suffix("-stdlib")?, false)
    } else {
        (name.strip_prefix("python")?.strip_suffix("-minimal")?, true)
    };
    let (ma, mi) = v.split_once('.')?;
    (ma == "3" && !mi.is_empty() && mi.bytes().all(|b| b.is_ascii_digit()))
        .then(|| (v.to_owned(), interpreter))
}

/// Whether a Debian layer with these packages gets a byte-compiled standard library,
/// given the recipe's `bytecode` (`None`: not set): the `3.Y` of each CPython whose
/// standard library (`libpython3.Y-stdlib`) and interpreter
/// (`python3.Y-minimal`) the layer ships (bookworm's 3.11, trixie's 3.13). `Err`:
/// `bytecode = true` on a layer that cannot have it.
pub fn wanted(
    option: Option<bool>,
    package_names: impl IntoIterator<Item = impl AsRef<str>>,
) -> std::result::Result<Vec<String>, String> {
    let mut stdlib = std::collections::BTreeSet::new();
    let mut interpreter = std::collections::BTreeSet::new();
    for n in package_names {
        if let Some((v, is_interpreter)) = python_package(n.as_ref()) {
            if is_interpreter {
                interpreter.insert(v);
            } else {
                stdlib.insert(v);
            }
        }
    }
    let both: Vec<String> = stdlib.intersection(&interpreter).cloned().collect();
    match option {
        Some(false) => Ok(vec![]),
        None => Ok(both),
        Some(true) if !both.is_empty() => Ok(both),
        Some(true) => Err(match stdlib.iter().next() {
            Some(v) => format!(
                "`bytecode = true`, but the layer does not ship the interpreter: the standard library is \
                 byte-compiled by the layer's own /usr/bin/python{v} (python{v}-minimal)"
            ),
            None => "`bytecode = true`, but the layer does not ship CPython 3 (libpython3.Y-stdlib and \
                     python3.Y-minimal): the standard library is byte-compiled by the layer's own interpreter"
                .into(),
        }),
    }
}

/// Adds `__pycache__/*.cpython-3Y.pyc` for the standard library of CPython `version`
/// (`3.13`, from [`wanted`]) in `tree`; returns notes. `arch` is the layer's
/// architecture: its interpreter runs through that architecture's loader, from its
/// multiarch library directory.
pub fn compile(
    debian: &super::debian::DebianInputs,
    store: &Store,
    tree: &mut Tree,
    jobs: usize,
    arch: imgbuild_debian::Arch,
    version: &str,
) -> Result<Vec<String>> {
    let stdlib_dir = format!("usr/lib/python{version}");
    let interpreter = format!("/usr/bin/python{version}");
    let prefix = format!("{stdlib_dir}/");
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
        bail!("the layer has no standard library in /{stdlib_dir} to byte-compile");
    }
    let image = ImageFiles::from_tree(tree);
    let found = read_target(&image, Some(&interpreter))
        .context("byte-compiling the layer's Python standard library (`debian = { ..., bytecode = false }` turns it off)")?;
    if found.target.arch != arch_machine(arch) {
        bail!(
            "the layer is for {arch}, but its {interpreter} is for {}",
            found.target.arch
        );
    }
    let python = super::native_python::pyc_writer(debian, &image, &found, store)
    .context("byte-compiling the layer's Python standard library (`debian = { ..., bytecode = false }` turns it off)")?;
    let (stdlib, mut host_dir) = python.stdlib();
    // this machine's build of a foreign interpreter has its own copy of the standard
    // library, not the layer's (`_sysconfigdata__linux_aarch64-linux-gnu.py` is not in
    // the amd64 build): the layer's sources are copied out for it
    let _sources_copy = if found.target.arch != super::native_python::build_machine() {
        let root = store.temp_dir()?;
        let plan = sources
            .iter()
            .map(|(rel, c)| {
                (
                    format!("{stdlib_dir}/{rel}"),
                    (FileSource::Content(c.clone()), 0o644),
                )
            })
            .collect();
        image
            .copy_out(&plan, &root)
            .context("copying the layer's standard library out for byte-compiling")?;
        host_dir = root.join(&stdlib_dir);
        Some(TempDir(root))
    } else {
        None
    };
    if stdlib != stdlib_dir {
        bail!(
            "{} found its standard library in /{stdlib}, not /{stdlib_dir}",
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
    let compiled = compile_sources(store, &python, &key, &format!("/{stdlib_dir}"), &host, jobs)
        .context("byte-compiling the Python standard library")?;
    for f in &compiled.files {
        let path = TreePath::new(&format!("{stdlib_dir}/{}", f.path))?;
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

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The machine name of a Debian architecture (as an ELF header gives it).
pub fn arch_machine(arch: imgbuild_debian::Arch) -> &'static str {
    match arch {
        imgbuild_debian::Arch::Amd64 => "x86_64",
        imgbuild_debian::Arch::Arm64 => "aarch64",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_the_standard_library_is_compiled() {
        let full = ["libc6", "libpython3.11-stdlib", "python3.11-minimal"];
        let trixie = [
            "libc6",
            "libpython3.13-minimal",
            "libpython3.13-stdlib",
            "python3.13-minimal",
            "python3-minimal",
        ];
        let embedded = ["libc6", "libpython3.11", "libpython3.11-stdlib"];
        let none = ["nginx", "libc6"];
        // the interpreter without the full standard library (no json module)
        let minimal = ["libc6", "libpython3.11-minimal", "python3.11-minimal"];
        assert_eq!(wanted(None, minimal), Ok(vec![]));
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(wanted(None, full), Ok(v(&["3.11"])));
        assert_eq!(wanted(None, trixie), Ok(v(&["3.13"])));
        assert_eq!(wanted(Some(true), full), Ok(v(&["3.11"])));
        assert_eq!(wanted(Some(false), full), Ok(vec![]));
        assert_eq!(wanted(None, embedded), Ok(vec![]));
        let e = wanted(Some(true), embedded).unwrap_err();
        assert!(
            e.contains("interpreter") && e.contains("python3.11-minimal"),
            "{e}"
        );
        assert_eq!(wanted(Some(false), embedded), Ok(vec![]));
        assert_eq!(wanted(None, none), Ok(vec![]));
        assert!(wanted(Some(true), none).unwrap_err().contains("CPython 3"));
        assert_eq!(python_package("python3-minimal"), None);
        assert_eq!(python_package("libpython3.13t-stdlib"), None);
    }
}
