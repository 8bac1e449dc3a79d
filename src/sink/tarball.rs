//! `out/NAME.tar`: one file that every engine and tool loads.
//!
//! It is an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) plus
//! Docker's `manifest.json`, whose `Config` and `Layers` paths point into
//! `blobs/sha256/`, the way Docker 25+ writes `docker save` output. Docker 20.10
//! reads only `manifest.json`; podman and `skopeo copy oci-archive:` read the OCI
//! index; `skopeo copy docker-archive:` reads `manifest.json`.
//!
//! The tar itself is deterministic (sorted entries, fixed headers) and is rewritten
//! only when its content would change: an unchanged image costs no copying.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use imgbuild_store::{Digest, Store};
use serde_json::json;

use super::ImageOut;
use crate::oci::{self, Descriptor, MEDIA_MANIFEST};

pub fn write(dest: &Path, store: &Store, img: &ImageOut, mtime: u64) -> Result<bool> {
    let (oci_layout, index, manifest_json) = documents(img);
    let mut blobs: BTreeMap<&Digest, u64> = BTreeMap::new();
    for d in img.blobs() {
        blobs.insert(d, store.blob_size(d)?);
    }
    let expected_size = {
        let entry = |n: u64| 512 + n.div_ceil(512) * 512;
        let mut s = entry(oci_layout.len() as u64)
            + entry(index.len() as u64)
            + entry(manifest_json.len() as u64);
        s += 512 * 2; // blobs/ and blobs/sha256/
        s += blobs.values().map(|&n| entry(n)).sum::<u64>();
        s + 1024
    };
    let docs = [
        ("oci-layout", &oci_layout[..]),
        ("index.json", &index[..]),
        ("manifest.json", &manifest_json[..]),
    ];
    if is_current(dest, docs, expected_size) {
        return Ok(false);
    }
    let mut out = imgbuild_store::AtomicFile::create(dest, 0o666)?;
    let r = (|| -> io::Result<()> {
        let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, out.file()));
        let header = |size: u64, kind: tar::EntryType, mode: u32| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_size(size);
            h.set_mode(mode);
            h.set_mtime(mtime);
            h.set_uid(0);
            h.set_gid(0);
            h
        };
        for (name, bytes) in [
            ("oci-layout", &oci_layout),
            ("index.json", &index),
            ("manifest.json", &manifest_json),
        ] {
            b.append_data(
                &mut header(bytes.len() as u64, tar::EntryType::Regular, 0o644),
                name,
                &bytes[..],
            )?;
        }
        for dir in ["blobs/", "blobs/sha256/"] {
            b.append_data(
                &mut header(0, tar::EntryType::Directory, 0o755),
                dir,
                io::empty(),
            )?;
        }
        for (d, size) in &blobs {
            let src = store.open_verified(d).map_err(io::Error::other)?;
            b.append_data(
                &mut header(*size, tar::EntryType::Regular, 0o644),
                format!("blobs/sha256/{}", d.hex()),
                src,
            )?;
        }
        b.into_inner()?.flush()
    })();
    r.with_context(|| format!("failed to write `{}`", dest.display()))?;
    out.commit()?;
    Ok(true)
}

/// The three small documents of the tarball.
fn documents(img: &ImageOut) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let desc = Descriptor {
        media_type: MEDIA_MANIFEST,
        digest: img.manifest.clone(),
        size: img.manifest_size,
    };
    let ann = BTreeMap::from([
        // podman names the loaded image after ref.name; a full reference keeps it
        // from being guessed. containerd and Docker 25+ read io.containerd.image.name.
        (super::layout::REF_NAME.to_owned(), img.reference.clone()),
        ("io.containerd.image.name".to_owned(), img.reference.clone()),
    ]);
    let index = oci::image_index(vec![oci::index_entry(&desc, &ann)]);
    let manifest_json = oci::canonical(&json!([{
        "Config": format!("blobs/sha256/{}", img.config.hex()),
        "RepoTags": img.repo_tags,
        "Layers": img.layers.iter().map(|d| format!("blobs/sha256/{}", d.hex())).collect::<Vec<_>>(),
    }]));
    (
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        index,
        manifest_json,
    )
}

/// Whether `dest` already is this exact tarball: same size and the same three
/// documents (the index names the manifest digest, which names every other blob;
/// `manifest.json` carries the tags `docker load` applies).
fn is_current(dest: &Path, docs: [(&str, &[u8]); 3], size: u64) -> bool {
    let Ok(f) = File::open(dest) else {
        return false;
    };
    if f.metadata().map(|m| m.len()).unwrap_or(0) != size {
        return false;
    }
    let mut ar = tar::Archive::new(f.take(64 * 1024));
    let Ok(entries) = ar.entries() else {
        return false;
    };
    let mut matched = 0;
    for (e, (name, bytes)) in entries.take(3).zip(docs) {
        let Ok(mut e) = e else {
            return false;
        };
        let mut buf = vec![];
        let same_name = e.path().map(|p| p.as_os_str() == name).unwrap_or(false);
        if !same_name || e.read_to_end(&mut buf).is_err() || buf != bytes {
            return false;
        }
        matched += 1;
    }
    matched == 3
}
