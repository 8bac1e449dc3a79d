//! What a layer holds, as an SBOM names it: its Debian packages (with the `.deb`'s
//! sha256, source package and machine-readable license), its Python distributions
//! (with the wheel's sha256 and the license of its metadata) and, for a layer of
//! files or build-step outputs, each regular file with its checksums and the
//! project path it came from.
//!
//! Collected once, when the layer is built (the sources say what they installed;
//! the licenses are read from the finished tree's `/usr/share/doc/*/copyright` and
//! `*.dist-info/METADATA`), and kept in the layer's record: an SBOM of a cached
//! layer reads no layer bytes, and a no-op build does no SBOM work at all.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use imgbuild_layer::{Content, Node, Tree};
use imgbuild_store::Digest;
use serde::{Deserialize, Serialize};
use sha1::Digest as _;

/// One Debian package installed by a layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The source package (the pool directory the `.deb` lives in).
    pub source: String,
    /// The `.deb` file's sha256.
    pub sha256: Digest,
    /// Archive path (`pool/main/n/nginx/nginx_..._amd64.deb`).
    pub filename: String,
    /// `debian` or a `[[debian.repositories]]` name.
    pub repository: String,
    /// The archive of a `debian` package: `debian` or `debian-security`.
    pub archive: String,
    /// The Debian release's version (`12`, `13`), for the purl's `distro`.
    pub release: String,
    /// The distinct `License:` names of its DEP-5 copyright file, in file order;
    /// empty when the file is not machine-readable or absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub licenses: Vec<String>,
}

/// One Python distribution installed by a layer (from a wheel).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PythonDist {
    /// Name as its metadata spells it (else as the requirements file does).
    pub name: String,
    pub version: String,
    pub wheel: String,
    /// The wheel file's sha256.
    pub sha256: Digest,
    /// `License-Expression`, else a one-line `License`, else the license
    /// classifiers of its METADATA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// The sdist (or git archive) the wheel was built from, when imgbuild built it:
    /// its file name and sha256, which the requirements file pins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_from: Option<(String, Digest)>,
}

/// One regular file of a files / build-step layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerFile {
    /// Path in the image, without the leading `/`.
    pub path: String,
    pub sha256: String,
    pub sha1: String,
    /// The project path it was copied from (absent: generated or produced by a step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Everything an SBOM says about one layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerContents {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub debian: Vec<DebianPackage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub python: Vec<PythonDist>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<LayerFile>,
}

impl LayerContents {
    pub fn extend(&mut self, other: LayerContents) {
        self.debian.extend(other.debian);
        self.python.extend(other.python);
        self.files.extend(other.files);
    }

    /// Completes what the sources stated with what the finished tree says: licenses,
    /// and, for a layer that installed no packages, its files with their checksums.
    pub fn complete(&mut self, tree: &Tree, project_root: &Path) -> anyhow::Result<()> {
        for p in &mut self.debian {
            let path = format!("usr/share/doc/{}/copyright", p.name);
            if let Some(text) = read_small(tree, &path) {
                p.licenses = dep5_licenses(&String::from_utf8_lossy(&text));
            }
        }
        if !self.python.is_empty() {
            let mut metadata: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
            for (path, _) in tree.iter() {
                let p = path.as_str();
                if p.ends_with(".dist-info/METADATA")
                    && let Some(bytes) = read_small(tree, p)
                {
                    let (name, license) = python_metadata(&String::from_utf8_lossy(&bytes));
                    if let Some(name) = name {
                        metadata.insert(pep503(&name), (name, license));
                    }
                }
            }
            for d in &mut self.python {
                if let Some((name, license)) = metadata.get(&pep503(&d.name)) {
                    d.name = name.clone();
                    d.license = license.clone();
                }
            }
        }
        if self.debian.is_empty() && self.python.is_empty() {
            for (path, node) in tree.iter() {
                let Node::File { content, .. } = node else {
                    continue;
                };
                let (sha256, sha1) = checksums(content)
                    .map_err(|e| anyhow::anyhow!("reading /{} for the SBOM: {e}", path.as_str()))?;
                let source = match content {
                    Content::Host { path: host, .. } => host
                        .strip_prefix(project_root)
                        .ok()
                        .map(|p| p.to_string_lossy().into_owned()),
                    _ => None,
                };
                self.files.push(LayerFile {
                    path: path.as_str().trim_start_matches('/').to_owned(),
                    sha256,
                    sha1,
                    source,
                });
            }
        }
        self.debian.sort_by(|a, b| a.name.cmp(&b.name));
        self.python.sort_by_key(|d| pep503(&d.name));
        self.files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(())
    }
}

/// The source package of a `.deb`: the directory of the archive's pool it lives in
/// (`pool/main/n/nginx/nginx-common_..._all.deb` -> `nginx`), which the archive names
/// after the source package.
pub fn source_package(filename: &str, fallback: &str) -> String {
    let parts: Vec<&str> = filename.split('/').collect();
    if parts.len() >= 3 && parts[0] == "pool" {
        parts[parts.len() - 2].to_owned()
    } else {
        fallback.to_owned()
    }
}

/// PEP 503 normalised name.
pub fn pep503(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut dash = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            dash = true;
        } else {
            if dash && !out.is_empty() {
                out.push('-');
            }
            dash = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The bytes of a small regular file of the tree (at most 1 MiB), following no links.
fn read_small(tree: &Tree, path: &str) -> Option<Vec<u8>> {
    let p = imgbuild_layer::TreePath::new(path).ok()?;
    let Some(Node::File { content, .. }) = tree.get(&p) else {
        return None;
    };
    if content.size() > 1 << 20 {
        return None;
    }
    let mut buf = Vec::with_capacity(content.size() as usize);
    open(content).ok()?.read_to_end(&mut buf).ok()?;
    Some(buf)
}

fn open(content: &Content) -> std::io::Result<Box<dyn Read + '_>> {
    Ok(match content {
        Content::Inline(b) => Box::new(&b[..]),
        Content::Host { path, size, .. } => Box::new(std::fs::File::open(path)?.take(*size)),
        Content::Range { path, offset, size } => {
            let mut f = std::fs::File::open(path)?;
            f.seek(SeekFrom::Start(*offset))?;
            Box::new(f.take(*size))
        }
    })
}

/// sha256 and sha1 (hex) of a file's content, streamed.
fn checksums(content: &Content) -> std::io::Result<(String, String)> {
    let mut r = open(content)?;
    let mut s256 = sha2::Sha256::new();
    let mut s1 = sha1::Sha1::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        s256.update(&buf[..n]);
        s1.update(&buf[..n]);
    }
    Ok((hex::encode(s256.finalize()), hex::encode(s1.finalize())))
}

/// The distinct license names of a machine-readable (DEP-5) copyright file: the first
/// line of each `License:` field of a `Files:` paragraph, in file order. A file
/// without the `Format:` header is free text: nothing can be read from it.
pub fn dep5_licenses(text: &str) -> Vec<String> {
    let mut paragraphs = text.split("\n\n").filter(|p| !p.trim().is_empty());
    let Some(header) = paragraphs.next() else {
        return vec![];
    };
    let machine_readable = header.lines().any(|l| {
        l.starts_with("Format:") && (l.contains("copyright-format") || l.contains("dep5"))
    });
    if !machine_readable {
        return vec![];
    }
    let mut seen = BTreeSet::new();
    let mut out = vec![];
    for para in text.split("\n\n") {
        let is_files = para.lines().any(|l| l.starts_with("Files:"));
        if !is_files {
            continue;
        }
        for l in para.lines() {
            if let Some(v) = l.strip_prefix("License:") {
                let v = v.trim();
                if !v.is_empty() && seen.insert(v.to_owned()) {
                    out.push(v.to_owned());
                }
            }
        }
    }
    out
}

/// `Name` and the license of a wheel's METADATA (RFC 822 headers, up to the body).
fn python_metadata(text: &str) -> (Option<String>, Option<String>) {
    let mut name = None;
    let mut expression = None;
    let mut license = None;
    let mut classifiers = vec![];
    for line in text.lines() {
        if line.is_empty() {
            break; // the description body
        }
        if let Some(v) = line.strip_prefix("Name:") {
            name = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("License-Expression:") {
            expression = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("License:") {
            let v = v.trim();
            // some put the whole license text here: only a short name is a name
            if !v.is_empty() && v.len() <= 80 && !v.eq_ignore_ascii_case("UNKNOWN") {
                license = Some(v.to_owned());
            }
        } else if let Some(v) = line.strip_prefix("Classifier: License ::")
            && let Some(last) = v.rsplit("::").next()
        {
            let last = last.trim();
            if last != "OSI Approved" {
                classifiers.push(last.to_owned());
            }
        }
    }
    let license = expression
        .or(license)
        .or_else(|| (!classifiers.is_empty()).then(|| classifiers.join(" AND ")));
    (name, license)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep5_license_names_in_order() {
        let text = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: x\n\nFiles: *\nCopyright: me\nLicense: GPL-2+\n\nFiles: debian/*\nLicense: BSD-3-clause\n\nLicense: GPL-2+\n This program is free\n";
        assert_eq!(dep5_licenses(text), ["GPL-2+", "BSD-3-clause"]);
        assert!(dep5_licenses("This is free text.\n\nLicense: GPL\n").is_empty());
    }

    #[test]
    fn source_of_a_pool_path() {
        assert_eq!(
            source_package("pool/main/n/nginx/nginx-common_1.22_all.deb", "x"),
            "nginx"
        );
        assert_eq!(source_package("other.deb", "x"), "x");
    }

    #[test]
    fn metadata_license() {
        let (n, l) = python_metadata(
            "Metadata-Version: 2.1\nName: Blinker\nClassifier: License :: OSI Approved :: MIT License\n\nbody License: no\n",
        );
        assert_eq!(n.as_deref(), Some("Blinker"));
        assert_eq!(l.as_deref(), Some("MIT License"));
        assert_eq!(pep503("Foo_Bar.baz"), "foo-bar-baz");
    }
}
