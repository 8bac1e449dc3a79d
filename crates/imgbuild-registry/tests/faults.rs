//! Pushes and pulls through a fault-injecting proxy in front of a real registry: dropped
//! connections mid-blob, 5xx, 429 with `Retry-After`, lost answers, corrupted content.

mod support;

use imgbuild_registry::{Client, ClientOptions, Credential, Credentials, RegistryError};
use imgbuild_store::{Digest, Store};
use support::*;

fn proxy_client(proxy: &FaultProxy, parallelism: usize, chunk_size: u64) -> Client {
    Client::new(
        ClientOptions {
            parallelism,
            chunk_size,
            ..options()
        },
        Credentials::none().with(&proxy.host(), Credential::basic(USER, PASSWORD)),
    )
    .unwrap()
}

fn reference(host: &str, repo: &str) -> imgbuild_registry::Reference {
    format!("{host}/{repo}").parse().unwrap()
}

#[test]
fn push_survives_drops_5xx_429_and_lost_answers() {
    let reg = Registry::start(Auth::Htpasswd);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // ~3 MiB of noise: three 1 MiB chunks, so drops hit both the first chunk (session at
    // offset 0) and later ones.
    let big = layer(&store, &[("big.bin", noise(3 << 20, 42))]);
    let small = layer(&store, &[("small", b"small".to_vec())]);
    let other = layer(&store, &[("other", noise(20_000, 5))]);
    let a = image(&store, &[&big, &small], "a");
    let b = image(&store, &[&big, &other], "b");
    let proxy = FaultProxy::start(
        reg.port,
        vec![
            Fault {
                method: "HEAD",
                path_contains: "/blobs/sha256:",
                skip: 0,
                action: Action::Status {
                    code: 429,
                    retry_after: Some("1"),
                },
            },
            Fault {
                method: "POST",
                path_contains: "/blobs/uploads/",
                skip: 0,
                action: Action::Status {
                    code: 500,
                    retry_after: None,
                },
            },
            Fault {
                method: "PATCH",
                path_contains: "/blobs/uploads/",
                skip: 0,
                action: Action::DropMidBody,
            },
            Fault {
                method: "PATCH",
                path_contains: "/blobs/uploads/",
                skip: 2,
                action: Action::DropMidBody,
            },
            Fault {
                method: "PATCH",
                path_contains: "/blobs/uploads/",
                skip: 4,
                action: Action::Status {
                    code: 503,
                    retry_after: None,
                },
            },
            Fault {
                method: "GET",
                path_contains: "/blobs/uploads/",
                skip: 0,
                action: Action::Status {
                    code: 502,
                    retry_after: None,
                },
            },
            Fault {
                method: "PUT",
                path_contains: "digest=",
                skip: 0,
                action: Action::DropMidBody,
            },
            Fault {
                method: "PUT",
                path_contains: "/manifests/sha256:",
                skip: 0,
                action: Action::Status {
                    code: 500,
                    retry_after: None,
                },
            },
            Fault {
                method: "PUT",
                path_contains: "/manifests/v1",
                skip: 0,
                action: Action::Status {
                    code: 429,
                    retry_after: Some("Thu, 01 Jan 1970 00:00:00 GMT"),
                },
            },
        ],
    );
    let client = proxy_client(&proxy, 1, 1 << 20);
    let host = proxy.host();
    let report = client
        .push(
            &store,
            &[
                push_image(reference(&host, "f/a"), &a, &["v1"]),
                push_image(reference(&host, "f/b"), &b, &["v1"]),
            ],
        )
        .unwrap();
    assert!(
        proxy.unfired().is_empty(),
        "faults that never fired: {:?}",
        proxy.unfired()
    );
    assert_eq!(report.bytes_mounted, big.descriptor.size(), "{report:#?}");
    // Both recoveries happened: a resume (status query, then the next chunk of the *same*
    // session from a non-zero offset: after the 503) and a clean restart (status query, then
    // a new session: distribution 2.x cancels a session after a partial write).
    let log = proxy.log.lock().unwrap().clone();
    let path = |t: &str| t.split('?').next().unwrap().to_owned();
    let mut resumed = false;
    let mut restarted = false;
    for (i, (m, t, _)) in log.iter().enumerate() {
        if m != "GET" || !t.contains("/blobs/uploads/") {
            continue;
        }
        match log[i + 1..]
            .iter()
            .find(|(m2, t2, _)| m2 != "GET" && (path(t2) == path(t) || m2 == "POST"))
        {
            Some((m2, _, Some(range))) if m2 == "PATCH" && !range.starts_with("0-") => {
                resumed = true
            }
            Some((m2, _, _)) if m2 == "POST" => restarted = true,
            _ => {}
        }
    }
    assert!(
        resumed && restarted,
        "resumed: {resumed}, restarted: {restarted}: {log:#?}"
    );
    // The lost answer to a PUT ?digest= was recognised by a HEAD, not by re-uploading.
    let put = log
        .iter()
        .position(|(m, t, _)| m == "PUT" && t.contains("digest="))
        .unwrap();
    assert_eq!(log[put + 1].0, "HEAD", "{log:#?}");

    // Read back directly from the registry (not through the proxy) by another client.
    let creds = format!("{USER}:{PASSWORD}");
    for (repo, img) in [("f/a", &a), ("f/b", &b)] {
        let raw = skopeo_raw_manifest(&format!("{}/{repo}:v1", reg.host), &creds);
        assert_eq!(Digest::of_bytes(&raw), img.digest, "{repo}");
    }
    let oci = tempfile::tempdir().unwrap();
    skopeo_copy_to_oci(
        &format!("{}/f/a@{}", reg.host, a.digest),
        &creds,
        oci.path(),
    );
    // and every blob verifies on a pull into a fresh store
    let direct = client_for(&reg.host, USER, PASSWORD);
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_dir.path()).unwrap();
    for (repo, img) in [("f/a", &a), ("f/b", &b)] {
        let pulled = direct
            .pull(&dst, &reg.reference(&format!("{repo}:v1")))
            .unwrap();
        assert_eq!(pulled.manifest_digest, img.digest);
    }
    for d in dst.list_blobs().unwrap() {
        assert!(dst.verify(&d).unwrap());
    }
    let big_digest: Digest = big.descriptor.digest().to_string().parse().unwrap();
    assert!(dst.has_blob(&big_digest));
}

#[test]
fn parallel_push_through_faults_completes() {
    let reg = Registry::start(Auth::Htpasswd);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let layers: Vec<Layer> = (0..6)
        .map(|i| layer(&store, &[("f", noise(400_000, 100 + i))]))
        .collect();
    let imgs: Vec<TestImage> = (0..3)
        .map(|i| {
            image(
                &store,
                &[&layers[2 * i], &layers[2 * i + 1]],
                &format!("p{i}"),
            )
        })
        .collect();
    let proxy = FaultProxy::start(
        reg.port,
        vec![
            Fault {
                method: "PATCH",
                path_contains: "/blobs/uploads/",
                skip: 1,
                action: Action::DropMidBody,
            },
            Fault {
                method: "PATCH",
                path_contains: "/blobs/uploads/",
                skip: 3,
                action: Action::Status {
                    code: 500,
                    retry_after: None,
                },
            },
            Fault {
                method: "HEAD",
                path_contains: "/blobs/",
                skip: 2,
                action: Action::Status {
                    code: 503,
                    retry_after: None,
                },
            },
        ],
    );
    let client = proxy_client(&proxy, 4, 256 << 10);
    let host = proxy.host();
    let images: Vec<_> = imgs
        .iter()
        .enumerate()
        .map(|(i, img)| push_image(reference(&host, &format!("par/{i}")), img, &["t"]))
        .collect();
    let report = client.push(&store, &images).unwrap();
    assert!(proxy.unfired().is_empty(), "{:?}", proxy.unfired());
    assert_eq!(report.bytes_mounted, 0);
    let creds = format!("{USER}:{PASSWORD}");
    for (i, img) in imgs.iter().enumerate() {
        let raw = skopeo_raw_manifest(&format!("{}/par/{i}:t", reg.host), &creds);
        assert_eq!(Digest::of_bytes(&raw), img.digest);
    }
}

#[test]
fn pull_retries_transient_errors_and_refuses_corrupt_content() {
    let reg = Registry::start(Auth::Htpasswd);
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let l = layer(&src, &[("data", noise(50_000, 77))]);
    let img = image(&src, &[&l], "pull");
    client_for(&reg.host, USER, PASSWORD)
        .push(&src, &[push_image(reg.reference("p/img"), &img, &["t"])])
        .unwrap();

    // Transient faults: the pull completes.
    let proxy = FaultProxy::start(
        reg.port,
        vec![
            Fault {
                method: "GET",
                path_contains: "/manifests/",
                skip: 0,
                action: Action::Status {
                    code: 429,
                    retry_after: Some("1"),
                },
            },
            Fault {
                method: "GET",
                path_contains: "/blobs/sha256:",
                skip: 0,
                action: Action::Status {
                    code: 500,
                    retry_after: None,
                },
            },
        ],
    );
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_dir.path()).unwrap();
    let pulled = proxy_client(&proxy, 1, 1 << 20)
        .pull(&dst, &reference(&proxy.host(), "p/img:t"))
        .unwrap();
    assert_eq!(pulled.manifest_digest, img.digest);
    assert!(proxy.unfired().is_empty());

    // A blob whose bytes do not match its digest: clear error, nothing stored.
    let proxy = FaultProxy::start(
        reg.port,
        vec![Fault {
            method: "GET",
            path_contains: "/blobs/sha256:",
            skip: 0,
            action: Action::CorruptBody,
        }],
    );
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_dir.path()).unwrap();
    let err = proxy_client(&proxy, 1, 1 << 20)
        .pull(&dst, &reference(&proxy.host(), "p/img:t"))
        .unwrap_err();
    assert!(proxy.unfired().is_empty());
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("p/img") && msg.contains(&proxy.host()) && msg.contains("nothing was stored"),
        "{msg}"
    );
    assert_eq!(store_blob_count(&dst), 0, "nothing stored");
    assert!(tmp_is_empty(&dst));

    // A manifest that does not match the pinned digest (or the registry's digest header).
    for pinned in [true, false] {
        let proxy = FaultProxy::start(
            reg.port,
            vec![Fault {
                method: "GET",
                path_contains: "/manifests/",
                skip: 0,
                action: Action::CorruptBody,
            }],
        );
        let r = if pinned {
            reference(&proxy.host(), "p/img").with_digest(img.digest.clone())
        } else {
            reference(&proxy.host(), "p/img:t")
        };
        let err = proxy_client(&proxy, 1, 1 << 20).pull(&dst, &r).unwrap_err();
        assert!(
            matches!(err, RegistryError::DigestMismatch { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("manifest"), "{err}");
        assert_eq!(store_blob_count(&dst), 0);
    }
}
