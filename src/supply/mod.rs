//! Supply-chain documents of an image: its SBOM (SPDX 2.3 or CycloneDX 1.6 JSON) and
//! its provenance (an in-toto statement with a SLSA provenance v1 predicate), made
//! from what the build already knows (each layer record's [`contents::LayerContents`],
//! the recipes, the lock, the git checkout), never by scanning layers.
//!
//! The documents are deterministic (no random namespace, times from the build's
//! epoch) and cached in the store: the key is everything they are made of, so a
//! no-op build finds them and writes nothing. A build writes them to
//! `out/NAME.spdx.json` (or `.cdx.json`) and `out/NAME.provenance.json`, and into
//! `out/oci/` as OCI 1.1 artifacts whose `subject` is the image manifest; a push
//! attaches the same artifacts to the pushed image ([`referrers`]).
//!
//! Modules: [`contents`] (what a layer holds), [`sbom_spdx`], [`sbom_cyclonedx`],
//! [`provenance`], [`referrers`] (artifact manifests, the OCI layout, registries),
//! [`sign`] (cosign-compatible signatures).

pub mod contents;
pub mod provenance;
pub mod referrers;
pub mod sbom_cyclonedx;
pub mod sbom_spdx;
pub mod sign;

use std::path::Path;

use anyhow::{Context, Result};
use imgbuild_store::{Bucket, Descriptor, Digest, Store};
use serde::{Deserialize, Serialize};

use crate::cache::{ImageRecord, LayerRecord, LayerReport};
use crate::project::Project;
use contents::LayerContents;

pub const MEDIA_SPDX: &str = "application/spdx+json";
pub const MEDIA_CYCLONEDX: &str = "application/vnd.cyclonedx+json";
pub const MEDIA_IN_TOTO: &str = "application/vnd.in-toto+json";

/// Bump when any document's content changes for the same inputs.
const DOCUMENTS_VERSION: &str = "imgbuild-supply-v1";

/// Which SBOM format a build writes (`--sbom-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SbomFormat {
    #[default]
    Spdx,
    Cyclonedx,
}

impl SbomFormat {
    pub fn media_type(self) -> &'static str {
        match self {
            SbomFormat::Spdx => MEDIA_SPDX,
            SbomFormat::Cyclonedx => MEDIA_CYCLONEDX,
        }
    }
    /// `out/NAME<suffix>`.
    pub fn suffix(self) -> &'static str {
        match self {
            SbomFormat::Spdx => ".spdx.json",
            SbomFormat::Cyclonedx => ".cdx.json",
        }
    }
}

/// One layer of an image with what it holds.
pub struct LayerFacts<'a> {
    pub report: &'a LayerReport,
    /// Empty for a registry base image's layers (nothing is known of them) and for
    /// layers built by an imgbuild that did not record contents yet.
    pub contents: LayerContents,
}

/// Everything the SBOM of one image is made of.
pub struct ImageFacts<'a> {
    pub record: &'a ImageRecord,
    pub layers: Vec<LayerFacts<'a>>,
    /// `SOURCE_DATE_EPOCH` of the build: the documents' creation time.
    pub epoch: u64,
}

impl<'a> ImageFacts<'a> {
    pub fn of(store: &Store, record: &'a ImageRecord, epoch: u64) -> ImageFacts<'a> {
        let layers = record
            .layers
            .iter()
            .map(|l| LayerFacts {
                report: l,
                contents: l
                    .fingerprint
                    .as_ref()
                    .and_then(|f| LayerRecord::read_unverified(store, f))
                    .and_then(|r| r.contents)
                    .unwrap_or_default(),
            })
            .collect();
        ImageFacts {
            record,
            layers,
            epoch,
        }
    }
}

/// The supply-chain documents of one image: store blobs (descriptors name them).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attestations {
    /// The image manifest they describe.
    pub subject: Descriptor,
    pub sbom: Descriptor,
    pub provenance: Descriptor,
}

impl Attestations {
    /// The key of a project's last documents of an image.
    pub fn key(project_key: &str, name: &str) -> String {
        format!("image-{project_key}-{name}")
    }
    /// The documents of the last build of `name` in this project.
    pub fn load(store: &Store, project_key: &str, name: &str) -> Result<Option<Attestations>> {
        Ok(store
            .read_record(Bucket::Attestations, &Self::key(project_key, name))?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }
    fn present(&self, store: &Store) -> bool {
        store.has_blob(&self.sbom.digest) && store.has_blob(&self.provenance.digest)
    }
}

/// The documents of an image: from the store when made before of the same inputs,
/// else made now (and kept). Records them as the project's last for the image.
pub fn attest(
    project: &Project,
    record: &ImageRecord,
    format: SbomFormat,
    git: &provenance::GitState,
) -> Result<Attestations> {
    let store = &project.store;
    let params = provenance::Params::collect(project, record, git)?;
    let key = Digest::of_bytes(&serde_json::to_vec(&(
        DOCUMENTS_VERSION,
        env!("CARGO_PKG_VERSION"),
        &record.manifest_digest,
        format,
        project.epoch,
        &params,
    ))?);
    let cached: Option<Attestations> = store
        .read_record(Bucket::Attestations, key.hex())?
        .and_then(|b| serde_json::from_slice(&b).ok());
    let att = match cached {
        Some(a) if a.present(store) => a,
        _ => {
            let facts = ImageFacts::of(store, record, project.epoch);
            let sbom = match format {
                SbomFormat::Spdx => sbom_spdx::document(&facts),
                SbomFormat::Cyclonedx => sbom_cyclonedx::document(&facts),
            };
            let prov = provenance::statement(record, &params, project.epoch);
            let a = Attestations {
                subject: Descriptor::new(
                    crate::oci::MEDIA_MANIFEST,
                    record.manifest_digest.clone(),
                    record.manifest_size,
                ),
                sbom: Descriptor::new(
                    format.media_type(),
                    store.put_bytes(&sbom)?,
                    sbom.len() as u64,
                ),
                provenance: Descriptor::new(
                    MEDIA_IN_TOTO,
                    store.put_bytes(&prov)?,
                    prov.len() as u64,
                ),
            };
            store.write_record(Bucket::Attestations, key.hex(), &serde_json::to_vec(&a)?)?;
            a
        }
    };
    let pointer = Attestations::key(&project.key, &record.name);
    let bytes = serde_json::to_vec(&att)?;
    if store
        .read_record(Bucket::Attestations, &pointer)?
        .as_deref()
        != Some(&bytes[..])
    {
        store.write_record(Bucket::Attestations, &pointer, &bytes)?;
    }
    Ok(att)
}

/// Writes `out/NAME.spdx.json` (or `.cdx.json`) and `out/NAME.provenance.json`,
/// unless they already hold these bytes.
pub fn write_out(
    store: &Store,
    out: &Path,
    name: &str,
    format: SbomFormat,
    att: &Attestations,
) -> Result<()> {
    for (file, d) in [
        (format!("{name}{}", format.suffix()), &att.sbom),
        (format!("{name}.provenance.json"), &att.provenance),
    ] {
        let dest = out.join(&file);
        let same = std::fs::metadata(&dest).is_ok_and(|m| m.len() == d.size)
            && std::fs::read(&dest).is_ok_and(|b| Digest::of_bytes(&b) == d.digest);
        if !same {
            let bytes = store
                .read_bytes(&d.digest)
                .with_context(|| format!("reading the {file} document from the store"))?;
            crate::sink::write_atomic(&dest, &bytes)?;
        }
    }
    Ok(())
}

/// Percent-encodes a purl component (RFC 3986 unreserved characters stay).
pub fn purl_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12`.
pub fn deb_purl(p: &contents::DebianPackage) -> String {
    format!(
        "pkg:deb/debian/{}@{}?arch={}&distro=debian-{}",
        purl_escape(&p.name),
        purl_escape(&p.version),
        purl_escape(&p.architecture),
        p.release
    )
}

/// `pkg:pypi/name@version` (name PEP 503-normalised, as the purl spec asks).
pub fn pypi_purl(d: &contents::PythonDist) -> String {
    format!(
        "pkg:pypi/{}@{}",
        purl_escape(&contents::pep503(&d.name)),
        purl_escape(&d.version)
    )
}

/// `pkg:oci/NAME@sha256%3A...` (plus `repository_url` when the recipe names one).
pub fn image_purl(record: &ImageRecord) -> String {
    let name = record
        .repository
        .as_deref()
        .and_then(|r| r.rsplit('/').next())
        .unwrap_or(&record.name);
    let mut s = format!(
        "pkg:oci/{}@{}",
        purl_escape(&name.to_ascii_lowercase()),
        purl_escape(&record.manifest_digest.to_string())
    );
    if let Some(repo) = &record.repository {
        s.push_str(&format!("?repository_url={}", purl_escape(repo)));
    }
    s
}
