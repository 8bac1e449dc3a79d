//! Test helpers: crafting wheels in memory, and a tiny PEP 503 index served over HTTP on
//! 127.0.0.1 (a real server speaking HTTP/1.1 to the real client code).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Cursor, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use sha2::Digest as _;

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(b))
}

fn record_hash(b: &[u8]) -> String {
    format!(
        "sha256={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(b))
    )
}

/// A wheel built in memory. `files` are (path in wheel, content, unix mode); the
/// dist-info METADATA/WHEEL/RECORD are added unless `files` provides them.
pub struct WheelSpec<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub requires_dist: &'a [&'a str],
    pub entry_points: Option<&'a str>,
    pub files: Vec<(String, Vec<u8>, u32)>,
}

pub fn build_wheel(w: &WheelSpec) -> Vec<u8> {
    let di = format!("{}-{}.dist-info", w.name.replace('-', "_"), w.version);
    let mut files = w.files.clone();
    let mut meta = format!(
        "Metadata-Version: 2.1\nName: {}\nVersion: {}\n",
        w.name, w.version
    );
    for r in w.requires_dist {
        meta.push_str(&format!("Requires-Dist: {r}\n"));
    }
    meta.push_str("\nLong description: Requires-Dist: not-a-dependency\n");
    files.push((format!("{di}/METADATA"), meta.into_bytes(), 0o644));
    files.push((
        format!("{di}/WHEEL"),
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n".to_vec(),
        0o644,
    ));
    if let Some(ep) = w.entry_points {
        files.push((
            format!("{di}/entry_points.txt"),
            ep.as_bytes().to_vec(),
            0o644,
        ));
    }
    let mut record = String::new();
    for (p, c, _) in &files {
        record.push_str(&format!("{p},{},{}\n", record_hash(c), c.len()));
    }
    record.push_str(&format!("{di}/RECORD,,\n"));
    files.push((format!("{di}/RECORD"), record.into_bytes(), 0o644));
    zip_bytes(&files)
}

pub fn zip_bytes(files: &[(String, Vec<u8>, u32)]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (p, c, mode) in files {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(*mode);
        z.start_file(p.as_str(), opts).unwrap();
        z.write_all(c).unwrap();
    }
    z.finish().unwrap().into_inner()
}

type Routes = Arc<Mutex<BTreeMap<String, (String, Vec<u8>)>>>;
/// (file name, sha256 hex claimed by the index, requires-python, body)
pub type Published<'a> = (&'a str, Option<String>, Option<&'a str>, Vec<u8>);

/// A PEP 503 HTML index on 127.0.0.1. Routes map a path to (content type, body).
pub struct Index {
    pub port: u16,
    pub routes: Routes,
    /// Requests whose path ends in `.whl`.
    pub wheel_requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Index {
    pub fn start() -> Index {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes: Routes = Arc::default();
        let wheel_requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, w, s) = (routes.clone(), wheel_requests.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (r, w) = (r.clone(), w.clone());
                std::thread::spawn(move || serve(conn, &r, &w));
            }
        });
        Index {
            port,
            routes,
            wheel_requests,
            stop,
            handle: Some(handle),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/simple", self.port)
    }

    /// Publishes a project page listing `files` as (filename, claimed sha256 hex or None,
    /// requires-python), and the files' bodies under /files/.
    pub fn project(&self, key: &str, files: &[Published]) {
        let mut html = String::from("<!DOCTYPE html><html><body>\n");
        let mut routes = self.routes.lock().unwrap();
        for (name, sha, rp, body) in files {
            let frag = sha
                .as_ref()
                .map(|h| format!("#sha256={h}"))
                .unwrap_or_default();
            let rp = rp
                .map(|r| {
                    format!(
                        " data-requires-python=\"{}\"",
                        r.replace('>', "&gt;").replace('<', "&lt;")
                    )
                })
                .unwrap_or_default();
            html.push_str(&format!(
                "<a href=\"../../files/{name}{frag}\"{rp}>{name}</a><br/>\n"
            ));
            routes.insert(
                format!("/files/{name}"),
                ("application/octet-stream".into(), body.clone()),
            );
        }
        html.push_str("</body></html>\n");
        routes.insert(
            format!("/simple/{key}/"),
            ("text/html".into(), html.into_bytes()),
        );
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    routes: &Mutex<BTreeMap<String, (String, Vec<u8>)>>,
    wheels: &AtomicUsize,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    if path.ends_with(".whl") {
        wheels.fetch_add(1, Ordering::SeqCst);
    }
    let found = routes.lock().unwrap().get(&path).cloned();
    let mut conn = conn;
    let _ = match found {
        Some((ct, body)) => conn
            .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes())
            .and_then(|_| conn.write_all(&body)),
        None => conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
}

/// Files under a directory, recursively (for "nothing was left behind" checks).
pub fn count_files(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .user_agent("imgbuild-python-tests")
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .unwrap()
}

/// A one-layer image holding this machine's Debian python3.11 (CPython 3.11.2 on
/// bookworm): `/usr/bin/python3.11`, its standard library, the shared libraries it
/// loads, the loader and the merged-/usr links, laid out as Debian's packages do and
/// written as a real layer blob into `store`. Returns the blob's digest.
pub fn debian_python_layer(store: &imgbuild_store::Store) -> imgbuild_store::Digest {
    use imgbuild_layer::{Content, Meta, Node, Tree, TreePath};
    use std::path::Path;
    let python = Path::new("/usr/bin/python3.11");
    assert!(
        python.is_file() && Path::new("/usr/lib/python3.11/os.py").is_file(),
        "these tests need Debian's python3.11 (python3.11-minimal, libpython3.11-stdlib) on the build machine"
    );
    let mut tree = Tree::new();
    let add_host = |tree: &mut Tree, rel: &str, host: &Path| {
        let m = std::fs::symlink_metadata(host).unwrap();
        let node = if m.file_type().is_symlink() {
            Node::Symlink {
                meta: Meta::new(0o777, 0, 0),
                target: std::fs::read_link(host)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            }
        } else if m.is_dir() {
            Node::Dir(Meta::DIR)
        } else {
            use std::os::unix::fs::PermissionsExt;
            Node::File {
                meta: Meta::new(m.permissions().mode() & 0o7777, 0, 0),
                content: Content::Host {
                    path: host.to_path_buf(),
                    size: m.len(),
                    hash: None,
                },
            }
        };
        tree.insert(TreePath::new(rel).unwrap(), node).unwrap();
    };
    for (link, target) in [
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("bin", "usr/bin"),
    ] {
        tree.insert(
            TreePath::new(link).unwrap(),
            Node::Symlink {
                meta: Meta::new(0o777, 0, 0),
                target: target.into(),
            },
        )
        .unwrap();
    }
    add_host(&mut tree, "usr/bin/python3.11", python);
    tree.insert(
        TreePath::new("usr/lib64/ld-linux-x86-64.so.2").unwrap(),
        Node::Symlink {
            meta: Meta::new(0o777, 0, 0),
            target: "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
        },
    )
    .unwrap();
    let libdir = Path::new("/usr/lib/x86_64-linux-gnu");
    for e in std::fs::read_dir(libdir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if [
            "ld-linux-x86-64.so",
            "libc.so",
            "libm.so",
            "libz.so",
            "libexpat.so",
        ]
        .iter()
        .any(|p| name.starts_with(p))
        {
            add_host(
                &mut tree,
                &format!("usr/lib/x86_64-linux-gnu/{name}"),
                &e.path(),
            );
        }
    }
    fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, std::path::PathBuf)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            if ["__pycache__", "dist-packages", "site-packages", "test"].contains(&name.as_str()) {
                continue;
            }
            let r = format!("{rel}/{name}");
            out.push((r.clone(), e.path()));
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &r, out);
            }
        }
    }
    let mut stdlib = vec![];
    walk(
        Path::new("/usr/lib/python3.11"),
        "usr/lib/python3.11",
        &mut stdlib,
    );
    for (rel, host) in stdlib {
        add_host(&mut tree, &rel, &host);
    }
    let opts = imgbuild_layer::WriteOptions {
        mtime: 0,
        threads: 1,
    };
    imgbuild_layer::write_layer(&tree, &opts, store)
        .unwrap()
        .descriptor
        .digest
}

/// The image interpreter of [`debian_python_layer`], copied out and probed.
pub fn image_interpreter(store: &imgbuild_store::Store) -> imgbuild_python::ImageInterpreter {
    let layer = debian_python_layer(store);
    let image = imgbuild_python::ImageFiles::from_layers(store, &[layer]).unwrap();
    imgbuild_python::ImageInterpreter::materialise(
        &image,
        "/usr/bin/python3.11",
        &imgbuild_python::Target::bookworm_cpython311(),
        store,
    )
    .unwrap()
}
