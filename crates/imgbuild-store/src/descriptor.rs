//! The one descriptor of a blob (OCI's: media type, digest, size) that a layer
//! carries from the layer writer through the layer cache and the image records to the
//! manifest and the sinks, so no code copies these fields from one type to another.

use serde::{Deserialize, Serialize};

use crate::Digest;

/// OCI media types imgbuild writes or builds on.
pub mod media {
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
}

/// A blob as a manifest names it. Serialises as OCI does (`mediaType`, `digest`,
/// `size`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
        }
    }
}
