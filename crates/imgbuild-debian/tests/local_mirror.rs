//! The trust chain against a local mirror on 127.0.0.1 that serves a real, validly signed
//! `InRelease` (bookworm-security, saved as a fixture) but a `Packages` file that does not
//! match it, or a tampered `InRelease`: neither may enter the store. The mirror base has a
//! path prefix like a snapshot mirror's.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;

use imgbuild_debian::index::{Base, Index};
use imgbuild_debian::{Error, Mirror};
use imgbuild_store::Store;

const INRELEASE: &str = include_str!("fixtures/bookworm-security.InRelease");

/// Serves `routes` (path suffix -> body); everything else is 404. Runs until the test ends.
fn serve(routes: Vec<(String, Vec<u8>)>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let routes = Arc::new(routes);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let routes = routes.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                }
                match routes
                    .iter()
                    .find(|(suffix, _)| path.ends_with(suffix.as_str()))
                {
                    Some((_, body)) => {
                        write!(
                            c,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .unwrap();
                        c.write_all(body).unwrap();
                    }
                    None => write!(
                        c,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .unwrap(),
                }
            });
        }
    });
    format!("http://{addr}/archive/debian-security/20261120T000000Z")
}

fn signed_size_of_packages() -> usize {
    let line = INRELEASE
        .lines()
        .find(|l| l.ends_with(" main/binary-amd64/Packages"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn fetch(security: String, store: &Store) -> Result<Index, Error> {
    let mirror = Mirror {
        archive: "http://127.0.0.1:9/unused".into(),
        security,
    };
    Index::fetch_suites(
        &mirror,
        store,
        &reqwest::blocking::Client::new(),
        &[("bookworm-security", Base::DebianSecurity)],
    )
}

#[test]
fn packages_not_matching_the_signed_release_is_refused() {
    // right size, wrong content: only the digest check can catch it
    let size = signed_size_of_packages();
    let mut fake = "Package: evil\nVersion: 1\nArchitecture: amd64\nFilename: pool/evil.deb\nSize: 1\nSHA256: 00\n\n".repeat(size / 80 + 1).into_bytes();
    fake.truncate(size);
    assert_eq!(fake.len(), size);
    let xz = {
        let mut w = liblzma::write::XzEncoder::new(Vec::new(), 1);
        w.write_all(&fake).unwrap();
        w.finish().unwrap()
    };
    // by-hash answers 404, so the plain path is used (the fallback is exercised too)
    let base = serve(vec![
        (
            "/dists/bookworm-security/InRelease".into(),
            INRELEASE.as_bytes().to_vec(),
        ),
        (
            "/dists/bookworm-security/main/binary-amd64/Packages.xz".into(),
            xz,
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = fetch(base, &store).unwrap_err();
    match &err {
        Error::ChecksumMismatch { what, .. } => {
            assert!(
                what.contains("127.0.0.1") && what.contains("main/binary-amd64/Packages.xz"),
                "{what}"
            )
        }
        other => panic!("{other}"),
    }
    assert!(
        store.list_blobs().unwrap().is_empty(),
        "nothing unverified enters the store"
    );
}

#[test]
fn tampered_inrelease_is_refused() {
    let tampered = INRELEASE.replacen("Label: Debian-Security", "Label: Debian-Securlty", 1);
    let base = serve(vec![(
        "/dists/bookworm-security/InRelease".into(),
        tampered.into_bytes(),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = fetch(base, &store).unwrap_err();
    assert!(
        matches!(&err, Error::BadSignature { url, .. } if url.ends_with("/dists/bookworm-security/InRelease")),
        "{err}"
    );
    assert!(store.list_blobs().unwrap().is_empty());
}

#[test]
fn missing_index_names_the_url() {
    let base = serve(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let err = fetch(base, &Store::open(dir.path()).unwrap()).unwrap_err();
    assert!(
        matches!(&err, Error::HttpStatus { status: 404, url } if url.contains("bookworm-security/InRelease")),
        "{err}"
    );
}
