//! The root of trust: the Debian archive's OpenPGP keys (embedded from Debian's
//! `debian-archive-keyring` 2023.3+deb12u2, bookworm and trixie archive and security keys)
//! and the check of an `InRelease` file's inline signature against them ([`Keyring`]).
//!
//! Each suite is verified only with the keys that sign it ([`Keyring::for_suite`]), as
//! found on deb.debian.org (December 2026): the archive signs every suite with the two
//! current `automatic` keys of its kind plus the release's own `stable` key, so
//! `trixie` carries signatures by bookworm-automatic, trixie-automatic and trixie-stable,
//! `trixie-security` by bookworm-security-automatic and trixie-security-automatic. The
//! stable key of one release never vouches for another, nor an archive key for a
//! security suite. A third-party repository is verified only with its own key file
//! ([`Keyring::from_key_file`], apt's `signed-by`), and the Debian keys never vouch for it.
//!
//! The archive signs with *subkeys*, and rPGP's `verify(&SignedPublicKey)` only tries the
//! primary key, so this module picks the key the signature names (issuer fingerprint or key
//! id, primary or subkey) and checks itself that the subkey is bound to the primary key, is
//! signing-capable, is not revoked and was not expired when the signature was made.
//! Expiry is judged at the signature's creation time, never at "now", so a verification
//! result does not change with the clock (snapshot mirrors serve old, validly signed files).

use std::path::Path;
use std::sync::OnceLock;

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};
use pgp::packet::{Signature, SignatureType};
use pgp::types::{KeyDetails, Timestamp};

use crate::index::Base;
use crate::platform::Suite;

/// The armored keys, in the keyring package's file names.
const KEYS: &[(&str, &str)] = &[
    (
        "debian-archive-bookworm-automatic",
        include_str!("../keys/debian-archive-bookworm-automatic.asc"),
    ),
    (
        "debian-archive-bookworm-security-automatic",
        include_str!("../keys/debian-archive-bookworm-security-automatic.asc"),
    ),
    (
        "debian-archive-bookworm-stable",
        include_str!("../keys/debian-archive-bookworm-stable.asc"),
    ),
    (
        "debian-archive-trixie-automatic",
        include_str!("../keys/debian-archive-trixie-automatic.asc"),
    ),
    (
        "debian-archive-trixie-security-automatic",
        include_str!("../keys/debian-archive-trixie-security-automatic.asc"),
    ),
    (
        "debian-archive-trixie-stable",
        include_str!("../keys/debian-archive-trixie-stable.asc"),
    ),
];

/// Which embedded keys vouch for the suites of a release (see the module doc): for
/// the release and its `-updates` (`Base::Debian`), and for its `-security`.
fn suite_keys(suite: Suite, base: Base) -> &'static [&'static str] {
    match (suite, base) {
        (Suite::Bookworm, Base::Debian) => &[
            "debian-archive-bookworm-automatic",
            "debian-archive-bookworm-stable",
            "debian-archive-trixie-automatic",
        ],
        (Suite::Bookworm, Base::DebianSecurity) => &["debian-archive-bookworm-security-automatic"],
        (Suite::Trixie, Base::Debian) => &[
            "debian-archive-bookworm-automatic",
            "debian-archive-trixie-automatic",
            "debian-archive-trixie-stable",
        ],
        (Suite::Trixie, Base::DebianSecurity) => &[
            "debian-archive-bookworm-security-automatic",
            "debian-archive-trixie-security-automatic",
        ],
    }
}

fn embedded(name: &str) -> (String, SignedPublicKey) {
    let (_, armored) = KEYS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no embedded key {name}"));
    let (key, _) = SignedPublicKey::from_string(armored)
        .unwrap_or_else(|e| panic!("embedded key {name} does not parse: {e}"));
    (name.to_owned(), key)
}

/// The OpenPGP keys an `InRelease` must be signed with.
pub struct Keyring {
    keys: Vec<(String, SignedPublicKey)>,
    /// What the ring is, for messages: `the Debian archive keys for trixie`.
    what: String,
}

impl Keyring {
    /// Every embedded Debian archive key, whatever the suite (diagnostics, and tests of
    /// the signature check itself; indexes use [`Keyring::for_suite`]).
    pub fn debian() -> &'static Keyring {
        static RING: OnceLock<Keyring> = OnceLock::new();
        RING.get_or_init(|| Keyring {
            keys: KEYS.iter().map(|(name, _)| embedded(name)).collect(),
            what: "the Debian archive keys".into(),
        })
    }

    /// The embedded keys that vouch for one suite of a release: `base` says which
    /// (the release and its `-updates`, or its `-security`).
    pub fn for_suite(suite: Suite, base: Base) -> &'static Keyring {
        static RINGS: OnceLock<Vec<((Suite, Base), Keyring)>> = OnceLock::new();
        let rings = RINGS.get_or_init(|| {
            Suite::ALL
                .into_iter()
                .flat_map(|s| [(s, Base::Debian), (s, Base::DebianSecurity)])
                .map(|(s, b)| {
                    let suites = match b {
                        Base::Debian => format!("{s} and {s}-updates"),
                        Base::DebianSecurity => format!("{s}-security"),
                    };
                    let ring = Keyring {
                        keys: suite_keys(s, b).iter().map(|n| embedded(n)).collect(),
                        what: format!("the Debian archive keys for {suites}"),
                    };
                    ((s, b), ring)
                })
                .collect()
        });
        &rings
            .iter()
            .find(|(k, _)| *k == (suite, base))
            .expect("a ring for every suite")
            .1
    }

    /// A third-party repository's key file (apt's `signed-by`): one or more public keys,
    /// armored (`.asc`) or binary (`.gpg`). Trusted for that repository only.
    pub fn from_key_file(repository: &str, path: &Path) -> Result<Keyring, crate::Error> {
        let bad = |why: String| crate::Error::BadKey {
            name: repository.to_owned(),
            path: path.to_owned(),
            why,
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let parsed: Vec<SignedPublicKey> = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
            SignedPublicKey::from_string_many(&text)
                .map_err(|e| bad(format!("not an OpenPGP public key: {e}")))?
                .0
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("not an OpenPGP public key: {e}")))?
        } else {
            SignedPublicKey::from_bytes_many(&bytes[..])
                .map_err(|e| bad(format!("not an OpenPGP public key: {e}")))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("not an OpenPGP public key: {e}")))?
        };
        if parsed.is_empty() {
            return Err(bad("holds no public key".into()));
        }
        let name = format!("{repository} ({})", path.display());
        Ok(Keyring {
            keys: parsed.into_iter().map(|k| (name.clone(), k)).collect(),
            what: format!("the keys of repository `{repository}` ({})", path.display()),
        })
    }

    /// Other keys, each with a name for messages (a private archive, or tests that sign
    /// their own `InRelease` files).
    pub fn new(keys: Vec<(String, SignedPublicKey)>) -> Keyring {
        let names: Vec<&str> = keys.iter().map(|(n, _)| n.as_str()).collect();
        let what = format!("the given keys ({})", names.join(", "));
        Keyring { keys, what }
    }

    /// Names of the keys, for messages and tests.
    pub fn names(&self) -> Vec<&str> {
        self.keys.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Verifies an `InRelease` file and returns its signed content. At least one signature
    /// must come from a key of this ring and verify; signatures by unknown keys are ignored
    /// (as gpgv does), and nothing outside the signed block is ever returned.
    pub fn verify_inrelease(&self, armored: &str) -> Result<Verified, String> {
        let (msg, _) = CleartextSignedMessage::from_string(armored)
            .map_err(|e| format!("not an OpenPGP clear-signed file: {e}"))?;
        let text = msg.signed_text();
        // Why each signature failed, one line each: those by keys of this ring
        // first (an unknown key's signature is ignored, as gpgv does, and only
        // named when no signature comes from a known key).
        let (mut known, mut unknown) = (vec![], vec![]);
        for sig in msg.signatures() {
            match self.check_one(sig, text.as_bytes()) {
                Ok(name) => {
                    return Ok(Verified {
                        text: text.replace("\r\n", "\n"),
                        signed_by: name,
                    });
                }
                Err(Failure::Known(why)) => known.push(why),
                Err(Failure::Unknown(why)) => unknown.push(why),
            }
        }
        let reasons = if !known.is_empty() {
            known
        } else if !unknown.is_empty() {
            unknown
        } else {
            vec!["the file has no signatures".into()]
        };
        Err(one_line(&reasons.join("; ")))
    }

    /// Checks one signature; returns the name of the key that made it.
    fn check_one(&self, sig: &Signature, data: &[u8]) -> Result<String, Failure> {
        // rPGP's verification errors are multi-line assertion texts (`left`/`right`
        // hash prefixes): what they mean is that the signed text is not what was
        // signed.
        let altered = |who: &str| {
            Failure::Known(format!(
                "the signature by {who} does not match the signed text (the file was altered or damaged after signing)"
            ))
        };
        let made = sig
            .created()
            .ok_or_else(|| Failure::Known("a signature has no creation time".into()))?;
        for (name, key) in &self.keys {
            if issuer_matches(sig, key) {
                primary_usable(key, made).map_err(|e| Failure::Known(format!("{name}: {e}")))?;
                sig.verify(key, data).map_err(|_| altered(name))?;
                return Ok(name.to_string());
            }
            for sub in &key.public_subkeys {
                if !issuer_matches(sig, &sub.key) {
                    continue;
                }
                let sub_name = format!(
                    "{name} (subkey {})",
                    hex::encode(sub.key.fingerprint().as_bytes())
                );
                primary_usable(key, made).map_err(|e| Failure::Known(format!("{name}: {e}")))?;
                subkey_usable(key, sub, made)
                    .map_err(|e| Failure::Known(format!("{sub_name}: {e}")))?;
                sig.verify(&sub.key, data).map_err(|_| altered(&sub_name))?;
                return Ok(name.to_string());
            }
        }
        let who: Vec<String> = sig
            .issuer_fingerprint()
            .iter()
            .map(|f| hex::encode(f.as_bytes()))
            .chain(sig.issuer_key_id().iter().map(|k| format!("{k:?}")))
            .collect();
        Err(Failure::Unknown(format!(
            "signed by a key that is not one of {} ({})",
            self.what,
            who.join(", ")
        )))
    }
}

/// Why one signature did not verify: by a key of the ring, or by another key.
enum Failure {
    Known(String),
    Unknown(String),
}

/// Error texts of libraries can span lines; a failure is reported on one.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Names of the embedded keys with their primary fingerprints (for diagnostics).
pub fn trusted_keys() -> Vec<(String, String)> {
    Keyring::debian()
        .keys
        .iter()
        .map(|(n, k)| (n.clone(), hex::encode(k.fingerprint().as_bytes())))
        .collect()
}

/// A verified InRelease: the signed text (LF line ends) and the key that signed it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub text: String,
    pub signed_by: String,
}

/// [`Keyring::verify_inrelease`] against the embedded Debian archive keys.
pub fn verify_inrelease(armored: &str) -> Result<Verified, String> {
    Keyring::debian().verify_inrelease(armored)
}

fn issuer_matches(sig: &Signature, key: &impl KeyDetails) -> bool {
    let fp = key.fingerprint();
    let id = key.legacy_key_id();
    sig.issuer_fingerprint().iter().any(|f| **f == fp)
        || sig.issuer_key_id().iter().any(|k| **k == id)
}

fn expired(created: Timestamp, expires_after: Option<pgp::types::Duration>, at: Timestamp) -> bool {
    match expires_after {
        Some(d) if d.as_secs() > 0 => {
            (created.as_secs() as u64 + d.as_secs() as u64) < at.as_secs() as u64
        }
        _ => false,
    }
}

fn primary_usable(key: &SignedPublicKey, at: Timestamp) -> Result<(), String> {
    for rev in &key.details.revocation_signatures {
        if rev.verify_key(&key.primary_key).is_ok() {
            return Err("primary key is revoked".into());
        }
    }
    // the newest valid self-certification carries the key's expiry
    let mut newest: Option<&Signature> = None;
    for user in &key.details.users {
        for s in &user.signatures {
            if s.is_certification()
                && s.verify_certification(&key.primary_key, pgp::types::Tag::UserId, &user.id)
                    .is_ok()
                && newest.is_none_or(|n| n.created() < s.created())
            {
                newest = Some(s);
            }
        }
    }
    let cert = newest.ok_or("primary key has no valid self-certification")?;
    if expired(key.primary_key.created_at(), cert.key_expiration_time(), at) {
        return Err("primary key was expired when the file was signed".into());
    }
    Ok(())
}

fn subkey_usable(
    key: &SignedPublicKey,
    sub: &pgp::composed::SignedPublicSubKey,
    at: Timestamp,
) -> Result<(), String> {
    let mut binding: Option<&Signature> = None;
    for s in &sub.signatures {
        let valid = || s.verify_subkey_binding(&key.primary_key, &sub.key).is_ok();
        match s.typ() {
            Some(SignatureType::SubkeyRevocation) if valid() => return Err("revoked".into()),
            Some(SignatureType::SubkeyBinding)
                if valid() && binding.is_none_or(|b| b.created() < s.created()) =>
            {
                binding = Some(s);
            }
            _ => {}
        }
    }
    let binding = binding.ok_or("no valid binding signature from the primary key")?;
    if !binding.key_flags().sign() {
        return Err("not a signing key".into());
    }
    // a signing subkey must also sign the primary back, or anyone could claim it
    let back = binding
        .embedded_signature()
        .ok_or("signing subkey has no primary-key binding (back-signature)")?;
    back.verify_primary_key_binding(&sub.key, &key.primary_key)
        .map_err(|e| format!("bad back-signature: {e}"))?;
    if expired(sub.key.created_at(), binding.key_expiration_time(), at) {
        return Err("was expired when the file was signed".into());
    }
    Ok(())
}
