//! The image's own interpreter, run on the build host to write `.pyc` files: the bytes
//! the image would write itself (Debian's postinst runs `py3compile` inside the image),
//! whatever Python, if any, the build machine has.
//!
//! What the interpreter needs is copied out of the image ([`ImageFiles`]) into a private
//! temp dir, at the same paths: the interpreter binary (its path resolved through the
//! image's symlinks, merged-`/usr` included), the standard library
//! (`<prefix>/lib/python3.Y/` without `__pycache__` and `site-packages`), the shared
//! libraries (`*.so*` directly in `lib/<triplet>` and `usr/lib/<triplet>`, plus
//! `<prefix>/lib` for an interpreter outside `/usr`) and the dynamic loader. It then runs
//! through the image's own loader:
//!
//! ```text
//! env -i PYTHONHOME=<tmp>/usr PYTHONHASHSEED=0 PYTHONUTF8=1 PYTHONCOERCECLOCALE=0 \
//!   <tmp>/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --inhibit-cache \
//!   --library-path <tmp>/usr/lib/x86_64-linux-gnu <tmp>/usr/bin/python3.11 -S ...
//! ```
//!
//! so the host's libc, its `ld.so.cache` and its Python take no part: the only
//! requirement on the build machine is that it can execute the image's architecture.
//! (`-I`/`-E` are not used: they would ignore `PYTHONHOME`; the environment is cleared
//! instead.) A probe checks that it is CPython of the target's minor version and reads
//! its version, `.pyc` magic and cache tag.
//!
//! [`ImageInterpreter::identity`] names what decides the bytes of a `.pyc`: the sha256
//! of the interpreter binary and of any `libpython` it loads, its version and magic. The
//! `.pyc` cache ([`crate::bytecode`]) is keyed by it.
//!
//! When the image has no interpreter at that path, or the host cannot run it, the error
//! says so and how to build without `.pyc` files (`bytecode = false`): a build never
//! silently produces other bytes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use imgbuild_store::{Store, digest_reader};
use sha2::Digest as _;

use crate::error::{Error, Result, io_err};
use crate::target::{Libc, Target};
use imgbuild_layer::image::{Entry, FileSource, ImageFiles};

/// An interpreter of the image, copied out and ready to run on the build host. The copy
/// is removed when this is dropped.
#[derive(Debug)]
pub struct ImageInterpreter {
    /// The in-image path it was asked for (`/usr/bin/python3.11`), for messages.
    pub path: String,
    /// `3.11.2`
    pub version: String,
    /// `a70d0d0a`
    pub magic: String,
    /// `cpython-311`
    pub cache_tag: String,
    /// Hex sha256 of what decides the bytes of a `.pyc` (see the module docs).
    pub identity: String,
    root: PathBuf,
    loader: PathBuf,
    library_path: OsString,
    exe: PathBuf,
    home: PathBuf,
    /// The in-image standard library directory (`usr/lib/python3.11`).
    stdlib: String,
    /// What it is, for messages, when not the image's own ([`ImageInterpreter::with_origin`]).
    origin: Option<String>,
}

/// The dynamic loader and multiarch triplet of a glibc target architecture.
fn glibc_loader(arch: &str) -> Option<(&'static str, &'static str)> {
    Some(match arch {
        "x86_64" => ("lib64/ld-linux-x86-64.so.2", "x86_64-linux-gnu"),
        "aarch64" => ("lib/ld-linux-aarch64.so.1", "aarch64-linux-gnu"),
        "ppc64le" => ("lib64/ld64.so.2", "powerpc64le-linux-gnu"),
        "s390x" => ("lib/ld64.so.1", "s390x-linux-gnu"),
        _ => return None,
    })
}

const PROBE: &str = "import sys, importlib.util as u; print(sys.implementation.name, sys.version_info[0], sys.version_info[1], u.MAGIC_NUMBER.hex(), sys.implementation.cache_tag, sys.version.split()[0])";

impl ImageInterpreter {
    /// Copies `interpreter` (an absolute in-image path) and what it needs out of `image`
    /// into a temp dir of `store`, and checks that it runs and is CPython of the target's
    /// minor version.
    pub fn materialise(
        image: &ImageFiles,
        interpreter: &str,
        target: &Target,
        store: &Store,
    ) -> Result<ImageInterpreter> {
        let fail = |msg: String| Error::Interpreter {
            path: interpreter.to_owned(),
            msg,
        };
        let (major, minor) = target.python_major_minor();
        if let Libc::Musl(..) = target.libc {
            return Err(fail(
                "running a musl image's interpreter on the build host is not supported".into(),
            ));
        }
        let (loader_path, triplet) = glibc_loader(&target.arch)
            .ok_or_else(|| fail(format!("no known loader for arch `{}`", target.arch)))?;

        let (exe, exe_mode, exe_src) = image.file(interpreter).ok_or_else(|| {
            fail("the image (the layers below this one, or this layer) has no such file".into())
        })?;
        // <prefix>/bin/python3.Y -> <prefix>
        let home = match exe.rsplit_once('/') {
            Some((bin, _)) => bin.rsplit_once('/').map(|(h, _)| h).unwrap_or(""),
            None => "",
        }
        .to_owned();
        let stdlib = join(&home, &format!("lib/python{major}.{minor}"));
        let stdlib_real = image
            .resolve(&stdlib)
            .ok_or_else(|| fail(format!("`/{stdlib}` is a symlink loop")))?;
        if image.file(&format!("{stdlib_real}/os.py")).is_none() {
            return Err(fail(format!(
                "the image has no standard library at `/{stdlib}` (no os.py)"
            )));
        }
        let (loader, loader_mode, loader_src) = image
            .file(loader_path)
            .ok_or_else(|| fail(format!("the image has no dynamic loader `/{loader_path}`")))?;

        // destination (relative to the temp root) -> (source, mode)
        let mut plan: BTreeMap<String, (FileSource, u32)> = BTreeMap::new();
        plan.insert(exe.clone(), (exe_src.clone(), exe_mode | 0o500));
        plan.insert(loader.clone(), (loader_src.clone(), loader_mode | 0o500));
        for (rel, entry) in image.below(&stdlib_real) {
            if rel
                .split('/')
                .any(|c| c == "__pycache__" || c == "site-packages" || c == "dist-packages")
            {
                continue;
            }
            let full = format!("{stdlib_real}/{rel}");
            let found = match entry {
                Entry::File { mode, source } => Some((*mode, source)),
                Entry::Symlink(_) => image.file(&full).map(|(_, m, s)| (m, s)),
                Entry::Dir(_) => None,
            };
            if let Some((mode, source)) = found {
                plan.insert(format!("{stdlib}/{rel}"), (source.clone(), mode));
            }
        }
        let mut lib_dirs: Vec<String> = vec![];
        let mut candidates = vec![format!("lib/{triplet}"), format!("usr/lib/{triplet}")];
        if home != "usr" {
            candidates.push(join(&home, "lib"));
        }
        for d in candidates {
            let Some(real) = image.resolve(&d) else {
                continue;
            };
            if lib_dirs.contains(&real) {
                continue;
            }
            let mut any = false;
            for (name, entry) in image.below(&real) {
                if name.contains('/') || !name.contains(".so") {
                    continue;
                }
                let full = format!("{real}/{name}");
                let found = match entry {
                    Entry::File { mode, source } => Some((*mode, source.clone())),
                    Entry::Symlink(_) => image.file(&full).map(|(_, m, s)| (m, s.clone())),
                    Entry::Dir(_) => None,
                };
                if let Some((mode, source)) = found {
                    plan.entry(full).or_insert((source, mode));
                    any = true;
                }
            }
            if any {
                lib_dirs.push(real);
            }
        }

        let root = store.temp_dir()?;
        let mut me = ImageInterpreter {
            path: interpreter.to_owned(),
            version: String::new(),
            magic: String::new(),
            cache_tag: String::new(),
            identity: String::new(),
            loader: root.join(&loader),
            library_path: std::env::join_paths(lib_dirs.iter().map(|d| root.join(d)))
                .map_err(|e| fail(format!("library path: {e}")))?,
            exe: root.join(&exe),
            home: root.join(&home),
            stdlib,
            root,
            origin: None,
        };
        image.copy_out(&plan, &me.root)?;
        fs::create_dir_all(me.root.join("cwd"))
            .map_err(io_err("failed to create directory", me.root.join("cwd")))?;

        let out = me
            .command()
            .args(["-S", "-c", PROBE])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail(format!("this machine cannot start it: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = text.split_whitespace().collect();
        let [impl_, ma, mi, magic, tag, ver] = f.as_slice() else {
            return Err(fail(format!(
                "it did not answer the version probe ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        };
        if !out.status.success() {
            return Err(fail(format!(
                "the version probe failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if *impl_ != "cpython" || *ma != major.to_string() || *mi != minor.to_string() {
            return Err(fail(format!(
                "it is {impl_} {ver}, but the target is CPython {major}.{minor}"
            )));
        }
        me.version = (*ver).to_owned();
        me.magic = (*magic).to_owned();
        me.cache_tag = (*tag).to_owned();

        let mut id = sha2::Sha256::new();
        id.update(format!(
            "image-interpreter-v1\n{}\n{}\n",
            me.version, me.magic
        ));
        let mut decisive = vec![exe.clone()];
        decisive.extend(
            plan.keys()
                .filter(|p| {
                    p.rsplit('/')
                        .next()
                        .is_some_and(|n| n.starts_with("libpython"))
                })
                .cloned(),
        );
        for p in decisive {
            let host = me.root.join(&p);
            let f = fs::File::open(&host).map_err(io_err("failed to open", &host))?;
            let (d, _) = digest_reader(f).map_err(io_err("failed to read", &host))?;
            id.update(format!("{p}\t{d}\n"));
        }
        me.identity = hex::encode(id.finalize());
        Ok(me)
    }

    /// The interpreter as a command with a cleared environment, ready for arguments.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.loader);
        c.arg("--inhibit-cache")
            .arg("--library-path")
            .arg(&self.library_path)
            .arg(&self.exe)
            .env_clear()
            .env("PYTHONHOME", &self.home)
            // nothing in the output may depend on string hash randomisation
            .env("PYTHONHASHSEED", "0")
            // no locale files of the host: UTF-8 mode, no locale coercion
            .env("PYTHONUTF8", "1")
            .env("PYTHONCOERCECLOCALE", "0")
            // `-c` puts the working directory on sys.path: an empty one
            .current_dir(self.root.join("cwd"));
        c
    }

    /// The standard library: in-image directory (`usr/lib/python3.11`, relative) and
    /// where its copy is on the host.
    pub fn stdlib(&self) -> (&str, PathBuf) {
        (&self.stdlib, self.root.join(&self.stdlib))
    }

    /// `the image's /usr/bin/python3.11 (CPython 3.11.2)`, for messages.
    pub fn describe(&self) -> String {
        match &self.origin {
            Some(o) => format!("{o} (CPython {})", self.version),
            None => format!("the image's {} (CPython {})", self.path, self.version),
        }
    }

    /// Names what this interpreter is in messages, when it is not the image's own (the
    /// build machine's build of the image's interpreter).
    pub fn with_origin(mut self, origin: String) -> ImageInterpreter {
        self.origin = Some(origin);
        self
    }
}

impl Drop for ImageInterpreter {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn join(dir: &str, rel: &str) -> String {
    if dir.is_empty() {
        rel.to_owned()
    } else {
        format!("{dir}/{rel}")
    }
}
