//! Push and pull against a real distribution registry using bearer-token auth, with a token
//! server (in the test support) issuing JWTs the registry trusts.

mod support;

use imgbuild_registry::{BlobOutcome, Client, Credential, Credentials, RegistryError, Secret};
use imgbuild_store::{Digest, Store};
use support::*;

#[test]
fn push_with_tokens_mounts_with_source_pull_scope_and_reads_back() {
    let ts = TokenServer::start();
    let reg = Registry::start(Auth::Token(&ts));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let base = layer(&store, &[("base", noise(200_000, 11))]);
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
                push_image(reg.reference("tok/a"), &a, &["1"]),
                push_image(reg.reference("tok/b"), &b, &["1"]),
            ],
        )
        .unwrap();
    let base_d = base.descriptor.digest().to_string();
    let outcomes: Vec<BlobOutcome> = report
        .images
        .iter()
        .flat_map(|i| &i.blobs)
        .filter(|x| x.digest.to_string() == base_d)
        .map(|x| x.outcome.clone())
        .collect();
    assert_eq!(
        outcomes,
        vec![
            BlobOutcome::Uploaded,
            BlobOutcome::Mounted {
                from: "tok/a".into()
            }
        ],
        "{report:#?}"
    );
    // The mount asked for pull on the source and push,pull on the target, in one token.
    let requests = ts.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|r| r == "repository:tok/a:pull repository:tok/b:pull,push"),
        "{requests:#?}"
    );
    let creds = format!("{USER}:{PASSWORD}");
    for (repo, img) in [("tok/a", &a), ("tok/b", &b)] {
        let raw = skopeo_raw_manifest(&format!("{}/{repo}:1", reg.host), &creds);
        assert_eq!(Digest::of_bytes(&raw), img.digest);
    }
    let oci = tempfile::tempdir().unwrap();
    skopeo_copy_to_oci(
        &format!("{}/tok/b@{}", reg.host, b.digest),
        &creds,
        oci.path(),
    );

    // Pull back with tokens into a fresh store.
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_dir.path()).unwrap();
    let pulled = client.pull(&dst, &reg.reference("tok/b:1")).unwrap();
    assert_eq!(pulled.manifest_digest, b.digest);
    assert_eq!(pulled.blobs_present, 0);

    // Second push: only HEADs, nothing uploaded.
    let again = client
        .push(
            &store,
            &[
                push_image(reg.reference("tok/a"), &a, &["1"]),
                push_image(reg.reference("tok/b"), &b, &["1"]),
            ],
        )
        .unwrap();
    assert_eq!(again.bytes_uploaded + again.bytes_mounted, 0);
}

#[test]
fn identity_token_is_exchanged_with_a_refresh_token_grant() {
    let ts = TokenServer::start();
    let reg = Registry::start(Auth::Token(&ts));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let img = image(
        &store,
        &[&layer(&store, &[("f", b"identity".to_vec())])],
        "id",
    );
    let client = Client::new(
        options(),
        Credentials::none().with(
            &reg.host,
            Credential::IdentityToken {
                username: USER.into(),
                token: Secret::new(REFRESH_TOKEN),
            },
        ),
    )
    .unwrap();
    let report = client
        .push(&store, &[push_image(reg.reference("id/img"), &img, &["t"])])
        .unwrap();
    assert_eq!(report.images[0].digest, img.digest);
    let raw = skopeo_raw_manifest(
        &format!("{}/id/img:t", reg.host),
        &format!("{USER}:{PASSWORD}"),
    );
    assert_eq!(Digest::of_bytes(&raw), img.digest);
}

#[test]
fn wrong_password_at_the_token_server_is_clear_and_secret_free() {
    let ts = TokenServer::start();
    let reg = Registry::start(Auth::Token(&ts));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let img = image(&store, &[&layer(&store, &[("f", b"x".to_vec())])], "x");
    let wrong = "token-server-wrong-pa55";
    let client = client_for(&reg.host, USER, wrong);
    let err = client
        .push(&store, &[push_image(reg.reference("x/y"), &img, &["t"])])
        .unwrap_err();
    assert!(matches!(err, RegistryError::AuthFailed { .. }), "{err:?}");
    let shown = format!("{err} | {err:?} | {client:?}");
    assert!(
        shown.contains(&format!("authentication to {} failed for {USER}", reg.host)),
        "{shown}"
    );
    assert!(!shown.contains(wrong), "{shown}");
    let err = client.pull(&store, &reg.reference("x/y:t")).unwrap_err();
    assert!(matches!(err, RegistryError::AuthFailed { .. }), "{err:?}");
    assert!(!format!("{err}{err:?}").contains(wrong));
    // login refuses it too
    let home = tempfile::tempdir().unwrap();
    let login_client = Client::new(
        options(),
        Credentials::new(imgbuild_registry::AuthEnv::from_vars([(
            "DOCKER_CONFIG",
            home.path().to_str().unwrap(),
        )])),
    )
    .unwrap();
    assert!(matches!(
        login_client.login(&reg.host, USER, wrong),
        Err(RegistryError::AuthFailed { .. })
    ));
    assert!(!home.path().join("config.json").exists());
    login_client.login(&reg.host, USER, PASSWORD).unwrap();
    assert!(home.path().join("config.json").exists());
}

#[test]
fn a_repository_the_token_server_denies_is_a_clear_error() {
    let ts = TokenServer::start();
    let reg = Registry::start(Auth::Token(&ts));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let img = image(&store, &[&layer(&store, &[("f", b"no".to_vec())])], "no");
    let client = client_for(&reg.host, USER, PASSWORD);
    let repo = format!("{}secret-project", TokenServer::FORBIDDEN_PREFIX);
    let err = client
        .push(&store, &[push_image(reg.reference(&repo), &img, &["t"])])
        .unwrap_err();
    assert!(matches!(err, RegistryError::Denied { .. }), "{err:?}");
    let msg = err.to_string();
    // names the registry, the repository and the user, and says what to check
    for part in [
        reg.host.as_str(),
        repo.as_str(),
        USER,
        "insufficient_scope",
        "repository name",
    ] {
        assert!(msg.contains(part), "`{part}` missing in: {msg}");
    }
    assert!(!msg.contains(PASSWORD), "{msg}");
    // the token server was asked for exactly that repository, and nothing was pushed
    assert!(
        ts.requests
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.contains(&format!("repository:{repo}:pull,push"))),
        "{:?}",
        ts.requests.lock().unwrap()
    );
    let err = client
        .pull(&store, &reg.reference(&format!("{repo}:t")))
        .unwrap_err();
    assert!(matches!(err, RegistryError::Denied { .. }), "{err:?}");
}
