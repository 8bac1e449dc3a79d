//! `imgbuild sign NAME|REF --key cosign.key` and `imgbuild verify-signature NAME|REF
//! --key cosign.pub`: cosign-format signatures of pushed images
//! ([`crate::supply::sign`] owns the format).
//!
//! NAME is a recipe: its last build, where `push` sent it (`--registry PREFIX` as
//! for push). Anything with a `/` is a reference: `REPO@sha256:...` is signed as is,
//! `REPO:TAG` is resolved to the digest the tag names now.

use std::path::Path;

use anyhow::{Context, Result, bail};
use imgbuild_registry::{Client, Credentials, Reference};
use imgbuild_store::Digest;

use crate::cache::ImageRecord;
use crate::naming::target_repository;
use crate::project::Project;
use crate::settings::Settings;
use crate::supply::sign;

fn client(project: &Project, insecure: &[String]) -> Result<Client> {
    let settings = Settings::load(&project.root)?;
    Ok(Client::new(
        settings.registry_options(insecure, 2),
        Credentials::from_process_env(),
    )?)
}

/// The repository and manifest digest an argument designates.
pub fn resolve_target(
    project: &Project,
    client: &Client,
    image: &str,
    prefix: Option<&str>,
) -> Result<(Reference, Digest)> {
    if image.contains('/') {
        let r: Reference = image
            .parse()
            .with_context(|| format!("`{image}` is not an image reference"))?;
        let digest = match &r.digest {
            Some(d) => d.clone(),
            None => client
                .resolve(&r)
                .with_context(|| format!("resolving `{image}`"))?,
        };
        let mut repo = r.clone();
        repo.tag = None;
        repo.digest = None;
        return Ok((repo, digest));
    }
    let Some(rec) = ImageRecord::load(&project.store, &project.key, image)? else {
        bail!(
            "`{image}` is neither a reference (REPO@sha256:...) nor an image built in this project"
        );
    };
    let repo = target_repository(&rec, prefix);
    let r: Reference = repo
        .parse()
        .with_context(|| format!("image `{image}`: invalid repository `{repo}`"))?;
    Ok((r, rec.manifest_digest))
}

pub fn sign(
    project: &Project,
    image: &str,
    key: &Path,
    prefix: Option<&str>,
    insecure: &[String],
) -> Result<sign::Signed> {
    let key = sign::load_private_key(key, || std::env::var(sign::PASSWORD_VAR).ok())?;
    let client = client(project, insecure)?;
    let (target, digest) = resolve_target(project, &client, image, prefix)?;
    let signed = sign::sign(&client, &project.store, &target, &digest, &key)?;
    project
        .progress
        .line(format!("signed {} (tag {})", signed.reference, signed.tag));
    Ok(signed)
}

pub fn verify_signature(
    project: &Project,
    image: &str,
    key: &Path,
    prefix: Option<&str>,
    insecure: &[String],
) -> Result<()> {
    let key = sign::load_public_key(key)?;
    let client = client(project, insecure)?;
    let (target, digest) = resolve_target(project, &client, image, prefix)?;
    let msg = sign::verify(&client, &project.store, &target, &digest, &key)?;
    project.progress.line(msg);
    Ok(())
}
