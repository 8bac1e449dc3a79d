//! The venv's [`Target`] read from the image's files (the layers below the venv, and what
//! its own layer's Debian packages wrote), never from constants and without running
//! anything: the interpreter may be of another architecture than the build machine.
//!
//! What is read, and from where (the first source that answers wins):
//! - **the interpreter**: the recipe's `interpreter`, or else the one the image has:
//!   `/usr/local/bin/python3` (official Python images), then `/usr/bin/python3` (Debian's
//!   `python3` package), then the only `python3.Y` in `/usr/local/bin`, `/usr/bin`. When
//!   `python3` is a link to `python3.Y` of the same directory, the venv names
//!   `python3.Y` (what the link points at today is what the venv was built for).
//!   Several candidates, or none, is an error listing every `python3*` the image has.
//! - **major.minor and ABI**: the interpreter's file name (`python3.13`, after following
//!   its links) or, for a plain `python3`, the only standard library
//!   `<prefix>/lib/python3.Y/os.py` beside it (`<prefix>` = the directory above `bin`).
//!   A debug (`d`) or free-threaded (`t`) build (`python3.13t`, `lib/python3.13t`,
//!   `_sysconfigdata_t_*.py`) is refused: the wheels chosen for `cp313` would not load.
//! - **the full version** (`3.13.5`, what markers such as `python_full_version <
//!   "3.11.3"` compare): (1) for `/usr/bin/python3.Y`, Debian's package record of
//!   `python3.Y-minimal` (`/var/lib/dpkg/status.d/` as imgbuild and distroless write it,
//!   or `/var/lib/dpkg/status`), its upstream version (`3.11.2-6+deb12u6` -> `3.11.2`);
//!   (2) `<prefix>/include/python3.Y/patchlevel.h` (`#define PY_VERSION "3.12.1"`),
//!   which every `make install` of CPython writes (official Python images, source
//!   builds); (3) the `PY_VERSION` string in the interpreter binary or its `libpython`,
//!   as a NUL-terminated `3.Y.Z` of its own. Both (1) and (2) are written by the tools
//!   that installed the interpreter; (3) holds for Debian's binaries but not for every
//!   build (a linker may merge the string into `Python-3.12.1`), hence last.
//! - **the architecture**: the interpreter's ELF header (`e_machine`).
//! - **the C library**: glibc's `libc.so.6` in the loader's directories for that
//!   architecture (`/lib/<triplet>`, `/usr/lib/<triplet>`, `/lib64`, `/usr/lib64`,
//!   `/lib`, `/usr/lib`), its version the highest `GLIBC_2.N` version it *defines*
//!   (ELF `SHT_GNU_VERDEF`, parsed with the `object` crate: the symbol versions a
//!   manylinux wheel may require). An image whose C library is musl
//!   (`/lib/ld-musl-*.so.1` and no glibc) is refused: the `.pyc` files are written by
//!   running the interpreter through the image's glibc loader, and musllinux wheels are
//!   not tested.

use std::io::{Read, Seek, SeekFrom};

use imgbuild_layer::Content;
use imgbuild_layer::image::{Entry, FileSource, ImageFiles};
use object::read::elf::FileHeader;

use crate::error::{Error, Result};
use crate::target::{Libc, Target};

/// The target of a venv over an image, and where each part was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageTarget {
    /// The in-image interpreter the venv uses (`/usr/bin/python3.13`).
    pub interpreter: String,
    pub target: Target,
    /// Where the full version was read (`/var/lib/dpkg/status.d/python3.13-minimal`).
    pub version_from: String,
    /// The glibc `libc.so.6` the version was read from (`/usr/lib/x86_64-linux-gnu/libc.so.6`).
    pub libc_from: String,
}

/// The interpreter names looked for when the recipe names none, in order.
const DEFAULT_INTERPRETERS: [&str; 2] = ["usr/local/bin/python3", "usr/bin/python3"];
/// The directories searched for `python3.Y` when no default link exists.
const INTERPRETER_DIRS: [&str; 2] = ["usr/local/bin", "usr/bin"];
/// Enough for any libc.so.6, interpreter or libpython (Debian's python3.13 is 7 MB).
const MAX_READ: u64 = 256 << 20;

/// Reads the target of a venv whose interpreter is `interpreter` (an absolute in-image
/// path) or, with `None`, the one the image has (see the module docs).
pub fn read_target(image: &ImageFiles, interpreter: Option<&str>) -> Result<ImageTarget> {
    let interpreter = match interpreter {
        Some(p) => {
            if image.file(p.trim_start_matches('/')).is_none() {
                return Err(Error::Target {
                    path: p.to_owned(),
                    msg: format!(
                        "the image has no such file; it has {}",
                        list_interpreters(image)
                    ),
                });
            }
            p.to_owned()
        }
        None => default_interpreter(image)?,
    };
    let fail = |msg: String| Error::Target {
        path: interpreter.clone(),
        msg,
    };
    let (exe, _, exe_source) = image
        .file(interpreter.trim_start_matches('/'))
        .ok_or_else(|| fail("the image has no such file".into()))?;

    // architecture from the ELF header
    let head = read_head(image, &exe, exe_source).map_err(&fail)?;
    let arch = elf_arch(&head).map_err(&fail)?;

    // major.minor from the name or the standard library beside it
    let (bin_dir, exe_name) = exe.rsplit_once('/').unwrap_or(("", exe.as_str()));
    let prefix = bin_dir.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    let lib = join(prefix, "lib");
    let (major, minor) = match parse_versioned_name(exe_name) {
        Some((ma, mi, flags)) => {
            refuse_abi_flags(&flags, &format!("/{exe}")).map_err(&fail)?;
            (ma, mi)
        }
        None => {
            let found: Vec<(u32, u32, String)> = stdlibs(image, &lib);
            match found.as_slice() {
                [(ma, mi, flags)] => {
                    refuse_abi_flags(flags, &format!("/{lib}/python{ma}.{mi}{flags}"))
                        .map_err(&fail)?;
                    (*ma, *mi)
                }
                [] => {
                    return Err(fail(format!(
                        "`/{exe}` is not named python3.Y and `/{lib}` has no standard library \
                         (python3.Y/os.py): name the interpreter with `interpreter`; the image has {}",
                        list_interpreters(image)
                    )));
                }
                many => {
                    return Err(fail(format!(
                        "`/{exe}` is not named python3.Y and `/{lib}` has several standard libraries ({}): \
                         name the versioned interpreter with `interpreter`",
                        many.iter()
                            .map(|(a, b, f)| format!("python{a}.{b}{f}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
    };
    if major != 3 {
        return Err(fail(format!(
            "it is Python {major}.{minor}: only CPython 3 is supported"
        )));
    }
    let stdlib = join(&lib, &format!("python{major}.{minor}"));
    if image.file(&format!("{stdlib}/os.py")).is_none() {
        return Err(fail(format!(
            "the image has no standard library at `/{stdlib}` (no os.py)"
        )));
    }
    if let Some(flags) = sysconfigdata_abi_flags(image, &stdlib) {
        refuse_abi_flags(&flags, &format!("/{stdlib}/_sysconfigdata_{flags}_*.py"))
            .map_err(&fail)?;
    }

    let (libc, libc_from) = read_libc(image, &arch).map_err(&fail)?;
    let (python_full_version, version_from) =
        full_version(image, &exe, prefix, major, minor).map_err(&fail)?;
    let target = Target {
        python_full_version,
        libc,
        arch,
    };
    target.validate().map_err(&fail)?;
    Ok(ImageTarget {
        interpreter,
        target,
        version_from,
        libc_from,
    })
}

/// The bytes of the image's file at `path` (symlinks followed), `None` if there is no
/// such file.
fn read_file(image: &ImageFiles, path: &str) -> std::result::Result<Option<Vec<u8>>, String> {
    let Some((real, _, _)) = image.file(path) else {
        return Ok(None);
    };
    Ok(image
        .read_files(&[real.as_str()], MAX_READ)
        .map_err(|e| format!("reading `/{path}`: {e}"))?
        .pop()
        .flatten())
}

fn join(dir: &str, rel: &str) -> String {
    if dir.is_empty() {
        rel.to_owned()
    } else {
        format!("{dir}/{rel}")
    }
}

/// `python3.13` -> (3, 13, ""), `python3.13t` -> (3, 13, "t"); `python3` -> None.
fn parse_versioned_name(name: &str) -> Option<(u32, u32, String)> {
    let v = name.strip_prefix("python")?;
    let (ma, rest) = v.split_once('.')?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let flags = &rest[digits..];
    if !flags.bytes().all(|b| b.is_ascii_lowercase()) {
        return None;
    }
    Some((
        ma.parse().ok()?,
        rest[..digits].parse().ok()?,
        flags.to_owned(),
    ))
}

fn refuse_abi_flags(flags: &str, seen_at: &str) -> std::result::Result<(), String> {
    let what: Vec<&str> = flags
        .chars()
        .filter_map(|c| match c {
            'd' => Some("a debug build (`d`)"),
            't' => Some("a free-threaded build (`t`)"),
            _ => None,
        })
        .collect();
    if what.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "it is {} (seen at `{seen_at}`): wheels are chosen for the default ABI (cp3Y), which it cannot load; \
             name the image's regular interpreter",
            what.join(" and ")
        ))
    }
}

/// The standard libraries in `lib`: `lib/python3.Y[flags]/os.py`.
fn stdlibs(image: &ImageFiles, lib: &str) -> Vec<(u32, u32, String)> {
    let Some(real) = image.resolve(lib) else {
        return vec![];
    };
    let mut out = vec![];
    for (name, entry) in image.below(&real) {
        if name.contains('/') || !matches!(entry, Entry::Dir(_) | Entry::Symlink(_)) {
            continue;
        }
        if let Some((ma, mi, flags)) = parse_versioned_name(name)
            && image.file(&format!("{real}/{name}/os.py")).is_some()
        {
            out.push((ma, mi, flags));
        }
    }
    out
}

/// The ABI flags in the name of the standard library's `_sysconfigdata_{flags}_*.py`.
fn sysconfigdata_abi_flags(image: &ImageFiles, stdlib: &str) -> Option<String> {
    let real = image.resolve(stdlib)?;
    image.below(&real).find_map(|(name, _)| {
        let rest = name.strip_prefix("_sysconfigdata_")?;
        if name.contains('/') || !name.ends_with(".py") {
            return None;
        }
        Some(rest.split('_').next().unwrap_or("").to_owned())
    })
}

/// Every `python3*` file of the usual bin directories, for messages.
fn list_interpreters(image: &ImageFiles) -> String {
    let found = interpreter_candidates(image, |n| n == "python3" || n.starts_with("python3."));
    if found.is_empty() {
        "no python3 in /usr/local/bin or /usr/bin".into()
    } else {
        found
            .iter()
            .map(|p| format!("/{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Files (following links) in [`INTERPRETER_DIRS`] whose name `want`s.
fn interpreter_candidates(image: &ImageFiles, want: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = vec![];
    for dir in INTERPRETER_DIRS {
        let Some(real) = image.resolve(dir) else {
            continue;
        };
        for (name, _) in image.below(&real) {
            if name.contains('/') || !want(name) || name.ends_with("-config") {
                continue;
            }
            let path = format!("{dir}/{name}");
            if image.file(&path).is_some() && !out.contains(&path) {
                out.push(path);
            }
        }
    }
    out
}

fn default_interpreter(image: &ImageFiles) -> Result<String> {
    let versioned =
        |n: &str| parse_versioned_name(n).is_some_and(|(ma, _, f)| ma == 3 && f.is_empty());
    for link in DEFAULT_INTERPRETERS {
        let Some((real, _, _)) = image.file(link) else {
            continue;
        };
        // `python3 -> python3.13` in the same directory: name the versioned one
        let dir = link.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let same = interpreter_candidates(image, versioned)
            .into_iter()
            .filter(|p| p.starts_with(&format!("{dir}/")))
            .find(|p| image.file(p).is_some_and(|(r, _, _)| r == real));
        return Ok(format!("/{}", same.unwrap_or_else(|| link.to_owned())));
    }
    let found = interpreter_candidates(image, versioned);
    match found.as_slice() {
        [one] => Ok(format!("/{one}")),
        [] => Err(Error::Target {
            path: "(default)".into(),
            msg: format!(
                "the image has no /usr/local/bin/python3, /usr/bin/python3 or python3.Y in those directories: \
                 add a Python (Debian's `python3.13`, a base image with Python) below the venv or in its layer, \
                 or name it with `interpreter`; the image has {}",
                list_interpreters(image)
            ),
        }),
        many => Err(Error::Target {
            path: "(default)".into(),
            msg: format!(
                "the image has several interpreters and no /usr/bin/python3 or /usr/local/bin/python3 link \
                 to choose one: name one with `interpreter` ({})",
                many.iter()
                    .map(|p| format!("/{p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// The first bytes of a file of the image (enough for the ELF identification).
fn read_head(
    image: &ImageFiles,
    path: &str,
    source: &FileSource,
) -> std::result::Result<Vec<u8>, String> {
    if let Some(h) = image.elf_head(path) {
        return Ok(h.to_vec());
    }
    let mut head = vec![0u8; imgbuild_layer::image::ELF_HEAD];
    let n = match source {
        FileSource::Content(Content::Inline(b)) => {
            let n = b.len().min(head.len());
            head[..n].copy_from_slice(&b[..n]);
            n
        }
        FileSource::Content(Content::Host { path: host, .. })
        | FileSource::Content(Content::Range { path: host, .. }) => {
            let offset = match source {
                FileSource::Content(Content::Range { offset, .. }) => *offset,
                _ => 0,
            };
            let mut f = std::fs::File::open(host)
                .map_err(|e| format!("failed to open `{}`: {e}", host.display()))?;
            f.seek(SeekFrom::Start(offset))
                .and_then(|_| read_up_to(&mut f, &mut head))
                .map_err(|e| format!("failed to read `{}`: {e}", host.display()))?
        }
        // a lower-layer file whose head was not kept is not ELF
        FileSource::Layer { .. } => 0,
    };
    head.truncate(n);
    Ok(head)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The machine name (`platform.machine()`, as wheel tags spell it) of an ELF header.
pub fn elf_arch(head: &[u8]) -> std::result::Result<String, String> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return Err("it is not an ELF executable (a script or wrapper?): name the binary with `interpreter`".into());
    }
    let little = head[5] == 1;
    let machine = if little {
        u16::from_le_bytes([head[18], head[19]])
    } else {
        u16::from_be_bytes([head[18], head[19]])
    };
    let class64 = head[4] == 2;
    // EM_X86_64, EM_AARCH64, EM_386, EM_ARM, EM_PPC64, EM_S390, EM_RISCV
    Ok(match (machine, class64, little) {
        (62, true, _) => "x86_64",
        (183, true, true) => "aarch64",
        (3, false, _) => "i686",
        (40, false, true) => "armv7l",
        (21, true, true) => "ppc64le",
        (22, true, false) => "s390x",
        (243, true, true) => "riscv64",
        _ => {
            return Err(format!(
                "its ELF machine {machine} ({}-bit, {} endian) is not one wheels are built for",
                if class64 { 64 } else { 32 },
                if little { "little" } else { "big" }
            ));
        }
    }
    .to_owned())
}

/// The multiarch triplet of a machine name (Debian's library directories).
fn triplet(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "i686" => "i386-linux-gnu",
        "armv7l" => "arm-linux-gnueabihf",
        "ppc64le" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        _ => return None,
    })
}

/// glibc's version (from `libc.so.6`), or the refusal of musl.
fn read_libc(image: &ImageFiles, arch: &str) -> std::result::Result<(Libc, String), String> {
    let mut dirs = vec![];
    if let Some(t) = triplet(arch) {
        dirs.push(format!("lib/{t}"));
        dirs.push(format!("usr/lib/{t}"));
    }
    dirs.extend(["lib64", "usr/lib64", "lib", "usr/lib"].map(String::from));
    let libc = dirs
        .iter()
        .map(|d| format!("{d}/libc.so.6"))
        .find(|p| image.file(p).is_some());
    let Some(libc) = libc else {
        let musl = image
            .below("lib")
            .chain(image.below("usr/lib"))
            .find(|(n, _)| n.starts_with("ld-musl-") && !n.contains('/'))
            .map(|(n, _)| n.to_owned());
        return Err(match musl {
            Some(loader) => format!(
                "the image's C library is musl (`{loader}`), which imgbuild does not support for venvs: \
                 use a glibc-based image (Debian, or an official Python image that is not `-alpine`)"
            ),
            None => format!(
                "the image has no C library: no glibc libc.so.6 in {} (add Debian's libc6 below the venv)",
                dirs.iter()
                    .map(|d| format!("/{d}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    };
    let bytes = read_file(image, &libc)?.ok_or_else(|| format!("`/{libc}` could not be read"))?;
    let (a, b) = glibc_version(&bytes).map_err(|e| format!("`/{libc}`: {e}"))?;
    Ok((Libc::Glibc(a, b), format!("/{libc}")))
}

/// The highest `GLIBC_X.Y` version defined by a `libc.so.6` (its `SHT_GNU_VERDEF`).
pub fn glibc_version(elf: &[u8]) -> std::result::Result<(u32, u32), String> {
    let names = match elf.get(4) {
        Some(2) => version_definitions::<object::elf::FileHeader64<object::Endianness>>(elf),
        Some(1) => version_definitions::<object::elf::FileHeader32<object::Endianness>>(elf),
        _ => Err("not an ELF file".into()),
    }?;
    names
        .iter()
        .filter_map(|n| {
            let v = n.strip_prefix("GLIBC_")?;
            let mut it = v.split('.');
            let a = it.next()?.parse::<u32>().ok()?;
            let b = it.next().unwrap_or("0").parse::<u32>().ok()?;
            Some((a, b))
        })
        .max()
        .ok_or_else(|| "defines no GLIBC_ symbol version: it is not glibc's C library".into())
}

fn version_definitions<Elf: FileHeader<Endian = object::Endianness>>(
    data: &[u8],
) -> std::result::Result<Vec<String>, String> {
    let e = |e: object::read::Error| format!("not a readable ELF file: {e}");
    let header = Elf::parse(data).map_err(e)?;
    let endian = header.endian().map_err(e)?;
    let sections = header.sections(endian, data).map_err(e)?;
    let mut out = vec![];
    if let Some((mut defs, link)) = sections.gnu_verdef(endian, data).map_err(e)? {
        let strings = sections.strings(endian, data, link).map_err(e)?;
        while let Some((_, mut aux)) = defs.next().map_err(e)? {
            if let Some(a) = aux.next().map_err(e)? {
                let name = a.name(endian, strings).map_err(e)?;
                out.push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok(out)
}

/// The full version and where it was read.
fn full_version(
    image: &ImageFiles,
    exe: &str,
    prefix: &str,
    major: u32,
    minor: u32,
) -> std::result::Result<(String, String), String> {
    let mm = format!("{major}.{minor}");
    let check = |v: &str| -> Option<String> {
        let v = v.trim();
        let rest = v.strip_prefix(&format!("{mm}."))?;
        (!rest.is_empty()
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
            && rest.as_bytes()[0].is_ascii_digit())
        .then(|| v.to_owned())
    };
    // (1) Debian's record of the package that ships /usr/bin/python3.Y
    if exe == format!("usr/bin/python{mm}") {
        let package = format!("python{mm}-minimal");
        let status_d = format!("var/lib/dpkg/status.d/{package}");
        for from in [status_d.as_str(), "var/lib/dpkg/status"] {
            let Some(bytes) = read_file(image, from)? else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            if let Some(v) = debian_package_version(&text, &package)
                && let Some(v) = check(&upstream_version(&v))
            {
                return Ok((v, format!("/{from} ({package})")));
            }
        }
    }
    // (2) the header `make install` writes
    let patchlevel = join(prefix, &format!("include/python{mm}/patchlevel.h"));
    if let Some(bytes) = read_file(image, &patchlevel)? {
        let text = String::from_utf8_lossy(&bytes);
        if let Some(v) = text.lines().find_map(|l| {
            let l = l.trim_start().strip_prefix("#define")?.trim_start();
            let v = l.strip_prefix("PY_VERSION")?.trim();
            check(v.trim_matches('"'))
        }) {
            return Ok((v, format!("/{patchlevel}")));
        }
    }
    // (3) PY_VERSION in the binary or its libpython
    let lib = join(prefix, "lib");
    let mut binaries = vec![exe.to_owned()];
    for dir in [lib.clone()].into_iter().chain(triplet_dirs(image)) {
        let name = format!("{dir}/libpython{mm}.so.1.0");
        if let Some((real, _, _)) = image.file(&name) {
            binaries.push(real);
        }
    }
    for b in &binaries {
        let Some(bytes) = read_file(image, b)? else {
            continue;
        };
        if let Some(v) = version_string_in(&bytes, &mm) {
            return Ok((v, format!("/{b}")));
        }
    }
    Err(format!(
        "cannot tell its full version ({mm}.Z): no Debian record of python{mm}-minimal, no /{patchlevel}, \
         and no PY_VERSION string in {}",
        binaries
            .iter()
            .map(|b| format!("/{b}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

fn triplet_dirs(image: &ImageFiles) -> Vec<String> {
    image
        .below("usr/lib")
        .filter(|(n, e)| {
            !n.contains('/') && n.ends_with("-linux-gnu") && matches!(e, Entry::Dir(_))
        })
        .map(|(n, _)| format!("usr/lib/{n}"))
        .collect()
}

/// A NUL-delimited `3.Y.Z` (with an optional pre-release such as `rc1`) in a binary.
fn version_string_in(bytes: &[u8], mm: &str) -> Option<String> {
    let needle = format!("\0{mm}.");
    let mut from = 0;
    while let Some(i) = find(&bytes[from..], needle.as_bytes()) {
        let start = from + i + 1;
        let end = bytes[start..].iter().position(|&b| b == 0)? + start;
        let s = &bytes[start..end];
        let rest = &s[mm.len() + 1..];
        if !rest.is_empty()
            && rest.len() <= 12
            && rest[0].is_ascii_digit()
            && rest.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'.')
        {
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        from = start;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `Version:` of `package` in a deb822 status text (one record, or many).
pub fn debian_package_version(text: &str, package: &str) -> Option<String> {
    for para in text.split("\n\n") {
        let mut name = None;
        let mut version = None;
        for line in para.lines() {
            if let Some(v) = line.strip_prefix("Package:") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version:") {
                version = Some(v.trim());
            }
        }
        if name == Some(package) {
            return version.map(str::to_owned);
        }
    }
    None
}

/// The upstream part of a Debian version: `1:3.11.2-6+deb12u6` -> `3.11.2`;
/// `3.13.0~rc1-1` -> `3.13.0rc1`.
pub fn upstream_version(v: &str) -> String {
    let v = v.split_once(':').map(|(_, r)| r).unwrap_or(v);
    let v = v.rsplit_once('-').map(|(u, _)| u).unwrap_or(v);
    v.replace('~', "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgbuild_layer::{Meta, Node, Tree, TreePath};

    fn elf(machine: u16, class64: bool, little: bool) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = if class64 { 2 } else { 1 };
        h[5] = if little { 1 } else { 2 };
        let m = if little {
            machine.to_le_bytes()
        } else {
            machine.to_be_bytes()
        };
        h[18..20].copy_from_slice(&m);
        h
    }

    #[test]
    fn arch_from_the_elf_header() {
        assert_eq!(elf_arch(&elf(62, true, true)).unwrap(), "x86_64");
        assert_eq!(elf_arch(&elf(183, true, true)).unwrap(), "aarch64");
        assert_eq!(elf_arch(&elf(3, false, true)).unwrap(), "i686");
        assert_eq!(elf_arch(&elf(22, true, false)).unwrap(), "s390x");
        assert!(
            elf_arch(&elf(183, true, false))
                .unwrap_err()
                .contains("183")
        );
        assert!(
            elf_arch(b"#!/bin/sh\nexec python3.13 \"$@\"\n")
                .unwrap_err()
                .contains("not an ELF")
        );
    }

    #[test]
    fn glibc_from_the_version_definitions_of_libc() {
        // the build machine's own libc.so.6 (Debian bookworm: glibc 2.36)
        let libc = [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libc.so.6",
        ]
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .expect("the build machine's libc.so.6");
        let (a, b) = glibc_version(&libc).unwrap();
        assert_eq!(a, 2);
        assert!(b >= 36, "{a}.{b}");
        // a library that needs glibc but defines no GLIBC_ version is not libc
        let libm_like = std::fs::read("/usr/lib/x86_64-linux-gnu/libz.so.1")
            .or_else(|_| std::fs::read("/lib/x86_64-linux-gnu/libz.so.1"))
            .expect("libz.so.1");
        assert!(glibc_version(&libm_like).unwrap_err().contains("not glibc"));
        assert!(glibc_version(b"not elf").is_err());
    }

    #[test]
    fn versions_from_names_records_and_binaries() {
        assert_eq!(
            parse_versioned_name("python3.13"),
            Some((3, 13, String::new()))
        );
        assert_eq!(
            parse_versioned_name("python3.13t"),
            Some((3, 13, "t".into()))
        );
        assert_eq!(parse_versioned_name("python3"), None);
        assert_eq!(parse_versioned_name("python3.13-config"), None);
        assert!(
            refuse_abi_flags("t", "/usr/bin/python3.13t")
                .unwrap_err()
                .contains("free-threaded")
        );
        assert!(refuse_abi_flags("d", "x").unwrap_err().contains("debug"));
        assert!(refuse_abi_flags("", "x").is_ok());
        assert_eq!(upstream_version("3.11.2-6+deb12u6"), "3.11.2");
        assert_eq!(upstream_version("1:3.13.5-2"), "3.13.5");
        assert_eq!(upstream_version("3.13.0~rc1-1"), "3.13.0rc1");
        let status = "Package: libc6\nVersion: 2.41-12\n\nPackage: python3.13-minimal\nStatus: install ok installed\nVersion: 3.13.5-2\n";
        assert_eq!(
            debian_package_version(status, "python3.13-minimal").as_deref(),
            Some("3.13.5-2")
        );
        assert_eq!(debian_package_version(status, "python3.11-minimal"), None);
        assert_eq!(
            version_string_in(b"xx\0pymalloc\x003.11.2\0strict\0", "3.11").as_deref(),
            Some("3.11.2")
        );
        // merged into a longer string, or another minor: not it
        assert_eq!(
            version_string_in(b"\0Python-3.12.1\0\x003.13.0\0", "3.12"),
            None
        );
        assert_eq!(
            version_string_in(b"\x003.12.\0\x003.12.0rc2\0", "3.12").as_deref(),
            Some("3.12.0rc2")
        );
    }

    fn file(tree: &mut Tree, path: &str, bytes: &[u8]) {
        tree.insert(
            TreePath::new(path).unwrap(),
            Node::File {
                meta: Meta::FILE,
                content: Content::Inline(bytes.to_vec().into()),
            },
        )
        .unwrap();
    }

    fn link(tree: &mut Tree, path: &str, target: &str) {
        tree.insert(
            TreePath::new(path).unwrap(),
            Node::Symlink {
                target: target.into(),
                meta: Meta::FILE,
            },
        )
        .unwrap();
    }

    /// An image with Debian's layout of an interpreter (not runnable: ELF header only)
    /// and the build machine's libc.so.6.
    fn debian_like(version: &str, arch_machine: u16) -> Tree {
        let mut t = Tree::new();
        let mm = &version[..version.rfind('.').unwrap()];
        let mut exe = elf(arch_machine, true, true);
        exe.extend_from_slice(format!("\0{version}\0").as_bytes());
        file(&mut t, &format!("usr/bin/python{mm}"), &exe);
        link(&mut t, "usr/bin/python3", &format!("python{mm}"));
        file(&mut t, &format!("usr/lib/python{mm}/os.py"), b"");
        let libc = std::fs::read("/usr/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        let triplet = if arch_machine == 183 {
            "aarch64-linux-gnu"
        } else {
            "x86_64-linux-gnu"
        };
        file(&mut t, &format!("usr/lib/{triplet}/libc.so.6"), &libc);
        file(
            &mut t,
            &format!("var/lib/dpkg/status.d/python{mm}-minimal"),
            format!("Package: python{mm}-minimal\nVersion: {version}-2\n").as_bytes(),
        );
        t
    }

    #[test]
    fn the_target_of_images() {
        let t = debian_like("3.13.5", 62);
        let got = read_target(&ImageFiles::from_tree(&t), None).unwrap();
        assert_eq!(got.interpreter, "/usr/bin/python3.13");
        assert_eq!(got.target.python_full_version, "3.13.5");
        assert_eq!(got.target.arch, "x86_64");
        assert!(matches!(got.target.libc, Libc::Glibc(2, m) if m >= 36));
        assert_eq!(
            got.version_from,
            "/var/lib/dpkg/status.d/python3.13-minimal (python3.13-minimal)"
        );

        // arm64: the arch comes from the ELF header, never from the build machine
        let t = debian_like("3.13.5", 183);
        let got = read_target(&ImageFiles::from_tree(&t), Some("/usr/bin/python3")).unwrap();
        assert_eq!(got.target.arch, "aarch64");
        assert_eq!(got.interpreter, "/usr/bin/python3");

        // no dpkg record: the string in the binary
        let mut t = debian_like("3.11.2", 62);
        file(&mut t, "var/lib/dpkg/status.d/python3.11-minimal", b"");
        let got = read_target(&ImageFiles::from_tree(&t), None).unwrap();
        assert_eq!(got.target.python_full_version, "3.11.2");
        assert_eq!(got.version_from, "/usr/bin/python3.11");

        // a registry base's own Python in /usr/local (patchlevel.h), with Debian's
        // python3.13 beside it: the default is /usr/local's
        let mut t = debian_like("3.13.5", 62);
        file(&mut t, "usr/local/bin/python3.12", &elf(62, true, true));
        link(&mut t, "usr/local/bin/python3", "python3.12");
        file(&mut t, "usr/local/lib/python3.12/os.py", b"");
        file(
            &mut t,
            "usr/local/include/python3.12/patchlevel.h",
            b"#define PY_MINOR_VERSION        12\n#define PY_VERSION              \"3.12.1\"\n",
        );
        let got = read_target(&ImageFiles::from_tree(&t), None).unwrap();
        assert_eq!(got.interpreter, "/usr/local/bin/python3.12");
        assert_eq!(got.target.python_full_version, "3.12.1");
        assert_eq!(
            got.version_from,
            "/usr/local/include/python3.12/patchlevel.h"
        );
        // any CPython 3 the image has may be named
        let got = read_target(&ImageFiles::from_tree(&t), Some("/usr/bin/python3.13")).unwrap();
        assert_eq!(got.target.python_full_version, "3.13.5");
        let e = read_target(&ImageFiles::from_tree(&t), Some("/usr/bin/python3.9"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/usr/bin/python3.9")
                && e.contains("/usr/local/bin/python3.12")
                && e.contains("/usr/bin/python3.13"),
            "{e}"
        );

        // free-threaded
        let mut t = debian_like("3.13.5", 62);
        file(&mut t, "usr/bin/python3.13t", &elf(62, true, true));
        let e = read_target(&ImageFiles::from_tree(&t), Some("/usr/bin/python3.13t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("free-threaded"), "{e}");

        // two interpreters, no python3 link: name one
        let mut t = Tree::new();
        file(&mut t, "usr/bin/python3.11", &elf(62, true, true));
        file(&mut t, "usr/bin/python3.13", &elf(62, true, true));
        let e = read_target(&ImageFiles::from_tree(&t), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("several") && e.contains("/usr/bin/python3.11, /usr/bin/python3.13"),
            "{e}"
        );
        // none
        let e = read_target(&ImageFiles::from_tree(&Tree::new()), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no python3 in /usr/local/bin or /usr/bin"),
            "{e}"
        );
    }

    #[test]
    fn musl_is_refused() {
        let mut t = Tree::new();
        file(&mut t, "usr/local/bin/python3.12", &elf(62, true, true));
        link(&mut t, "usr/local/bin/python3", "python3.12");
        file(&mut t, "usr/local/lib/python3.12/os.py", b"");
        file(&mut t, "lib/ld-musl-x86_64.so.1", b"\x7fELF");
        link(&mut t, "lib/libc.musl-x86_64.so.1", "ld-musl-x86_64.so.1");
        let e = read_target(&ImageFiles::from_tree(&t), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("musl") && e.contains("ld-musl-x86_64.so.1") && e.contains("glibc"),
            "{e}"
        );
    }
}
