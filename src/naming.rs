//! How images are named, in one place for every command: the reference an engine
//! gives a loaded image, the repository a push sends it to, and the image as the
//! sinks see it ([`ImageOut`]).

use crate::cache::ImageRecord;
use crate::recipe::Recipe;
use crate::sink::ImageOut;

pub fn image_out(rec: &ImageRecord) -> ImageOut {
    let repo = rec
        .repository
        .clone()
        .unwrap_or_else(|| format!("imgbuild/{}", rec.name));
    let tags = if rec.tags.is_empty() {
        vec!["latest".to_owned()]
    } else {
        rec.tags.clone()
    };
    ImageOut {
        name: rec.name.clone(),
        reference: rec.reference.clone(),
        repo_tags: tags.iter().map(|t| format!("{repo}:{t}")).collect(),
        manifest: rec.manifest_digest.clone(),
        manifest_size: rec.manifest_size,
        config: rec.config_digest.clone(),
        layers: rec
            .layers
            .iter()
            .map(|l| l.descriptor.digest.clone())
            .collect(),
        index: rec.index.as_ref().map(|i| crate::sink::IndexOut {
            digest: i.digest.clone(),
            size: i.size,
            manifests: rec.platforms.iter().map(image_out).collect(),
        }),
    }
}

/// The name engines give a loaded image: `REPOSITORY:FIRST_TAG`, where the
/// repository is the recipe's `repository` or `imgbuild/NAME`, and the tag
/// defaults to `latest`.
pub fn reference_for(r: &Recipe) -> String {
    let repo = r
        .repository
        .clone()
        .unwrap_or_else(|| format!("imgbuild/{}", r.name));
    format!(
        "{repo}:{}",
        r.tags.first().map(String::as_str).unwrap_or("latest")
    )
}

/// The repository an image is pushed to.
pub fn target_repository(rec: &ImageRecord, prefix: Option<&str>) -> String {
    match prefix {
        Some(p) => format!("{}/{}", p.trim_end_matches('/'), rec.name),
        None => rec
            .repository
            .clone()
            .unwrap_or_else(|| format!("imgbuild/{}", rec.name)),
    }
}
