//! Unpacking a `.deb` into a layer [`Tree`], in Rust and streamed.
//!
//! A `.deb` is an `ar` archive of `debian-binary`, `control.tar[.*]` and `data.tar[.*]`.
//! The verified `.deb` blob is read once; `data.tar` is decompressed (xz, zstd, gzip, bzip2 or
//! none) straight into a store blob (the "spool": the uncompressed tar) while its headers are
//! parsed, and file contents are referenced as byte ranges of that blob
//! ([`Content::Range`]), never held in memory. A record `debian-unpack-v1/<deb sha256>` keeps
//! the tar's digest and entry list, so a rebuild neither decompresses nor parses again.
//!
//! Placement rules (those of dpkg on a merged-/usr bookworm system, plus safety):
//! - `./` is stripped; absolute paths and `..` components are refused;
//! - `bin`, `sbin`, `lib`, `lib64` are symlinks to `usr/*`, and entries below them are
//!   rewritten to `usr/...`; two packages (or one) shipping the same file under both
//!   spellings is an [`Error::AliasConflict`];
//! - modes (incl. setuid/setgid/sticky) and numeric owners are kept; hardlinks must point at
//!   a file of the same package; a file over a directory is refused; a directory over a
//!   symlink keeps the symlink, and entries below it are written through the symlink (as
//!   dpkg does), as long as its target stays inside the image root;
//! - a file shipped by an earlier package is overwritten and reported, with whether the
//!   later package declares `Replaces` on the earlier one;
//! - `var/lib/dpkg/status.d/<package>` (the control file) and `<package>.md5sums` are written
//!   for scanners, as distroless does;
//! - maintainer scripts are not run, only reported ([`PackageReport::maintainer_scripts`]);
//!   [`notes`] turns the reports into the lines `imgbuild inspect` shows.
//!
//! [`Unpacker::unpack_all`] reads (decompresses) several `.deb`s in parallel, then places
//! their entries one package after the other, in the given order.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};

use imgbuild_layer::{Content, Follow, Meta, Node, Tree, TreeError, TreePath, symlinks};
use imgbuild_store::{BlobWriter, Bucket, Digest, Store};

use crate::error::{Error, Result};
use crate::platform::Arch;
use crate::{LockedPackage, control};

/// Top-level directories that are symlinks into `/usr` on a merged-/usr system.
pub const MERGED_USR: [&str; 4] = ["bin", "sbin", "lib", "lib64"];

const SCRIPTS: [&str; 6] = [
    "preinst", "postinst", "prerm", "postrm", "config", "triggers",
];

/// A maintainer script that exists in the package and was NOT run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScriptNote {
    /// `preinst`, `postinst`, `prerm`, `postrm`, `config` or `triggers`.
    pub script: String,
    /// One-line hints of what it does, where cheaply detectable (`creates users/groups (adduser)`, ...).
    pub hints: Vec<String>,
}

/// What unpacking one package did, for `imgbuild inspect` and warnings.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackageReport {
    pub name: String,
    pub version: String,
    /// Compression of `data.tar` (`xz`, `zst`, `gz`, `bz2` or `none`).
    pub data_compression: String,
    /// Entries placed in the tree (directories included).
    pub entries: usize,
    pub maintainer_scripts: Vec<ScriptNote>,
    /// Files this package overwrote that an earlier package had shipped at the same path.
    pub replaced: Vec<Replaced>,
    /// Executables of this package that start with `#!/bin/sh` (they need `dash` or
    /// another `/bin/sh` in the image), as shipped.
    pub sh_scripts: Vec<String>,
    /// The store blob holding the uncompressed `data.tar` the tree's files point into (an
    /// input of the layer: `gc` keeps it, so a rebuild does not decompress again).
    pub spool: Option<Digest>,
}

/// A file of one package overwritten by a later one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Replaced {
    /// The path in the image (`usr/share/...`).
    pub path: String,
    /// The package that had shipped it.
    pub previous: String,
    /// Whether the overwriting package declares `Replaces` on the previous one (dpkg
    /// refuses the overwrite otherwise).
    pub declared: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Kind {
    Dir,
    File,
    Symlink,
    Hardlink,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Entry {
    path: String,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    offset: u64,
    size: u64,
    link: Option<String>,
}

/// The cached result of reading a `.deb` once.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Unpacked {
    tar: Digest,
    compression: String,
    control: String,
    md5sums: Option<String>,
    scripts: Vec<ScriptNote>,
    sh_scripts: Vec<String>,
    entries: Vec<Entry>,
}

/// The spool blob (the uncompressed `data.tar`) a [`Bucket::DebianUnpack`] record
/// points into: the record is used only while that blob is there, so `gc` keeps the
/// record exactly as long as it keeps the blob. `None`: not a record of this format.
pub fn unpack_record_spool(record: &[u8]) -> Option<Digest> {
    #[derive(serde::Deserialize)]
    struct Spool {
        tar: Digest,
    }
    serde_json::from_slice::<Spool>(record).ok().map(|s| s.tar)
}

/// Unpacks packages into one tree, remembering which package placed which file so that
/// conflicts between packages are caught.
#[derive(Debug, Default)]
pub struct Unpacker {
    /// The architecture unpacked for: decides the merged-/usr links (`/lib64` or not).
    arch: Arch,
    /// canonical path -> (package, path as shipped)
    owners: BTreeMap<TreePath, (String, String)>,
    /// Versions of the packages placed so far (for `Replaces` constraints).
    versions: BTreeMap<String, String>,
}

impl Unpacker {
    /// An unpacker for amd64.
    pub fn new() -> Unpacker {
        Unpacker::default()
    }

    /// An unpacker for another architecture (`.deb`s themselves unpack the same way; only
    /// the merged-/usr links differ).
    pub fn for_arch(arch: Arch) -> Unpacker {
        Unpacker {
            arch,
            ..Unpacker::default()
        }
    }

    /// Unpacks one package (its `.deb` must be in the store, see [`crate::fetch_debs`]).
    pub fn unpack(
        &mut self,
        store: &Store,
        pkg: &LockedPackage,
        tree: &mut Tree,
    ) -> Result<PackageReport> {
        let u = load_or_read(store, pkg)?;
        self.place(store, pkg, &u, tree)
    }

    /// Unpacks packages in order, reading up to `jobs` `.deb`s at a time (decompressing is
    /// the slow part) while entries are placed one package after the other, so the tree
    /// is the same as with [`Unpacker::unpack`] in a loop.
    pub fn unpack_all(
        &mut self,
        store: &Store,
        pkgs: &[LockedPackage],
        tree: &mut Tree,
        jobs: usize,
        progress: &(dyn Fn(&LockedPackage) + Sync),
    ) -> Result<Vec<PackageReport>> {
        let slots: Vec<std::sync::Mutex<Option<Result<Unpacked>>>> =
            pkgs.iter().map(|_| std::sync::Mutex::new(None)).collect();
        let ready = std::sync::Condvar::new();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let workers = jobs.clamp(1, 16).min(pkgs.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if i >= pkgs.len() || stop.load(std::sync::atomic::Ordering::SeqCst) {
                            return;
                        }
                        progress(&pkgs[i]);
                        let r = load_or_read(store, &pkgs[i]);
                        *slots[i].lock().expect("slot") = Some(r);
                        ready.notify_all();
                    }
                });
            }
            // place in order as soon as each package is read
            let mut reports = vec![];
            for (i, pkg) in pkgs.iter().enumerate() {
                let mut slot = slots[i].lock().expect("slot");
                while slot.is_none() {
                    slot = ready.wait(slot).expect("slot");
                }
                let loaded = slot.take().expect("filled");
                drop(slot);
                let placed = loaded.and_then(|u| self.place(store, pkg, &u, tree));
                match placed {
                    Ok(r) => reports.push(r),
                    Err(e) => {
                        stop.store(true, std::sync::atomic::Ordering::SeqCst);
                        return Err(e);
                    }
                }
            }
            Ok(reports)
        })
    }

    /// Places a read package's entries into the tree.
    fn place(
        &mut self,
        store: &Store,
        pkg: &LockedPackage,
        u: &Unpacked,
        tree: &mut Tree,
    ) -> Result<PackageReport> {
        ensure_merged_usr_for(tree, self.arch)?;
        let replaces = control::parse_paragraphs(&u.control)
            .ok()
            .and_then(|p| p.first().and_then(|p| p.get("Replaces").map(str::to_owned)))
            .map(|f| control::parse_relations(&f).unwrap_or_default())
            .unwrap_or_default();
        let declares_replaces = |other: &str, other_version: Option<&String>| {
            replaces.iter().flatten().any(|a| {
                a.name == other
                    && a.constraint
                        .as_ref()
                        .is_none_or(|c| other_version.is_some_and(|v| c.rel.holds(v, &c.version)))
            })
        };
        let spool = store.blob_path(&u.tar);
        let bad = |path: &str, why: String| Error::Unpack {
            package: pkg.name.clone(),
            path: path.to_owned(),
            why,
        };
        let tree_err = |path: &str, e: TreeError| bad(path, e.to_string());
        let mut report = PackageReport {
            name: pkg.name.clone(),
            version: pkg.version.clone(),
            data_compression: u.compression.clone(),
            maintainer_scripts: u.scripts.clone(),
            sh_scripts: u.sh_scripts.clone(),
            spool: Some(u.tar.clone()),
            ..Default::default()
        };
        // files of this package, by canonical path (hardlink targets must be among them)
        let mut mine: BTreeMap<TreePath, ()> = BTreeMap::new();
        for e in &u.entries {
            if is_merged_usr_link(e) {
                // trixie's base-files ships `./bin -> usr/bin` & co.: the links made above
                report.entries += 1;
                continue;
            }
            let Some(path) = canonical_path(&e.path).map_err(|why| bad(&e.path, why))? else {
                continue; // the root itself
            };
            let path = through_symlinks(tree, path).map_err(|why| bad(&e.path, why))?;
            let meta = Meta::new(e.mode, e.uid, e.gid);
            if e.kind == Kind::Dir {
                match tree.get(&path) {
                    Some(Node::Symlink { .. }) => {} // dpkg keeps a symlink to a directory
                    Some(Node::File { .. } | Node::Hardlink { .. }) => {
                        let (other, _) = self.owners.get(&path).cloned().unwrap_or_default();
                        return Err(bad(
                            &e.path,
                            format!(
                                "would replace the file `{path}` of package `{other}` with a directory"
                            ),
                        ));
                    }
                    _ => tree
                        .insert_dir_if_absent(path, meta)
                        .map_err(|x| tree_err(&e.path, x))?,
                }
                report.entries += 1;
                continue;
            }
            if let Some((other_pkg, other_raw)) = self.owners.get(&path) {
                if strip_dot(other_raw) != strip_dot(&e.path) {
                    return Err(Error::AliasConflict {
                        package: pkg.name.clone(),
                        path: e.path.clone(),
                        other_package: other_pkg.clone(),
                        other_path: other_raw.clone(),
                        canonical: path.as_str().to_owned(),
                    });
                }
                if *other_pkg != pkg.name {
                    report.replaced.push(Replaced {
                        path: path.as_str().to_owned(),
                        previous: other_pkg.clone(),
                        declared: declares_replaces(other_pkg, self.versions.get(other_pkg)),
                    });
                }
            }
            let node = match e.kind {
                Kind::File => Node::File {
                    meta,
                    content: Content::Range {
                        path: spool.clone(),
                        offset: e.offset,
                        size: e.size,
                    },
                },
                Kind::Symlink => Node::Symlink {
                    meta,
                    target: e.link.clone().unwrap_or_default(),
                },
                Kind::Hardlink => {
                    let raw = e.link.as_deref().unwrap_or("");
                    let target = canonical_path(raw)
                        .map_err(|why| bad(&e.path, format!("hardlink target `{raw}`: {why}")))?
                        .map(|t| through_symlinks(tree, t))
                        .transpose()
                        .map_err(|why| bad(&e.path, format!("hardlink target `{raw}`: {why}")))?
                        .filter(|t| mine.contains_key(t) && matches!(tree.get(t), Some(Node::File { .. })))
                        .ok_or_else(|| bad(&e.path, format!("hardlink to `{raw}`, which is not a file earlier in this package")))?;
                    Node::Hardlink { target }
                }
                Kind::Dir => unreachable!(),
            };
            tree.insert(path.clone(), node).map_err(|x| match x {
                TreeError::ReplacesDirectory { .. } => bad(
                    &e.path,
                    format!(
                        "a {} would replace the directory `{path}`",
                        kind_name(e.kind)
                    ),
                ),
                other => tree_err(&e.path, other),
            })?;
            if e.kind == Kind::File {
                mine.insert(path.clone(), ());
            }
            self.owners.insert(path, (pkg.name.clone(), e.path.clone()));
            report.entries += 1;
        }
        self.versions.insert(pkg.name.clone(), pkg.version.clone());
        // package metadata for scanners (trivy, syft, grype read status.d as distroless writes it)
        let status_dir = TreePath::new("var/lib/dpkg/status.d")?;
        let mut control = u.control.trim_end().to_owned();
        control.push('\n');
        tree.insert(
            status_dir.join(&pkg.name)?,
            Node::File {
                meta: Meta::FILE,
                content: Content::inline(control),
            },
        )?;
        if let Some(md5) = &u.md5sums {
            tree.insert(
                status_dir.join(&format!("{}.md5sums", pkg.name))?,
                Node::File {
                    meta: Meta::FILE,
                    content: Content::inline(md5.as_bytes()),
                },
            )?;
        }
        Ok(report)
    }
}

/// Where an entry lands when an ancestor of its path is a symlink in the tree: dpkg writes
/// through such a link (after one package made `usr/share/doc/a` a symlink to `b`, another
/// shipping `./usr/share/doc/a/copyright` puts it in `usr/share/doc/b/`). Absolute targets
/// start at the image root; a target that leaves the root, or a loop, is an error. The
/// final component is never resolved: it is what the entry writes.
fn through_symlinks(tree: &Tree, path: TreePath) -> Result<TreePath, String> {
    if !path
        .ancestors()
        .any(|a| matches!(tree.get(&a), Some(Node::Symlink { .. })))
    {
        return Ok(path);
    }
    let resolved =
        symlinks::resolve(
            path.as_str(),
            Follow::WRITE_WITHIN_ROOT,
            |p| match TreePath::new(p).ok().and_then(|p| tree.get(&p)) {
                Some(Node::Symlink { target, .. }) => Some(target.as_str()),
                _ => None,
            },
        )
        .map_err(|e| e.to_string())?;
    TreePath::new(&resolved).map_err(|e| e.to_string())
}

/// The lines `imgbuild inspect` shows for a Debian layer: every maintainer script that
/// did not run (with hints of what it would have done), a warning naming the packages that
/// ship `#!/bin/sh` scripts when the layer has no `/bin/sh`, and every file a package
/// overwrote without declaring `Replaces` (dpkg would have refused to unpack it).
///
/// Scripts that cannot matter to an image are grouped into one line per kind, so that
/// the ones to look at stand out (a base layer has some 30 library packages whose only
/// script is the ldconfig trigger): `triggers` that only activate `ldconfig` (the
/// image's libraries are in the default search paths, so no `ld.so.cache` is needed),
/// and `prerm`/`postrm`, which dpkg runs only when a package is removed or upgraded,
/// never when it is installed.
pub fn notes(reports: &[PackageReport], tree: &Tree) -> Vec<String> {
    let mut notes = vec![];
    let mut ldconfig_only = vec![];
    let mut removal = vec![];
    for r in reports {
        let mut removal_scripts = vec![];
        for s in &r.maintainer_scripts {
            if s.script == "triggers" && is_ldconfig_trigger_only(s) {
                ldconfig_only.push(r.name.as_str());
                continue;
            }
            if s.script == "prerm" || s.script == "postrm" {
                removal_scripts.push(s.script.as_str());
                continue;
            }
            let hints = if s.hints.is_empty() {
                String::new()
            } else {
                format!(": {}", s.hints.join("; "))
            };
            notes.push(format!("not run: {} {}{hints}", r.name, s.script));
        }
        match removal_scripts.as_slice() {
            [] => {}
            [one] => removal.push(format!("{} ({one})", r.name)),
            _ => removal.push(r.name.clone()),
        }
    }
    if !ldconfig_only.is_empty() {
        notes.push(format!(
            "not run: the ldconfig trigger of {} package(s): {} (not needed: the libraries are in the default search paths, no ld.so.cache)",
            ldconfig_only.len(),
            ldconfig_only.join(", ")
        ));
    }
    if !removal.is_empty() {
        notes.push(format!(
            "not run: prerm/postrm of {} package(s): {} (dpkg runs them only to remove or upgrade a package)",
            removal.len(),
            removal.join(", ")
        ));
    }
    let has_sh = TreePath::new("usr/bin/sh").is_ok_and(|p| tree.get(&p).is_some());
    let with_sh: Vec<String> = reports
        .iter()
        .filter(|r| !r.sh_scripts.is_empty())
        .map(|r| {
            let first = format!("/{}", r.sh_scripts[0].trim_start_matches("./"));
            match r.sh_scripts.len() {
                1 => format!("{} ({first})", r.name),
                n => format!("{} ({first} and {} more)", r.name, n - 1),
            }
        })
        .collect();
    if !has_sh && !with_sh.is_empty() {
        notes.push(format!(
            "warning: this layer has no /bin/sh, but {} package(s) ship #!/bin/sh scripts: {}; \
             add `dash` to the packages if any of them is run (unless another layer provides /bin/sh)",
            with_sh.len(),
            with_sh.join(", ")
        ));
    }
    for r in reports {
        for x in r.replaced.iter().filter(|x| !x.declared) {
            notes.push(format!(
                "overwritten: /{} of {} by {}, which does not declare Replaces: {} (dpkg would refuse); \
                 the image has the file of {}",
                x.path, x.previous, r.name, x.previous, r.name
            ));
        }
    }
    notes
}

/// A `triggers` file whose only triggers are `activate[-noawait] ldconfig`.
fn is_ldconfig_trigger_only(s: &ScriptNote) -> bool {
    !s.hints.is_empty()
        && s.hints.iter().all(|h| {
            matches!(
                h.as_str(),
                "trigger: activate-noawait ldconfig" | "trigger: activate ldconfig"
            )
        })
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Dir => "directory",
        Kind::File => "file",
        Kind::Symlink => "symlink",
        Kind::Hardlink => "hardlink",
    }
}

fn strip_dot(p: &str) -> &str {
    p.trim_start_matches("./").trim_end_matches('/')
}

/// Normalises a path as shipped in a package (or named in a recipe) to where it lands on a
/// merged-/usr system: `./bin/sh` -> `usr/bin/sh`. Absolute paths and `..` are refused.
/// `None` for the root itself.
pub fn canonical_path(raw: &str) -> Result<Option<TreePath>, String> {
    if raw.starts_with('/') {
        return Err(
            "absolute path in package archive (would be placed outside the image root)".into(),
        );
    }
    if raw.split('/').any(|c| c == "..") {
        return Err("`..` component (would escape the image root)".into());
    }
    let p = TreePath::new(raw).map_err(|e| e.to_string())?;
    if p.is_root() {
        return Ok(None);
    }
    let s = p.as_str();
    let first = s.split('/').next().unwrap_or("");
    if MERGED_USR.contains(&first) {
        return TreePath::new(&format!("usr/{s}"))
            .map(Some)
            .map_err(|e| e.to_string());
    }
    Ok(Some(p))
}

/// Applies a recipe's `remove_paths` (image paths like `/usr/lib/postgresql/15/lib/llvmjit.so`;
/// `/lib/...` spellings are accepted and mean `/usr/lib/...`). A directory goes with everything
/// below it. A path that matches nothing is an error, so a typo does not pass silently.
pub fn remove_paths(tree: &mut Tree, paths: &[String]) -> Result<()> {
    for raw in paths {
        let bad = |why: String| Error::Unpack {
            package: "(remove_paths)".into(),
            path: raw.clone(),
            why,
        };
        let p = canonical_path(raw.trim_start_matches('/'))
            .map_err(bad)?
            .ok_or_else(|| bad("cannot remove the root".into()))?;
        if tree.remove(&p) == 0 {
            return Err(bad(format!(
                "nothing at `{p}` in this layer; check the path"
            )));
        }
    }
    Ok(())
}

/// Whether an entry is one of the merged-/usr links themselves (`./bin -> usr/bin`), as
/// trixie's base-files ships them.
fn is_merged_usr_link(e: &Entry) -> bool {
    let p = strip_dot(&e.path);
    e.kind == Kind::Symlink
        && MERGED_USR.contains(&p)
        && e.link
            .as_deref()
            .is_some_and(|t| t.trim_start_matches('/').trim_end_matches('/') == format!("usr/{p}"))
}

/// Puts the merged-/usr symlinks (`bin -> usr/bin`, ...) of amd64 into the tree if absent.
pub fn ensure_merged_usr(tree: &mut Tree) -> Result<()> {
    ensure_merged_usr_for(tree, Arch::Amd64)
}

/// Puts the merged-/usr symlinks of an architecture into the tree if absent: `bin`,
/// `sbin`, `lib`, and `lib64` where the loader lives there ([`Arch::has_lib64`]).
pub fn ensure_merged_usr_for(tree: &mut Tree, arch: Arch) -> Result<()> {
    for d in MERGED_USR {
        if d == "lib64" && !arch.has_lib64() {
            continue;
        }
        let link = TreePath::new(d)?;
        match tree.get(&link) {
            Some(Node::Symlink { .. }) => {}
            Some(other) => {
                return Err(Error::Unpack {
                    package: "(merged /usr)".into(),
                    path: d.into(),
                    why: format!(
                        "is a {} in this layer, but must be a symlink to usr/{d}",
                        other.kind()
                    ),
                });
            }
            None => {
                tree.insert_dir_if_absent(TreePath::new(&format!("usr/{d}"))?, Meta::DIR)?;
                tree.insert(
                    link,
                    Node::Symlink {
                        meta: Meta::new(0o777, 0, 0),
                        target: format!("usr/{d}"),
                    },
                )?;
            }
        }
    }
    Ok(())
}

/// The cached entry list if present and its spool blob is intact; otherwise reads the .deb.
fn load_or_read(store: &Store, pkg: &LockedPackage) -> Result<Unpacked> {
    let key = pkg.sha256.hex();
    if let Some(bytes) = store.read_record(Bucket::DebianUnpack, key)?
        && let Ok(u) = serde_json::from_slice::<Unpacked>(&bytes)
        && store.has_blob(&u.tar)
        && store.verify(&u.tar)?
    {
        return Ok(u);
    }
    let u = match read_deb(store, pkg) {
        Ok(u) => u,
        // a read that failed mid-way (say, in the xz stream) never reached the digest check
        // at end of stream: tell corruption of the stored .deb apart from a broken package
        Err(e) if !store.verify(&pkg.sha256)? => {
            return Err(Error::BadDeb {
                package: pkg.name.clone(),
                why: format!(
                    "the stored .deb does not match its SHA256 {} (corrupt or tampered: {e}); it was removed, fetch it again",
                    pkg.sha256
                ),
            });
        }
        Err(e) => return Err(e),
    };
    let json = serde_json::to_vec(&u).expect("serialisable");
    store.write_record(Bucket::DebianUnpack, key, &json)?;
    Ok(u)
}

/// Writes through everything read to a blob writer (the spool of the uncompressed tar).
struct Tee<'a, R> {
    r: R,
    w: &'a mut BlobWriter,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}

fn decoder<'a>(
    member: &str,
    r: impl Read + 'a,
) -> Result<(Box<dyn Read + 'a>, &'static str), String> {
    let ext = member.rsplit_once(".tar").map(|(_, e)| e).unwrap_or("");
    Ok(match ext {
        // The xz CRC64 is not checked: every byte read comes from a `.deb` whose SHA256
        // (from the signed index) is checked by the store as the whole `.deb` is read,
        // and nothing is committed before that check passed. Skipping it saves ~5% of
        // the decompression time.
        ".xz" => (
            Box::new(liblzma::read::XzDecoder::new_stream(
                r,
                liblzma::stream::Stream::new_stream_decoder(
                    u64::MAX,
                    liblzma::stream::CONCATENATED | liblzma::stream::IGNORE_CHECK,
                )
                .map_err(|e| format!("{member}: {e}"))?,
            )),
            "xz",
        ),
        ".zst" => (
            Box::new(zstd::stream::read::Decoder::new(r).map_err(|e| format!("{member}: {e}"))?),
            "zst",
        ),
        ".gz" => (Box::new(flate2::read::GzDecoder::new(r)), "gz"),
        ".bz2" => (Box::new(bzip2::read::BzDecoder::new(r)), "bz2"),
        "" => (Box::new(r), "none"),
        other => return Err(format!("{member}: unsupported compression `{other}`")),
    })
}

type Spooled = (BlobWriter, (Vec<Entry>, Vec<String>), &'static str);

/// Reads a verified `.deb` once: control members into memory (small), data.tar into a spool blob.
fn read_deb(store: &Store, pkg: &LockedPackage) -> Result<Unpacked> {
    let bad = |why: String| Error::BadDeb {
        package: pkg.name.clone(),
        why,
    };
    let io_bad = |what: &str, e: io::Error| bad(format!("{what}: {e}"));
    let mut r = BufReader::with_capacity(1 << 20, store.open_verified(&pkg.sha256)?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|e| io_bad("reading ar magic", e))?;
    if &magic != b"!<arch>\n" {
        return Err(bad("not a .deb (no `!<arch>` ar header)".into()));
    }
    let mut control: Option<Control> = None;
    // (uncommitted spool, entries, `#!/bin/sh` executables, compression)
    let mut data: Option<Spooled> = None;
    let mut seen_version = false;
    loop {
        let mut hdr = [0u8; 60];
        if !read_header(&mut r, &mut hdr).map_err(|e| io_bad("reading ar member header", e))? {
            break;
        }
        if &hdr[58..60] != b"`\n" {
            return Err(bad("corrupt ar member header".into()));
        }
        let name = String::from_utf8_lossy(&hdr[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_owned();
        let size: u64 = String::from_utf8_lossy(&hdr[48..58])
            .trim()
            .parse()
            .map_err(|_| bad(format!("ar member `{name}` has an invalid size")))?;
        let mut member = (&mut r).take(size);
        if name == "debian-binary" {
            let mut v = String::new();
            member
                .read_to_string(&mut v)
                .map_err(|e| io_bad("debian-binary", e))?;
            if !v.starts_with("2.") {
                return Err(bad(format!(
                    "unsupported .deb format version `{}`",
                    v.trim()
                )));
            }
            seen_version = true;
        } else if name.starts_with("control.tar") {
            let (dec, _) = decoder(&name, &mut member).map_err(bad)?;
            control = Some(read_control(dec).map_err(|e| bad(format!("{name}: {e}")))?);
        } else if name.starts_with("data.tar") {
            let (dec, comp) = decoder(&name, &mut member).map_err(bad)?;
            let mut w = store.writer()?;
            let entries = spool_data(dec, &mut w).map_err(|e| bad(format!("{name}: {e}")))?;
            data = Some((w, entries, comp));
        }
        io::copy(&mut member, &mut io::sink()).map_err(|e| io_bad(&name, e))?;
        if size % 2 == 1 {
            let mut pad = [0u8; 1];
            let _ = r.read(&mut pad).map_err(|e| io_bad("ar padding", e))?;
        }
    }
    // reaching here means the verified reader hit end of stream: the .deb matched its SHA256
    if !seen_version {
        return Err(bad("no debian-binary member".into()));
    }
    let control = control.ok_or_else(|| bad("no control.tar member".into()))?;
    let (w, (entries, sh_scripts), compression) =
        data.ok_or_else(|| bad("no data.tar member".into()))?;
    let (tar, _) = w.commit()?;
    Ok(Unpacked {
        tar,
        compression: compression.to_owned(),
        control: control
            .control
            .ok_or_else(|| bad("control.tar has no `control` file".into()))?,
        md5sums: control.md5sums,
        scripts: control.scripts,
        sh_scripts,
        entries,
    })
}

/// Reads a 60-byte ar header; `false` at a clean end of archive.
fn read_header(r: &mut impl Read, hdr: &mut [u8; 60]) -> io::Result<bool> {
    let mut got = 0;
    while got < 60 {
        let n = r.read(&mut hdr[got..])?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated ar header",
            ));
        }
        got += n;
    }
    Ok(true)
}

#[derive(Default)]
struct Control {
    control: Option<String>,
    md5sums: Option<String>,
    scripts: Vec<ScriptNote>,
}

/// Largest control member read into memory; real ones are kilobytes (md5sums up to ~1 MB).
const CONTROL_MEMBER_LIMIT: u64 = 16 << 20;

fn read_control(r: impl Read) -> io::Result<Control> {
    let mut c = Control::default();
    let mut ar = tar::Archive::new(r);
    let mut scripts = BTreeMap::new();
    for e in ar.entries()? {
        let mut e = e?;
        let path = String::from_utf8_lossy(&e.path_bytes())
            .trim_start_matches("./")
            .to_owned();
        if e.header().entry_type() != tar::EntryType::Regular || e.size() > CONTROL_MEMBER_LIMIT {
            continue;
        }
        let mut text = String::new();
        if !matches!(path.as_str(), "control" | "md5sums") && !SCRIPTS.contains(&path.as_str()) {
            continue;
        }
        let mut bytes = vec![];
        e.read_to_end(&mut bytes)?;
        text.push_str(&String::from_utf8_lossy(&bytes));
        match path.as_str() {
            "control" => c.control = Some(text),
            "md5sums" => c.md5sums = Some(text),
            s => {
                scripts.insert(s.to_owned(), script_hints(s, &text));
            }
        }
    }
    // report in the dpkg order of the list, not the archive order
    for s in SCRIPTS {
        if let Some(h) = scripts.remove(s) {
            c.scripts.push(ScriptNote {
                script: s.to_owned(),
                hints: h,
            });
        }
    }
    Ok(c)
}

/// One-line hints of what a maintainer script would have done, from plain keyword matches.
pub fn script_hints(script: &str, text: &str) -> Vec<String> {
    if script == "triggers" {
        return text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| format!("trigger: {l}"))
            .collect();
    }
    const PATTERNS: &[(&[&str], &str)] = &[
        (
            &["adduser", "useradd", "addgroup", "groupadd"],
            "creates users/groups (adduser): declare them in the recipe",
        ),
        (
            &["update-alternatives"],
            "registers alternatives (update-alternatives): symlinks in /etc/alternatives not made",
        ),
        (
            &["dpkg-statoverride"],
            "changes owner/mode of files (dpkg-statoverride)",
        ),
        (&["dpkg-divert"], "diverts files (dpkg-divert)"),
        (
            &["ldconfig"],
            "runs ldconfig (no ld.so.cache is needed for default library paths)",
        ),
        (
            &["deb-systemd-helper", "systemctl"],
            "enables systemd units",
        ),
        (
            &["update-rc.d", "invoke-rc.d"],
            "registers/starts an init script",
        ),
        (&["py3compile", "pycompile"], "byte-compiles Python modules"),
        (&["locale-gen"], "generates locales"),
        (
            &["update-ca-certificates"],
            "builds the CA certificate bundle",
        ),
        (&["make-ssl-cert"], "generates a snakeoil TLS certificate"),
        (&["ucf", "ucfr"], "manages configuration files with ucf"),
        (
            &["db_get", "db_input", "confmodule"],
            "asks debconf questions",
        ),
        (&["chown", "chmod"], "changes ownership/permissions"),
        (&["ln -s", "ln -sf"], "creates symlinks"),
        (&["mkdir", "install -d"], "creates directories"),
        (
            &["systemd-tmpfiles"],
            "creates files/directories via systemd-tmpfiles",
        ),
        (
            &["update-passwd"],
            "updates /etc/passwd and /etc/group from base-passwd",
        ),
    ];
    let mut out = vec![];
    for (words, hint) in PATTERNS {
        if words.iter().any(|w| contains_word(text, w)) {
            out.push((*hint).to_owned());
        }
    }
    out
}

/// `word` occurs delimited by non-identifier characters (so `chown` does not match `chowner`).
fn contains_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        before.is_none_or(|c| !ident(c)) && after.is_none_or(|c| !ident(c))
    })
}

/// Spools the uncompressed data.tar into `w` while reading its headers.
fn spool_data(dec: impl Read, w: &mut BlobWriter) -> io::Result<(Vec<Entry>, Vec<String>)> {
    let mut entries = vec![];
    let mut sh_scripts = vec![];
    let mut ar = tar::Archive::new(Tee { r: dec, w });
    for e in ar.entries()? {
        let mut e = e?;
        let path = String::from_utf8(e.path_bytes().into_owned()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "non-UTF-8 path in data.tar")
        })?;
        let h = e.header();
        let link = e
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let kind = match h.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Symlink => Kind::Symlink,
            tar::EntryType::Link => Kind::Hardlink,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "entry `{path}`: unsupported entry type {other:?} (devices, fifos and sparse files are not allowed in layers)"
                    ),
                ));
            }
        };
        let mode = h.mode()? & 0o7777;
        if kind == Kind::File && mode & 0o111 != 0 {
            // peek at the interpreter line; the bytes still pass through the spool
            let mut head = [0u8; 12];
            let mut n = 0;
            while n < head.len() {
                let k = e.read(&mut head[n..])?;
                if k == 0 {
                    break;
                }
                n += k;
            }
            let line = &head[..n];
            if line.starts_with(b"#!/bin/sh") || line.starts_with(b"#! /bin/sh") {
                sh_scripts.push(path.clone());
            }
        }
        let h = e.header();
        entries.push(Entry {
            mode,
            uid: h.uid()? as u32,
            gid: h.gid()? as u32,
            offset: e.raw_file_position(),
            size: if kind == Kind::File { e.size() } else { 0 },
            link: if matches!(kind, Kind::Symlink | Kind::Hardlink) {
                link
            } else {
                None
            },
            kind,
            path,
        });
    }
    // copy what follows the end-of-archive marker too, so the spool is the whole tar
    let mut tee = ar.into_inner();
    io::copy(&mut tee, &mut io::sink())?;
    Ok((entries, sh_scripts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths() {
        assert_eq!(
            canonical_path("./bin/sh").unwrap().unwrap().as_str(),
            "usr/bin/sh"
        );
        assert_eq!(
            canonical_path("./lib64/").unwrap().unwrap().as_str(),
            "usr/lib64"
        );
        assert_eq!(
            canonical_path("./library/x").unwrap().unwrap().as_str(),
            "library/x"
        );
        assert_eq!(canonical_path("./").unwrap(), None);
        assert!(canonical_path("/etc/passwd").is_err());
        assert!(canonical_path("./usr/../../etc").is_err());
    }

    #[test]
    fn remove_paths_accepts_aliases_and_refuses_typos() {
        let mut t = Tree::new();
        let f = || Node::File {
            meta: Meta::FILE,
            content: Content::inline(*b"x"),
        };
        t.insert(TreePath::new("usr/lib/pg/llvmjit.so").unwrap(), f())
            .unwrap();
        t.insert(TreePath::new("usr/share/doc/a/b").unwrap(), f())
            .unwrap();
        remove_paths(
            &mut t,
            &["/lib/pg/llvmjit.so".into(), "/usr/share/doc".into()],
        )
        .unwrap();
        assert!(
            t.get(&TreePath::new("usr/lib/pg/llvmjit.so").unwrap())
                .is_none()
        );
        assert!(
            t.get(&TreePath::new("usr/share/doc/a/b").unwrap())
                .is_none()
        );
        let e = remove_paths(&mut t, &["/usr/lib/nope".into()]).unwrap_err();
        assert!(e.to_string().contains("/usr/lib/nope"), "{e}");
    }

    #[test]
    fn hints() {
        let h = script_hints(
            "postinst",
            "#!/bin/sh\nadduser --system redis\ndpkg-statoverride --update --add redis redis 640 /etc/redis/redis.conf\n",
        );
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h[0].contains("adduser"));
        assert!(script_hints("postinst", "chowner x").is_empty());
        assert_eq!(
            script_hints("triggers", "# c\nactivate-noawait ldconfig\n"),
            ["trigger: activate-noawait ldconfig"]
        );
    }
}
