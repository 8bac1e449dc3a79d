//! The JSON documents commands print with `--json` (build, load, push), as
//! serialisable types: nothing builds JSON by hand.

use imgbuild_store::Digest;

use crate::cache::ImageRecord;

/// The JSON document of a build (and of `load` and `push` alone): the images built,
/// what `--load` and `--push` did.
#[derive(serde::Serialize, Default)]
pub struct BuildReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<ImageReport>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<Vec<crate::ops::load::LoadOutcome>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<imgbuild_registry::PushReport>,
}

#[derive(serde::Serialize)]
pub struct ImageReport {
    pub name: String,
    pub reference: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub tarball: String,
    pub layers: Vec<LayerReportJson>,
    /// The platform of this manifest (an image built for several platforms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The image index over every platform's manifest (`[build] platforms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    /// Every platform's manifest and layers, in the order of the index.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<ImageReport>,
}

impl ImageReport {
    fn of(r: &ImageRecord) -> ImageReport {
        ImageReport {
            name: r.name.clone(),
            reference: r.reference.clone(),
            manifest_digest: r.manifest_digest.clone(),
            config_digest: r.config_digest.clone(),
            tarball: r.tarball.clone(),
            layers: r
                .layers
                .iter()
                .map(|l| LayerReportJson {
                    digest: l.descriptor.digest.clone(),
                    diff_id: l.diff_id.clone(),
                    size: l.descriptor.size,
                    cached: l.cached,
                    reason: l.reason.clone(),
                })
                .collect(),
            platform: r.platform.clone(),
            index_digest: r.index.as_ref().map(|i| i.digest.clone()),
            platforms: r.platforms.iter().map(ImageReport::of).collect(),
        }
    }
}

#[derive(serde::Serialize)]
pub struct LayerReportJson {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub cached: bool,
    /// Why it was built (absent when cached).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reason: Vec<String>,
}

impl BuildReport {
    pub fn new(records: &[ImageRecord]) -> BuildReport {
        BuildReport {
            images: Some(records.iter().map(ImageReport::of).collect()),
            ..Default::default()
        }
    }
}
