//! Downloads: the one HTTP GET helper of the crate (status handling, retries of transient
//! failures) and [`fetch_debs`], which brings locked `.deb`s into the store in parallel,
//! each checked against the SHA256 and size the signed index gave. A lock is enough:
//! no index is downloaded here.

use std::io::BufReader;
use std::sync::Mutex;

use imgbuild_store::Store;

use crate::error::{Error, Result, from_store};
use crate::{LockedPackage, Mirror};

/// GET with up to three tries for connection errors and 5xx answers. 404 and other
/// client errors are returned at once as [`Error::HttpStatus`].
pub(crate) fn get(
    http: &reqwest::blocking::Client,
    url: &str,
) -> Result<reqwest::blocking::Response> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let res = http.get(url).send();
        match res {
            Ok(r) if r.status().is_success() => return Ok(r),
            Ok(r) if r.status().is_server_error() && attempt < 3 => {}
            Ok(r) => {
                return Err(Error::HttpStatus {
                    url: url.to_owned(),
                    status: r.status().as_u16(),
                });
            }
            Err(e) if attempt < 3 && (e.is_connect() || e.is_timeout() || e.is_request()) => {}
            Err(e) => {
                return Err(Error::Http {
                    url: url.to_owned(),
                    source: e,
                });
            }
        }
        // back off a little before retrying a transient failure
        std::thread::sleep(std::time::Duration::from_millis(500 * attempt));
    }
}

/// The URL a locked package is fetched from.
pub fn deb_url(mirror: &Mirror, pkg: &LockedPackage) -> String {
    format!(
        "{}/{}",
        mirror.base_url(pkg.base),
        pkg.filename.trim_start_matches('/')
    )
}

/// Makes sure every package's `.deb` is in the store, verified. Cached blobs are re-hashed
/// ([`Store::verify`] removes a tampered one, which is then fetched again); missing ones are
/// downloaded by up to `jobs` threads and committed only if SHA256 and size match.
/// `progress` is called with a short line per download.
pub fn fetch_debs(
    mirror: &Mirror,
    pkgs: &[LockedPackage],
    store: &Store,
    http: &reqwest::blocking::Client,
    jobs: usize,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let mut todo: Vec<&LockedPackage> = vec![];
    let mut seen = std::collections::BTreeSet::new();
    for p in pkgs {
        if !seen.insert(&p.sha256) {
            continue;
        }
        if store.has_blob(&p.sha256) && store.verify(&p.sha256)? {
            continue;
        }
        todo.push(p);
    }
    todo.reverse(); // popped from the back: fetch in the given order
    let queue = Mutex::new(todo);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let workers = jobs.clamp(1, 16);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    if first_error.lock().unwrap().is_some() {
                        return;
                    }
                    let Some(p) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    if let Err(e) = fetch_one(mirror, p, store, http, progress) {
                        first_error.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn fetch_one(
    mirror: &Mirror,
    p: &LockedPackage,
    store: &Store,
    http: &reqwest::blocking::Client,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let url = deb_url(mirror, p);
    progress(&format!(
        "fetch {} {} ({} bytes)",
        p.name, p.version, p.size
    ));
    let resp = match get(http, &url) {
        Err(Error::HttpStatus {
            status: 404 | 410,
            url,
        }) => {
            return Err(Error::DebGone {
                name: p.name.clone(),
                version: p.version.clone(),
                url,
            });
        }
        other => other?,
    };
    store
        .put_verified(
            BufReader::with_capacity(1 << 20, resp),
            &p.sha256,
            Some(p.size),
            &url,
        )
        .map_err(from_store)?;
    Ok(())
}
