//! InRelease verification against the embedded Debian archive keys, on a real
//! bookworm-security InRelease (signed by subkeys of the archive keys) and tampered copies.

use imgbuild_debian::signature::{trusted_keys, verify_inrelease};

const REAL: &str = include_str!("fixtures/bookworm-security.InRelease");

#[test]
fn real_inrelease_verifies_with_a_subkey() {
    let v = verify_inrelease(REAL).expect("real InRelease verifies");
    assert!(v.text.starts_with("Origin: Debian\n"), "{}", &v.text[..40]);
    assert!(v.text.contains("\nCodename: bookworm-security\n"));
    assert!(
        !v.text.contains("BEGIN PGP"),
        "only the signed text is returned"
    );
    assert!(
        v.signed_by.contains("security-automatic"),
        "{}",
        v.signed_by
    );
    assert_eq!(trusted_keys().len(), 6);
}

#[test]
fn tampered_content_fails() {
    // change one checksum digit in the signed text
    let i = REAL.find("main/binary-amd64/Packages.xz").unwrap();
    let line_start = REAL[..i].rfind('\n').unwrap() + 2; // skip the leading space
    let mut bytes = REAL.as_bytes().to_vec();
    bytes[line_start] = if bytes[line_start] == b'0' {
        b'1'
    } else {
        b'0'
    };
    let tampered = String::from_utf8(bytes).unwrap();
    let err = verify_inrelease(&tampered).unwrap_err();
    assert!(err.contains("does not match the signed text"), "{err}");

    // an added field is caught too
    let added = REAL.replacen(
        "Origin: Debian\n",
        "Origin: Debian\nNo-Support-for-Architecture-all: Packages\n",
        1,
    );
    assert!(verify_inrelease(&added).is_err());
}

#[test]
fn unsigned_or_foreign_text_fails() {
    let text_only = REAL.split("-----BEGIN PGP SIGNATURE-----").next().unwrap();
    assert!(verify_inrelease(text_only).is_err());
    assert!(verify_inrelease("Origin: Debian\nCodename: bookworm\n").is_err());
}

#[test]
fn valid_signature_by_a_foreign_key_fails() {
    use pgp::composed::{CleartextSignedMessage, EncryptionCaps, KeyType, SecretKeyParamsBuilder};
    use pgp::types::Password;

    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id("Mallory <archive@example.org>".into());
    let key = params
        .build()
        .unwrap()
        .generate(rand::thread_rng())
        .unwrap();
    // the genuine Release text, re-signed by another key
    let text = verify_inrelease(REAL).unwrap().text;
    let msg =
        CleartextSignedMessage::sign(rand::thread_rng(), &text, &*key, &Password::empty()).unwrap();
    msg.verify(key.public_key())
        .expect("the forged signature is itself valid");
    let armored = msg.to_armored_string(Default::default()).unwrap();
    let err = verify_inrelease(&armored).unwrap_err();
    assert!(err.contains("not one of the Debian archive keys"), "{err}");
}

/// The real trixie-security InRelease of December 2026 (signed by
/// bookworm-security-automatic and trixie-security-automatic).
const TRIXIE_SECURITY: &str = include_str!("fixtures/trixie-security.InRelease");

/// The same file keeping only the signatures whose issuer the filter accepts.
fn only_signatures(armored: &str, keep: impl Fn(&str) -> bool) -> String {
    use pgp::composed::CleartextSignedMessage;
    let (msg, _) = CleartextSignedMessage::from_string(armored).unwrap();
    let sigs: Vec<_> = msg
        .signatures()
        .iter()
        .filter(|s| {
            s.issuer_fingerprint()
                .iter()
                .any(|f| keep(&hex::encode(f.as_bytes())))
        })
        .cloned()
        .collect();
    assert!(!sigs.is_empty() && sigs.len() < msg.signatures().len());
    CleartextSignedMessage::new_many(&msg.signed_text(), |_| Ok(sigs))
        .unwrap()
        .to_armored_string(Default::default())
        .unwrap()
}

#[test]
fn each_suite_is_verified_with_its_own_keys() {
    use imgbuild_debian::signature::Keyring;
    use imgbuild_debian::{Base, Suite};
    let ring = Keyring::for_suite;
    // trixie-security verifies with trixie's security keys
    let v = ring(Suite::Trixie, Base::DebianSecurity)
        .verify_inrelease(TRIXIE_SECURITY)
        .unwrap();
    assert!(v.text.contains("\nCodename: trixie-security\n"));
    // signed by trixie-security-automatic (subkey 89C87ACE...) alone, bookworm's security
    // ring refuses it: that key vouches for trixie only
    let trixie_only = only_signatures(TRIXIE_SECURITY, |f| f.starts_with("89c87ace"));
    let v = ring(Suite::Trixie, Base::DebianSecurity)
        .verify_inrelease(&trixie_only)
        .unwrap();
    assert_eq!(v.signed_by, "debian-archive-trixie-security-automatic");
    let err = ring(Suite::Bookworm, Base::DebianSecurity)
        .verify_inrelease(&trixie_only)
        .unwrap_err();
    assert!(
        err.contains("not one of the Debian archive keys for bookworm-security"),
        "{err}"
    );
    // no archive (non-security) key vouches for a security suite
    for s in Suite::ALL {
        let err = ring(s, Base::Debian)
            .verify_inrelease(TRIXIE_SECURITY)
            .unwrap_err();
        assert!(
            err.contains(&format!("keys for {s} and {s}-updates")),
            "{err}"
        );
        assert!(ring(s, Base::Debian).verify_inrelease(REAL).is_err());
    }
    // bookworm-security (the older fixture) verifies with bookworm's security ring
    assert!(
        ring(Suite::Bookworm, Base::DebianSecurity)
            .verify_inrelease(REAL)
            .is_ok()
    );
    // the stable keys: each release's own only
    let names = |s, b| ring(s, b).names().join(" ");
    assert!(names(Suite::Trixie, Base::Debian).contains("trixie-stable"));
    assert!(!names(Suite::Trixie, Base::Debian).contains("bookworm-stable"));
    assert!(!names(Suite::Bookworm, Base::Debian).contains("trixie-stable"));
}
