//! The linkage check: every ELF executable and shared object a layer adds must find
//! each library it names (`DT_NEEDED`) and its program interpreter (`PT_INTERP`) in
//! the image, the way the dynamic loader looks for them. An image that builds must
//! run: a manylinux wheel that assumes `libstdc++.so.6`, installed into an image
//! without it, is caught here instead of as an `ImportError` in production.
//!
//! What counts as found, per needed name (glibc's `ld.so` order):
//! 1. a name with a `/` is a path (from the image root);
//! 2. `DT_RPATH` when the object has no `DT_RUNPATH`;
//! 3. `DT_RUNPATH`;
//! 4. the library cache ([`Cache`]): by default the image's `/etc/ld.so.cache`
//!    exactly as it is, which is what the loader reads (an image nobody ran `ldconfig`
//!    in has none, so there only RPATH, RUNPATH and the default directories count;
//!    `/etc/ld.so.conf` alone makes nothing loadable); or, for a build that writes a
//!    fresh cache, the directories named by the image's `/etc/ld.so.conf` and the
//!    files it `include`s (`/etc/ld.so.conf.d/*.conf`), as that cache would list them;
//! 5. the loader's default directories for the object's machine (x86_64:
//!    `/lib/x86_64-linux-gnu`, `/usr/lib/x86_64-linux-gnu`, `/lib64`, `/usr/lib64`,
//!    `/lib`, `/usr/lib`; the other multiarch triplets alike). Debian's glibc itself
//!    searches the multiarch pair and `/lib`, `/usr/lib` only; `/lib64` is where other
//!    distributions' glibc looks (registry bases built on them), so a library found
//!    only there passes here and would not load on a Debian C library.
//!
//! `$ORIGIN` (the directory of the object, as the layer places it), `$LIB` and
//! `$PLATFORM` are expanded; every candidate is resolved through the image's symlinks
//! ([`crate::symlinks`], so a merged `/lib -> usr/lib` works), and only a regular
//! file that is an ELF shared object of the same class, byte order and machine
//! satisfies the need (the loader skips a 32-bit `libz.so.1` for a 64-bit program).
//! The image is the layers below with the layer on top ([`ImageFiles::overlay`]), so
//! a need is met by either. Only the layer's own files are checked: what the layers
//! below added was checked when they were built.
//!
//! A library is loaded by the objects that need it, and the loader takes a need from
//! what is already loaded (by soname) before it searches, and searches the `DT_RPATH`
//! of the object that loads it too. So a library whose need is not found on its own
//! still passes when an object of the same layer needs it (by soname or file name)
//! and either needs and finds that library itself, or has a `DT_RPATH` (not RUNPATH)
//! that finds it: systemd's `libsystemd-core-252.so` is loaded by `systemd`, which
//! brings `libsystemd-shared-252.so` through its own RUNPATH; an application's
//! plugins alike. One level of loaders is followed, within the layer.
//!
//! Not modelled: `LD_LIBRARY_PATH` (the image's environment), loaders in the layers
//! below, and `glibc-hwcaps` subdirectories; `/usr/lib/debug` (separate debug info,
//! never loaded) is skipped.
//!
//! Streaming: a layer's files are read in place (their [`Content`]), and only files
//! that start with the ELF magic are parsed, reading just the ELF header, the program
//! headers, the dynamic segment and the strings it names. The libraries of the layers
//! below are never read here: [`ImageFiles`] kept the first bytes of each of their
//! ELF files when it read the layer blobs.
//!
//! The parser is the `object` crate (the gimli project's, used by the Rust standard
//! library's backtraces and by cargo tools): its low-level ELF API gives the program
//! headers and the dynamic segment of 32- and 64-bit, little- and big-endian files
//! through one generic path, and its `ReadCache` parses straight from a file, reading
//! only the byte ranges the parser asks for. `goblin` parses from a byte slice of the
//! whole file, which would mean reading every library of a layer whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use object::Endianness;
use object::elf::{self, FileHeader32, FileHeader64};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::read::{ReadCache, ReadRef, StringTable};

use crate::image::{ELF_HEAD, Entry, FileSource, ImageError, ImageFiles};
use crate::{Content, Node, Tree};

#[derive(Debug, thiserror::Error)]
pub enum LinkageError {
    #[error("linkage check: {0}")]
    Image(#[from] ImageError),
    #[error("linkage check: failed to read `{path}` (the content of `/{file}`): {source}")]
    Io {
        file: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What is missing: a library (`DT_NEEDED`) or the program interpreter (`PT_INTERP`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    Library,
    Interpreter,
}

/// One need of one file that the image does not meet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Missing {
    /// The ELF file of the layer, absolute (`/opt/venv/lib/python3.11/site-packages/x.so`).
    pub file: String,
    /// The needed name as the file states it (`libstdc++.so.6`), or the interpreter's
    /// path (`/lib64/ld-linux-x86-64.so.2`).
    pub soname: String,
    pub need: Need,
    /// The directories looked in, in the loader's order, absolute, `$ORIGIN` expanded
    /// (for an interpreter or a name with a `/`: the path itself).
    pub searched: Vec<String>,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.need {
            Need::Library => write!(
                f,
                "`{}` needs `{}`, which is not in the image (looked in {})",
                self.file,
                self.soname,
                self.searched.join(", ")
            ),
            Need::Interpreter => write!(
                f,
                "`{}` needs the program interpreter `{}`, which is not in the image",
                self.file, self.soname
            ),
        }
    }
}

/// A file that starts with the ELF magic but could not be parsed (the loader could not
/// load it either; often test data or firmware, so reported rather than refused).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Unreadable {
    pub file: String,
    pub why: String,
}

/// The outcome of checking one layer. Every list is sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// ELF executables and shared objects of the layer that were checked.
    pub checked: usize,
    /// Needs the image does not meet: each is a reason the image would not run.
    pub missing: Vec<Missing>,
    /// Needs not met but accepted, because the caller allowed the soname (a GPU driver
    /// the container runtime injects).
    pub allowed: Vec<Missing>,
    pub unreadable: Vec<Unreadable>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty()
    }

    /// The build error for what is missing: one line per missing soname (or
    /// interpreter), naming it, the files that need it (the first three, and how many
    /// more), where it was looked for, and what to do: the packages `suggest` names
    /// for the soname (a Debian index's `packages_for_soname`; none is fine), or
    /// `allow_missing` for a library the runtime provides. `None` when nothing is
    /// missing.
    pub fn error_message(&self, suggest: impl Fn(&str) -> Vec<String>) -> Option<String> {
        if self.is_ok() {
            return None;
        }
        let files: BTreeSet<&str> = self.missing.iter().map(|m| m.file.as_str()).collect();
        let mut lines = vec![format!(
            "{} of the layer's ELF files would not run: {} not in the image",
            files.len(),
            if files.len() == 1 {
                "a library or loader it needs is"
            } else {
                "libraries or loaders they need are"
            }
        )];
        let mut by_need: BTreeMap<(Need, &str), Vec<&Missing>> = BTreeMap::new();
        for m in &self.missing {
            by_need.entry((m.need, &m.soname)).or_default().push(m);
        }
        for ((need, soname), ms) in by_need {
            let mut who: Vec<String> = ms.iter().take(3).map(|m| format!("`{}`", m.file)).collect();
            if ms.len() > 3 {
                who.push(format!("{} more", ms.len() - 3));
            }
            let what = match need {
                Need::Library => format!(
                    "`{soname}`, needed by {} (looked in {})",
                    who.join(", "),
                    ms[0].searched.join(", ")
                ),
                Need::Interpreter => {
                    format!(
                        "the program interpreter `{soname}`, needed by {}",
                        who.join(", ")
                    )
                }
            };
            let packages = suggest(soname);
            let todo = match (need, packages.as_slice()) {
                (_, [one]) => format!("add the Debian package `{one}` to this layer or one below"),
                (_, [_, ..]) => format!(
                    "add one of the Debian packages {} to this layer or one below",
                    packages
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                (Need::Library, []) => format!(
                    "add a package that ships it, or list it in the layer's `allow_missing` if the container runtime provides it (as with GPU drivers: `allow_missing = [\"{soname}\"]`)"
                ),
                (Need::Interpreter, []) => "add the C library the program was built for (on Debian: `libc6`), or build the program statically".into(),
            };
            lines.push(format!("  {what}: {todo}"));
        }
        Some(lines.join("\n"))
    }
}

/// What stands for the loader's library cache (`/etc/ld.so.cache`), searched after
/// RUNPATH and before the default directories.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Cache {
    /// The image's `/etc/ld.so.cache` as it is, which is what the loader reads: an
    /// image without one has no cache (so `/etc/ld.so.conf` counts for nothing: a
    /// library in `/usr/local/lib` does not load, whatever `ld.so.conf.d` says), and
    /// a cache made for the layers below does not list libraries this layer adds
    /// outside the default directories.
    #[default]
    AsInImage,
    /// The directories the image's `/etc/ld.so.conf` names: what `ldconfig` would
    /// list in a cache made from the finished image. Right only when the build writes
    /// that cache (or the image's entrypoint runs `ldconfig`).
    FromConf,
}

/// How to check; see [`check_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Options<'a> {
    /// Sonames accepted as provided at run time (GPU drivers the runtime injects).
    pub allow_missing: &'a [String],
    pub cache: Cache,
}

/// Checks the ELF files of `layer`, put on top of `lower` (the image's files below it;
/// [`ImageFiles::default`] for a first layer). `allow_missing` lists sonames accepted as
/// provided at run time. Errors are failures to read the image, not missing libraries:
/// those are in the [`Report`]. The library cache is the image's `/etc/ld.so.cache` as it
/// is ([`Cache::AsInImage`]).
pub fn check(
    lower: &ImageFiles,
    layer: &Tree,
    allow_missing: &[String],
) -> Result<Report, LinkageError> {
    check_with(
        lower,
        layer,
        &Options {
            allow_missing,
            cache: Cache::AsInImage,
        },
    )
}

/// [`check`] with every option.
pub fn check_with(
    lower: &ImageFiles,
    layer: &Tree,
    options: &Options,
) -> Result<Report, LinkageError> {
    let mut image = lower.clone();
    image.overlay(layer);
    let mut checker = Checker {
        image: &image,
        idents: HashMap::new(),
        found: HashMap::new(),
        cache: options.cache,
        conf_dirs: None,
        ld_so_cache: None,
    };
    let allow: BTreeSet<&str> = options.allow_missing.iter().map(String::as_str).collect();
    let mut report = Report::default();
    let mut parsed: HashMap<&str, Parsed> = HashMap::new();
    let mut elves: BTreeMap<String, &str> = BTreeMap::new();
    let mut found_missing = vec![];
    for (path, node) in layer.iter() {
        let path = path.as_str();
        if path.starts_with("usr/lib/debug/") {
            continue;
        }
        // a hard link is the same file at another path: parsed once, checked at each
        // path (its $ORIGIN differs)
        let (source_path, content) = match node {
            Node::File { content, .. } => (path, content),
            Node::Hardlink { target } => match layer.get(target) {
                Some(Node::File { content, .. }) => (target.as_str(), content),
                _ => continue,
            },
            _ => continue,
        };
        if !parsed.contains_key(source_path) {
            let p = inspect(source_path, content)?;
            parsed.insert(source_path, p);
        }
        let info = match &parsed[source_path] {
            Parsed::NotElf => continue,
            Parsed::Bad(why) => {
                report.unreadable.push(Unreadable {
                    file: format!("/{path}"),
                    why: why.clone(),
                });
                continue;
            }
            Parsed::Elf(info) => info,
        };
        report.checked += 1;
        elves.insert(format!("/{path}"), source_path);
        found_missing.extend(checker.check_file(path, info)?);
    }
    let info_of = |file: &str| match &parsed[elves[file]] {
        Parsed::Elf(info) => info,
        _ => unreachable!("only parsed ELF files are listed"),
    };
    let unmet: BTreeSet<(&str, &str)> = found_missing
        .iter()
        .map(|m| (m.file.as_str(), m.soname.as_str()))
        .collect();
    let mut loaded_with = vec![false; found_missing.len()];
    for (i, m) in found_missing.iter().enumerate() {
        if m.need != Need::Library {
            continue;
        }
        let lib = info_of(&m.file);
        let file_name = m.file.rsplit('/').next().unwrap_or_default();
        let by_name = |n: &String| n == file_name || Some(n) == lib.soname.as_ref();
        for (loader, &source) in &elves {
            let Parsed::Elf(e) = &parsed[source] else {
                continue;
            };
            if *loader == m.file || !e.needed.iter().any(by_name) {
                continue;
            }
            let id = e.ident.expect("set for parsed files");
            if (e.needed.contains(&m.soname) && !unmet.contains(&(loader.as_str(), &m.soname)))
                || (e.runpath.is_empty()
                    && checker.find_in(&rpath_dirs(loader, e, id), &m.soname, id)?)
            {
                loaded_with[i] = true;
                break;
            }
        }
    }
    for (m, loaded_with) in found_missing.into_iter().zip(loaded_with) {
        if loaded_with {
            continue;
        }
        if m.need == Need::Library && allow.contains(m.soname.as_str()) {
            report.allowed.push(m);
        } else {
            report.missing.push(m);
        }
    }
    report.missing.sort();
    report.allowed.sort();
    report.unreadable.sort();
    Ok(report)
}

/// The identity the loader matches a library on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Ident {
    class64: bool,
    big_endian: bool,
    machine: u16,
    /// `e_type`: executable, shared object, relocatable...
    kind: u16,
}

impl Ident {
    fn same_target(self, other: Ident) -> bool {
        self.class64 == other.class64
            && self.big_endian == other.big_endian
            && self.machine == other.machine
    }
}

/// The identity of an ELF file from its first [`ELF_HEAD`] bytes: `e_ident`, then
/// `e_type` and `e_machine` in the file's byte order. Read by hand because these 20
/// bytes are all a lower layer's library is known by (object's header parser wants
/// the whole 52- or 64-byte header).
fn ident(head: &[u8]) -> Option<Ident> {
    if head.len() < ELF_HEAD || !head.starts_with(b"\x7fELF") {
        return None;
    }
    let class64 = match head[4] {
        c if c == elf::ELFCLASS32.0 => false,
        c if c == elf::ELFCLASS64.0 => true,
        _ => return None,
    };
    let big_endian = match head[5] {
        d if d == elf::ELFDATA2LSB.0 => false,
        d if d == elf::ELFDATA2MSB.0 => true,
        _ => return None,
    };
    let u16_at = |i: usize| {
        let b = [head[i], head[i + 1]];
        if big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    Some(Ident {
        class64,
        big_endian,
        kind: u16_at(16),
        machine: u16_at(18),
    })
}

/// What the dynamic loader reads of one executable or shared object.
#[derive(Clone, Debug, Default)]
struct ElfInfo {
    ident: Option<Ident>,
    interpreter: Option<String>,
    /// `DT_SONAME`: the name other objects need this one by.
    soname: Option<String>,
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
}

enum Parsed {
    NotElf,
    Bad(String),
    Elf(ElfInfo),
}

/// Reads a layer file's ELF header and, for executables and shared objects, what the
/// loader needs of it.
fn inspect(path: &str, content: &Content) -> Result<Parsed, LinkageError> {
    let io_err = |p: &PathBuf| {
        let p = p.clone();
        move |source| LinkageError::Io {
            file: path.to_owned(),
            path: p,
            source,
        }
    };
    let mut head = [0u8; ELF_HEAD];
    let (file, offset) = match content {
        Content::Inline(bytes) => {
            let Some(id) = bytes.get(..ELF_HEAD).and_then(ident) else {
                return Ok(Parsed::NotElf);
            };
            return Ok(parse_kind(id, &bytes[..]));
        }
        Content::Host { path: p, size, .. } | Content::Range { path: p, size, .. } => {
            if *size < ELF_HEAD as u64 {
                return Ok(Parsed::NotElf);
            }
            let offset = match content {
                Content::Range { offset, .. } => *offset,
                _ => 0,
            };
            let f = File::open(p).map_err(io_err(p))?;
            f.read_exact_at(&mut head, offset).map_err(io_err(p))?;
            (f, offset)
        }
    };
    let Some(id) = ident(&head) else {
        return Ok(Parsed::NotElf);
    };
    let cache = ReadCache::new(file);
    Ok(parse_kind(id, cache.range(offset, content.size())))
}

fn parse_kind<'d, R: ReadRef<'d>>(id: Ident, data: R) -> Parsed {
    if id.kind != elf::ET_EXEC.0 && id.kind != elf::ET_DYN.0 {
        return Parsed::NotElf;
    }
    let parsed = if id.class64 {
        parse::<FileHeader64<Endianness>, R>(data)
    } else {
        parse::<FileHeader32<Endianness>, R>(data)
    };
    match parsed {
        Ok(mut info) => {
            info.ident = Some(id);
            Parsed::Elf(info)
        }
        Err(why) => Parsed::Bad(why),
    }
}

/// The interpreter and dynamic entries, found the way the loader finds them: through
/// the program headers (`PT_INTERP`, `PT_DYNAMIC`), with the string table located by
/// `DT_STRTAB`'s address in the `PT_LOAD` segment that maps it. Section headers are
/// not used: the loader never reads them, and stripped files may lack them.
fn parse<'d, H, R>(data: R) -> Result<ElfInfo, String>
where
    H: FileHeader<Endian = Endianness>,
    R: ReadRef<'d>,
{
    let s = |e: object::read::Error| e.to_string();
    let header = H::parse(data).map_err(s)?;
    let endian = header.endian().map_err(s)?;
    let phdrs = header.program_headers(endian, data).map_err(s)?;
    let mut info = ElfInfo::default();
    let mut dynamic = None;
    for ph in phdrs {
        if let Some(interp) = ph.interpreter(endian, data).map_err(s)? {
            info.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
        if let Some(d) = ph.dynamic(endian, data).map_err(s)? {
            dynamic = Some(d);
        }
    }
    let Some(dynamic) = dynamic else {
        return Ok(info);
    };
    let entries = || dynamic.iter().take_while(|d| d.tag(endian) != elf::DT_NULL);
    let value = |tag| {
        entries()
            .find(|d| d.tag(endian) == tag)
            .map(|d| d.val(endian))
    };
    let (Some(strtab), Some(strsz)) = (value(elf::DT_STRTAB), value(elf::DT_STRSZ)) else {
        return Ok(info);
    };
    let start = phdrs
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .find_map(|ph| {
            let vaddr: u64 = ph.p_vaddr(endian).into();
            let filesz: u64 = ph.p_filesz(endian).into();
            let offset: u64 = ph.p_offset(endian).into();
            (vaddr <= strtab && strtab < vaddr.saturating_add(filesz))
                .then(|| offset + (strtab - vaddr))
        })
        .ok_or("DT_STRTAB is not in any PT_LOAD segment")?;
    let strings = StringTable::new(data, start, start.saturating_add(strsz));
    for d in entries() {
        let tag = d.tag(endian);
        if tag == elf::DT_SONAME {
            let name = d.string(endian, strings).map_err(s)?;
            info.soname = Some(String::from_utf8_lossy(name).into_owned());
            continue;
        }
        let list = if tag == elf::DT_NEEDED {
            &mut info.needed
        } else if tag == elf::DT_RPATH {
            &mut info.rpath
        } else if tag == elf::DT_RUNPATH {
            &mut info.runpath
        } else {
            continue;
        };
        let s = String::from_utf8_lossy(d.string(endian, strings).map_err(s)?).into_owned();
        if tag == elf::DT_NEEDED {
            list.push(s);
        } else {
            // a search path: directories separated by `:` (an empty one is the current
            // directory, which glibc takes as such; it is never where a library is
            // found in an image, so it is dropped)
            list.extend(s.split(':').filter(|d| !d.is_empty()).map(str::to_owned));
        }
    }
    Ok(info)
}

/// The multiarch triplet (Debian's library directory name) of an ELF machine, and the
/// value of `$PLATFORM`.
fn machine_names(id: Ident) -> Option<(&'static str, &'static str)> {
    let m = elf::Machine(id.machine);
    Some(match (m, id.class64, id.big_endian) {
        (elf::EM_X86_64, true, false) => ("x86_64-linux-gnu", "x86_64"),
        (elf::EM_AARCH64, true, false) => ("aarch64-linux-gnu", "aarch64"),
        (elf::EM_386, false, false) => ("i386-linux-gnu", "i686"),
        (elf::EM_ARM, false, false) => ("arm-linux-gnueabihf", "v7l"),
        (elf::EM_PPC64, true, false) => ("powerpc64le-linux-gnu", "powerpc64le"),
        (elf::EM_S390, true, true) => ("s390x-linux-gnu", "s390x"),
        (elf::EM_RISCV, true, false) => ("riscv64-linux-gnu", "riscv64"),
        _ => return None,
    })
}

/// The loader's own directories for an object of this machine, relative to the root:
/// the multiarch pair first (Debian's glibc), then `lib64` for 64-bit objects (other
/// distributions' glibc and registry bases built on them), then `lib`.
fn default_dirs(id: Ident) -> Vec<String> {
    let mut dirs = vec![];
    if let Some((triplet, _)) = machine_names(id) {
        dirs.push(format!("lib/{triplet}"));
        dirs.push(format!("usr/lib/{triplet}"));
    }
    if id.class64 {
        dirs.push("lib64".into());
        dirs.push("usr/lib64".into());
    }
    dirs.push("lib".into());
    dirs.push("usr/lib".into());
    dirs
}

struct Checker<'a> {
    image: &'a ImageFiles,
    /// Identity of image files by real path (`None`: not an ELF file).
    idents: HashMap<String, Option<Ident>>,
    /// Whether a library at a candidate path (as searched) satisfies a need of `Ident`.
    found: HashMap<(String, Ident), bool>,
    cache: Cache,
    /// The directories of `/etc/ld.so.conf`, read on first need.
    conf_dirs: Option<Vec<String>>,
    /// The image's `/etc/ld.so.cache` (soname -> paths), read on first need; `None`
    /// inside when the image has none.
    ld_so_cache: Option<Option<BTreeMap<String, Vec<String>>>>,
}

impl Checker<'_> {
    fn check_file(&mut self, path: &str, info: &ElfInfo) -> Result<Vec<Missing>, LinkageError> {
        let id = info.ident.expect("set for parsed files");
        let mut missing = vec![];
        if let Some(interp) = &info.interpreter
            && !self.satisfies(interp, id, false)?
        {
            missing.push(Missing {
                file: format!("/{path}"),
                soname: interp.clone(),
                need: Need::Interpreter,
                searched: vec![interp.clone()],
            });
        }
        if info.needed.is_empty() {
            return Ok(missing);
        }
        let origin = match path.rsplit_once('/') {
            Some((dir, _)) => dir,
            None => "",
        };
        let mut dirs: Vec<String> = vec![];
        if info.runpath.is_empty() {
            dirs.extend(rpath_dirs(path, info, id));
        }
        dirs.extend(
            info.runpath
                .iter()
                .filter_map(|d| expand_dst(d, origin, id)),
        );
        let mut seen = BTreeSet::new();
        dirs.retain(|d| seen.insert(d.clone()));
        let mut after = vec![];
        if self.cache == Cache::FromConf {
            after.extend(self.conf_dirs()?.iter().cloned());
        }
        after.extend(default_dirs(id));
        after.retain(|d| seen.insert(d.clone()));
        let has_cache = self.cache == Cache::AsInImage && self.ld_so_cache()?.is_some();
        for soname in &info.needed {
            if !(self.find_in(&dirs, soname, id)?
                || self.in_ld_so_cache(soname, id)?
                || self.find_in(&after, soname, id)?)
            {
                let searched = if soname.contains('/') {
                    vec![soname.clone()]
                } else {
                    let mut s: Vec<String> = dirs.iter().map(|d| format!("/{d}")).collect();
                    if has_cache {
                        s.push("/etc/ld.so.cache".into());
                    }
                    s.extend(after.iter().map(|d| format!("/{d}")));
                    s
                };
                missing.push(Missing {
                    file: format!("/{path}"),
                    soname: soname.clone(),
                    need: Need::Library,
                    searched,
                });
            }
        }
        Ok(missing)
    }

    /// Whether a library `soname` for target `id` is in one of `dirs`.
    fn find_in(&mut self, dirs: &[String], soname: &str, id: Ident) -> Result<bool, LinkageError> {
        if soname.contains('/') {
            return self.satisfies(soname, id, true);
        }
        for d in dirs {
            if self.satisfies(&format!("{d}/{soname}"), id, true)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `candidate` (from the root) is, through the image's symlinks, an ELF
    /// file for the same target as `id` (and a shared object, for a library).
    fn satisfies(
        &mut self,
        candidate: &str,
        id: Ident,
        library: bool,
    ) -> Result<bool, LinkageError> {
        let key = (candidate.to_owned(), id);
        if let Some(&ok) = self.found.get(&key) {
            return Ok(ok);
        }
        let ok = match self.image.resolve(candidate) {
            Some(real) => match self.ident_of(&real)? {
                Some(found) => found.same_target(id) && (!library || found.kind == elf::ET_DYN.0),
                None => false,
            },
            None => false,
        };
        self.found.insert(key, ok);
        Ok(ok)
    }

    /// The identity of the regular file at real path `real`, if it is an ELF file.
    fn ident_of(&mut self, real: &str) -> Result<Option<Ident>, LinkageError> {
        if let Some(id) = self.idents.get(real) {
            return Ok(*id);
        }
        let id = match self.image.get(real) {
            Some(Entry::File {
                source: FileSource::Layer { .. },
                ..
            }) => self.image.elf_head(real).and_then(|h| ident(h)),
            Some(Entry::File {
                source: FileSource::Content(c),
                ..
            }) => match inspect_head(real, c)? {
                Some(h) => ident(&h),
                None => None,
            },
            _ => None,
        };
        self.idents.insert(real.to_owned(), id);
        Ok(id)
    }

    /// Whether the image's `/etc/ld.so.cache` (with [`Cache::AsInImage`]) lists `soname`
    /// at a path that holds a library for `id`.
    fn in_ld_so_cache(&mut self, soname: &str, id: Ident) -> Result<bool, LinkageError> {
        if self.cache != Cache::AsInImage || soname.contains('/') {
            return Ok(false);
        }
        let paths = match self.ld_so_cache()? {
            Some(entries) => entries.get(soname).cloned().unwrap_or_default(),
            None => return Ok(false),
        };
        for p in paths {
            if self.satisfies(&p, id, true)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn ld_so_cache(&mut self) -> Result<Option<&BTreeMap<String, Vec<String>>>, LinkageError> {
        if self.ld_so_cache.is_none() {
            let entries = match self.image.file("etc/ld.so.cache") {
                Some((real, _, _)) => self.image.read_files(&[&real], 64 << 20)?[0]
                    .as_deref()
                    .and_then(ld_so_cache_entries)
                    .map(|list| {
                        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
                        for (soname, path) in list {
                            map.entry(soname).or_default().push(path);
                        }
                        map
                    }),
                None => None,
            };
            self.ld_so_cache = Some(entries);
        }
        Ok(self.ld_so_cache.as_ref().and_then(Option::as_ref))
    }

    /// The directories `/etc/ld.so.conf` names, following `include` lines.
    fn conf_dirs(&mut self) -> Result<&[String], LinkageError> {
        if self.conf_dirs.is_none() {
            let dirs = ld_so_conf(self.image)?;
            self.conf_dirs = Some(dirs);
        }
        Ok(self.conf_dirs.as_deref().unwrap_or_default())
    }
}

/// The `DT_RPATH` directories of the object at `path` (absolute or relative to the
/// root), expanded.
fn rpath_dirs(path: &str, info: &ElfInfo, id: Ident) -> Vec<String> {
    let path = path.trim_start_matches('/');
    let origin = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    info.rpath
        .iter()
        .filter_map(|d| expand_dst(d, origin, id))
        .collect()
}

/// The first [`ELF_HEAD`] bytes of a layer file (`None` if shorter).
fn inspect_head(path: &str, c: &Content) -> Result<Option<[u8; ELF_HEAD]>, LinkageError> {
    if c.size() < ELF_HEAD as u64 {
        return Ok(None);
    }
    let mut head = [0u8; ELF_HEAD];
    match c {
        Content::Inline(b) => head.copy_from_slice(&b[..ELF_HEAD]),
        Content::Host { path: p, .. } | Content::Range { path: p, .. } => {
            let offset = match c {
                Content::Range { offset, .. } => *offset,
                _ => 0,
            };
            let err = |source| LinkageError::Io {
                file: path.to_owned(),
                path: p.clone(),
                source,
            };
            File::open(p)
                .and_then(|f| f.read_exact_at(&mut head, offset))
                .map_err(err)?;
        }
    }
    Ok(Some(head))
}

/// Expands the loader's dynamic string tokens in one RPATH/RUNPATH entry into a path
/// relative to the root. `None` for a token the loader does not know (it drops such
/// an entry too).
fn expand_dst(dir: &str, origin: &str, id: Ident) -> Option<String> {
    let (lib, platform) = match machine_names(id) {
        Some((triplet, platform)) => (format!("lib/{triplet}"), platform),
        None => ((if id.class64 { "lib64" } else { "lib" }).to_owned(), ""),
    };
    let mut out = String::new();
    let mut rest = dir;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}')?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        match name {
            "ORIGIN" => {
                out.push('/');
                out.push_str(origin);
            }
            "LIB" => {
                out.push('/');
                out.push_str(&lib);
            }
            "PLATFORM" if !platform.is_empty() => out.push_str(platform),
            _ => return None,
        }
        rest = tail;
    }
    out.push_str(rest);
    // relative entries are relative to the working directory; `/` is the best guess
    Some(normalise(&out))
}

/// `a/./b/../c` -> `a/c`, relative, without resolving symlinks (that is done on the
/// candidate, through the image).
fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = vec![];
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// Reads `/etc/ld.so.conf` of the image the way `ldconfig` does: one directory per
/// line (or several, separated by blanks, `:` or `,`), `#` comments, `include PATTERN`
/// lines (a relative pattern is relative to the including file's directory; `*`, `?`
/// in its last component), `hwcap` lines ignored. Files are read from the image: those
/// of a layer blob in one pass per layer (every file below `etc/ld.so.conf.d` is read
/// with `etc/ld.so.conf`, since the usual `include` names them).
fn ld_so_conf(image: &ImageFiles) -> Result<Vec<String>, LinkageError> {
    let mut texts: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut dirs = vec![];
    let mut seen_files = BTreeSet::new();
    // a stack of files still to read, the first on top
    let mut todo = vec!["etc/ld.so.conf".to_owned()];
    let mut prefetch: Vec<String> = match image.resolve("etc/ld.so.conf.d") {
        Some(d) => image
            .below(&d)
            .filter(|(rel, e)| !rel.contains('/') && matches!(e, Entry::File { .. }))
            .map(|(rel, _)| format!("{d}/{rel}"))
            .collect(),
        None => vec![],
    };
    while let Some(file) = todo.pop() {
        let Some(real) = image.resolve(&file) else {
            continue;
        };
        if !seen_files.insert(real.clone()) {
            continue;
        }
        if !texts.contains_key(&real) {
            let mut batch = vec![real.clone()];
            batch.append(&mut prefetch);
            batch.retain(|p| !texts.contains_key(p));
            let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
            let bytes = image.read_files(&refs, 1 << 20)?;
            for (p, b) in batch.iter().zip(bytes) {
                texts.insert(
                    p.clone(),
                    b.map(|b| String::from_utf8_lossy(&b).into_owned()),
                );
            }
        }
        let Some(text) = texts[&real].clone() else {
            continue;
        };
        let base = real.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let mut includes = vec![];
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(pattern) = line
                .strip_prefix("include")
                .filter(|r| r.starts_with(|c: char| c.is_ascii_whitespace()))
            {
                for pattern in pattern.split_ascii_whitespace() {
                    let pattern = if pattern.starts_with('/') {
                        normalise(pattern)
                    } else {
                        normalise(&format!("{base}/{pattern}"))
                    };
                    includes.extend(glob(image, &pattern));
                }
                continue;
            }
            if line.starts_with("hwcap") {
                continue;
            }
            for d in line.split(|c: char| c.is_ascii_whitespace() || c == ':' || c == ',') {
                let d = normalise(d);
                if !d.is_empty() && !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
        // processed in order: the stack gets them reversed
        todo.extend(includes.into_iter().rev());
    }
    Ok(dirs)
}

/// The files matching `pattern` (relative to the root; wildcards in the last component
/// only), sorted as glob(3) sorts them.
fn glob(image: &ImageFiles, pattern: &str) -> Vec<String> {
    let (dir, name) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    if !name.contains(['*', '?']) {
        return vec![pattern.to_owned()];
    }
    let Some(real_dir) = image.resolve(dir) else {
        return vec![];
    };
    image
        .below(&real_dir)
        .filter(|(rel, _)| !rel.contains('/') && wildcard(name.as_bytes(), rel.as_bytes()))
        .map(|(rel, _)| {
            if dir.is_empty() {
                rel.to_owned()
            } else {
                format!("{dir}/{rel}")
            }
        })
        .collect()
}

/// `*` and `?` matching of one file name (a leading `.` is matched only literally, as
/// glob(3) does).
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && pattern.first() != Some(&b'.') {
        return false;
    }
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern, name)
}

/// The (soname, path) entries of an `ld.so.cache` in glibc's format since 2.32
/// (`glibc-ld.so.cache1.1`, alone or after the old `ld.so-1.7.0` table), in the file's
/// order, which is the loader's preference. `None` for anything else (the old format
/// alone is from glibc before 2.32, and not read).
pub fn ld_so_cache_entries(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    const OLD: &[u8] = b"ld.so-1.7.0";
    const NEW: &[u8] = b"glibc-ld.so.cache1.1";
    let u32_at = |b: &[u8], i: usize| -> Option<u32> {
        // written in the target's byte order; every target imgbuild builds for
        // (amd64, arm64) is little-endian
        Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
    };
    // the new table follows the old one's entries (12 bytes each), 8-byte aligned
    let start = if bytes.starts_with(OLD) {
        let n = u32_at(bytes, OLD.len())? as usize;
        let end = OLD.len() + 4 + n.checked_mul(12)?;
        end.checked_add(7)? & !7
    } else {
        0
    };
    let new = bytes.get(start..)?;
    if !new.starts_with(NEW) {
        return None;
    }
    // header: magic+version (20), nlibs, len_strings, flags (1) + 3 padding,
    // extension_offset, 3 unused: 48 bytes; entries: flags, key, value, osversion
    // (4 each) and hwcap (8): 24 bytes. key and value are offsets from the header.
    let nlibs = u32_at(new, 20)? as usize;
    let string = |off: u32| -> Option<String> {
        let s = new.get(off as usize..)?;
        let end = s.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&s[..end]).into_owned())
    };
    let mut out = Vec::with_capacity(nlibs.min(1 << 16));
    for i in 0..nlibs {
        let at = 48usize.checked_add(i.checked_mul(24)?)?;
        let key = u32_at(new, at + 4)?;
        let value = u32_at(new, at + 8)?;
        out.push((string(key)?, string(value)?));
    }
    Some(out)
}
