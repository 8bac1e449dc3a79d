//! Python requirements built from their sdist in the sandbox (`python = { build = {
//! image, requirements } }`): a C extension linked against Debian's libyaml, served as
//! an sdist by a local index, built by setuptools (pinned wheels from PyPI) in a builder
//! recipe of real Debian packages, installed, and run in a real engine; built twice
//! with the same bytes (`--check-reproducible`); a runtime layer without libyaml is a
//! linkage error naming the package; without `build`, the clear error of today.
//! A `name @ git+http://…@<commit>` requirement served by a local dumb-HTTP git
//! server: the pinned commit is built although its branch has moved on; a commit the
//! repository does not have, and a branch name, are refused. The same repository's
//! tree at commit A copied by `files = [ { git, rev, dest } ]`.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use sha2::Digest as _;

use crate::support::*;

/// python3.11 with its headers, gcc (`x86_64-linux-gnu-gcc`, the compiler Python's
/// sysconfig names) and libyaml's headers. No .pyc: nothing imports twice here.
const PY_BUILDER: &str = "[[layers]]\n\
debian = { packages = [\"python3.11\", \"python3.11-dev\", \"gcc\", \"libc6-dev\", \"libyaml-dev\"], bytecode = false }\n";

/// PEP 517 backends for the build, wheels from PyPI pinned by hash.
const BUILD_REQUIREMENTS: &str = "setuptools==80.9.0 \\\n    --hash=sha256:062d34222ad13e0cc312a4c02d73f059e86a4acbfbdea8f8f76b28c99f306922\n\
wheel==0.45.1 \\\n    --hash=sha256:708e7481cc80179af0e556bbf0cc00b8444c7321e2700b8d8580231d13017248\n";

const SPAM_C: &str = r#"#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <yaml.h>

static PyObject *hello(PyObject *self, PyObject *args) {
    return PyUnicode_FromFormat("spam built from its sdist, libyaml %s", yaml_get_version_string());
}

static PyMethodDef methods[] = {{"hello", hello, METH_NOARGS, "greet"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "spam", NULL, -1, methods};
PyMODINIT_FUNC PyInit_spam(void) { return PyModule_Create(&module); }
"#;

const SETUP_PY: &str = "from setuptools import Extension, setup\n\
setup(name=\"spam\", version=\"1.0\", ext_modules=[Extension(\"spam\", [\"spam.c\"], libraries=[\"yaml\"])])\n";

const PYPROJECT: &str = "[build-system]\nrequires = [\"setuptools\", \"wheel\"]\nbuild-backend = \"setuptools.build_meta\"\n";

const PKG_INFO: &str = "Metadata-Version: 2.1\nName: spam\nVersion: 1.0\n";

/// `python3 -m http.server` on 127.0.0.1 over a directory, stopped by its pid.
struct HttpServer {
    child: Child,
    port: u16,
}

impl HttpServer {
    fn start(dir: &Path) -> HttpServer {
        require("python3");
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(20, "the http server", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        HttpServer { child, port }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `spam-1.0.tar.gz` made with Python's tarfile (fixed mtimes and owners), served
/// by a PEP 503 index under `root`; returns its sha256.
fn write_sdist_index(root: &Path) -> String {
    let src = root.join("src/spam-1.0");
    fs::create_dir_all(&src).unwrap();
    for (name, text) in [
        ("spam.c", SPAM_C),
        ("setup.py", SETUP_PY),
        ("pyproject.toml", PYPROJECT),
        ("PKG-INFO", PKG_INFO),
    ] {
        fs::write(src.join(name), text).unwrap();
    }
    fs::create_dir_all(root.join("files")).unwrap();
    let sdist = root.join("files/spam-1.0.tar.gz");
    run_ok(Command::new("python3").arg("-c").arg(
        "import sys, tarfile\n\
         def norm(t):\n    t.mtime = 0; t.uid = t.gid = 0; t.uname = t.gname = ''; return t\n\
         with tarfile.open(sys.argv[1], 'w:gz') as t:\n    t.add(sys.argv[2], 'spam-1.0', filter=norm)\n",
    ).arg(&sdist).arg(&src));
    let sha = hex::encode(sha2::Sha256::digest(fs::read(&sdist).unwrap()));
    fs::create_dir_all(root.join("simple/spam")).unwrap();
    fs::write(
        root.join("simple/spam/index.html"),
        format!("<html><body><a href=\"../../files/spam-1.0.tar.gz#sha256={sha}\">spam-1.0.tar.gz</a></body></html>\n"),
    )
    .unwrap();
    sha
}

/// git with a fixed identity and no user configuration, in `dir`.
fn git(dir: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.org")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.org"),
    )
    .trim()
    .to_owned()
}

/// A pure-Python project `gitpkg` in a bare repository under `root/gitpkg.git`,
/// served as dumb HTTP (`git update-server-info`): commit A says "first", then the
/// branch moves on to commit B ("second"). Returns (A, B).
fn write_git_repo(root: &Path) -> (String, String) {
    let work = root.join("work");
    fs::create_dir_all(work.join("gitpkg")).unwrap();
    git(&work, &["init", "--quiet", "--initial-branch=main"]);
    fs::write(work.join("pyproject.toml"), "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"gitpkg\"\nversion = \"2.0\"\n").unwrap();
    let mut commits = vec![];
    for value in ["first", "second"] {
        fs::write(
            work.join("gitpkg/__init__.py"),
            format!("VALUE = \"{value}\"\n"),
        )
        .unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", value]);
        commits.push(git(&work, &["rev-parse", "HEAD"]));
    }
    let bare = root.join("gitpkg.git");
    git(root, &["clone", "--quiet", "--bare", "work", "gitpkg.git"]);
    git(&bare, &["update-server-info"]);
    (commits[0].clone(), commits[1].clone())
}

fn app_recipe(runtime_packages: &str, build: bool) -> String {
    let build = if build {
        ", build = { image = \"py-builder\", requirements = \"build-requirements.txt\" }"
    } else {
        ""
    };
    format!(
        "[config]\nentrypoint = [\"/opt/venv/bin/python\", \"-c\", \"import spam; print(spam.hello())\"]\n\n\
         [[layers]]\ndebian = {{ packages = [{runtime_packages}], bytecode = false }}\n\n\
         [[layers]]\npython = {{ requirements = \"requirements.txt\"{build} }}\n"
    )
}

fn fails(f: &Fixture, args: &[&str]) -> String {
    let out = f.run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} succeeded:\n{err}");
    err
}

#[test]
fn a_c_extension_is_built_from_its_sdist_in_the_sandbox_and_works_in_an_engine() {
    require("bwrap");
    require("docker");
    let f = Fixture::new("hello");
    let index = tempfile::tempdir().unwrap();
    let sha = write_sdist_index(index.path());
    let server = HttpServer::start(index.path());
    fs::write(
        f.path().join("requirements.txt"),
        format!(
            "--index-url http://127.0.0.1:{}/simple\nspam==1.0 --hash=sha256:{sha}\n",
            server.port
        ),
    )
    .unwrap();
    fs::write(f.path().join("build-requirements.txt"), BUILD_REQUIREMENTS).unwrap();
    fs::write(f.path().join("recipes/py-builder.toml"), PY_BUILDER).unwrap();

    // (1) without `build`: the clear error of before, now pointing at `build`
    fs::write(
        f.path().join("recipes/spam-nobuild.toml"),
        app_recipe("\"python3.11\", \"libyaml-0-2\"", false),
    )
    .unwrap();
    let err = fails(&f, &["build", "spam-nobuild"]);
    assert!(
        err.contains("spam 1.0: no wheel is compatible")
            && err.contains("spam-1.0.tar.gz")
            && err.contains("build = {"),
        "{err}"
    );

    // (2) with `build`: built twice in separate sandboxes with the same bytes
    // (--check-reproducible), installed, imported and run in a real engine
    fs::write(
        f.path().join("recipes/spam.toml"),
        app_recipe("\"python3.11\", \"libyaml-0-2\"", true),
    )
    .unwrap();
    let first = f.build_json(&["build", "--check-reproducible", "spam"]);
    let image = first["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "spam")
        .unwrap()
        .clone();
    let tar = image["tarball"].as_str().unwrap();
    let img = DockerImage::load(Path::new(tar), "spam");
    let out = run_ok(Command::new("docker").args(["run", "--rm", &img.0]));
    assert!(
        out.trim()
            .starts_with("spam built from its sdist, libyaml 0.2."),
        "{out}"
    );

    // (3) unchanged: the whole image is cached, nothing is built again
    let second = f.build_json(&["build", "spam"]);
    for l in layers_of(&second, "spam") {
        assert!(l.1, "{second}");
    }

    // (4) the linkage check sees the built extension: without libyaml's runtime
    // package the build fails naming the library and the package
    fs::write(
        f.path().join("recipes/spam-nolib.toml"),
        app_recipe("\"python3.11\"", true),
    )
    .unwrap();
    let err = fails(&f, &["build", "spam-nolib"]);
    assert!(
        err.contains("libyaml-0.so.2") && err.contains("libyaml-0-2") && err.contains("spam"),
        "{err}"
    );

    // (5) a git requirement, pinned to commit A while its branch is at B: A is built
    let (a, b) = write_git_repo(index.path());
    assert_ne!(a, b);
    let url = format!("http://127.0.0.1:{}/gitpkg.git", server.port);
    let git_recipe = |name: &str, req: &str| {
        fs::write(f.path().join(format!("{name}.txt")), format!("{req}\n")).unwrap();
        fs::write(
            f.path().join(format!("recipes/{name}.toml")),
            format!(
                "[config]\nentrypoint = [\"/opt/venv/bin/python\", \"-c\", \"import gitpkg; print(gitpkg.VALUE)\"]\n\n\
                 [[layers]]\ndebian = {{ packages = [\"python3.11\"], bytecode = false }}\n\n\
                 [[layers]]\npython = {{ requirements = \"{name}.txt\", build = {{ image = \"py-builder\", requirements = \"build-requirements.txt\" }} }}\n\n\
                 [[layers]]\nfiles = [ {{ git = \"{url}\", rev = \"{a}\", dest = \"/app\" }} ]\n"
            ),
        )
        .unwrap();
    };
    git_recipe("gitapp", &format!("gitpkg @ git+{url}@{a}"));
    let built = f.build_json(&["build", "gitapp"]);
    let tar = built["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "gitapp")
        .unwrap()["tarball"]
        .as_str()
        .unwrap()
        .to_owned();
    let img = DockerImage::load(Path::new(&tar), "gitapp");
    let out = run_ok(Command::new("docker").args(["run", "--rm", &img.0]));
    assert_eq!(out.trim(), "first");
    // the files layer: commit A's tree at /app, git's modes, root's files
    let out = run_ok(Command::new("docker").args([
        "run",
        "--rm",
        "--entrypoint",
        "/opt/venv/bin/python",
        &img.0,
        "-c",
        "import os; p = '/app/gitpkg/__init__.py'; s = os.stat(p); print(open(p).read().strip(), oct(s.st_mode & 0o777), s.st_uid, sorted(os.listdir('/app')))",
    ]));
    assert_eq!(
        out.trim(),
        "VALUE = \"first\" 0o644 0 ['gitpkg', 'pyproject.toml']"
    );
    // a branch as a files `rev` is a recipe error
    fs::write(
        f.path().join("recipes/gitfiles-branch.toml"),
        format!("[[layers]]\nfiles = [ {{ git = \"{url}\", rev = \"main\", dest = \"/app\" }} ]\n"),
    )
    .unwrap();
    let err = fails(&f, &["build", "gitfiles-branch"]);
    assert!(
        err.contains("gitfiles-branch.toml") && err.contains("rev \"main\" is not a commit"),
        "{err}"
    );
    // (every recipe of the project is read by every build)
    fs::remove_file(f.path().join("recipes/gitfiles-branch.toml")).unwrap();

    // (6) a commit the repository does not have is refused
    let wrong = "0123456789abcdef0123456789abcdef01234567";
    git_recipe("gitwrong", &format!("gitpkg @ git+{url}@{wrong}"));
    let err = fails(&f, &["build", "gitwrong"]);
    assert!(err.contains(&format!("has no commit {wrong}")), "{err}");

    // (7) a branch instead of a commit is an error naming the line
    git_recipe("gitbranch", &format!("gitpkg @ git+{url}@main"));
    let err = fails(&f, &["build", "gitbranch"]);
    assert!(
        err.contains("gitbranch.txt") && err.contains("`@main` is not a commit"),
        "{err}"
    );
    drop(server);
}
