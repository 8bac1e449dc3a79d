//! Signatures in cosign's format (`imgbuild sign`, `push --sign`,
//! `imgbuild verify-signature`), so `cosign verify --key` accepts what imgbuild signs
//! and the other way round.
//!
//! The format (sigstore/cosign `specs/SIGNATURE_SPEC.md`): the payload is the "simple
//! signing" JSON naming the image's repository and manifest digest; it is signed with
//! ECDSA P-256 over its SHA-256 (DER signature, base64 in the annotation
//! `dev.cosignproject.cosign/signature`); the payload is a layer
//! (`application/vnd.dev.cosign.simplesigning.v1+json`) of an image manifest pushed
//! under the tag `sha256-<hex>.sig` of the image's repository. A signature already
//! there is kept (the manifest gets one layer per signature).
//!
//! Keys: what `cosign generate-key-pair` writes — `cosign.key`, an "ENCRYPTED SIGSTORE
//! PRIVATE KEY" (or older "ENCRYPTED COSIGN PRIVATE KEY") PEM holding JSON: scrypt
//! parameters and salt, a NaCl secretbox nonce and the sealed PKCS#8 key; the password
//! comes from `COSIGN_PASSWORD`, as for cosign — and `cosign.pub` (SPKI PEM). An
//! unencrypted PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) PEM works too.
//! Signatures are deterministic (RFC 6979), so signing twice adds nothing.
//! Keyless signing (Fulcio certificates, Rekor entries) needs those services online:
//! not supported.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use imgbuild_registry::{Client, PushImage, Reference};
use imgbuild_store::{Digest, Store};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use serde_json::{Value, json};

use crate::oci::{MEDIA_CONFIG, MEDIA_MANIFEST};

pub const MEDIA_SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const ANNOTATION_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
/// The variable holding the private key's password (cosign's own).
pub const PASSWORD_VAR: &str = "COSIGN_PASSWORD";

/// The tag of an image's signatures: `sha256-<hex>.sig`.
pub fn signature_tag(image: &Digest) -> String {
    format!("sha256-{}.sig", image.hex())
}

/// (label, DER body) of the first PEM block of `text`.
fn pem_block(text: &str) -> Option<(String, Vec<u8>)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + 11..];
    let label_end = rest.find("-----")?;
    let label = rest[..label_end].to_owned();
    let body_start = label_end + 5;
    let end = rest.find(&format!("-----END {label}-----"))?;
    let b64: String = rest[body_start..end]
        .lines()
        .filter(|l| !l.contains(':'))
        .collect::<Vec<_>>()
        .concat();
    let der = B64.decode(b64.trim()).ok()?;
    Some((label, der))
}

/// Opens a cosign private key (see the module doc); `password` is asked for only
/// when the key is encrypted.
pub fn load_private_key(
    path: &std::path::Path,
    password: impl FnOnce() -> Option<String>,
) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read the key `{}`", path.display()))?;
    let (label, body) =
        pem_block(&text).ok_or_else(|| anyhow!("`{}` is not a PEM key file", path.display()))?;
    let pkcs8 = match label.as_str() {
        "ENCRYPTED SIGSTORE PRIVATE KEY" | "ENCRYPTED COSIGN PRIVATE KEY" => {
            let password = password().ok_or_else(|| {
                anyhow!(
                    "`{}` is encrypted: set {PASSWORD_VAR} to its password",
                    path.display()
                )
            })?;
            decrypt_cosign_key(&body, password.as_bytes())
                .with_context(|| format!("opening the key `{}`", path.display()))?
        }
        "PRIVATE KEY" => body,
        "EC PRIVATE KEY" => {
            let sk = p256::SecretKey::from_sec1_der(&body)
                .map_err(|e| anyhow!("`{}`: not a P-256 EC key: {e}", path.display()))?;
            return Ok(SigningKey::from(sk));
        }
        other => bail!(
            "`{}` holds a {other}; expected a cosign key (ENCRYPTED SIGSTORE PRIVATE KEY) or a PKCS#8 EC P-256 PRIVATE KEY",
            path.display()
        ),
    };
    SigningKey::from_pkcs8_der(&pkcs8)
        .map_err(|e| anyhow!("`{}`: not an ECDSA P-256 key: {e}", path.display()))
}

/// cosign's sealed key: scrypt(password, salt) as the secretbox key.
fn decrypt_cosign_key(json_bytes: &[u8], password: &[u8]) -> Result<Vec<u8>> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    let v: Value = serde_json::from_slice(json_bytes).context("the key's body is not JSON")?;
    let b64 = |p: &str| -> Result<Vec<u8>> {
        let s = v
            .pointer(p)
            .and_then(|s| s.as_str())
            .ok_or_else(|| anyhow!("the key has no {p}"))?;
        B64.decode(s)
            .map_err(|e| anyhow!("the key's {p} is not base64: {e}"))
    };
    if v.pointer("/kdf/name").and_then(|s| s.as_str()) != Some("scrypt")
        || v.pointer("/cipher/name").and_then(|s| s.as_str()) != Some("nacl/secretbox")
    {
        bail!("unsupported key encryption (expected scrypt and nacl/secretbox)");
    }
    let n = v
        .pointer("/kdf/params/N")
        .and_then(|x| x.as_u64())
        .unwrap_or(32768);
    let r = v
        .pointer("/kdf/params/r")
        .and_then(|x| x.as_u64())
        .unwrap_or(8) as u32;
    let p = v
        .pointer("/kdf/params/p")
        .and_then(|x| x.as_u64())
        .unwrap_or(1) as u32;
    if !n.is_power_of_two() {
        bail!("the key's scrypt N ({n}) is not a power of two");
    }
    let params = scrypt::Params::new(n.trailing_zeros() as u8, r, p, 32)
        .map_err(|e| anyhow!("the key's scrypt parameters: {e}"))?;
    let salt = b64("/kdf/salt")?;
    let nonce = b64("/cipher/nonce")?;
    let sealed = b64("/ciphertext")?;
    if nonce.len() != 24 {
        bail!("the key's nonce is {} bytes, not 24", nonce.len());
    }
    let mut key = [0u8; 32];
    scrypt::scrypt(password, &salt, &params, &mut key)
        .map_err(|e| anyhow!("scrypt failed: {e}"))?;
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(&key.into());
    cipher
        .decrypt(nonce[..].into(), &sealed[..])
        .map_err(|_| anyhow!("wrong password (the key does not open with {PASSWORD_VAR})"))
}

/// Reads a public key (SPKI `PUBLIC KEY` PEM, as `cosign.pub`).
pub fn load_public_key(path: &std::path::Path) -> Result<VerifyingKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read the key `{}`", path.display()))?;
    VerifyingKey::from_public_key_pem(text.trim())
        .map_err(|e| anyhow!("`{}`: not an ECDSA P-256 public key: {e}", path.display()))
}

/// The simple-signing payload for an image (canonical JSON, as cosign writes it).
pub fn payload(repository: &str, image: &Digest) -> Vec<u8> {
    crate::oci::canonical(&json!({
        "critical": {
            "identity": { "docker-reference": repository },
            "image": { "docker-manifest-digest": image.to_string() },
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
}

/// What `sign` did.
#[derive(Debug, serde::Serialize)]
pub struct Signed {
    pub reference: String,
    pub tag: String,
    pub signature_manifest: Digest,
}

/// Signs the image `target@image` and pushes the signature (see the module doc).
pub fn sign(
    client: &Client,
    store: &Store,
    target: &Reference,
    image: &Digest,
    key: &SigningKey,
) -> Result<Signed> {
    let repo = target.name();
    // the repository as cosign (go-containerregistry) names it: Docker Hub is
    // `index.docker.io`
    let identity = match repo.strip_prefix("docker.io/") {
        Some(rest) => format!("index.docker.io/{rest}"),
        None => repo.clone(),
    };
    let payload = payload(&identity, image);
    let sig: Signature = key.sign(&payload);
    let der: DerSignature = sig.to_der();
    let sig_b64 = B64.encode(der.as_bytes());
    let payload_digest = store.put_bytes(&payload)?;
    let ours = json!({
        "mediaType": MEDIA_SIMPLE_SIGNING,
        "digest": payload_digest.to_string(),
        "size": payload.len(),
        "annotations": { ANNOTATION_SIGNATURE: sig_b64 },
    });
    let tag = signature_tag(image);
    let mut tagged = target.clone();
    tagged.tag = Some(tag.clone());
    tagged.digest = None;
    // signatures already there stay (their payload blobs are in the repository)
    let mut layers: Vec<Value> = match client.manifest_if_present(&tagged)? {
        Some(m) => serde_json::from_slice::<Value>(&m.bytes)
            .ok()
            .and_then(|v| v["layers"].as_array().cloned())
            .unwrap_or_default(),
        None => vec![],
    };
    if !layers.iter().any(|l| l == &ours) {
        layers.push(ours);
    }
    let diff_ids: Vec<Value> = layers.iter().map(|l| l["digest"].clone()).collect();
    // cosign's config: fixed zero times, so the same signatures give the same manifest
    let config = crate::oci::canonical(&json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{ "created": "0001-01-01T00:00:00Z" }],
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }));
    let config_digest = store.put_bytes(&config)?;
    let manifest = crate::oci::canonical(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest.to_string(), "size": config.len() },
        "layers": layers,
    }));
    let manifest_digest = store.put_bytes(&manifest)?;
    let mut img = PushImage::from_store(store, tagged.clone(), &manifest_digest)?;
    img.tags = vec![tag.clone()];
    client
        .push(store, &[img])
        .with_context(|| format!("pushing the signature of {repo}@{image}"))?;
    Ok(Signed {
        reference: format!("{repo}@{image}"),
        tag,
        signature_manifest: manifest_digest,
    })
}

/// Checks that `target@image` has a signature by `key`: some layer of its `.sig`
/// manifest whose payload names this digest and whose signature verifies.
pub fn verify(
    client: &Client,
    store: &Store,
    target: &Reference,
    image: &Digest,
    key: &VerifyingKey,
) -> Result<String> {
    let tag = signature_tag(image);
    let mut tagged = target.clone();
    tagged.tag = Some(tag.clone());
    tagged.digest = None;
    let Some(m) = client.manifest_if_present(&tagged)? else {
        bail!("{}@{image} has no signature (no tag {tag})", target.name());
    };
    let v: Value = serde_json::from_slice(&m.bytes).context("the signature manifest")?;
    let mut reasons = vec![];
    for l in v["layers"].as_array().into_iter().flatten() {
        if l["mediaType"] != MEDIA_SIMPLE_SIGNING {
            continue;
        }
        let (Some(d), Some(size), Some(sig)) = (
            l["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()),
            l["size"].as_u64(),
            l["annotations"][ANNOTATION_SIGNATURE].as_str(),
        ) else {
            continue;
        };
        client.fetch_blob(store, target, &d, size)?;
        let payload = store.read_bytes(&d)?;
        let Ok(p) = serde_json::from_slice::<Value>(&payload) else {
            reasons.push(format!("payload {d} is not JSON"));
            continue;
        };
        if p["critical"]["image"]["docker-manifest-digest"] != image.to_string() {
            reasons.push(format!("payload {d} names another image"));
            continue;
        }
        let Ok(der) = B64.decode(sig) else {
            reasons.push(format!("signature of payload {d} is not base64"));
            continue;
        };
        let Ok(sig) = Signature::from_der(&der) else {
            reasons.push(format!("signature of payload {d} is not DER ECDSA"));
            continue;
        };
        if key.verify(&payload, &sig).is_ok() {
            return Ok(format!(
                "{}@{image}: signature verified (payload {d})",
                target.name()
            ));
        }
        reasons.push(format!("signature of payload {d} is not by this key"));
    }
    bail!(
        "{}@{image}: no signature verifies with this key ({})",
        target.name(),
        if reasons.is_empty() {
            "no simple-signing layer".to_owned()
        } else {
            reasons.join("; ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key sealed the way cosign seals one (scrypt + secretbox), opened again.
    #[test]
    fn opens_a_sealed_key() {
        use crypto_secretbox::aead::{Aead, KeyInit};
        use p256::pkcs8::EncodePrivateKey;
        let sk = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let der = sk.to_pkcs8_der().unwrap();
        let salt = [1u8; 32];
        let nonce = [2u8; 24];
        let params = scrypt::Params::new(10, 8, 1, 32).unwrap();
        let mut key = [0u8; 32];
        scrypt::scrypt(b"pw", &salt, &params, &mut key).unwrap();
        let sealed = crypto_secretbox::XSalsa20Poly1305::new(&key.into())
            .encrypt(nonce[..].into(), der.as_bytes())
            .unwrap();
        let body = json!({
            "kdf": {"name": "scrypt", "params": {"N": 1024, "r": 8, "p": 1}, "salt": B64.encode(salt)},
            "cipher": {"name": "nacl/secretbox", "nonce": B64.encode(nonce)},
            "ciphertext": B64.encode(&sealed),
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        assert_eq!(decrypt_cosign_key(&bytes, b"pw").unwrap(), der.as_bytes());
        assert!(decrypt_cosign_key(&bytes, b"wrong").is_err());
    }
}
