//! The SPDX 2.3 JSON SBOM of an image.
//!
//! Packages: the image (`primaryPackagePurpose: CONTAINER`), each layer (its blob
//! digest), each Debian package (purl `pkg:deb/debian/...`, the `.deb`'s sha256, the
//! source package, the license of its DEP-5 copyright file), each Python
//! distribution (purl `pkg:pypi/...`, the wheel's sha256, the license of its
//! metadata). Files: each regular file of a files / build-step layer, with SHA-256
//! and the SHA-1 SPDX 2.3 requires, and the project path it came from.
//! Relationships: the document DESCRIBES the image, the image CONTAINS its layers, a
//! layer CONTAINS its packages and files.
//!
//! Deterministic: the namespace is derived from the manifest digest, `created` is
//! the build's epoch, every list is sorted by what the build recorded. License names
//! Debian and Python metadata use are mapped to SPDX identifiers where the mapping is
//! exact ([`spdx_license`]); any other name becomes a `LicenseRef-` declared in
//! `hasExtractedLicensingInfos`, so the document stays valid without guessing.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sha1::Digest as _;

use super::contents::pep503;
use super::{ImageFacts, deb_purl, image_purl, pypi_purl};
use crate::oci::{canonical, rfc3339};

/// SPDX identifiers for the license names Debian's copyright files and Python
/// metadata use, where the meaning is exact (GNU `+` means "or later").
const NAMES: &[(&str, &str)] = &[
    ("gpl-1", "GPL-1.0"),
    ("gpl-2", "GPL-2.0"),
    ("gpl-3", "GPL-3.0"),
    ("lgpl-2", "LGPL-2.0"),
    ("lgpl-2.0", "LGPL-2.0"),
    ("lgpl-2.1", "LGPL-2.1"),
    ("lgpl-3", "LGPL-3.0"),
    ("agpl-3", "AGPL-3.0"),
    ("gfdl-1.2", "GFDL-1.2"),
    ("gfdl-1.3", "GFDL-1.3"),
    ("apache-2.0", "Apache-2.0"),
    ("apache-2", "Apache-2.0"),
    ("artistic-2.0", "Artistic-2.0"),
    ("artistic", "Artistic-1.0-Perl"),
    ("bsd-2-clause", "BSD-2-Clause"),
    ("bsd-3-clause", "BSD-3-Clause"),
    ("bsd-4-clause", "BSD-4-Clause"),
    ("expat", "MIT"),
    ("mit", "MIT"),
    ("mit license", "MIT"),
    ("isc", "ISC"),
    ("isc license", "ISC"),
    ("zlib", "Zlib"),
    ("mpl-1.1", "MPL-1.1"),
    ("mpl-2.0", "MPL-2.0"),
    ("cc0-1.0", "CC0-1.0"),
    ("cc0", "CC0-1.0"),
    ("cc-by-3.0", "CC-BY-3.0"),
    ("cc-by-4.0", "CC-BY-4.0"),
    ("cc-by-sa-3.0", "CC-BY-SA-3.0"),
    ("cc-by-sa-4.0", "CC-BY-SA-4.0"),
    ("psf-2.0", "PSF-2.0"),
    ("python-2.0", "Python-2.0"),
    ("unlicense", "Unlicense"),
    ("x11", "X11"),
    ("openssl", "OpenSSL"),
    ("curl", "curl"),
    ("ftl", "FTL"),
    ("bsl-1.0", "BSL-1.0"),
    ("0bsd", "0BSD"),
    ("apache software license", "Apache-2.0"),
    ("apache license 2.0", "Apache-2.0"),
    ("apache license, version 2.0", "Apache-2.0"),
    ("bsd-3-clause license", "BSD-3-Clause"),
    ("mozilla public license 2.0 (mpl 2.0)", "MPL-2.0"),
];

/// GNU licenses: their SPDX identifiers say `-only` or `-or-later`.
fn is_gnu(id: &str) -> bool {
    ["GPL-", "LGPL-", "AGPL-", "GFDL-"]
        .iter()
        .any(|p| id.starts_with(p))
}

fn one_name(token: &str) -> Option<String> {
    let (base, plus) = match token.strip_suffix('+') {
        Some(b) => (b, true),
        None => (token, false),
    };
    let lower = base.to_ascii_lowercase();
    let id = NAMES.iter().find(|(n, _)| *n == lower).map(|(_, id)| *id)?;
    Some(match (is_gnu(id), plus) {
        (true, true) => format!("{id}-or-later"),
        (true, false) => format!("{id}-only"),
        (false, true) => format!("{id}+"),
        (false, false) => id.to_owned(),
    })
}

/// The SPDX expression of a license name as a package declares it (`GPL-2+`,
/// `GPL-2+ or Artistic`, `MIT License`, `Apache-2.0 OR MIT`), or `None` when some part
/// has no exact SPDX identifier.
pub fn spdx_license(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if let Some(id) = one_name(raw) {
        return Some(id);
    }
    let mut out = vec![];
    let mut expect_license = true;
    for tok in raw.split_whitespace() {
        let tok = tok.trim_end_matches(',');
        match tok.to_ascii_lowercase().as_str() {
            "or" | "and" if !expect_license => {
                out.push(tok.to_ascii_uppercase());
                expect_license = true;
            }
            _ if expect_license => {
                out.push(one_name(tok)?);
                expect_license = false;
            }
            _ => return None,
        }
    }
    if expect_license || out.is_empty() {
        return None;
    }
    Some(out.join(" "))
}

/// `SPDXRef-` + a string of the characters SPDX allows.
fn spdx_id(parts: &[&str]) -> String {
    let raw = parts.join("-");
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{clean}")
}

/// Declared licenses of a package -> an SPDX expression; names without an SPDX
/// identifier become `LicenseRef-`s, recorded in `extracted`.
fn declared(names: &[String], extracted: &mut BTreeMap<String, String>) -> String {
    if names.is_empty() {
        return "NOASSERTION".into();
    }
    let parts: Vec<String> = names
        .iter()
        .map(|n| match spdx_license(n) {
            Some(e) => e,
            None => {
                let id = format!(
                    "LicenseRef-{}",
                    n.chars()
                        .map(|c| if c.is_ascii_alphanumeric() || c == '.' {
                            c
                        } else {
                            '-'
                        })
                        .collect::<String>()
                );
                extracted.insert(id.clone(), n.clone());
                id
            }
        })
        .collect();
    if parts.len() == 1 {
        parts.into_iter().next().expect("one")
    } else {
        parts
            .iter()
            .map(|p| {
                if p.contains(' ') {
                    format!("({p})")
                } else {
                    p.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

fn sha256_checksum(hex: &str) -> Value {
    json!([{ "algorithm": "SHA256", "checksumValue": hex }])
}

/// The SPDX 2.3 JSON document (canonical bytes).
pub fn document(f: &ImageFacts) -> Vec<u8> {
    let rec = f.record;
    let image_id = "SPDXRef-Image".to_owned();
    let mut packages = vec![json!({
        "SPDXID": image_id,
        "name": rec.name,
        "versionInfo": rec.manifest_digest.to_string(),
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "CONTAINER",
        "checksums": sha256_checksum(rec.manifest_digest.hex()),
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": image_purl(rec),
        }],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    })];
    let mut files = vec![];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    let mut extracted: BTreeMap<String, String> = BTreeMap::new();
    let contains = |a: &str, b: &str| json!({"spdxElementId": a, "relationshipType": "CONTAINS", "relatedSpdxElement": b});
    for (i, layer) in f.layers.iter().enumerate() {
        let n = i + 1;
        let layer_id = spdx_id(&["Layer", &n.to_string()]);
        let c = &layer.contents;
        let mut pkg = json!({
            "SPDXID": layer_id,
            "name": format!("layer {n}: {}", layer.report.description),
            "versionInfo": layer.report.descriptor.digest.to_string(),
            "downloadLocation": "NOASSERTION",
            "primaryPackagePurpose": "ARCHIVE",
            "checksums": sha256_checksum(layer.report.descriptor.digest.hex()),
            "comment": format!("diff_id {}", layer.report.diff_id),
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
        });
        if c.files.is_empty() {
            pkg["filesAnalyzed"] = json!(false);
        } else {
            // SPDX 2.3 §7.9: SHA-1 of the sorted SHA-1s of the files it holds
            let mut sha1s: Vec<&str> = c.files.iter().map(|x| x.sha1.as_str()).collect();
            sha1s.sort();
            let code = hex::encode(sha1::Sha1::digest(sha1s.concat().as_bytes()));
            pkg["filesAnalyzed"] = json!(true);
            pkg["packageVerificationCode"] = json!({ "packageVerificationCodeValue": code });
            pkg["hasFiles"] = json!(
                c.files
                    .iter()
                    .map(|x| spdx_id(&["File", &n.to_string(), &x.path]))
                    .collect::<Vec<_>>()
            );
        }
        packages.push(pkg);
        relationships.push(contains(&image_id, &layer_id));
        for p in &c.debian {
            let id = spdx_id(&["Deb", &n.to_string(), &p.name]);
            let mut v = json!({
                "SPDXID": id,
                "name": p.name,
                "versionInfo": p.version,
                "downloadLocation": if p.repository == "debian" {
                    format!("https://deb.debian.org/{}/{}", p.archive, p.filename)
                } else {
                    "NOASSERTION".to_owned()
                },
                "filesAnalyzed": false,
                "primaryPackagePurpose": "LIBRARY",
                "supplier": "Organization: Debian",
                "sourceInfo": format!("built from Debian source package {}", p.source),
                "packageFileName": p.filename.rsplit('/').next().unwrap_or(&p.filename),
                "checksums": sha256_checksum(p.sha256.hex()),
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": deb_purl(p),
                }],
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": declared(&p.licenses, &mut extracted),
                "copyrightText": "NOASSERTION",
            });
            if p.repository != "debian" {
                v["supplier"] = json!("NOASSERTION");
                v["comment"] = json!(format!("from repository {}", p.repository));
            }
            packages.push(v);
            relationships.push(contains(&layer_id, &id));
        }
        for d in &c.python {
            let id = spdx_id(&["PyPI", &n.to_string(), &pep503(&d.name)]);
            let mut v = json!({
                "SPDXID": id,
                "name": d.name,
                "versionInfo": d.version,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "primaryPackagePurpose": "LIBRARY",
                "packageFileName": d.wheel,
                "checksums": sha256_checksum(d.sha256.hex()),
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": pypi_purl(d),
                }],
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": declared(d.license.as_slice(), &mut extracted),
                "copyrightText": "NOASSERTION",
            });
            if let Some((file, sha256)) = &d.built_from {
                v["sourceInfo"] = json!(format!(
                    "wheel built by imgbuild from {file} (sha256 {})",
                    sha256.hex()
                ));
            }
            packages.push(v);
            relationships.push(contains(&layer_id, &id));
        }
        for x in &c.files {
            let id = spdx_id(&["File", &n.to_string(), &x.path]);
            let mut v = json!({
                "SPDXID": id,
                "fileName": format!("./{}", x.path),
                "checksums": [
                    { "algorithm": "SHA1", "checksumValue": x.sha1 },
                    { "algorithm": "SHA256", "checksumValue": x.sha256 },
                ],
                "licenseConcluded": "NOASSERTION",
                "copyrightText": "NOASSERTION",
            });
            if let Some(src) = &x.source {
                v["comment"] = json!(format!("from project file {src}"));
            }
            files.push(v);
            relationships.push(contains(&layer_id, &id));
        }
    }
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{} {}", rec.name, rec.manifest_digest),
        // derived from the manifest digest: the same image, the same document
        "documentNamespace": format!(
            "https://imgbuild.invalid/spdx/{}/{}",
            super::purl_escape(&rec.name),
            rec.manifest_digest.hex()
        ),
        "creationInfo": {
            "created": rfc3339(f.epoch),
            "creators": [format!("Tool: imgbuild-{}", env!("CARGO_PKG_VERSION"))],
        },
        "documentDescribes": [image_id],
        "packages": packages,
        "relationships": relationships,
    });
    if !files.is_empty() {
        doc["files"] = json!(files);
    }
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = json!(
            extracted
                .iter()
                .map(|(id, name)| json!({
                    "licenseId": id,
                    "name": name,
                    "extractedText": format!("The license its package names `{name}` (no SPDX identifier); see the package's copyright file or metadata."),
                }))
                .collect::<Vec<_>>()
        );
    }
    canonical(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn license_names_map_only_when_exact() {
        assert_eq!(spdx_license("GPL-2+").as_deref(), Some("GPL-2.0-or-later"));
        assert_eq!(spdx_license("GPL-2").as_deref(), Some("GPL-2.0-only"));
        assert_eq!(spdx_license("Expat").as_deref(), Some("MIT"));
        assert_eq!(spdx_license("MIT License").as_deref(), Some("MIT"));
        assert_eq!(
            spdx_license("GPL-2+ or Artistic").as_deref(),
            Some("GPL-2.0-or-later OR Artistic-1.0-Perl")
        );
        assert_eq!(spdx_license("GPL-2+ with OpenSSL exception"), None);
        assert_eq!(spdx_license("public-domain"), None);
        assert_eq!(spdx_license("BSD License"), None);
    }
}
