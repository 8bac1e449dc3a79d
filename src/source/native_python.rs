//! The interpreter that writes an image's `.pyc` files, without emulation: the image's
//! own when it is of the build machine's architecture, and for a foreign one (an arm64
//! image built on amd64) the build machine's build of the *same* Debian package
//! versions of that interpreter.
//!
//! Why that gives the same bytes: a `.pyc` is the marshalled code object that CPython's
//! compiler makes from the source. The compiler and marshal are portable C whose output
//! does not depend on the machine for the architectures imgbuild builds (64-bit,
//! little-endian, IEEE 754 doubles: amd64 and arm64); what decides the bytes is the
//! CPython source, Debian's patches to it, and the hash seed (fixed, see
//! `imgbuild_python::bytecode`). One Debian source version is built for every
//! architecture from the same source and patches, so `python3.13-minimal 3.13.5-2`
//! for amd64 writes what `python3.13-minimal 3.13.5-2` for arm64 writes.
//! `native_python::tests::foreign_pyc_equals_what_the_foreign_interpreter_writes_under_emulation`
//! checks it against the arm64 interpreter run under qemu.
//!
//! How the build machine's build is found: the image's Debian records
//! (`/var/lib/dpkg/status.d/python3.Y-minimal` and `libpython3.Y-stdlib`, as
//! imgbuild and distroless write them, or `/var/lib/dpkg/status`) give the exact
//! versions; the first release whose index for the build machine's architecture has
//! `python3.Y-minimal` at that version (the project's release first) gives the
//! packages, resolved with their dependencies, fetched and verified like any other
//! `.deb`, unpacked into a tree of their own, and run from there
//! (`imgbuild_python::interpreter`). The versions of `python3.Y-minimal`,
//! `libpython3.Y-minimal` and `libpython3.Y-stdlib` must all be the image's.
//!
//! An image whose foreign interpreter is not Debian's package (a registry base with
//! its own `/usr/local/bin/python3.12`) has no such twin to fetch: that is an error
//! naming `bytecode = false`, never emulation and never other bytes.

use anyhow::{Context, Result, bail};
use imgbuild_debian::{Arch, Suite};
use imgbuild_layer::Tree;
use imgbuild_python::image_target::debian_package_version;
use imgbuild_python::{ImageFiles, ImageInterpreter, ImageTarget, Target};
use imgbuild_store::Store;

use super::debian::DebianInputs;

/// The machine name (as ELF headers and wheel tags spell it) of the build machine.
pub fn build_machine() -> &'static str {
    std::env::consts::ARCH
}

/// The interpreter that writes the `.pyc` files of `found`'s image: the image's own,
/// or for a foreign architecture the build machine's build of the same Debian
/// packages (see the module docs).
pub fn pyc_writer(
    debian: &DebianInputs,
    image: &ImageFiles,
    found: &ImageTarget,
    store: &Store,
) -> Result<ImageInterpreter> {
    if found.target.arch == build_machine() {
        return Ok(ImageInterpreter::materialise(
            image,
            &found.interpreter,
            &found.target,
            store,
        )?);
    }
    native_twin(debian, image, found, store)
}

/// The build machine's build of the image's foreign Debian interpreter.
pub fn native_twin(
    debian: &DebianInputs,
    image: &ImageFiles,
    found: &ImageTarget,
    store: &Store,
) -> Result<ImageInterpreter> {
    let t = &found.target;
    let mm = t.python_version();
    let native = Arch::native().with_context(|| {
        format!(
            "writing .pyc files for {}: this machine ({}) is not an architecture imgbuild builds on; \
             set `bytecode = false`",
            t.arch,
            build_machine()
        )
    })?;
    let exe = image
        .file(found.interpreter.trim_start_matches('/'))
        .map(|(real, _, _)| real)
        .unwrap_or_default();
    let records = [
        format!("python{mm}-minimal"),
        format!("libpython{mm}-minimal"),
        format!("libpython{mm}-stdlib"),
    ];
    let versions = debian_versions(image, &records)?;
    let not_debian = || {
        format!(
            "{} of the image is for {}, and this machine is {}: imgbuild writes .pyc files for another \
             architecture with this machine's build of the same Debian package (never under emulation), \
             but this interpreter is not Debian's python{mm}-minimal (no record of it in /var/lib/dpkg); \
             set `bytecode = false`",
            found.interpreter,
            t.arch,
            build_machine()
        )
    };
    if exe != format!("usr/bin/python{mm}") {
        bail!(not_debian());
    }
    let Some(interpreter_version) = versions[0].clone() else {
        bail!(not_debian());
    };
    let stdlib_version = versions[2]
        .clone()
        .unwrap_or_else(|| interpreter_version.clone());
    // the project's release first, then the others
    let mut suites = vec![debian.suite];
    suites.extend(Suite::ALL.into_iter().filter(|s| *s != debian.suite));
    let mut suite = None;
    for s in suites {
        if debian.has_version(s, native, &records[0], &interpreter_version)? {
            suite = Some(s);
            break;
        }
    }
    let Some(suite) = suite else {
        bail!(
            "writing .pyc files for the image's {} ({}): no release's {native} index has {} {interpreter_version} \
             (the same build for this machine's architecture); set `bytecode = false`, or use a Debian snapshot \
             mirror of the date the image's packages are from",
            found.interpreter,
            t.arch,
            records[0]
        );
    };
    let mut tree = Tree::new();
    let packages = debian.unpack_into(
        suite,
        native,
        &[
            format!("{}={interpreter_version}", records[0]),
            format!("{}={stdlib_version}", records[2]),
        ],
        &mut tree,
    )?;
    // every package that decides the compiler must be the image's version
    for (name, want) in records.iter().zip(&versions) {
        let Some(want) = want else { continue };
        let got = packages.iter().find(|p| &p.name == name);
        match got {
            Some(p) if &p.version == want => {}
            _ => bail!(
                "writing .pyc files for the image's {}: its {name} is {want}, but {suite}'s {native} index gives {}; \
                 set `bytecode = false`",
                found.interpreter,
                got.map(|p| p.version.as_str()).unwrap_or("none")
            ),
        }
    }
    let twin_target = Target {
        arch: build_machine().to_owned(),
        ..t.clone()
    };
    let twin = ImageInterpreter::materialise(
        &ImageFiles::from_tree(&tree),
        &format!("/usr/bin/python{mm}"),
        &twin_target,
        store,
    )
    .with_context(|| {
        format!(
            "running this machine's ({native}) build of {} {interpreter_version}",
            records[0]
        )
    })?;
    if twin.version != t.python_full_version {
        bail!(
            "this machine's build of {} {interpreter_version} is CPython {}, the image's is {}",
            records[0],
            twin.version,
            t.python_full_version
        );
    }
    let origin = format!(
        "{} {interpreter_version} for {native} (the build of the image's {} for {}, run natively)",
        records[0], found.interpreter, t.arch
    );
    Ok(twin.with_origin(origin))
}

/// The Debian versions of `packages` in the image's records (`None`: no record).
fn debian_versions(image: &ImageFiles, packages: &[String]) -> Result<Vec<Option<String>>> {
    // the records' real paths (/var may be a link)
    let paths: Vec<String> = packages
        .iter()
        .map(|p| format!("var/lib/dpkg/status.d/{p}"))
        .chain(["var/lib/dpkg/status".to_owned()])
        .map(|p| image.file(&p).map(|(real, _, _)| real).unwrap_or(p))
        .collect();
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let read = image
        .read_files(&refs, 256 << 20)
        .context("reading the image's Debian package records")?;
    let status = read
        .last()
        .cloned()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok(packages
        .iter()
        .zip(&read)
        .map(|(name, own)| {
            own.as_ref()
                .and_then(|b| debian_package_version(&String::from_utf8_lossy(b), name))
                .or_else(|| {
                    status
                        .as_deref()
                        .and_then(|s| debian_package_version(s, name))
                })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Arc;

    use imgbuild_debian::Mirror;
    use imgbuild_layer::Node;
    use imgbuild_layer::image::FileSource;
    use imgbuild_python::bytecode::compile_sources;
    use imgbuild_python::read_target;
    use imgbuild_store::Digest;

    use super::*;
    use crate::lockfile::Lockfile;
    use crate::progress::{Progress, Verbosity};
    use crate::source::Http;

    /// Constants whose marshalled form could depend on the machine if anything did:
    /// floats (folded and not), complex numbers, big integers, sets and frozensets
    /// of mixed types (hash order), bytes, and nested code.
    const TRICKY: &str = r#"
X = (0.1 + 0.2, 1e308 * 10, -0.0, 2.5j, 1 / 3, 10 ** 40, -(2 ** 63), 0x7fffffffffffffff)
def f(a):
    if a in {1.5, "a", b"b", 3, None, (1, 2), 2 ** 70, "é"}:
        return frozenset({"x", "y", "z", 1, 2.0})
    return [lambda q: q * 1.1 for _ in range(3)], f"{a!r:>10}"
class C:
    __slots__ = ("p", "q")
    def g(self, *args, k=float("nan"), **kw): return sorted(kw, key=hash)
"#;

    /// The foreign-architecture `.pyc` files imgbuild writes (with this machine's build
    /// of the same Debian package, natively) are byte for byte those the foreign
    /// interpreter writes itself, run here under emulation (qemu-aarch64 through
    /// binfmt_misc): trixie's python3.13 for arm64, the top-level modules of its
    /// standard library (its `_sysconfigdata__linux_aarch64-linux-gnu.py` among them) and a
    /// file of constants chosen to differ if anything did.
    #[test]
    fn foreign_pyc_equals_what_the_foreign_interpreter_writes_under_emulation() {
        assert_eq!(build_machine(), "x86_64", "the test builds arm64 on amd64");
        assert!(
            std::path::Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists(),
            "qemu-aarch64 is not enabled in binfmt_misc: run scripts/setup.sh"
        );
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        let debian = DebianInputs::new(
            Mirror::default(),
            Suite::Trixie,
            Lockfile::default(),
            false,
            false,
            Arc::new(Http::default()),
            store.clone(),
            2,
            Progress::new(Verbosity::Quiet),
        );
        let mut tree = Tree::new();
        debian
            .unpack_into(
                Suite::Trixie,
                Arch::Arm64,
                &["python3.13-minimal".into(), "libpython3.13-stdlib".into()],
                &mut tree,
            )
            .unwrap();
        let image = ImageFiles::from_tree(&tree);
        let found = read_target(&image, None).unwrap();
        assert_eq!(found.interpreter, "/usr/bin/python3.13");
        assert_eq!(found.target.arch, "aarch64");
        assert!(found.target.python_full_version.starts_with("3.13."));

        let native = pyc_writer(&debian, &image, &found, &store).unwrap();
        assert!(
            native.describe().contains(
                "for amd64 (the build of the image's /usr/bin/python3.13 for aarch64, run natively)"
            ),
            "{}",
            native.describe()
        );
        let emulated =
            ImageInterpreter::materialise(&image, &found.interpreter, &found.target, &store)
                .unwrap();
        assert_eq!(native.version, emulated.version);
        assert_eq!(native.magic, emulated.magic);
        assert_ne!(native.identity, emulated.identity, "two different binaries");

        // the sources: the arm64 layer's own files, copied out
        let src = store.temp_dir().unwrap();
        let mut plan = BTreeMap::new();
        let mut sources: Vec<(String, PathBuf)> = vec![];
        for (p, n) in tree.iter() {
            let Some(rel) = p.as_str().strip_prefix("usr/lib/python3.13/") else {
                continue;
            };
            if let Node::File { content, .. } = n
                && !rel.contains('/')
                && rel.ends_with(".py")
            {
                plan.insert(
                    p.as_str().to_owned(),
                    (FileSource::Content(content.clone()), 0o644),
                );
                sources.push((rel.to_owned(), src.join(p.as_str())));
            }
        }
        image.copy_out(&plan, &src).unwrap();
        std::fs::write(src.join("usr/lib/python3.13/zz_tricky.py"), TRICKY).unwrap();
        sources.push((
            "zz_tricky.py".into(),
            src.join("usr/lib/python3.13/zz_tricky.py"),
        ));
        assert!(
            sources
                .iter()
                .any(|(r, _)| r.starts_with("_sysconfigdata_") && r.contains("aarch64")),
            "no arm64 _sysconfigdata among the sources"
        );
        assert!(sources.len() > 100, "{}", sources.len());

        let key = Digest::of_bytes(b"foreign pyc test sources");
        let dir = "/usr/lib/python3.13";
        let a = compile_sources(&store, &native, &key, dir, &sources, 2).unwrap();
        let b = compile_sources(&store, &emulated, &key, dir, &sources, 2).unwrap();
        assert!(a.warnings.is_empty(), "{:?}", a.warnings);
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
        assert_eq!(a.files.len(), sources.len());
        let differ: Vec<&str> = a
            .files
            .iter()
            .zip(&b.files)
            .filter(|(x, y)| {
                x.path != y.path
                    || std::fs::read(a.host_path(x)).unwrap()
                        != std::fs::read(b.host_path(y)).unwrap()
            })
            .map(|(x, _)| x.path.as_str())
            .collect();
        assert!(differ.is_empty(), "these .pyc files differ: {differ:?}");
        assert_eq!(a.files, b.files);
        let _ = std::fs::remove_dir_all(&src);
    }
}
