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
    assert!(err.contains("bad signature"), "{err}");

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
