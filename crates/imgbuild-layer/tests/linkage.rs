//! The linkage check on real ELF files: the host's glibc and libstdc++ (Debian
//! bookworm), and programs and libraries compiled here with gcc/g++ the way wheels and
//! packages are built (RUNPATH `$ORIGIN/../pkg.libs` as auditwheel writes it, RPATH,
//! sonames). What each file needs is checked against `readelf`, so the expectations
//! are not the checker's own reading.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use imgbuild_layer::image::ImageFiles;
use imgbuild_layer::linkage::{Cache, Need, Options, Report, check, check_with};
use imgbuild_layer::{Content, Meta, Node, Tree, TreePath, WriteOptions, write_layer};
use imgbuild_store::{Digest, Store};

const MULTIARCH: &str = "/usr/lib/x86_64-linux-gnu";

fn host_file(tree: &mut Tree, dest: &str, src: &Path) {
    let src = fs::canonicalize(src).unwrap();
    let size = fs::metadata(&src).unwrap().len();
    tree.insert(
        TreePath::new(dest).unwrap(),
        Node::File {
            meta: Meta::new(0o755, 0, 0),
            content: Content::Host {
                path: src,
                size,
                hash: None,
            },
        },
    )
    .unwrap();
}

fn text(tree: &mut Tree, dest: &str, body: &str) {
    tree.insert(
        TreePath::new(dest).unwrap(),
        Node::File {
            meta: Meta::FILE,
            content: Content::inline(body.as_bytes().to_vec()),
        },
    )
    .unwrap();
}

fn link(tree: &mut Tree, path: &str, target: &str) {
    tree.insert(
        TreePath::new(path).unwrap(),
        Node::Symlink {
            meta: Meta::new(0o777, 0, 0),
            target: target.into(),
        },
    )
    .unwrap();
}

/// A Debian merged-/usr base with the C runtime: the host's installed `libc6` and
/// `libgcc-s1` packages, file for file as `dpkg -L` lists them. Libraries end up under
/// `usr/lib/x86_64-linux-gnu` only; the loader is reached through `/lib64 ->
/// usr/lib64` and libc6's symlink to `/lib/x86_64-linux-gnu` (through `/lib ->
/// usr/lib`).
fn c_runtime() -> Tree {
    let mut t = Tree::new();
    link(&mut t, "lib", "usr/lib");
    link(&mut t, "lib64", "usr/lib64");
    link(&mut t, "bin", "usr/bin");
    link(&mut t, "sbin", "usr/sbin");
    debian_package(&mut t, "libc6");
    debian_package(&mut t, "libgcc-s1");
    assert!(matches!(
        t.get(&TreePath::new("usr/lib64/ld-linux-x86-64.so.2").unwrap()),
        Some(Node::Symlink { .. })
    ));
    t
}

/// The files and symlinks of the host's installed Debian package `pkg` (`dpkg -L`), at
/// their paths with `/usr` merged, as imgbuild's Debian layers place them.
fn debian_package(t: &mut Tree, pkg: &str) {
    let out = Command::new("dpkg").args(["-L", pkg]).output().unwrap();
    assert!(out.status.success(), "dpkg -L {pkg}");
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let path = Path::new(line);
        let Ok(meta) = fs::symlink_metadata(path) else {
            continue;
        };
        let rel = line.trim_start_matches('/');
        let merged = ["lib/", "lib64/", "bin/", "sbin/"]
            .iter()
            .any(|d| rel.starts_with(d));
        let dest = if merged {
            format!("usr/{rel}")
        } else {
            rel.to_owned()
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(path).unwrap();
            link(t, &dest, target.to_str().unwrap());
        } else if meta.is_file() {
            host_file(t, &dest, path);
        }
    }
}

/// libstdc++ as Debian ships it: the host's `libstdc++6` package.
fn libstdcxx(t: &mut Tree) {
    debian_package(t, "libstdc++6");
}

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: Store,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let store = Store::open(dir.join("store")).unwrap();
        Env {
            _tmp: tmp,
            dir,
            store,
        }
    }

    /// The image made of these trees as real layer blobs (read back from the store).
    fn image(&self, layers: &[&Tree]) -> ImageFiles {
        ImageFiles::from_layers(&self.store, &self.blobs(layers)).unwrap()
    }

    fn blobs(&self, layers: &[&Tree]) -> Vec<Digest> {
        let opts = WriteOptions {
            mtime: 0,
            threads: 1,
        };
        layers
            .iter()
            .map(|t| {
                write_layer(t, &opts, &self.store)
                    .unwrap()
                    .descriptor
                    .digest
            })
            .collect()
    }

    /// Compiles `source` (C, or C++ when `lang` is "c++") into `out` with `args`.
    fn compile(&self, lang: &str, source: &str, out: &str, args: &[&str]) -> PathBuf {
        let ext = if lang == "c++" { "cpp" } else { "c" };
        let src = self.dir.join(format!("{}.{ext}", out.replace('/', "_")));
        fs::write(&src, source).unwrap();
        let out = self.dir.join(out);
        fs::create_dir_all(out.parent().unwrap()).unwrap();
        let compiler = if lang == "c++" { "g++" } else { "gcc" };
        let st = Command::new(compiler)
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .args(args)
            .current_dir(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "{compiler} failed for {}", out.display());
        out
    }
}

/// `readelf -d`: the (NEEDED, RPATH, RUNPATH) entries of a file.
fn readelf_dynamic(file: &Path) -> (BTreeSet<String>, Vec<String>, Vec<String>) {
    let out = Command::new("readelf")
        .arg("-dW")
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut needed = BTreeSet::new();
    let (mut rpath, mut runpath) = (vec![], vec![]);
    for line in text.lines() {
        let value = || {
            let start = line.find('[').unwrap() + 1;
            line[start..line.rfind(']').unwrap()].to_owned()
        };
        if line.contains("(NEEDED)") {
            needed.insert(value());
        } else if line.contains("(RPATH)") {
            rpath.push(value());
        } else if line.contains("(RUNPATH)") {
            runpath.push(value());
        }
    }
    (needed, rpath, runpath)
}

fn missing_of(report: &Report, file: &str) -> BTreeSet<String> {
    report
        .missing
        .iter()
        .filter(|m| m.file == file)
        .map(|m| m.soname.clone())
        .collect()
}

const CXX_EXT: &str = r#"
#include <string>
#include <vector>
extern "C" int PyInit__core(void) {
    std::vector<std::string> v{"a", "b"};
    return (int)v.size();
}
"#;

const SITE: &str = "opt/venv/lib/python3.11/site-packages";

#[test]
fn a_cxx_extension_without_libstdcxx_is_reported_and_passes_once_it_is_there() {
    let env = Env::new();
    let ext = env.compile(
        "c++",
        CXX_EXT,
        "_core.cpython-311-x86_64-linux-gnu.so",
        &["-shared", "-fPIC", "-O1"],
    );
    let (needed, _, _) = readelf_dynamic(&ext);
    assert!(needed.contains("libstdc++.so.6"), "{needed:?}");

    let mut venv = Tree::new();
    let ext_path = format!("{SITE}/pkg/_core.cpython-311-x86_64-linux-gnu.so");
    host_file(&mut venv, &ext_path, &ext);
    text(
        &mut venv,
        &format!("{SITE}/pkg/__init__.py"),
        "from ._core import *\n",
    );
    let file = format!("/{ext_path}");

    // on nothing at all, every need is missing: exactly what readelf lists
    let report = check(&ImageFiles::default(), &venv, &[]).unwrap();
    assert_eq!(report.checked, 1);
    assert_eq!(missing_of(&report, &file), needed);

    // on the C runtime only (as blobs): just libstdc++
    let base = c_runtime();
    let image = env.image(&[&base]);
    let report = check(&image, &venv, &[]).unwrap();
    assert_eq!(
        missing_of(&report, &file),
        BTreeSet::from(["libstdc++.so.6".to_owned()]),
        "{report:#?}"
    );
    let m = &report.missing[0];
    assert_eq!(m.need, Need::Library);
    assert_eq!(
        m.searched,
        [
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib"
        ]
    );
    assert!(m.to_string().contains("libstdc++.so.6"), "{m}");
    let msg = report.error_message(|_| vec!["libstdc++6".into()]).unwrap();
    assert!(
        msg.contains(&format!(
            "`libstdc++.so.6`, needed by `{file}` (looked in /lib/x86_64-linux-gnu,"
        )) && msg.ends_with("add the Debian package `libstdc++6` to this layer or one below"),
        "{msg}"
    );
    assert!(m.to_string().contains(&file), "{m}");

    // two files needing it: one line for the soname, naming both
    let mut two = venv.clone();
    host_file(
        &mut two,
        &format!("{SITE}/other/_core.cpython-311-x86_64-linux-gnu.so"),
        &ext,
    );
    let msg = check(&image, &two, &[])
        .unwrap()
        .error_message(|_| vec![])
        .unwrap();
    assert_eq!(msg.lines().count(), 2, "{msg}");
    assert!(
        msg.starts_with("2 of the layer's ELF files would not run"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{SITE}/other/_core")) && msg.contains(&file),
        "{msg}"
    );

    // the package added below the venv layer, or in the layer itself: nothing missing
    let mut cxx = Tree::new();
    libstdcxx(&mut cxx);
    let report = check(&env.image(&[&base, &cxx]), &venv, &[]).unwrap();
    assert!(report.is_ok(), "{report:#?}");
    let mut venv_and_cxx = venv.clone();
    libstdcxx(&mut venv_and_cxx);
    let report = check(&image, &venv_and_cxx, &[]).unwrap();
    assert!(report.is_ok(), "{report:#?}");
    // the layer's own libstdc++ is checked too (its needs are in the base)
    assert_eq!(report.checked, 2);

    // the same library deleted by a whiteout in a later layer is missing again
    let mut gone = Tree::new();
    text(&mut gone, "usr/lib/x86_64-linux-gnu/.wh.libstdc++.so.6", "");
    let report = check(&env.image(&[&base, &cxx, &gone]), &venv, &[]).unwrap();
    assert_eq!(
        missing_of(&report, &file),
        BTreeSet::from(["libstdc++.so.6".to_owned()])
    );
}

#[test]
fn vendored_libraries_are_found_through_runpath_and_rpath_origin() {
    let env = Env::new();
    let lib_c = "int vendored(void) { return 42; }\n";
    env.compile(
        "c",
        lib_c,
        "build/libvendored-1a2b3c4d.so.1",
        &["-shared", "-fPIC", "-Wl,-soname,libvendored-1a2b3c4d.so.1"],
    );
    let ext_c = "int vendored(void);\nint PyInit_fast(void) { return vendored(); }\n";
    let mut exts = vec![];
    for (name, dtags) in [
        ("runpath", "--enable-new-dtags"),
        ("rpath", "--disable-new-dtags"),
    ] {
        let out = env.compile(
            "c",
            ext_c,
            &format!("build/{name}/fast.cpython-311-x86_64-linux-gnu.so"),
            &[
                "-shared",
                "-fPIC",
                "build/libvendored-1a2b3c4d.so.1",
                "-Wl,-rpath,$ORIGIN/../pkg.libs",
                &format!("-Wl,{dtags}"),
            ],
        );
        exts.push((name, out));
    }
    // what the checker must follow, as readelf reads it
    let (needed, rpath, runpath) = readelf_dynamic(&exts[0].1);
    assert!(needed.contains("libvendored-1a2b3c4d.so.1"));
    assert_eq!(
        (rpath.len(), runpath),
        (0, vec!["$ORIGIN/../pkg.libs".to_owned()])
    );
    let (_, rpath, runpath) = readelf_dynamic(&exts[1].1);
    assert_eq!(
        (rpath, runpath.len()),
        (vec!["$ORIGIN/../pkg.libs".to_owned()], 0)
    );

    let image = env.image(&[&c_runtime()]);
    for (name, ext) in &exts {
        let mut venv = Tree::new();
        let ext_path = format!("{SITE}/pkg/fast.cpython-311-x86_64-linux-gnu.so");
        host_file(&mut venv, &ext_path, ext);
        let without = venv.clone();
        host_file(
            &mut venv,
            &format!("{SITE}/pkg.libs/libvendored-1a2b3c4d.so.1"),
            &env.dir.join("build/libvendored-1a2b3c4d.so.1"),
        );
        let report = check(&image, &venv, &[]).unwrap();
        assert!(report.is_ok(), "{name}: {report:#?}");
        assert_eq!(report.checked, 2);

        let report = check(&image, &without, &[]).unwrap();
        assert_eq!(report.missing.len(), 1, "{name}: {report:#?}");
        let m = &report.missing[0];
        assert_eq!(m.soname, "libvendored-1a2b3c4d.so.1");
        // $ORIGIN expanded to the extension's directory, searched first
        assert_eq!(m.searched[0], format!("/{SITE}/pkg.libs"));
    }
}

#[test]
fn ld_so_conf_directories_and_symlinked_library_directories() {
    let env = Env::new();
    let from_conf = Options {
        allow_missing: &[],
        cache: Cache::FromConf,
    };
    env.compile(
        "c",
        "int custom(void) { return 1; }\n",
        "build/libcustom.so.2.0.1",
        &["-shared", "-fPIC", "-Wl,-soname,libcustom.so.2"],
    );
    let app = env.compile(
        "c",
        "int custom(void);\nint main(void) { return custom(); }\n",
        "build/app",
        &["build/libcustom.so.2.0.1"],
    );
    assert!(readelf_dynamic(&app).0.contains("libcustom.so.2"));

    let base = c_runtime();
    let mut conf = Tree::new();
    text(
        &mut conf,
        "etc/ld.so.conf",
        "include /etc/ld.so.conf.d/*.conf\n\n",
    );
    text(
        &mut conf,
        "etc/ld.so.conf.d/libc.conf",
        "# libc default configuration\n/usr/local/lib\n",
    );
    text(
        &mut conf,
        "etc/ld.so.conf.d/zz-custom.conf",
        "/opt/custom/lib   # the vendor's\n",
    );
    // ignored: only *.conf is included
    text(&mut conf, "etc/ld.so.conf.d/other.txt", "/nowhere\n");
    // /opt/custom is a symlink to a versioned directory; the library is a soname link
    link(&mut conf, "opt/custom", "custom-2.0");
    let mut layer = Tree::new();
    host_file(&mut layer, "usr/bin/app", &app);
    host_file(
        &mut layer,
        "opt/custom-2.0/lib/libcustom.so.2.0.1",
        &env.dir.join("build/libcustom.so.2.0.1"),
    );
    link(
        &mut layer,
        "opt/custom-2.0/lib/libcustom.so.2",
        "libcustom.so.2.0.1",
    );

    let report = check_with(&env.image(&[&base, &conf]), &layer, &from_conf).unwrap();
    assert!(report.is_ok(), "{report:#?}");
    assert_eq!(report.checked, 2);
    // by default only an ld.so.cache counts, and the image has none
    let report = check(&env.image(&[&base, &conf]), &layer, &[]).unwrap();
    assert_eq!(
        missing_of(&report, "/usr/bin/app"),
        BTreeSet::from(["libcustom.so.2".to_owned()])
    );

    // without the configuration, the directory is not searched
    let report = check_with(&env.image(&[&base]), &layer, &from_conf).unwrap();
    assert_eq!(
        missing_of(&report, "/usr/bin/app"),
        BTreeSet::from(["libcustom.so.2".to_owned()])
    );
    // with it, the directories it names are in the list, in order (libc6's
    // x86_64-linux-gnu.conf among them, the included files sorted by name), before the
    // default directories not already named
    let mut wrong = conf.clone();
    text(
        &mut wrong,
        "etc/ld.so.conf.d/zz-custom.conf",
        "/opt/other/lib\n",
    );
    let report = check_with(&env.image(&[&base, &wrong]), &layer, &from_conf).unwrap();
    assert_eq!(
        report.missing[0].searched,
        [
            "/usr/local/lib",
            "/usr/local/lib/x86_64-linux-gnu",
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/opt/other/lib",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib"
        ]
    );
}

#[test]
fn allowed_sonames_interpreters_and_other_machines() {
    let env = Env::new();
    env.compile(
        "c",
        "int cuInit(unsigned f) { return (int)f; }\n",
        "stub/libcuda.so",
        &["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1"],
    );
    let app = env.compile(
        "c",
        "int cuInit(unsigned);\nint main(void) { return cuInit(0); }\n",
        "build/gpu-app",
        &["-Lstub", "-lcuda"],
    );
    assert!(readelf_dynamic(&app).0.contains("libcuda.so.1"));
    let base = c_runtime();
    let image = env.image(&[&base]);
    let mut layer = Tree::new();
    host_file(&mut layer, "usr/local/bin/gpu-app", &app);

    let report = check(&image, &layer, &[]).unwrap();
    assert_eq!(
        missing_of(&report, "/usr/local/bin/gpu-app"),
        BTreeSet::from(["libcuda.so.1".to_owned()])
    );
    let msg = report.error_message(|_| vec![]).unwrap();
    assert!(msg.contains("/usr/local/bin/gpu-app"), "{msg}");
    assert!(msg.contains("allow_missing = [\"libcuda.so.1\"]"), "{msg}");
    let msg = report
        .error_message(|s| vec![format!("pkg-for-{s}")])
        .unwrap();
    assert!(
        msg.contains("add the Debian package `pkg-for-libcuda.so.1`"),
        "{msg}"
    );
    let report = check(&image, &layer, &["libcuda.so.1".to_owned()]).unwrap();
    assert!(report.is_ok(), "{report:#?}");
    assert_eq!(report.error_message(|_| vec![]), None);
    assert_eq!(report.allowed.len(), 1);
    assert_eq!(report.allowed[0].soname, "libcuda.so.1");

    // no loader in the image: the interpreter readelf names is missing
    let out = Command::new("readelf")
        .arg("-lW")
        .arg(&app)
        .output()
        .unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    let interp = out
        .split("[Requesting program interpreter: ")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap()
        .to_owned();
    let mut no_loader = base.clone();
    no_loader.remove(&TreePath::new("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").unwrap());
    let report = check(
        &env.image(&[&no_loader]),
        &layer,
        &["libcuda.so.1".to_owned()],
    )
    .unwrap();
    assert_eq!(report.missing.len(), 1, "{report:#?}");
    assert_eq!(report.missing[0].need, Need::Interpreter);
    assert_eq!(report.missing[0].soname, interp);
    // ... and allow_missing names libraries, not the loader
    let report = check(
        &env.image(&[&no_loader]),
        &layer,
        &[interp.clone(), "libcuda.so.1".to_owned()],
    )
    .unwrap();
    assert_eq!(report.missing.len(), 1);

    // a libcuda.so.1 for another machine (an aarch64 one, same bytes otherwise) in the
    // first default directory does not count; the loader goes on, and so does the check
    let mut foreign = fs::read(env.dir.join("stub/libcuda.so")).unwrap();
    foreign[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    fs::write(env.dir.join("stub/libcuda-arm64.so"), &foreign).unwrap();
    let mut arm = Tree::new();
    host_file(
        &mut arm,
        "usr/lib/x86_64-linux-gnu/libcuda.so.1",
        &env.dir.join("stub/libcuda-arm64.so"),
    );
    let with_arm = env.image(&[&base, &arm]);
    let report = check(&with_arm, &layer, &[]).unwrap();
    assert_eq!(
        missing_of(&report, "/usr/local/bin/gpu-app"),
        BTreeSet::from(["libcuda.so.1".to_owned()])
    );
    let mut right = Tree::new();
    host_file(
        &mut right,
        "usr/lib/libcuda.so.1",
        &env.dir.join("stub/libcuda.so"),
    );
    let report = check(&env.image(&[&base, &arm, &right]), &layer, &[]).unwrap();
    assert!(report.is_ok(), "{report:#?}");
}

#[test]
fn non_elf_files_are_skipped_and_broken_elf_files_reported() {
    let env = Env::new();
    let obj = env.compile("c", "int f(void) { return 1; }\n", "build/f.o", &["-c"]);
    let mut layer = Tree::new();
    text(&mut layer, "usr/share/doc/readme", "not an ELF file\n");
    text(&mut layer, "usr/bin/script", "#!/bin/sh\necho hi\n");
    // a relocatable object is not loaded by the loader
    host_file(&mut layer, "usr/lib/f.o", &obj);
    // separate debug info is never loaded
    host_file(
        &mut layer,
        "usr/lib/debug/.build-id/ab/cdef.debug",
        &Path::new(MULTIARCH).join("libstdc++.so.6"),
    );
    // the ELF header of a shared object, and nothing after it
    let head = fs::read(Path::new(MULTIARCH).join("libc.so.6")).unwrap();
    layer
        .insert(
            TreePath::new("usr/lib/truncated.so").unwrap(),
            Node::File {
                meta: Meta::FILE,
                content: Content::inline(head[..64].to_vec()),
            },
        )
        .unwrap();
    let report = check(&ImageFiles::default(), &layer, &[]).unwrap();
    assert_eq!(report.checked, 0, "{report:#?}");
    assert!(report.missing.is_empty());
    assert_eq!(report.unreadable.len(), 1);
    assert_eq!(report.unreadable[0].file, "/usr/lib/truncated.so");
}

/// Every file of the host's `/usr/lib/x86_64-linux-gnu` (a thousand-odd, mostly
/// libraries) as one layer over the C runtime: the report must match what `ldd`-free
/// reasoning gives (every library the directory's files need is in it, unless
/// readelf says a need points elsewhere), and it must be quick.
#[test]
fn a_large_real_layer_is_checked_quickly() {
    let env = Env::new();
    let layer = host_multiarch_dir();
    let files = layer
        .iter()
        .filter(|(_, n)| matches!(n, Node::File { .. }))
        .count();
    let image = env.image(&[&c_runtime()]);
    let start = Instant::now();
    let report = check(&image, &layer, &[]).unwrap();
    let took = start.elapsed();
    eprintln!(
        "linkage check: {files} files, {} ELF checked, {} missing, {} unreadable in {took:?}",
        report.checked,
        report.missing.len(),
        report.unreadable.len()
    );
    for m in &report.missing {
        eprintln!("{m}");
    }
    assert!(report.checked > 300, "{}", report.checked);
    // spot check against readelf: a library's needs that the directory lacks are
    // reported, those it has are not
    for m in report.missing.iter().take(20) {
        let (needed, _, _) = readelf_dynamic(Path::new(&m.file));
        assert!(
            needed.contains(&m.soname) || m.need == Need::Interpreter,
            "{m}"
        );
        assert!(!Path::new(MULTIARCH).join(&m.soname).exists(), "{m}");
    }
    assert!(took.as_secs() < 20, "{took:?}");
}

/// systemd's pattern: a program with RUNPATH to a private directory needs two private
/// libraries, one of which needs the other without any path of its own. At run time
/// the loader has the second loaded (by the program) when the first asks for it.
#[test]
fn a_private_library_passes_when_the_program_that_loads_it_brings_its_need() {
    let env = Env::new();
    env.compile(
        "c",
        "int shared_fn(void) { return 3; }\n",
        "priv/libapp-shared.so",
        &["-shared", "-fPIC", "-Wl,-soname,libapp-shared.so"],
    );
    env.compile(
        "c",
        "int shared_fn(void);\nint core_fn(void) { return shared_fn(); }\n",
        "priv/libapp-core.so",
        &[
            "-shared",
            "-fPIC",
            "-Wl,-soname,libapp-core.so",
            "priv/libapp-shared.so",
        ],
    );
    let app = env.compile(
        "c",
        "int core_fn(void); int shared_fn(void);\nint main(void) { return core_fn() + shared_fn(); }\n",
        "build/app",
        &[
            "priv/libapp-core.so",
            "priv/libapp-shared.so",
            "-Wl,-rpath,/usr/lib/app/private",
            "-Wl,--enable-new-dtags",
        ],
    );
    let core = env.dir.join("priv/libapp-core.so");
    assert_eq!(readelf_dynamic(&core).2.len(), 0, "no RUNPATH of its own");
    assert!(readelf_dynamic(&core).0.contains("libapp-shared.so"));

    let image = env.image(&[&c_runtime()]);
    let mut layer = Tree::new();
    for lib in ["libapp-shared.so", "libapp-core.so"] {
        host_file(
            &mut layer,
            &format!("usr/lib/app/private/{lib}"),
            &env.dir.join("priv").join(lib),
        );
    }
    // the libraries alone: the core one cannot find the shared one
    let report = check(&image, &layer, &[]).unwrap();
    assert_eq!(
        missing_of(&report, "/usr/lib/app/private/libapp-core.so"),
        BTreeSet::from(["libapp-shared.so".to_owned()])
    );
    // with the program that loads both
    host_file(&mut layer, "usr/bin/app", &app);
    let report = check(&image, &layer, &[]).unwrap();
    assert!(report.is_ok(), "{report:#?}");
    assert_eq!(report.checked, 3);

    // and the loader agrees: the files as a root directory, the program run in it
    let mut on_disk = c_runtime();
    for (p, n) in layer.iter() {
        on_disk.insert(p.clone(), n.clone()).unwrap();
    }
    let root = env.dir.join("chroot");
    materialise(&on_disk, &root);
    let out = Command::new("chroot")
        .arg(&root)
        .arg("/usr/bin/app")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "core_fn() + shared_fn(): {out:?}"
    );
}

/// Every file and symlink of the host's `/usr/lib/x86_64-linux-gnu`, at the same paths.
fn host_multiarch_dir() -> Tree {
    let mut layer = Tree::new();
    let mut stack = vec![PathBuf::from(MULTIARCH)];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path.strip_prefix("/").unwrap().to_str().unwrap().to_owned();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                link(&mut layer, &rel, target.to_str().unwrap());
            } else if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                host_file(&mut layer, &rel, &path);
            }
        }
    }
    layer
}

/// The cost of the check over a large lower layer: the host's library directory (660 MB)
/// as a layer blob below a small layer. Prints times; writing the blob takes a while,
/// so it runs on request: `cargo test --release -p imgbuild-layer --test linkage --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn timing_over_a_large_lower_layer() {
    let env = Env::new();
    let t = Instant::now();
    let blobs = env.blobs(&[&c_runtime(), &host_multiarch_dir()]);
    eprintln!("writing the layer blobs: {:?}", t.elapsed());
    let t = Instant::now();
    let image = ImageFiles::from_layers(&env.store, &blobs).unwrap();
    eprintln!("ImageFiles::from_layers: {:?}", t.elapsed());
    let ext = env.compile(
        "c++",
        CXX_EXT,
        "_core.cpython-311-x86_64-linux-gnu.so",
        &["-shared", "-fPIC", "-O1"],
    );
    let mut venv = Tree::new();
    host_file(&mut venv, &format!("{SITE}/pkg/_core.so"), &ext);
    let t = Instant::now();
    let report = check(&image, &venv, &[]).unwrap();
    eprintln!("check of a one-extension layer on it: {:?}", t.elapsed());
    assert!(report.is_ok(), "{report:#?}");
    let t = Instant::now();
    let report = check(&image, &host_multiarch_dir(), &[]).unwrap();
    eprintln!(
        "check of the same {} ELF files again as a layer on it: {:?}",
        report.checked,
        t.elapsed()
    );
}

/// The host's `/etc/ld.so.cache`, read by the checker, lists what `ldconfig -p` lists.
#[test]
fn ld_so_cache_is_read_as_ldconfig_prints_it() {
    let bytes = fs::read("/etc/ld.so.cache").unwrap();
    let ours: BTreeSet<(String, String)> = imgbuild_layer::linkage::ld_so_cache_entries(&bytes)
        .unwrap()
        .into_iter()
        .collect();
    let out = Command::new("ldconfig").arg("-p").output().unwrap();
    assert!(out.status.success());
    let theirs: BTreeSet<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (left, path) = l.trim().split_once(" => ")?;
            let soname = left.split(" (").next()?;
            Some((soname.to_owned(), path.to_owned()))
        })
        .collect();
    assert!(theirs.len() > 10, "{theirs:?}");
    assert_eq!(ours, theirs);
    assert!(imgbuild_layer::linkage::ld_so_cache_entries(b"not a cache").is_none());
}

/// `Cache::AsInImage` (the default): a library outside the default directories is
/// found only when the image's `/etc/ld.so.cache` lists it (made here by the real
/// `ldconfig -r` over the image's files), whatever `/etc/ld.so.conf` says. The real
/// loader agrees: the same files as a root directory, run with `chroot`, fail without
/// the cache and run with it.
#[test]
fn the_image_ld_so_cache_is_what_counts() {
    let env = Env::new();
    env.compile(
        "c",
        "int custom(void) { return 1; }\n",
        "root/opt/custom/lib/libcustom.so.2.0.1",
        &["-shared", "-fPIC", "-Wl,-soname,libcustom.so.2"],
    );
    let app = env.compile(
        "c",
        "int custom(void);\nint main(void) { return custom(); }\n",
        "build/app",
        &["root/opt/custom/lib/libcustom.so.2.0.1"],
    );
    let root = env.dir.join("root");
    fs::create_dir_all(root.join("etc/ld.so.conf.d")).unwrap();
    fs::write(
        root.join("etc/ld.so.conf"),
        "include /etc/ld.so.conf.d/*.conf\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/ld.so.conf.d/custom.conf"),
        "/opt/custom/lib\n",
    )
    .unwrap();
    let st = Command::new("ldconfig")
        .arg("-r")
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        root.join("opt/custom/lib/libcustom.so.2").exists(),
        "ldconfig made the link"
    );

    let base = c_runtime();
    let mut conf = Tree::new();
    for f in ["etc/ld.so.conf", "etc/ld.so.conf.d/custom.conf"] {
        host_file(&mut conf, f, &root.join(f));
    }
    let mut cache = conf.clone();
    host_file(&mut cache, "etc/ld.so.cache", &root.join("etc/ld.so.cache"));
    let mut layer = Tree::new();
    host_file(&mut layer, "usr/bin/app", &app);
    host_file(
        &mut layer,
        "opt/custom/lib/libcustom.so.2.0.1",
        &root.join("opt/custom/lib/libcustom.so.2.0.1"),
    );
    link(
        &mut layer,
        "opt/custom/lib/libcustom.so.2",
        "libcustom.so.2.0.1",
    );
    let as_in_image = Options {
        allow_missing: &[],
        cache: Cache::AsInImage,
    };
    let report = check_with(&env.image(&[&base, &cache]), &layer, &as_in_image).unwrap();
    assert!(report.is_ok(), "{report:#?}");
    let report = check_with(&env.image(&[&base, &conf]), &layer, &as_in_image).unwrap();
    assert_eq!(
        missing_of(&report, "/usr/bin/app"),
        BTreeSet::from(["libcustom.so.2".to_owned()])
    );
    assert!(
        !report.missing[0]
            .searched
            .contains(&"/opt/custom/lib".to_owned())
    );
    assert_eq!(
        check(&env.image(&[&base, &conf]), &layer, &[]).unwrap(),
        report
    );
    // when the build makes the cache from the configuration
    let from_conf = Options {
        allow_missing: &[],
        cache: Cache::FromConf,
    };
    let report = check_with(&env.image(&[&base, &conf]), &layer, &from_conf).unwrap();
    assert!(report.is_ok(), "{report:#?}");

    // the loader itself, on the same files as a root directory: the C runtime, the
    // program, and the configuration; first without the cache, then with it
    let mut on_disk = base.clone();
    for t in [&conf, &layer] {
        for (p, n) in t.iter() {
            on_disk.insert(p.clone(), n.clone()).unwrap();
        }
    }
    let chroot = env.dir.join("chroot");
    materialise(&on_disk, &chroot);
    let run = || {
        Command::new("chroot")
            .arg(&chroot)
            .arg("/usr/bin/app")
            .output()
            .unwrap()
    };
    let out = run();
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("libcustom.so.2: cannot open shared object file"),
        "{out:?}"
    );
    fs::copy(root.join("etc/ld.so.cache"), chroot.join("etc/ld.so.cache")).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(1), "custom() returns 1: {out:?}");
}

/// Writes a tree's files and symlinks below `root` (host files copied, modes kept).
fn materialise(tree: &Tree, root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for (p, n) in tree.iter() {
        let dest = root.join(p.as_str());
        match n {
            Node::Dir(_) => fs::create_dir_all(&dest).unwrap(),
            Node::Symlink { target, .. } => {
                fs::create_dir_all(dest.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(target, &dest).unwrap();
            }
            Node::File { meta, content } => {
                fs::create_dir_all(dest.parent().unwrap()).unwrap();
                match content {
                    Content::Host { path, .. } => {
                        fs::copy(path, &dest).unwrap();
                    }
                    Content::Inline(b) => fs::write(&dest, b).unwrap(),
                    Content::Range { .. } => unreachable!("not used here"),
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(meta.mode)).unwrap();
            }
            Node::Hardlink { .. } => unreachable!("not used here"),
        }
    }
}

/// Debian layers hold a file as a byte range of a spooled `data.tar` and small ones
/// inline: the same ELF file gives the same report from either.
#[test]
fn files_held_as_byte_ranges_or_inline_are_read_the_same() {
    let env = Env::new();
    let ext = env.compile(
        "c++",
        CXX_EXT,
        "_core.cpython-311-x86_64-linux-gnu.so",
        &["-shared", "-fPIC", "-O1"],
    );
    let bytes = fs::read(&ext).unwrap();
    let spool = env.dir.join("spool");
    let mut data = vec![0x7fu8; 1001];
    data.extend_from_slice(&bytes);
    data.extend_from_slice(b"ELF trailing bytes of the next member");
    fs::write(&spool, &data).unwrap();
    let image = env.image(&[&c_runtime()]);
    let path = |n: &str| TreePath::new(&format!("usr/lib/python3/dist-packages/{n}.so")).unwrap();
    let mut layer = Tree::new();
    for (name, content) in [
        (
            "range",
            Content::Range {
                path: spool.clone(),
                offset: 1001,
                size: bytes.len() as u64,
            },
        ),
        ("inline", Content::inline(bytes.clone())),
    ] {
        layer
            .insert(
                path(name),
                Node::File {
                    meta: Meta::FILE,
                    content,
                },
            )
            .unwrap();
    }
    host_file(&mut layer, path("host").as_str(), &ext);
    let report = check(&image, &layer, &[]).unwrap();
    assert_eq!(report.checked, 3, "{report:#?}");
    let by_file: BTreeSet<(String, String)> = report
        .missing
        .iter()
        .map(|m| {
            (
                m.file.rsplit('/').next().unwrap().to_owned(),
                m.soname.clone(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ["host.so", "inline.so", "range.so"]
        .iter()
        .map(|f| (f.to_string(), "libstdc++.so.6".to_owned()))
        .collect();
    assert_eq!(by_file, expected);
}

/// An arm64 program finds its libraries in the aarch64 multiarch directories and its
/// loader at `/lib/ld-linux-aarch64.so.1`; the amd64 libraries beside them do not
/// count. (The files are amd64 builds whose `e_machine` says aarch64: the check reads
/// the machine from the header, as the loader does.)
#[test]
fn an_arm64_program_looks_in_the_aarch64_directories() {
    let env = Env::new();
    let app = env.compile(
        "c",
        "#include <math.h>\nint main(int c, char **v) { return (int)sqrt((double)c); }\n",
        "build/arm-app",
        &["-lm", "-Wl,--dynamic-linker=/lib/ld-linux-aarch64.so.1"],
    );
    let as_arm64 = |src: &Path, name: &str| -> PathBuf {
        let mut b = fs::read(src).unwrap();
        b[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
        let out = env.dir.join(name);
        fs::write(&out, b).unwrap();
        out
    };
    let needed = readelf_dynamic(&app).0;
    assert!(needed.contains("libm.so.6") && needed.contains("libc.so.6"));
    let mut arm = Tree::new();
    for lib in ["libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2"] {
        let dest = if lib.starts_with("ld-") {
            "ld-linux-aarch64.so.1"
        } else {
            lib
        };
        let p = as_arm64(&Path::new(MULTIARCH).join(lib), &format!("arm-{dest}"));
        host_file(&mut arm, &format!("usr/lib/aarch64-linux-gnu/{dest}"), &p);
    }
    link(
        &mut arm,
        "usr/lib/ld-linux-aarch64.so.1",
        "aarch64-linux-gnu/ld-linux-aarch64.so.1",
    );
    let mut layer = Tree::new();
    host_file(&mut layer, "usr/bin/arm-app", &as_arm64(&app, "arm-app"));

    let report = check(&env.image(&[&c_runtime(), &arm]), &layer, &[]).unwrap();
    assert!(report.is_ok(), "{report:#?}");
    // the amd64 C runtime alone: nothing for an arm64 program
    let report = check(&env.image(&[&c_runtime()]), &layer, &[]).unwrap();
    let missing: BTreeSet<&str> = report.missing.iter().map(|m| m.soname.as_str()).collect();
    assert_eq!(
        missing,
        BTreeSet::from(["/lib/ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6"])
    );
    let libc = report
        .missing
        .iter()
        .find(|m| m.soname == "libc.so.6")
        .unwrap();
    assert_eq!(
        libc.searched[..2],
        ["/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
    );
}
