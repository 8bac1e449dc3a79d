//! Supply chain (issue 14): SBOMs, provenance, signatures and `imgbuild verify`,
//! checked by independent tools.
//!
//! - The SPDX document is validated by `spdx-tools` (`pyspdxtools -i`), the CycloneDX
//!   one by `cyclonedx-python-lib`'s JSON schema validator; the SBOM of the `supply`
//!   fixture (a Debian layer, a venv, a files layer) lists exactly its lock's packages,
//!   every requirement, and each file with the sha256 of the project file.
//! - A push to a real distribution registry (2.8: no referrers API) leaves the
//!   `sha256-<hex>` tag index listing the SBOM and provenance, which fetch and verify
//!   against their digests (with curl, not imgbuild).
//! - A signature made by `imgbuild sign` with a cosign-style encrypted key (sealed here
//!   with PyNaCl and hashlib's scrypt) verifies with Python's `cryptography`
//!   following cosign's spec, and fails for the image once its manifest changed.
//! - `imgbuild verify` passes on a built-and-pushed image and, for a copy with one
//!   file changed in one layer (re-packed and pushed here in Python), exits non-zero
//!   naming that layer and that file.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sha2::Digest as _;

use crate::support::*;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn python(script: &str, args: &[&str]) -> std::process::Output {
    require("python3");
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap()
}

fn curl(args: &[&str]) -> Vec<u8> {
    let o = Command::new("curl")
        .args(["-sfS", "-m", "20"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

const ACCEPT_ALL: &str =
    "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json";

fn json_file(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// `(name, version)` of every package of the lock's entries for `recipe`.
fn lock_packages(lock: &Path, recipe: &str) -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(lock).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    let mut out = BTreeSet::new();
    for d in v["debian"].as_array().unwrap() {
        if d["recipe"].as_str() == Some(recipe) {
            for p in d["packages"].as_array().unwrap() {
                out.insert((
                    p["name"].as_str().unwrap().to_owned(),
                    p["version"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

const CDX_VALIDATE: &str = r#"
import sys
from cyclonedx.validation.json import JsonStrictValidator
from cyclonedx.schema import SchemaVersion
err = JsonStrictValidator(SchemaVersion.V1_6).validate_str(open(sys.argv[1]).read())
if err is not None:
    print(err)
    sys.exit(1)
"#;

#[test]
fn sboms_list_the_lock_and_the_requirements_and_pass_the_validators() {
    require("pyspdxtools");
    let f = Fixture::new("supply");
    run_ok(f.cmd().args(["build", "sbom"]));
    let out = f.path().join("out");
    let spdx_path = out.join("sbom.spdx.json");
    let spdx = validated_spdx(&spdx_path);

    // Debian packages: exactly the lock's, with purls, .deb hashes, source packages
    let lock = lock_packages(&f.path().join("imgbuild.lock"), "sbom");
    assert!(lock.len() >= 3, "{lock:?}");
    let debs: Vec<&Value> = spdx["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-Deb-"))
        .collect();
    let listed: BTreeSet<(String, String)> = debs
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["versionInfo"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(listed, lock);
    let netbase = debs.iter().find(|p| p["name"] == "netbase").unwrap();
    assert_eq!(
        netbase["externalRefs"][0]["referenceLocator"],
        format!(
            "pkg:deb/debian/netbase@{}?arch=all&distro=debian-12",
            netbase["versionInfo"].as_str().unwrap()
        )
    );
    // netbase's copyright file is machine-readable: GPL-2
    assert_eq!(netbase["licenseDeclared"], "GPL-2.0-only", "{netbase}");
    let libc = debs.iter().find(|p| p["name"] == "libc6").unwrap();
    assert!(
        libc["sourceInfo"].as_str().unwrap().contains("glibc"),
        "{libc}"
    );
    assert_eq!(libc["checksums"][0]["algorithm"], "SHA256");

    // Python: every requirement, with its wheel's sha256 and license
    let reqs = std::fs::read_to_string(f.path().join("layers/requirements.txt")).unwrap();
    let wanted: BTreeSet<(String, String)> = reqs
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|r| r.split_once("=="))
        .map(|(n, v)| (n.to_lowercase(), v.to_owned()))
        .collect();
    let py: BTreeSet<(String, String)> = spdx["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-PyPI-"))
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_lowercase(),
                p["versionInfo"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(py, wanted);
    let blinker = spdx["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str().unwrap().eq_ignore_ascii_case("blinker"))
        .unwrap();
    assert_eq!(blinker["licenseDeclared"], "MIT", "{blinker}");
    // the wheel's sha256: one of the requirement's hashes
    let wheel = blinker["checksums"][0]["checksumValue"].as_str().unwrap();
    assert!(
        reqs.contains(&format!("--hash=sha256:{wheel}")),
        "{blinker}"
    );

    // Files: the files layer's files with the project files' sha256
    let motd = spdx["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["fileName"] == "./etc/motd")
        .expect("/etc/motd in the SBOM");
    let want = sha256_hex(&std::fs::read(f.path().join("layers/motd")).unwrap());
    assert!(
        motd["checksums"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["checksumValue"] == want)
    );
    // relationships: image CONTAINS layer CONTAINS package
    let rel = |a: &str, b: &str| {
        spdx["relationships"].as_array().unwrap().iter().any(|r| {
            r["spdxElementId"] == a
                && r["relationshipType"] == "CONTAINS"
                && r["relatedSpdxElement"] == b
        })
    };
    assert!(rel("SPDXRef-Image", "SPDXRef-Layer-1"));
    assert!(rel("SPDXRef-Layer-1", "SPDXRef-Deb-1-netbase"));

    // the validator does reject a broken document (a file without its SHA-1)
    let mut broken = spdx.clone();
    broken["files"][0]["checksums"] = serde_json::json!([]);
    let broken_path = f.path().join("broken.spdx.json");
    std::fs::write(&broken_path, serde_json::to_vec(&broken).unwrap()).unwrap();
    let o = Command::new("pyspdxtools")
        .arg("-i")
        .arg(&broken_path)
        .output()
        .unwrap();
    assert!(
        !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("invalid"),
        "pyspdxtools accepted a file without SHA-1"
    );

    // Deterministic, and a no-op build rewrites nothing.
    let before = std::fs::read(&spdx_path).unwrap();
    let mtime = std::fs::metadata(&spdx_path).unwrap().modified().unwrap();
    let noop = f.build_json(&["build", "sbom"]);
    assert!(layers_of(&noop, "sbom").iter().all(|(_, c)| *c));
    assert_eq!(std::fs::read(&spdx_path).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&spdx_path).unwrap().modified().unwrap(),
        mtime
    );
    // the OCI layout carries both documents as referrers of the image
    let index = json_file(&out.join("oci/index.json"));
    let image = digests(&noop)[0].1.clone();
    for (name, t) in [
        ("sbom.sbom", "application/spdx+json"),
        ("sbom.provenance", "application/vnd.in-toto+json"),
    ] {
        let e = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
            .unwrap_or_else(|| panic!("{name} not in {index}"));
        assert_eq!(e["artifactType"], t);
        let m = json_file(
            &out.join("oci/blobs/sha256")
                .join(e["digest"].as_str().unwrap().trim_start_matches("sha256:")),
        );
        assert_eq!(m["subject"]["digest"], image);
    }
    // provenance: the lock and the recipe by digest
    let prov = json_file(&out.join("sbom.provenance.json"));
    assert_eq!(prov["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(
        prov["subject"][0]["digest"]["sha256"],
        image.trim_start_matches("sha256:")
    );
    let deps = prov["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    let lock_hex = sha256_hex(&std::fs::read(f.path().join("imgbuild.lock")).unwrap());
    assert!(
        deps.iter()
            .any(|d| d["name"] == "imgbuild.lock" && d["digest"]["sha256"] == lock_hex),
        "{prov}"
    );
    assert!(deps.iter().any(|d| d["name"] == "recipes/sbom.toml"));

    // CycloneDX: valid, the same packages
    run_ok(
        f.cmd()
            .args(["build", "sbom", "--sbom-format", "cyclonedx"]),
    );
    let cdx_path = out.join("sbom.cdx.json");
    let o = python(CDX_VALIDATE, &[cdx_path.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "cyclonedx: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let cdx = json_file(&cdx_path);
    let mut purls = BTreeSet::new();
    for layer in cdx["components"].as_array().unwrap() {
        for c in layer["components"].as_array().into_iter().flatten() {
            if let Some(p) = c["purl"].as_str() {
                purls.insert(p.to_owned());
            }
        }
    }
    assert_eq!(
        purls.iter().filter(|p| p.starts_with("pkg:deb/")).count(),
        lock.len()
    );
    assert!(purls.contains("pkg:pypi/blinker@1.9.0"), "{purls:?}");
}

/// The referrers tag index of `repo` for `image`, fetched with curl, and each
/// artifact's document fetched and checked against its digest.
fn fallback_referrers(addr: &str, repo: &str, image: &str) -> Vec<(String, Vec<u8>)> {
    let tag = format!("sha256-{}", image.trim_start_matches("sha256:"));
    let index: Value = serde_json::from_slice(&curl(&[
        "-H",
        ACCEPT_ALL,
        &format!("http://{addr}/v2/{repo}/manifests/{tag}"),
    ]))
    .unwrap();
    let mut docs = vec![];
    for e in index["manifests"].as_array().unwrap() {
        let d = e["digest"].as_str().unwrap();
        let raw = curl(&[
            "-H",
            ACCEPT_ALL,
            &format!("http://{addr}/v2/{repo}/manifests/{d}"),
        ]);
        assert_eq!(format!("sha256:{}", sha256_hex(&raw)), d);
        let m: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(m["subject"]["digest"], image, "{m}");
        assert_eq!(m["artifactType"], e["artifactType"]);
        let layer = &m["layers"][0];
        let ld = layer["digest"].as_str().unwrap();
        let blob = curl(&[&format!("http://{addr}/v2/{repo}/blobs/{ld}")]);
        assert_eq!(format!("sha256:{}", sha256_hex(&blob)), ld);
        assert_eq!(blob.len() as u64, layer["size"].as_u64().unwrap());
        docs.push((e["artifactType"].as_str().unwrap().to_owned(), blob));
    }
    docs
}

#[test]
fn push_attaches_sbom_and_provenance_under_the_referrers_tag() {
    let reg = Registry::start();
    let f = Fixture::new("hello");
    let built = f.build_json(&["build", "hello"]);
    let image = digests(&built)
        .into_iter()
        .find(|(n, _)| n == "hello")
        .unwrap()
        .1;
    let prefix = format!("{}/sc", reg.addr);
    run_ok(f.cmd().args(["push", "hello", "--registry", &prefix]));
    let docs = fallback_referrers(&reg.addr, "sc/hello", &image);
    let types: BTreeSet<&str> = docs.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        BTreeSet::from(["application/spdx+json", "application/vnd.in-toto+json"])
    );
    let local = std::fs::read(f.path().join("out/hello.spdx.json")).unwrap();
    assert!(docs.iter().any(|(_, b)| *b == local));
    // pushing again adds nothing to the index
    run_ok(f.cmd().args(["push", "hello", "--registry", &prefix]));
    assert_eq!(fallback_referrers(&reg.addr, "sc/hello", &image).len(), 2);
}

/// Makes a cosign-style key pair in Python: `cosign.key` (ENCRYPTED SIGSTORE PRIVATE
/// KEY: scrypt + NaCl secretbox over PKCS#8, as cosign's `encrypted` package writes
/// it) and `cosign.pub` (SPKI PEM).
const MAKE_KEYS: &str = r#"
import sys, os, json, base64, hashlib
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import serialization
import nacl.secret
d = sys.argv[1]
k = ec.generate_private_key(ec.SECP256R1())
der = k.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
salt = os.urandom(32)
N, r, p = 32768, 8, 1
key = hashlib.scrypt(b"s3cret", salt=salt, n=N, r=r, p=p, maxmem=128 * r * N * 2, dklen=32)
nonce = os.urandom(24)
sealed = nacl.secret.SecretBox(key).encrypt(der, nonce).ciphertext
body = json.dumps({"kdf": {"name": "scrypt", "params": {"N": N, "r": r, "p": p}, "salt": base64.b64encode(salt).decode()},
                   "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
                   "ciphertext": base64.b64encode(sealed).decode()}).encode()
b64 = base64.b64encode(body).decode()
pem = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n" + "\n".join(b64[i:i+64] for i in range(0, len(b64), 64)) + "\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
open(os.path.join(d, "cosign.key"), "w").write(pem)
open(os.path.join(d, "cosign.pub"), "wb").write(k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
"#;

/// Verifies REPO:TAG's signature as cosign's spec says, with `cryptography`: the
/// manifest the tag names now, its `sha256-<hex>.sig` manifest, each simple-signing
/// layer's payload (digest checked) naming that manifest digest, and the ECDSA
/// signature over the payload. Exit 0 when one verifies.
const VERIFY_COSIGN: &str = r#"
import sys, json, base64, hashlib, urllib.request
from cryptography.hazmat.primitives import serialization, hashes
from cryptography.hazmat.primitives.asymmetric import ec
base, repo, tag, pub = sys.argv[1:5]
accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
def get(path, accept=None):
    req = urllib.request.Request(base + path)
    if accept: req.add_header("Accept", accept)
    return urllib.request.urlopen(req).read()
manifest = get(f"/v2/{repo}/manifests/{tag}", accept)
digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
try:
    sig = json.loads(get(f"/v2/{repo}/manifests/sha256-{digest[7:]}.sig", accept))
except Exception as e:
    print("no signature manifest for", digest); sys.exit(1)
key = serialization.load_pem_public_key(open(pub, "rb").read())
for layer in sig["layers"]:
    if layer["mediaType"] != "application/vnd.dev.cosign.simplesigning.v1+json": continue
    payload = get(f"/v2/{repo}/blobs/{layer['digest']}")
    assert "sha256:" + hashlib.sha256(payload).hexdigest() == layer["digest"]
    p = json.loads(payload)
    if p["critical"]["type"] != "cosign container image signature": continue
    if p["critical"]["image"]["docker-manifest-digest"] != digest: continue
    s = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    try:
        key.verify(s, payload, ec.ECDSA(hashes.SHA256()))
        print("verified", digest); sys.exit(0)
    except Exception:
        pass
print("no valid signature for", digest); sys.exit(1)
"#;

#[test]
fn a_signature_verifies_independently_and_fails_once_the_image_changed() {
    let reg = Registry::start();
    let f = Fixture::new("hello");
    let keys = tempfile::tempdir().unwrap();
    let o = python(MAKE_KEYS, &[keys.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let key = keys.path().join("cosign.key");
    let public = keys.path().join("cosign.pub");
    let prefix = format!("{}/sig", reg.addr);
    run_ok(f.cmd().args(["build", "hello"]));

    // without the password: refused before anything is pushed, naming the variable
    let out = f
        .cmd()
        .env_remove("COSIGN_PASSWORD")
        .args(["push", "hello", "--registry", &prefix, "--sign"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("COSIGN_PASSWORD"));

    run_ok(
        f.cmd()
            .env("COSIGN_PASSWORD", "s3cret")
            .args(["push", "hello", "--registry", &prefix, "--sign"])
            .arg(&key),
    );
    let base = format!("http://{}", reg.addr);
    let check = |tag: &str| {
        python(
            VERIFY_COSIGN,
            &[&base, "sig/hello", tag, public.to_str().unwrap()],
        )
    };
    let o = check("latest");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    run_ok(
        f.cmd()
            .args(["verify-signature", "hello", "--registry", &prefix, "--key"])
            .arg(&public),
    );
    // `imgbuild sign` again (same key, deterministic signature): still one layer
    run_ok(
        f.cmd()
            .env("COSIGN_PASSWORD", "s3cret")
            .args(["sign", "hello", "--registry", &prefix, "--key"])
            .arg(&key),
    );
    assert!(check("latest").status.success());

    // the image changes (one file), is pushed unsigned under the same tag: no
    // signature verifies for what the tag names now
    std::fs::write(f.path().join("layers/site/index.html"), "changed\n").unwrap();
    run_ok(f.cmd().args(["build", "hello"]));
    run_ok(f.cmd().args(["push", "hello", "--registry", &prefix]));
    let o = check("latest");
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let out = f
        .cmd()
        .args(["verify-signature", "hello", "--registry", &prefix, "--key"])
        .arg(&public)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Re-packs layer INDEX (0-based) of REPO@DIGEST with FILE's content replaced, and
/// pushes the result (new layer blob, config, manifest) under TAG; prints its digest.
const TAMPER: &str = r#"
import sys, json, hashlib, gzip, io, tarfile, urllib.request
base, repo, digest, index, path, tag = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
accept = "application/vnd.oci.image.manifest.v1+json"
def req(method, url, data=None, headers={}):
    r = urllib.request.Request(url if url.startswith("http") else base + url, data=data, method=method)
    for k, v in headers.items(): r.add_header(k, v)
    return urllib.request.urlopen(r)
def put_blob(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    loc = req("POST", f"/v2/{repo}/blobs/uploads/").headers["Location"]
    sep = "&" if "?" in loc else "?"
    req("PUT", f"{loc}{sep}digest={d}", data, {"Content-Type": "application/octet-stream"})
    return d
m = json.loads(req("GET", f"/v2/{repo}/manifests/{digest}", headers={"Accept": accept}).read())
cfg = json.loads(req("GET", f"/v2/{repo}/blobs/{m['config']['digest']}").read())
layer = m["layers"][index]
raw = gzip.decompress(req("GET", f"/v2/{repo}/blobs/{layer['digest']}").read())
src = tarfile.open(fileobj=io.BytesIO(raw))
out = io.BytesIO()
dst = tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT)
for ti in src.getmembers():
    data = src.extractfile(ti).read() if ti.isfile() else None
    if ti.name.lstrip("./") == path.lstrip("/"):
        data = b"tampered\n"
        ti.size = len(data)
    dst.addfile(ti, io.BytesIO(data) if data is not None else None)
dst.close()
tar = out.getvalue()
gz = gzip.compress(tar, mtime=0)
layer["digest"] = put_blob(gz)
layer["size"] = len(gz)
cfg["rootfs"]["diff_ids"][index] = "sha256:" + hashlib.sha256(tar).hexdigest()
c = json.dumps(cfg).encode()
m["config"]["digest"] = put_blob(c)
m["config"]["size"] = len(c)
body = json.dumps(m).encode()
req("PUT", f"/v2/{repo}/manifests/{tag}", body, {"Content-Type": accept})
print("sha256:" + hashlib.sha256(body).hexdigest())
"#;

#[test]
fn verify_passes_on_the_pushed_image_and_names_the_tampered_layer_and_file() {
    let reg = Registry::start();
    let f = Fixture::new("hello");
    let built = f.build_json(&["build", "hello"]);
    let image = digests(&built)
        .into_iter()
        .find(|(n, _)| n == "hello")
        .unwrap()
        .1;
    let prefix = format!("{}/v", reg.addr);
    run_ok(f.cmd().args(["push", "hello", "--registry", &prefix]));
    let original_index = std::fs::read(f.path().join("layers/site/index.html")).unwrap();

    // the local build, then the pushed image (pulled, rebuilt from this checkout)
    run_ok(f.cmd().args(["verify", "hello"]));
    let pushed = format!("{prefix}/hello@{image}");
    let v: Value =
        serde_json::from_str(&run_ok(f.cmd().args(["--json", "verify", &pushed]))).unwrap();
    assert_eq!(v["matches"], true, "{v}");

    // one file changed in the image's own layer (the last), re-pushed
    let layers = layers_of(&built, "hello");
    let index = layers.len() - 1;
    let o = python(
        TAMPER,
        &[
            &format!("http://{}", reg.addr),
            "v/hello",
            &image,
            &index.to_string(),
            "/etc/motd",
            "tampered",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tampered = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let out = f
        .cmd()
        .args(["--json", "verify", &format!("{prefix}/hello@{tampered}")])
        .output()
        .unwrap();
    assert!(!out.status.success(), "verify passed a tampered image");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["matches"], false);
    let diffs = v["layers"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{v}");
    assert_eq!(diffs[0]["layer"], index + 1);
    let files = diffs[0]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{v}");
    assert_eq!(files[0]["path"], "/etc/motd");
    assert_eq!(files[0]["change"], "content");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not reproduce"), "{stderr}");

    // the human form names them too
    let out = f
        .cmd()
        .args(["verify", &format!("{prefix}/hello@{tampered}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("layer {}", index + 1)) && text.contains("content /etc/motd"),
        "{text}"
    );

    // a checkout that changed no longer reproduces the local build, which says why;
    // verify leaves the last build as it was (a second run says the same)
    std::fs::write(f.path().join("layers/site/index.html"), "changed\n").unwrap();
    for _ in 0..2 {
        let out = f
            .cmd()
            .args(["--json", "verify", "hello"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["expected"], image.as_str(), "{v}");
        let l = &v["layers"][0];
        assert_eq!(l["files"][0]["path"], "/srv/index.html", "{v}");
        assert_eq!(l["why"][0], "layers/site/index.html changed", "{v}");
    }
    // --fresh: nothing from the store is trusted; the original checkout reproduces
    std::fs::write(f.path().join("layers/site/index.html"), &original_index).unwrap();
    run_ok(f.cmd().args(["verify", "--fresh", "hello"]));
}
