//! `imgbuild push [NAME...]` and `imgbuild all --push`: the images of the last build
//! go to their registries as one release.
//!
//! Where an image goes: its recipe's `repository` (default `imgbuild/NAME`, which
//! means `docker.io/imgbuild/NAME`), or, with `--registry PREFIX`, `PREFIX/NAME`
//! for every image (CI pushes the same recipes to a test registry that way).
//! Tags: the recipe's `tags` (default `latest`) plus every `--tag`. Only missing
//! blobs are sent; shared blobs go up once and are mounted elsewhere; tags move
//! only after every manifest is pushed by digest (see `imgbuild-registry`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use imgbuild_registry::{Client, ClientOptions, Credentials, PushImage, Reference};

use crate::cache::ImageRecord;
use crate::progress::human;
use crate::project::Project;
use crate::recipe::RecipeSet;

#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    pub names: Option<Vec<String>>,
    pub extra_tags: Vec<String>,
    pub registry_prefix: Option<String>,
    pub insecure: Vec<String>,
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

pub fn push(project: &Project, opts: &PushOptions, json: bool) -> Result<()> {
    let set = RecipeSet::load(&project.root)?;
    let order = set.closure(opts.names.as_deref())?;
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
    for r in &order {
        let rec = &records[&r.name];
        let repo = target_repository(rec, opts.registry_prefix.as_deref());
        let target: Reference = repo
            .parse()
            .with_context(|| format!("image `{}`: invalid repository `{repo}`", rec.name))?;
        let mut img = PushImage::from_store(&project.store, target.clone(), &rec.manifest_digest)
            .with_context(|| {
            format!(
                "image `{}`: the built manifest is not in the store; build it again",
                rec.name
            )
        })?;
        let mut tags: BTreeSet<String> = if rec.tags.is_empty() {
            ["latest".to_owned()].into()
        } else {
            rec.tags.iter().cloned().collect()
        };
        tags.extend(opts.extra_tags.iter().cloned());
        img.tags = tags.into_iter().collect();
        // The base image's repository on the same registry: its blobs can be mounted.
        if let Some(base) = rec.base.as_ref().and_then(|b| records.get(b).or(None)) {
            let base_ref: Reference =
                target_repository(base, opts.registry_prefix.as_deref()).parse()?;
            if base_ref.registry == target.registry && base_ref.repository != target.repository {
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
        images.push(img);
    }
    let client_opts = ClientOptions {
        parallelism: project.jobs.clamp(2, 8),
        insecure: opts.insecure.iter().cloned().collect(),
        ..Default::default()
    };
    let client = Client::new(client_opts, Credentials::from_process_env())?;
    project
        .progress
        .status(format!("pushing {} image(s)", images.len()));
    let report = client.push(&project.store, &images)?;
    project.progress.clear();
    for i in &report.images {
        project.progress.line(format!(
            "pushed {} (tags: {}): {} uploaded, {} mounted, {} already there",
            i.reference,
            i.tags.join(", "),
            human(i.bytes_uploaded),
            human(i.bytes_mounted),
            human(i.bytes_skipped)
        ));
    }
    project.progress.line(format!(
        "push done: {} uploaded, {} mounted, {} skipped",
        human(report.bytes_uploaded),
        human(report.bytes_mounted),
        human(report.bytes_skipped)
    ));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "push": report }))?
        );
    }
    Ok(())
}

/// `imgbuild login REGISTRY`: checks the credentials against the registry and stores
/// them the way `docker login` does (credential helper if configured, else
/// `~/.docker/config.json`, mode 0600).
pub fn login(registry: &str, user: &str, password: &str, insecure: &[String]) -> Result<String> {
    let client_opts = ClientOptions {
        insecure: insecure.iter().cloned().collect(),
        ..Default::default()
    };
    let client = Client::new(client_opts, Credentials::none())?;
    let stored = client.login(registry, user, password)?;
    Ok(match stored {
        imgbuild_registry::StoredIn::ConfigFile { path } => {
            format!("login succeeded; credentials stored in {}", path.display())
        }
        imgbuild_registry::StoredIn::Helper { helper } => {
            format!("login succeeded; credentials stored with docker-credential-{helper}")
        }
    })
}
