//! `imgbuild inspect NAME`: the last build of an image in this project: its
//! layers, sizes, digests, whether each came from the cache, and per-source notes
//! (for Debian layers, the maintainer scripts that did not run). An image built for
//! several platforms shows its index, then each platform's manifest and layers.

use anyhow::{Result, bail};

use crate::cache::ImageRecord;
use crate::progress::human;
use crate::project::Project;

pub fn inspect(project: &Project, name: &str, json: bool) -> Result<()> {
    let Some(rec) = ImageRecord::load(&project.store, &project.key, name)? else {
        bail!(
            "no build of `{name}` recorded for this project in the store; run `imgbuild build {name}` first"
        );
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
        return Ok(());
    }
    println!("image      {}", rec.name);
    println!("reference  {}", rec.reference);
    if let Some(index) = &rec.index {
        println!("index      {}", index.digest);
        println!(
            "platforms  {}",
            rec.platforms
                .iter()
                .filter_map(|p| p.platform.clone())
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("tarball    {}", rec.tarball);
        for p in &rec.platforms {
            println!();
            println!("platform   {}", p.platform.as_deref().unwrap_or_default());
            manifest(p);
        }
        return Ok(());
    }
    manifest(&rec);
    println!("tarball    {}", rec.tarball);
    layers(&rec);
    Ok(())
}

/// The manifest and config digests of one manifest.
fn manifest(rec: &ImageRecord) {
    println!("manifest   {}", rec.manifest_digest);
    println!("config     {}", rec.config_digest);
    if rec.platform.is_some() {
        layers(rec);
    }
}

/// The layers of one manifest, with their notes.
fn layers(rec: &ImageRecord) {
    let total: u64 = rec.layers.iter().map(|l| l.descriptor.size).sum();
    println!(
        "layers     {} ({} compressed)",
        rec.layers.len(),
        human(total)
    );
    for (i, l) in rec.layers.iter().enumerate() {
        println!(
            "  {:>2}. {} {:>9}  {}  {}",
            i + 1,
            l.descriptor.digest,
            human(l.descriptor.size),
            if l.cached { "cached" } else { "built " },
            l.description
        );
        println!("      diff_id {}", l.diff_id);
        for n in &l.notes {
            println!("      {n}");
        }
    }
}
