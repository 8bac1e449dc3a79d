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
    for (i, (m, t, _, _)) in log.iter().enumerate() {
        if m != "GET" || !t.contains("/blobs/uploads/") {
            continue;
        }
        match log[i + 1..]
            .iter()
            .find(|(m2, t2, _, _)| m2 != "GET" && (path(t2) == path(t) || m2 == "POST"))
        {
            Some((m2, _, Some(range), _)) if m2 == "PATCH" && !range.starts_with("0-") => {
                resumed = true
            }
            Some((m2, _, _, _)) if m2 == "POST" => restarted = true,
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
        .position(|(m, t, _, _)| m == "PUT" && t.contains("digest="))
        .unwrap();
    assert_eq!(log[put + 1].0, "HEAD", "{log:#?}");
    // The 429 with `Retry-After: 1` was honoured: the same request came again no earlier
    // than a second later (the first blob HEAD is the one the fault answered).
    let first_head = log
        .iter()
        .position(|(m, t, _, _)| m == "HEAD" && t.contains("/blobs/sha256:"))
        .unwrap();
    let (_, target, _, answered_429) = &log[first_head];
    let (_, _, _, retried) = log[first_head + 1..]
        .iter()
        .find(|(m, t, _, _)| m == "HEAD" && t == target)
        .unwrap_or_else(|| panic!("{target} was not retried: {log:#?}"));
    assert!(
        retried.duration_since(*answered_429) >= std::time::Duration::from_secs(1),
        "retried {:?} after a 429 with Retry-After: 1",
        retried.duration_since(*answered_429)
    );

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

#[test]
fn small_blobs_go_up_in_two_requests_and_an_unchanged_release_only_reads() {
    let reg = Registry::start(Auth::Htpasswd);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let big = layer(&store, &[("big", noise(600_000, 3))]);
    let small = layer(&store, &[("small", b"small".to_vec())]);
    let a = image(&store, &[&big, &small], "a");
    let b = image(&store, &[&big], "b");
    // A proxy without faults: it only records the requests.
    let proxy = FaultProxy::start(reg.port, vec![]);
    let host = proxy.host();
    let client = proxy_client(&proxy, 2, 256 << 10);
    let release = |tags: &[&str]| {
        vec![
            push_image(reference(&host, "rec/a"), &a, tags),
            push_image(reference(&host, "rec/b"), &b, tags),
        ]
    };
    let requests = |from: usize| -> Vec<(String, String)> {
        proxy.log.lock().unwrap()[from..]
            .iter()
            .map(|(m, t, _, _)| (m.clone(), t.split('?').next().unwrap().to_owned()))
            .collect()
    };
    client.push(&store, &release(&["v1"])).unwrap();
    let first = requests(0);
    // The big layer (600 kB > 256 KiB chunks) goes up in PATCHes; the small layer and the
    // configs fit one request: POST, then PUT with the body, no PATCH.
    let patches = first.iter().filter(|(m, _)| m == "PATCH").count();
    assert_eq!(patches, 3, "{first:#?}");
    let uploads = proxy
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, t, _, _)| {
            m == "POST" && t.contains("/blobs/uploads/") && !t.contains("mount=")
        })
        .count();
    let uploaded: usize = [&a, &b].iter().map(|i| 1 + i.layers.len()).sum::<usize>() - 1; // the big layer is mounted into the second repository
    assert_eq!(uploads, uploaded, "{first:#?}");

    // Same release again: only reads (and no blob HEAD, the manifests are there).
    let mark = proxy.log.lock().unwrap().len();
    let again = client.push(&store, &release(&["v1"])).unwrap();
    let second = requests(mark);
    assert!(
        second.iter().all(|(m, _)| m == "HEAD" || m == "GET"),
        "{second:#?}"
    );
    assert!(
        !second.iter().any(|(_, t)| t.contains("/blobs/")),
        "{second:#?}"
    );
    assert_eq!(again.bytes_uploaded + again.bytes_mounted, 0);
    assert!(again.images.iter().all(|i| i.manifest_existed));

    // A new tag for the same images: one PUT per image, by tag, nothing else written.
    let mark = proxy.log.lock().unwrap().len();
    client.push(&store, &release(&["v1", "v2"])).unwrap();
    let writes: Vec<_> = requests(mark)
        .into_iter()
        .filter(|(m, _)| m != "HEAD" && m != "GET")
        .collect();
    let mut writes = writes;
    writes.sort();
    assert_eq!(
        writes,
        vec![
            ("PUT".to_owned(), "/v2/rec/a/manifests/v2".to_owned()),
            ("PUT".to_owned(), "/v2/rec/b/manifests/v2".to_owned())
        ]
    );
    let creds = format!("{USER}:{PASSWORD}");
    for (repo, img) in [("rec/a", &a), ("rec/b", &b)] {
        let raw = skopeo_raw_manifest(&format!("{}/{repo}:v2", reg.host), &creds);
        assert_eq!(Digest::of_bytes(&raw), img.digest, "{repo}");
    }
}

/// A registry that rate-limits one request with a long run of `429 Too Many Requests`
/// (more answers than any fixed number of attempts would allow): the push waits as
/// `Retry-After` says, within the time budget, and succeeds.
#[test]
fn a_long_run_of_429s_is_waited_out_within_the_time_budget() {
    let reg = Registry::start(Auth::Htpasswd);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let l = layer(&store, &[("f", b"rate limited".to_vec())]);
    let img = image(&store, &[&l], "429");
    const RUN: usize = 14;
    let faults = (0..RUN)
        .map(|i| Fault {
            method: "PUT",
            path_contains: "/manifests/",
            skip: 0,
            action: Action::Status {
                code: 429,
                // Mostly "now", twice a real second: both are honoured.
                retry_after: Some(if i % 7 == 3 { "1" } else { "0" }),
            },
        })
        .collect();
    let proxy = FaultProxy::start(reg.port, faults);
    let client = proxy_client(&proxy, 1, 1 << 20);
    let target = reference(&proxy.host(), "limited/img");
    client
        .push(&store, &[push_image(target, &img, &["t"])])
        .unwrap();
    assert!(proxy.unfired().is_empty(), "{:?}", proxy.unfired());
    let puts: Vec<_> = proxy
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, t, ..)| m == "PUT" && t.contains("/manifests/"))
        .map(|(.., at)| *at)
        .collect();
    // The run on the first manifest PUT, then its success, then the tag.
    assert!(puts.len() > RUN, "{}", puts.len());
    // Retry-After: 1 was honoured (the retries after it came a second later).
    let waited = puts
        .windows(2)
        .filter(|w| w[1] - w[0] >= std::time::Duration::from_millis(950));
    assert!(waited.count() >= 2);
    let creds = format!("{USER}:{PASSWORD}");
    let raw = skopeo_raw_manifest(&format!("{}/limited/img:t", reg.host), &creds);
    assert_eq!(Digest::of_bytes(&raw), img.digest);
}

/// A failure that outlasts the time budget ends in one error that names the last
/// failure and how many attempts were made over how long.
#[test]
fn a_failure_outlasting_the_budget_names_attempts_and_time() {
    let reg = Registry::start(Auth::Htpasswd);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let l = layer(&store, &[("f", b"down".to_vec())]);
    let img = image(&store, &[&l], "503");
    let faults = (0..1000)
        .map(|_| Fault {
            method: "PUT",
            path_contains: "/manifests/",
            skip: 0,
            action: Action::Status {
                code: 503,
                retry_after: None,
            },
        })
        .collect();
    let proxy = FaultProxy::start(reg.port, faults);
    let mut options = options();
    options.parallelism = 1;
    options.retry.timeout = std::time::Duration::from_secs(2);
    options.retry.max_backoff = std::time::Duration::from_millis(200);
    let client = Client::new(
        options,
        Credentials::none().with(&proxy.host(), Credential::basic(USER, PASSWORD)),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = client
        .push(
            &store,
            &[push_image(
                reference(&proxy.host(), "down/img"),
                &img,
                &["t"],
            )],
        )
        .unwrap_err();
    let took = started.elapsed();
    let puts = proxy
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, t, ..)| m == "PUT" && t.contains("/manifests/"))
        .count();
    let RegistryError::RetriesExhausted { attempts, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(*attempts as usize, puts, "{err}");
    assert!(puts >= 5, "{err}");
    assert!(
        took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_secs(10),
        "{took:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("HTTP 503"), "{msg}");
    assert!(
        msg.contains(&format!("gave up after {puts} attempts over 2 s")),
        "{msg}"
    );
    assert!(msg.contains("IMGBUILD_RETRY_TIMEOUT"), "{msg}");
}

/// A manifest PUT answered `MANIFEST_BLOB_UNKNOWN` (what distribution can answer while
/// another client commits the same blob) is tried again; one that keeps being answered
/// so fails with that code after the retries.
#[test]
fn a_manifest_answered_blob_unknown_is_tried_again_then_fails() {
    let reg = Registry::start(Auth::Htpasswd);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let l = layer(&store, &[("f", b"content".to_vec())]);
    let a = image(&store, &[&l], "a");
    let blob_unknown = |skip| Fault {
        method: "PUT",
        path_contains: "/manifests/v1",
        skip,
        action: Action::RegistryError {
            code: "MANIFEST_BLOB_UNKNOWN",
        },
    };
    // twice, then through
    let proxy = FaultProxy::start(reg.port, vec![blob_unknown(0), blob_unknown(0)]);
    let client = proxy_client(&proxy, 1, 1 << 20);
    client
        .push(
            &store,
            &[push_image(reference(&proxy.host(), "r/a"), &a, &["v1"])],
        )
        .unwrap();
    assert!(proxy.unfired().is_empty(), "{:?}", proxy.unfired());
    let puts = |proxy: &FaultProxy| {
        proxy
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, t, _, _)| m == "PUT" && t.contains("/manifests/v1"))
            .count()
    };
    assert_eq!(puts(&proxy), 3);

    // every try answered so: the error names the code, after 1 + 3 tries
    let proxy = FaultProxy::start(reg.port, (0..4).map(|_| blob_unknown(0)).collect());
    let client = proxy_client(&proxy, 1, 1 << 20);
    let err = client
        .push(
            &store,
            &[push_image(reference(&proxy.host(), "r/b"), &a, &["v1"])],
        )
        .unwrap_err();
    assert!(format!("{err}").contains("MANIFEST_BLOB_UNKNOWN"), "{err}");
    assert_eq!(puts(&proxy), 4);
}
