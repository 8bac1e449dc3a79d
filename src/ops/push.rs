//! `imgbuild push [NAME...]` and `imgbuild all --push`: the images of the last build
//! go to their registries as one release. `push NAME...` pushes exactly the named
//! images (their manifests carry the base recipes' layers, so the base images need
//! not be pushed); without names, and with `all --push`, every image is pushed.
//!
//! Where an image goes: its recipe's `repository` (default `imgbuild/NAME`, which
//! means `docker.io/imgbuild/NAME`), or, with `--registry PREFIX`, `PREFIX/NAME`
//! for every image (CI pushes the same recipes to a test registry that way).
//! Tags: the recipe's `tags` (default `latest`) plus every `--tag`. Only missing
//! blobs are sent; shared blobs go up once and are mounted elsewhere; tags move
//! only after every manifest is pushed by digest (see `imgbuild-registry`).
//!
//! An image built for several platforms (`[build] platforms`): every platform's
//! manifest goes up (untagged) with the rest of the release, then every image index
//! by digest, and only then do the tags move, to the indexes.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use imgbuild_registry::{Client, Credentials, PushImage, PushIndex, PushReport, Reference};

use crate::cache::ImageRecord;
use crate::naming::target_repository;
use crate::progress::human;
use crate::project::Project;
use crate::recipe::RecipeSet;
use crate::settings::Settings;

#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    pub names: Option<Vec<String>>,
    pub extra_tags: Vec<String>,
    pub registry_prefix: Option<String>,
    pub insecure: Vec<String>,
    /// Sign each pushed image with this cosign key.
    pub sign: Option<std::path::PathBuf>,
}

/// Pushes the images and prints a line per image; returns the report (`--json`).
pub fn push(project: &Project, opts: &PushOptions) -> Result<PushReport> {
    // uploads stream from store blobs: gc must wait until they are sent
    let _lock = project.lock_shared()?;
    let set = RecipeSet::load(&project.root)?;
    // (closure: names checked, bases first; only the named images are pushed)
    let order: Vec<_> = set
        .closure(opts.names.as_deref())?
        .into_iter()
        .filter(|r| opts.names.as_ref().is_none_or(|n| n.contains(&r.name)))
        .collect();
    let mut records: BTreeMap<String, ImageRecord> = BTreeMap::new();
    for r in &order {
        let Some(rec) = ImageRecord::load(&project.store, &project.key, &r.name)? else {
            bail!(
                "`{}` has not been built in this project; run `imgbuild build {}` (or `imgbuild all --push`) first",
                r.name,
                r.name
            );
        };
        records.insert(r.name.clone(), rec);
    }
    for t in &opts.extra_tags {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && !t.starts_with(['.', '-']);
        if !ok {
            bail!(
                "invalid --tag `{t}`: use letters, digits, `_`, `.`, `-` (max 128, not starting with `.` or `-`)"
            );
        }
    }
    let mut images = vec![];
    let mut targets: Vec<(ImageRecord, Reference)> = vec![];
    let mut indexes: Vec<PushIndex> = vec![];
    for r in &order {
        let rec = &records[&r.name];
        let repo = target_repository(rec, opts.registry_prefix.as_deref());
        let target: Reference = repo
            .parse()
            .with_context(|| format!("image `{}`: invalid repository `{repo}`", rec.name))?;
        let mut tags: BTreeSet<String> = if rec.tags.is_empty() {
            ["latest".to_owned()].into()
        } else {
            rec.tags.iter().cloned().collect()
        };
        tags.extend(opts.extra_tags.iter().cloned());
        // An image index: every platform's manifest without tags, then the index,
        // which the tags name.
        if let Some(index) = &rec.index {
            let bytes = project.store.read_bytes(&index.digest).with_context(|| {
                format!(
                    "image `{}`: the built image index is not in the store; build it again",
                    rec.name
                )
            })?;
            indexes.push(PushIndex {
                target: target.clone(),
                index: bytes,
                tags: tags.iter().cloned().collect(),
            });
        }
        let manifests: Vec<&ImageRecord> = rec.manifests();
        for m in manifests {
            let mut img = PushImage::from_store(&project.store, target.clone(), &m.manifest_digest)
                .with_context(|| {
                    format!(
                        "image `{}`: the built manifest is not in the store; build it again",
                        rec.name
                    )
                })?;
            img.tags = if rec.index.is_some() {
                vec![]
            } else {
                tags.iter().cloned().collect()
            };
            // The base image's repository on the same registry (pushed now or before): its
            // blobs can be mounted.
            let base = match rec.base.as_ref() {
                Some(b) => match records.get(b) {
                    Some(r) => Some(r.clone()),
                    None => ImageRecord::load(&project.store, &project.key, b)?,
                },
                None => None,
            };
            if let Some(base) = base {
                let base_ref: Reference =
                    target_repository(&base, opts.registry_prefix.as_deref()).parse()?;
                if base_ref.registry == target.registry && base_ref.repository != target.repository
                {
                    img.mount_from.push(base_ref.repository);
                }
            }
            // A registry base on the same registry: its layers are mounted, not uploaded.
            if let Some(b) = rec
                .base_image
                .as_ref()
                .and_then(|b| b.parse::<Reference>().ok())
                && b.registry == target.registry
                && b.repository != target.repository
            {
                img.mount_from.push(b.repository);
            }
            // Registry cache hits: on the cache's registry they are mounted from the cache
            // repository; elsewhere their blobs are downloaded first, to be uploaded.
            if let Some(rc) = &project.remote_cache {
                if rc.registry() == target.registry {
                    img.mount_from.push(rc.repository().to_owned());
                } else {
                    rc.ensure_local(&project.store, &m.layers)?;
                }
            }
            images.push(img);
        }
        targets.push((rec.clone(), target));
    }
    // the key opens (or its password is missing) before anything is sent
    let signing_key = match &opts.sign {
        Some(k) => Some(crate::supply::sign::load_private_key(k, || {
            std::env::var(crate::supply::sign::PASSWORD_VAR).ok()
        })?),
        None => None,
    };
    let settings = Settings::load(&project.root)?;
    let client = Client::new(
        // Uploads wait on the network, not the CPU: as many as docker runs at once
        // (5) even on a small CI runner, more with more cores, never more than 8.
        imgbuild_registry::ClientOptions {
            counts: project.registry_counts.clone(),
            ..settings.registry_options(&opts.insecure, project.jobs.clamp(5, 8))
        },
        Credentials::from_process_env(),
    )?;
    project
        .progress
        .status(format!("pushing {} image(s)", images.len()));
    let mut report = client.push(&project.store, &images)?;
    if !indexes.is_empty() {
        project
            .progress
            .status(format!("pushing {} image index(es)", indexes.len()));
        report.indexes = client.push_indexes(&indexes)?;
    }
    project.progress.clear();
    for i in &report.images {
        project.progress.line(format!(
            "pushed {} ({}): {} uploaded, {} mounted, {} already there",
            i.reference,
            if i.tags.is_empty() {
                "a platform's manifest; the index is tagged".to_owned()
            } else {
                format!("tags: {}", i.tags.join(", "))
            },
            human(i.bytes_uploaded),
            human(i.bytes_mounted),
            human(i.bytes_skipped)
        ));
    }
    for i in &report.indexes {
        project.progress.line(format!(
            "pushed image index {} (tags: {})",
            i.reference,
            i.tags.join(", ")
        ));
    }
    attach_supply_chain(project, &client, &targets, signing_key.as_ref())?;
    project.progress.line(format!(
        "push done: {} uploaded, {} mounted, {} skipped",
        human(report.bytes_uploaded),
        human(report.bytes_mounted),
        human(report.bytes_skipped)
    ));
    Ok(report)
}

/// `imgbuild login REGISTRY`: checks the credentials against the registry and stores
/// them the way `docker login` does (credential helper if configured, else
/// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, mode 0600).
pub fn login(
    project: &Project,
    registry: &str,
    user: &str,
    password: &str,
    insecure: &[String],
) -> Result<String> {
    let settings = Settings::load(&project.root)?;
    // The process environment: where config.json is, and the credential helpers on PATH.
    let client = Client::new(
        settings.registry_options(insecure, 1),
        Credentials::from_process_env(),
    )?;
    let stored = client.login(registry, user, password)?;
    Ok(match stored {
        imgbuild_registry::StoredIn::ConfigFile { path } => {
            format!("login succeeded; credentials stored in {}", path.display())
        }
        imgbuild_registry::StoredIn::Helper { helper } => {
            format!("login succeeded; credentials stored with {helper}")
        }
    })
}

/// Attaches each pushed image's SBOM and provenance (OCI referrers, or the
/// `sha256-<hex>` tag index) and, with `--sign`, its cosign signature.
fn attach_supply_chain(
    project: &Project,
    client: &Client,
    targets: &[(ImageRecord, Reference)],
    key: Option<&p256::ecdsa::SigningKey>,
) -> Result<()> {
    use crate::supply::{Attestations, referrers, sign};
    for (rec, target) in targets {
        match Attestations::load(&project.store, &project.key, &rec.name)? {
            Some(att) if att.subject.digest == rec.manifest_digest => {
                let arts = referrers::artifacts(&project.store, &att)?;
                let a = referrers::push(client, &project.store, target, &rec.manifest_digest, &arts)?;
                project.progress.line(format!(
                    "attached SBOM and provenance to {}@{}{}",
                    a.repository,
                    a.subject,
                    match &a.fallback_tag {
                        Some(t) => format!(" (referrers tag {t})"),
                        None => String::new(),
                    }
                ));
            }
            _ => project.progress.warn(format!(
                "`{}`: no SBOM of this build in the store (build it again to make one); pushed without",
                rec.name
            )),
        }
        if let Some(key) = key {
            // what the tags name: the image index of a multi-platform image
            let digest = rec
                .index
                .as_ref()
                .map(|i| i.digest.clone())
                .unwrap_or_else(|| rec.manifest_digest.clone());
            let s = sign::sign(client, &project.store, target, &digest, key)?;
            project
                .progress
                .line(format!("signed {} (tag {})", s.reference, s.tag));
        }
    }
    Ok(())
}
