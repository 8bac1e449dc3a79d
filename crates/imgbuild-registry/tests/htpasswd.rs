//! Push, pull and login against a real distribution registry with htpasswd (basic) auth;
//! results read back with skopeo.

mod support;

use imgbuild_registry::{
    AuthEnv, BlobOutcome, Client, Credentials, PushImage, RegistryError, StoredIn,
};
use imgbuild_store::{Digest, Store};
use support::*;

fn creds() -> String {
    format!("{USER}:{PASSWORD}")
}

#[test]
fn release_push_dedupes_mounts_tags_and_reads_back_with_skopeo() {
    let reg = Registry::start(Auth::Htpasswd);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let base = layer(
        &store,
        &[
            ("etc/os-release", b"ID=test\n".to_vec()),
            ("usr/lib/big", noise(300_000, 1)),
        ],
    );
    let app_top = layer(&store, &[("app/main.py", b"print('app')\n".to_vec())]);
    let worker_top = layer(&store, &[("app/worker.py", b"print('worker')\n".to_vec())]);
    let app = image(&store, &[&base, &app_top], "app");
    let worker = image(&store, &[&base, &worker_top], "worker");
    let client = client_for(&reg.host, USER, PASSWORD);
    let images = vec![
        push_image(reg.reference("team/app"), &app, &["v1", "latest"]),
        PushImage::from_store(&store, reg.reference("team/worker:v1"), &worker.digest).unwrap(),
    ];
    let report = client.push(&store, &images).unwrap();

    // The shared base layer went up once: uploaded for one repository, mounted into the other.
    let base_outcomes: Vec<&BlobOutcome> = report
        .images
        .iter()
        .flat_map(|i| i.blobs.iter())
        .filter(|b| b.digest.to_string() == base.descriptor.digest().to_string())
        .map(|b| &b.outcome)
        .collect();
    assert_eq!(base_outcomes.len(), 2);
    assert_eq!(
        base_outcomes
            .iter()
            .filter(|o| ***o == BlobOutcome::Uploaded)
            .count(),
        1,
        "{report:#?}"
    );
    assert!(
        base_outcomes.iter().any(|o| matches!(o, BlobOutcome::Mounted { from } if from == "team/app" || from == "team/worker")),
        "{report:#?}"
    );
    let base_size = base.descriptor.size();
    assert_eq!(report.bytes_mounted, base_size);
    let all_sizes: u64 = [&app, &worker]
        .iter()
        .map(|i| i.config.size() + i.layers.iter().map(|l| l.size()).sum::<u64>())
        .sum();
    assert_eq!(report.bytes_uploaded, all_sizes - base_size);
    assert_eq!(
        report.images[0].reference,
        format!("{}/team/app@{}", reg.host, app.digest)
    );
    assert_eq!(
        report.images[0].tags,
        vec!["latest".to_owned(), "v1".to_owned()]
    );
    assert_eq!(report.images[1].tags, vec!["v1".to_owned()]);
    // serialisable for --json
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["images"][0]["digest"], app.digest.to_string());

    // Another client (skopeo) reads every image back with the local digest, by digest and by tag.
    for (repo, img) in [("team/app", &app), ("team/worker", &worker)] {
        let raw = skopeo_raw_manifest(&format!("{}/{repo}@{}", reg.host, img.digest), &creds());
        assert_eq!(Digest::of_bytes(&raw), img.digest, "{repo}");
        assert_eq!(raw, img.manifest);
        let by_tag = skopeo_raw_manifest(&format!("{}/{repo}:v1", reg.host), &creds());
        assert_eq!(Digest::of_bytes(&by_tag), img.digest);
    }
    let inspected = skopeo_inspect(&format!("{}/team/app:latest", reg.host), &creds());
    assert_eq!(inspected["Digest"], app.digest.to_string());
    assert_eq!(inspected["Labels"]["test"], "app");
    let oci = tempfile::tempdir().unwrap();
    let index = skopeo_copy_to_oci(
        &format!("{}/team/worker@{}", reg.host, worker.digest),
        &creds(),
        oci.path(),
    );
    assert_eq!(index["manifests"][0]["digest"], worker.digest.to_string());
    for l in &worker.layers {
        let hex = l
            .digest()
            .to_string()
            .trim_start_matches("sha256:")
            .to_owned();
        assert!(oci.path().join("blobs/sha256").join(hex).is_file());
    }

    // Second push of the same release: nothing to upload.
    let again = client.push(&store, &images).unwrap();
    assert_eq!(again.bytes_uploaded, 0, "{again:#?}");
    assert_eq!(again.bytes_mounted, 0);
    assert!(again.images.iter().all(|i| i.manifest_existed));

    // One layer changes: exactly that layer is uploaded (plus the new config).
    let app_top2 = layer(&store, &[("app/main.py", b"print('app v2')\n".to_vec())]);
    let app2 = image(&store, &[&base, &app_top2], "app");
    let images2 = vec![
        push_image(reg.reference("team/app"), &app2, &["v2", "latest"]),
        push_image(reg.reference("team/worker"), &worker, &["v1"]),
    ];
    let third = client.push(&store, &images2).unwrap();
    let layer_counts = outcome_counts(&third.images[0], Some(&app2.layers));
    assert_eq!(layer_counts.get("uploaded"), Some(&1), "{third:#?}");
    assert_eq!(layer_counts.get("present"), Some(&1), "{third:#?}");
    assert_eq!(
        third.images[0].bytes_uploaded,
        app_top2.descriptor.size() + app2.config.size()
    );
    assert_eq!(third.images[1].bytes_uploaded, 0);
    // latest moved to the new manifest, v1 stayed
    let latest = skopeo_raw_manifest(&format!("{}/team/app:latest", reg.host), &creds());
    assert_eq!(Digest::of_bytes(&latest), app2.digest);
    let v1 = skopeo_raw_manifest(&format!("{}/team/app:v1", reg.host), &creds());
    assert_eq!(Digest::of_bytes(&v1), app.digest);
}

#[test]
fn blob_shared_by_two_images_in_one_repository_goes_up_once() {
    let reg = Registry::start(Auth::Htpasswd);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let base = layer(&store, &[("base", noise(50_000, 7))]);
    let a = image(
        &store,
        &[&base, &layer(&store, &[("a", b"a".to_vec())])],
        "a",
    );
    let b = image(
        &store,
        &[&base, &layer(&store, &[("b", b"b".to_vec())])],
        "b",
    );
    let client = client_for(&reg.host, USER, PASSWORD);
    let report = client
        .push(
            &store,
            &[
                push_image(reg.reference("one/repo"), &a, &["a"]),
                push_image(reg.reference("one/repo"), &b, &["b"]),
            ],
        )
        .unwrap();
    let base_d = base.descriptor.digest().to_string();
    let outcomes: Vec<_> = report
        .images
        .iter()
        .flat_map(|i| &i.blobs)
        .filter(|x| x.digest.to_string() == base_d)
        .map(|x| x.outcome.clone())
        .collect();
    assert_eq!(outcomes, vec![BlobOutcome::Uploaded, BlobOutcome::Shared]);
    for (img, tag) in [(&a, "a"), (&b, "b")] {
        let raw = skopeo_raw_manifest(&format!("{}/one/repo:{tag}", reg.host), &creds());
        assert_eq!(Digest::of_bytes(&raw), img.digest);
    }
}

#[test]
fn wrong_password_is_a_clear_error_that_never_shows_the_password() {
    let reg = Registry::start(Auth::Htpasswd);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let img = image(&store, &[&layer(&store, &[("f", b"x".to_vec())])], "x");
    let wrong = "Wr0ng-pa55w0rd-do-not-print";
    let client = client_for(&reg.host, USER, wrong);
    let err = client
        .push(&store, &[push_image(reg.reference("x/y"), &img, &["t"])])
        .unwrap_err();
    assert!(matches!(err, RegistryError::AuthFailed { .. }), "{err:?}");
    let shown = format!("{err} | {err:?} | {:?}", client);
    assert!(
        shown.contains(&format!("authentication to {} failed for {USER}: check credentials (docker login / imgbuild login)", reg.host)),
        "{shown}"
    );
    assert!(!shown.contains(wrong), "password leaked: {shown}");
    assert!(!shown.contains(PASSWORD));

    // No credentials at all: says what to do.
    let anon = Client::new(options(), Credentials::none()).unwrap();
    let err = anon
        .push(&store, &[push_image(reg.reference("x/y"), &img, &["t"])])
        .unwrap_err();
    assert!(matches!(err, RegistryError::AuthRequired { .. }), "{err:?}");
    assert!(err.to_string().contains("imgbuild login"), "{err}");
}

#[test]
fn pull_roundtrip_docker_types_and_unknown_repository() {
    let reg = Registry::start(Auth::Htpasswd);
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).unwrap();
    let l1 = layer(&src, &[("a", noise(100_000, 3))]);
    let l2 = layer(&src, &[("b", b"bee".to_vec())]);
    let oci = image(&src, &[&l1, &l2], "oci");
    let docker = image_with_types(&src, &[&l1], "docker", true);
    let client = client_for(&reg.host, USER, PASSWORD);
    client
        .push(
            &src,
            &[
                push_image(reg.reference("pull/oci"), &oci, &["1"]),
                push_image(reg.reference("pull/docker"), &docker, &["1"]),
            ],
        )
        .unwrap();

    let dst_dir = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_dir.path()).unwrap();
    // by tag
    let pulled = client.pull(&dst, &reg.reference("pull/oci:1")).unwrap();
    assert_eq!(pulled.manifest_digest, oci.digest);
    assert_eq!(pulled.manifest, oci.manifest);
    assert_eq!(pulled.layers, oci.layers);
    assert_eq!(pulled.reference.digest.as_ref(), Some(&oci.digest));
    for d in std::iter::once(&oci.config).chain(&oci.layers) {
        let digest: Digest = d.digest().to_string().parse().unwrap();
        assert!(dst.verify(&digest).unwrap(), "{digest} not in store");
    }
    assert!(dst.verify(&oci.digest).unwrap(), "manifest stored");
    // Docker schema 2, pinned by digest; shares l1 with the first: fetched only the config
    let pinned = reg
        .reference("pull/docker")
        .with_digest(docker.digest.clone());
    let pulled = client.pull(&dst, &pinned).unwrap();
    assert_eq!(
        pulled.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(pulled.blobs_present, 1);
    assert_eq!(pulled.bytes_downloaded, docker.config.size());
    // again: nothing downloaded
    assert_eq!(
        client
            .pull(&dst, &reg.reference("pull/oci:1"))
            .unwrap()
            .bytes_downloaded,
        0
    );
    assert_eq!(
        client.resolve(&reg.reference("pull/oci:1")).unwrap(),
        oci.digest
    );

    // unknown repository: clear error, nothing stored
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = Store::open(empty_dir.path()).unwrap();
    let err = client
        .pull(&empty, &reg.reference("does/not-exist:1"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::RepositoryUnknown { .. } | RegistryError::ManifestUnknown { .. }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&reg.host) && msg.contains("does/not-exist"),
        "{msg}"
    );
    // unknown tag in a known repository
    let err = client
        .pull(&empty, &reg.reference("pull/oci:nope"))
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::ManifestUnknown { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(store_blob_count(&empty), 0);
}

#[test]
fn pull_resolves_an_index_and_a_manifest_list_to_linux_amd64() {
    let reg = Registry::start(Auth::Htpasswd);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let amd = image(
        &store,
        &[&layer(&store, &[("arch", b"amd64".to_vec())])],
        "amd64",
    );
    let arm = image(
        &store,
        &[&layer(&store, &[("arch", b"arm64".to_vec())])],
        "arm64",
    );
    let client = client_for(&reg.host, USER, PASSWORD);
    client
        .push(
            &store,
            &[
                push_image(reg.reference("multi/img"), &amd, &[]),
                push_image(reg.reference("multi/img"), &arm, &[]),
            ],
        )
        .unwrap();
    for (tag, index_type, manifest_type) in [
        (
            "oci",
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
        ),
        (
            "docker",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
    ] {
        // The registry checks child media types against the list type only loosely; keep the
        // children's real type (OCI) for the OCI index, and use it for the list as well.
        let _ = manifest_type;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm.digest.to_string(), "size": arm.manifest.len(),
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd.digest.to_string(), "size": amd.manifest.len(),
                 "platform": {"architecture": "amd64", "os": "linux"}},
            ]
        });
        let bytes = serde_json::to_vec(&index).unwrap();
        let http = reqwest::blocking::Client::new();
        let resp = http
            .put(format!("http://{}/v2/multi/img/manifests/{tag}", reg.host))
            .basic_auth(USER, Some(PASSWORD))
            .header("content-type", index_type)
            .body(bytes.clone())
            .send()
            .unwrap();
        assert!(
            resp.status().is_success(),
            "{tag}: {} {}",
            resp.status(),
            resp.text().unwrap_or_default()
        );

        let dst_dir = tempfile::tempdir().unwrap();
        let dst = Store::open(dst_dir.path()).unwrap();
        let pulled = client
            .pull(&dst, &reg.reference(&format!("multi/img:{tag}")))
            .unwrap();
        assert_eq!(pulled.index_digest, Some(Digest::of_bytes(&bytes)), "{tag}");
        assert_eq!(pulled.manifest_digest, amd.digest, "{tag}");
        assert_eq!(pulled.layers, amd.layers);
        assert!(dst.verify(&Digest::of_bytes(&bytes)).unwrap());
        assert_eq!(
            client
                .resolve(&reg.reference(&format!("multi/img:{tag}")))
                .unwrap(),
            Digest::of_bytes(&bytes)
        );
    }
}

#[test]
fn login_verifies_then_stores_like_docker_and_is_used_afterwards() {
    let reg = Registry::start(Auth::Htpasswd);
    let home = tempfile::tempdir().unwrap();
    let docker_config = home.path().join("docker");
    let env = || {
        AuthEnv::from_vars([
            ("DOCKER_CONFIG", docker_config.to_str().unwrap()),
            ("HOME", home.path().to_str().unwrap()),
        ])
    };
    let client = Client::new(options(), Credentials::new(env())).unwrap();
    let wrong = "not-the-password-123";
    let err = client.login(&reg.host, USER, wrong).unwrap_err();
    assert!(matches!(err, RegistryError::AuthFailed { .. }), "{err:?}");
    assert!(!format!("{err}{err:?}").contains(wrong));
    assert!(
        !docker_config.join("config.json").exists(),
        "nothing stored after a failed login"
    );

    let stored = client.login(&reg.host, USER, PASSWORD).unwrap();
    assert_eq!(
        stored,
        StoredIn::ConfigFile {
            path: docker_config.join("config.json")
        }
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(docker_config.join("config.json")).unwrap()).unwrap();
    assert!(cfg["auths"][reg.host.as_str()]["auth"].is_string(), "{cfg}");

    // A fresh client finds the stored credentials and can push.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let img = image(
        &store,
        &[&layer(&store, &[("f", b"logged in".to_vec())])],
        "login",
    );
    let fresh = Client::new(options(), Credentials::new(env())).unwrap();
    let report = fresh
        .push(
            &store,
            &[push_image(reg.reference("after/login"), &img, &["ok"])],
        )
        .unwrap();
    assert_eq!(report.images[0].digest, img.digest);
}

#[test]
fn corrupt_local_blob_is_reported_and_removed() {
    let reg = Registry::start(Auth::Htpasswd);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let l = layer(&store, &[("f", noise(10_000, 9))]);
    let img = image(&store, &[&l], "corrupt");
    let digest: Digest = l.descriptor.digest().to_string().parse().unwrap();
    let mut bytes = std::fs::read(store.blob_path(&digest)).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(store.blob_path(&digest), bytes).unwrap();
    let client = client_for(&reg.host, USER, PASSWORD);
    let err = client
        .push(&store, &[push_image(reg.reference("c/img"), &img, &["t"])])
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::LocalBlobCorrupt { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&digest.to_string()));
    assert!(!store.has_blob(&digest));
    // and no tag was created
    let http = reqwest::blocking::Client::new();
    let resp = http
        .head(format!("http://{}/v2/c/img/manifests/t", reg.host))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[test]
fn blobs_of_the_base_are_mounted_from_a_hinted_repository_with_fallback_to_upload() {
    let reg = Registry::start(Auth::Htpasswd);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let base_layer = layer(&store, &[("base", noise(80_000, 21))]);
    let base = image(&store, &[&base_layer], "base");
    let client = client_for(&reg.host, USER, PASSWORD);
    client
        .push(
            &store,
            &[push_image(reg.reference("base/img"), &base, &["1"])],
        )
        .unwrap();

    let top = layer(&store, &[("top", b"top".to_vec())]);
    let app = image(&store, &[&base_layer, &top], "app");
    let mut p = push_image(reg.reference("apps/x"), &app, &["1"]);
    // The first hint lacks every blob (the registry answers 202: upload instead); the
    // second has the base layer.
    p.mount_from = vec!["empty/none".into(), "base/img".into()];
    let report = client.push(&store, &[p]).unwrap();
    let by_digest = |d: &oci_spec::image::Descriptor| {
        report.images[0]
            .blobs
            .iter()
            .find(|b| b.digest.to_string() == d.digest().to_string())
            .unwrap()
            .outcome
            .clone()
    };
    assert_eq!(
        by_digest(&base_layer.descriptor),
        BlobOutcome::Mounted {
            from: "base/img".into()
        },
        "{report:#?}"
    );
    assert_eq!(by_digest(&top.descriptor), BlobOutcome::Uploaded);
    assert_eq!(by_digest(&app.config), BlobOutcome::Uploaded);
    let raw = skopeo_raw_manifest(&format!("{}/apps/x:1", reg.host), &creds());
    assert_eq!(Digest::of_bytes(&raw), app.digest);
}
