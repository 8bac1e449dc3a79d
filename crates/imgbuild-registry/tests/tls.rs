//! A registry with a private CA: a real distribution registry serving HTTPS only, with a
//! certificate signed by a CA made in the test, trusted through a Docker-style `certs.d`
//! directory (`<dir>/<host:port>/ca.crt`) and nothing else.

mod support;

use std::path::Path;

use imgbuild_registry::{Client, ClientOptions, Credential, Credentials, RegistryError};
use imgbuild_store::{Digest, Store};
use support::*;

fn client_trusting(certs_d: &Path, host: &str) -> Client {
    Client::new(
        ClientOptions {
            certs_dirs: vec![certs_d.to_path_buf()],
            ..options()
        },
        Credentials::none().with(host, Credential::basic(USER, PASSWORD)),
    )
    .unwrap()
}

/// `<root>/<host>/ca.crt` with the given PEM.
fn certs_d(host: &str, pem: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join(host)).unwrap();
    std::fs::write(root.path().join(host).join("ca.crt"), pem).unwrap();
    root
}

#[test]
fn a_private_ca_in_certs_d_is_trusted_for_that_registry_only() {
    let ca = TestCa::new("right");
    let reg = Registry::start_tls(Auth::Htpasswd, &ca.server);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let img = image(&store, &[&layer(&store, &[("f", noise(30_000, 8))])], "tls");
    let trusted = certs_d(&reg.host, &ca.ca_pem);

    // Push and pull over HTTPS, verified against the CA of the certs.d directory (a loopback
    // registry with such a directory is not reached over plain HTTP).
    let client = client_trusting(trusted.path(), &reg.host);
    let report = client
        .push(
            &store,
            &[push_image(reg.reference("tls/img"), &img, &["t"])],
        )
        .unwrap();
    assert!(report.bytes_uploaded > 30_000, "{report:#?}");
    let dst_dir = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_dir.path()).unwrap();
    let pulled = client.pull(&dst, &reg.reference("tls/img:t")).unwrap();
    assert_eq!(pulled.manifest_digest, img.digest);

    // Another client (skopeo, TLS verified with the same CA) reads it back.
    let out = std::process::Command::new("/usr/bin/skopeo")
        .args(["--insecure-policy", "inspect", "--raw", "--cert-dir"])
        .arg(trusted.path().join(&reg.host))
        .args(["--creds", &format!("{USER}:{PASSWORD}")])
        .arg(format!("docker://{}/tls/img:t", reg.host))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(Digest::of_bytes(&out.stdout), img.digest);

    // A CA for another host does not count, and another CA for this host fails verification.
    let elsewhere = certs_d("registry.example:5000", &ca.ca_pem);
    let other = TestCa::new("wrong");
    let wrong = certs_d(&reg.host, &other.ca_pem);
    for certs in [&wrong, &elsewhere] {
        let err = client_trusting(certs.path(), &reg.host)
            .pull(&dst, &reg.reference("tls/img:t"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                RegistryError::Transport { .. } | RegistryError::Http { .. }
            ),
            "{err:?}"
        );
        assert!(msg.contains(&reg.host), "{msg}");
        if std::ptr::eq(certs, &wrong) {
            // not retried, and the error says where a private CA goes
            assert!(
                msg.contains("invalid peer certificate") && msg.contains("certs.d"),
                "{msg}"
            );
        }
    }

    // A CA file that is not PEM: an error naming the file.
    let broken = certs_d(&reg.host, "not a certificate\n");
    let err = client_trusting(broken.path(), &reg.host)
        .pull(&dst, &reg.reference("tls/img:t"))
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::CaCertificate { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("ca.crt"), "{err}");
}
