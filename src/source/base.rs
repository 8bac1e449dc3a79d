//! Base images from a registry: `from = "REGISTRY/REPO@sha256:..."`, or a tag whose
//! digest is recorded in `imgbuild.lock`.
//!
//! The image is pulled once into the store (an index resolved to the platform being
//! built, linux/amd64 by default; every
//! blob verified while it streams in) and found there afterwards without network
//! (its blobs are hashed again only when they changed on disk since the last check).
//! Its layers come first in the new image, byte for byte; its config is the config
//! the recipe's own `[config]` merges over.
//!
//! What the recipe's layers need of the base's filesystem is read once from its
//! layers (streamed through the decompressor, whiteouts applied) and kept in the
//! store: the directories and symlinks ([`LowerView`]: `/bin/x` goes through a
//! merged-/usr `bin -> usr/bin`, `/tmp` keeps its mode) and the accounts of its
//! `/etc/passwd` and `/etc/group` (owner names resolve against them, and a layer
//! declaring users adds to them).

use anyhow::{Context, Result, bail};
use imgbuild_debian::system::Accounts;
use imgbuild_layer::image::{Entry, ImageFiles};
use imgbuild_registry::{Client, Credentials, Reference};
use imgbuild_store::{Bucket, Digest, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::LayerReport;
use crate::lower::LowerView;
use crate::oci::HistoryEntry;
use crate::recipe::{ConfigSpec, Recipe};
use crate::source::Session;

/// `/etc/passwd` or `/etc/group` larger than this is refused.
const MAX_ACCOUNTS_FILE: u64 = 16 << 20;

#[derive(Serialize, Deserialize)]
pub(crate) struct BaseRecord {
    pub(crate) manifest: Digest,
}

/// A base image, ready to build on.
pub struct BaseImage {
    pub reference: String,
    pub layers: Vec<LayerReport>,
    pub config: ConfigSpec,
    pub history: Vec<HistoryEntry>,
    /// The blobs (manifest, config, layers), kept by gc.
    pub blobs: Vec<Digest>,
    /// Its directories and symlinks, for the layers above.
    pub view: LowerView,
    /// Its `/etc/passwd` and `/etc/group`; `None` if it has no `/etc/passwd`.
    pub accounts: Option<Accounts>,
}

/// What upper layers need of a base image's filesystem (kept per manifest digest).
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BaseContents {
    pub view: LowerView,
    pub accounts: Option<Accounts>,
}

/// The base image of a recipe `from` a registry: resolved (a tag through the lock or
/// the registry), pulled into the store unless it is there, and read. With `pull`
/// false (planning), an image not in the store yet is `None`: nothing is downloaded
/// but the tag's digest.
pub fn load(
    session: &Session,
    recipe: &Recipe,
    raw: &str,
    pull: bool,
    platform: crate::platform::Platform,
) -> Result<Option<BaseImage>> {
    let at = format!(
        "{}:{}:{}",
        recipe.file.display(),
        recipe.from.pos.line,
        recipe.from.pos.column
    );
    let reference: Reference = raw
        .parse()
        .with_context(|| format!("{at}: `from = \"{raw}\"` is not an image reference"))?;
    let store = &session.store;
    // a multi-platform base is resolved to the platform being built
    let mut options = session.registry.clone();
    options.platform = platform.registry();
    let client = || Client::new(options.clone(), Credentials::from_process_env());
    // (bound first: a guard in the match scrutinee would live through the arms)
    let locked_digest = session
        .debian
        .lock
        .lock()
        .expect("lock")
        .bases
        .get(raw)
        .cloned();
    let pinned = match &reference.digest {
        Some(d) => d.clone(),
        None => match locked_digest {
            Some(d) => d,
            None if session.debian.locked => bail!(
                "{at}: `from = \"{raw}\"` has no digest and none is recorded in {}; run `imgbuild lock` (or pin it: `{raw}@sha256:...`)",
                crate::lockfile::FILE
            ),
            None => {
                let d = client()?
                    .resolve(&reference)
                    .with_context(|| format!("{at}: resolving {raw}"))?;
                session
                    .progress
                    .line(format!("[{}] base {raw} resolved to {d}", recipe.name));
                session
                    .debian
                    .lock
                    .lock()
                    .expect("lock")
                    .bases
                    .insert(raw.to_owned(), d.clone());
                d
            }
        },
    };
    let record_key = base_record_key(&pinned, platform);
    let manifest_digest = match cached(store, &record_key)? {
        Some(m) => m,
        None if !pull => return Ok(None),
        None => {
            session
                .progress
                .status(format!("[{}] pulling {raw}", recipe.name));
            let pulled = client()?
                .pull(store, &reference.with_digest(pinned.clone()))
                .with_context(|| format!("{at}: pulling {raw}"))?;
            store.write_record(
                Bucket::Bases,
                &record_key,
                &serde_json::to_vec(&BaseRecord {
                    manifest: pulled.manifest_digest.clone(),
                })?,
            )?;
            session.progress.line(format!(
                "[{}] pulled {raw} ({} downloaded, {} blob(s) already here)",
                recipe.name,
                crate::progress::human(pulled.bytes_downloaded),
                pulled.blobs_present
            ));
            pulled.manifest_digest
        }
    };
    let manifest: Value = serde_json::from_slice(&store.read_bytes(&manifest_digest)?)?;
    let config_digest: Digest = manifest["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let config: Value = serde_json::from_slice(&store.read_bytes(&config_digest)?)?;
    let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
        .as_array()
        .context("base image config has no rootfs.diff_ids")?
        .iter()
        .map(|d| d.as_str().unwrap_or_default().parse())
        .collect::<Result<_, _>>()?;
    let mlayers = manifest["layers"]
        .as_array()
        .context("base image manifest has no layers")?;
    if mlayers.len() != diff_ids.len() {
        bail!(
            "{at}: base image {raw} has {} layers but {} diff_ids",
            mlayers.len(),
            diff_ids.len()
        );
    }
    let mut layers = vec![];
    let mut blobs = vec![manifest_digest.clone(), config_digest];
    for (l, diff_id) in mlayers.iter().zip(diff_ids) {
        let digest: Digest = l["digest"].as_str().unwrap_or_default().parse()?;
        let media_type = l["mediaType"].as_str().unwrap_or_default();
        // Docker's gzip layer type becomes OCI's: the manifest imgbuild writes is OCI
        let media_type = if media_type.contains("zstd") {
            crate::oci::MEDIA_LAYER_ZSTD
        } else if media_type.ends_with("tar+gzip") || media_type.ends_with("tar.gzip") {
            crate::oci::MEDIA_LAYER_GZIP
        } else {
            bail!(
                "{at}: base image layer {digest} has media type `{media_type}`, which imgbuild cannot build on"
            )
        };
        blobs.push(digest.clone());
        layers.push(LayerReport {
            descriptor: crate::oci::Descriptor::new(
                media_type,
                digest,
                l["size"].as_u64().unwrap_or(0),
            ),
            diff_id,
            cached: true,
            description: format!("from {raw}"),
            notes: vec![],
            fingerprint: None,
            reason: vec![],
        });
    }
    let history = config["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| HistoryEntry {
                    created_by: e["created_by"].as_str().unwrap_or("").to_owned(),
                    empty_layer: e["empty_layer"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default();
    let layer_blobs: Vec<Digest> = layers.iter().map(|l| l.descriptor.digest.clone()).collect();
    let contents = contents(session, &manifest_digest, &layer_blobs)
        .with_context(|| format!("{at}: reading the filesystem of base image {raw}"))?;
    Ok(Some(BaseImage {
        reference: reference.with_digest(pinned).to_string(),
        layers,
        config: config_spec(&config["config"]),
        history,
        blobs,
        view: contents.view,
        accounts: contents.accounts,
    }))
}

/// The base's [`BaseContents`], from the store's record or read from its layers.
fn contents(session: &Session, manifest: &Digest, layers: &[Digest]) -> Result<BaseContents> {
    let store = &session.store;
    if let Some(bytes) = store.read_record(Bucket::BaseContents, manifest.hex())?
        && let Ok(c) = serde_json::from_slice::<BaseContents>(&bytes)
    {
        return Ok(c);
    }
    session
        .progress
        .status(format!("reading the base image's filesystem ({manifest})"));
    let c = read_contents(store, layers)?;
    store.write_record(
        Bucket::BaseContents,
        manifest.hex(),
        &serde_json::to_vec(&c)?,
    )?;
    Ok(c)
}

/// Lays the layers over each other ([`ImageFiles`]: whiteouts applied, every blob
/// verified) and keeps what [`BaseContents`] needs.
fn read_contents(store: &Store, layers: &[Digest]) -> Result<BaseContents> {
    let files = ImageFiles::from_layers(store, layers)?;
    let mut view = LowerView::default();
    for (path, entry) in files.below("") {
        match entry {
            Entry::Dir(m) => {
                view.dirs.insert(path.to_owned(), (m.mode, m.uid, m.gid));
            }
            Entry::Symlink(target) => {
                view.symlinks.insert(path.to_owned(), target.clone());
            }
            Entry::File { .. } => {}
        }
    }
    // A regular file each (a link or anything else there: as if absent).
    let [passwd, group]: [Option<Vec<u8>>; 2] = files
        .read_files(&["etc/passwd", "etc/group"], MAX_ACCOUNTS_FILE)?
        .try_into()
        .expect("two paths, two answers");
    Ok(BaseContents {
        view,
        accounts: passwd.map(|p| Accounts::parse(&p, group.as_deref().unwrap_or_default())),
    })
}

/// The manifest digest of a base pulled before, if all its blobs are intact. A blob is
/// hashed again only if its inode changed since the record was written or last
/// checked (the record's mtime moves forward after a full check).
/// The key of a pulled base's record: its pinned digest (an index or a manifest),
/// with the platform for any but amd64 (the one platform of records written before
/// platforms could be chosen; the same key keeps them).
fn base_record_key(pinned: &Digest, platform: crate::platform::Platform) -> String {
    if platform.arch == imgbuild_debian::Arch::Amd64 {
        pinned.hex().to_owned()
    } else {
        format!("{}-{}", pinned.hex(), platform.architecture())
    }
}

fn cached(store: &Store, key: &str) -> Result<Option<Digest>> {
    let Some(bytes) = store.read_record(Bucket::Bases, key)? else {
        return Ok(None);
    };
    let Ok(rec) = serde_json::from_slice::<BaseRecord>(&bytes) else {
        return Ok(None);
    };
    let record = store.record_path(Bucket::Bases, key);
    let checked = std::fs::metadata(&record)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH);
    if !store.verify_unless_unchanged_since(&rec.manifest, checked)? {
        return Ok(None);
    }
    let Ok(m) = serde_json::from_slice::<Value>(&store.read_bytes(&rec.manifest)?) else {
        return Ok(None);
    };
    let mut all = vec![m["config"]["digest"].clone()];
    all.extend(
        m["layers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|l| l["digest"].clone()),
    );
    for d in all {
        let Ok(d) = d.as_str().unwrap_or_default().parse::<Digest>() else {
            return Ok(None);
        };
        if !store.verify_unless_unchanged_since(&d, checked)? {
            return Ok(None);
        }
    }
    let _ = std::fs::File::options()
        .write(true)
        .open(&record)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    Ok(Some(rec.manifest))
}

/// The runtime config of an image config JSON, as a recipe would have written it.
fn config_spec(c: &Value) -> ConfigSpec {
    let strings = |v: &Value| {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
    };
    let keys = |v: &Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let map = |v: &Value| {
        v.as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    ConfigSpec {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"])
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect(),
        workdir: text(&c["WorkingDir"]),
        user: text(&c["User"]),
        ports: keys(&c["ExposedPorts"]),
        volumes: keys(&c["Volumes"]),
        labels: map(&c["Labels"]),
        stop_signal: text(&c["StopSignal"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum E<'a> {
        Dir(&'a str, u32),
        File(&'a str, &'a str),
        Link(&'a str, &'a str),
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            match e {
                E::Dir(p, mode) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_uid(7);
                    h.set_gid(8);
                    h.set_size(0);
                    b.append_data(&mut h, format!("./{p}/"), &[][..]).unwrap();
                }
                E::File(p, text) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(text.len() as u64);
                    b.append_data(&mut h, p, text.as_bytes()).unwrap();
                }
                E::Link(p, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, target).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn layers_whiteouts_and_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let put = |entries: &[E]| store.put_bytes(&tar_of(entries)).unwrap();
        let lower = put(&[
            E::Dir("usr", 0o755),
            E::Dir("usr/bin", 0o755),
            E::Link("bin", "usr/bin"),
            E::Link("lib", "usr/lib"),
            E::Dir("tmp", 0o1777),
            E::Dir("opt", 0o755),
            E::Dir("opt/gone", 0o700),
            E::Dir("opt/gone/sub", 0o700),
            E::Dir("srv", 0o750),
            E::Dir("srv/old", 0o750),
            E::Dir("var", 0o755),
            E::Dir("var/x", 0o755),
            E::Dir("etc", 0o755),
            E::File(
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nold:x:5:5::/:/bin/false\n",
            ),
            E::File("etc/group", "root:x:0:\nold:x:5:\n"),
        ]);
        let upper = put(&[
            E::File("opt/.wh.gone", ""),
            E::File(".wh.lib", ""),
            E::File("srv/.wh..wh..opq", ""),
            E::Dir("srv/new", 0o700),
            E::File("var", "a file over a directory"),
            E::File(
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\n# comment\nbaseuser:x:1234:1234:Base:/home/b:/bin/sh\nbroken line\n",
            ),
            E::File("etc/group", "root:x:0:\nbaseuser:x:1234:a,b\n"),
        ]);
        let c = read_contents(&store, &[lower, upper]).unwrap();
        assert_eq!(
            c.view.symlinks.get("bin").map(String::as_str),
            Some("usr/bin")
        );
        assert!(!c.view.symlinks.contains_key("lib"), "{:?}", c.view);
        assert_eq!(c.view.dirs.get("tmp"), Some(&(0o1777, 7, 8)));
        assert!(c.view.dirs.contains_key("opt"));
        assert!(!c.view.dirs.contains_key("opt/gone"));
        assert!(!c.view.dirs.contains_key("opt/gone/sub"));
        // opaque: the directory stays, its lower content goes, its new content is there
        assert!(c.view.dirs.contains_key("srv"));
        assert!(!c.view.dirs.contains_key("srv/old"));
        assert_eq!(c.view.dirs.get("srv/new"), Some(&(0o700, 7, 8)));
        assert!(!c.view.dirs.contains_key("var") && !c.view.dirs.contains_key("var/x"));
        assert_eq!(c.view.resolve("/bin/x"), "usr/bin/x");
        let a = c.accounts.unwrap();
        assert_eq!(
            a.users
                .iter()
                .map(|u| (u.name.as_str(), u.uid))
                .collect::<Vec<_>>(),
            vec![("root", 0), ("baseuser", 1234)]
        );
        assert_eq!(a.user("baseuser").unwrap().home, "/home/b");
        assert_eq!(a.group("baseuser").unwrap().members, vec!["a", "b"]);
        assert_eq!(a.resolve_owner("baseuser").unwrap(), (1234, 1234));

        // A whiteout of /etc/passwd: no accounts (names fall back as for scratch).
        let with = put(&[E::File("etc/passwd", "root:x:0:0::/:/bin/sh\n")]);
        let without = put(&[E::File("etc/.wh.passwd", "")]);
        assert!(
            read_contents(&store, std::slice::from_ref(&with))
                .unwrap()
                .accounts
                .is_some()
        );
        assert_eq!(
            read_contents(&store, &[with, without]).unwrap().accounts,
            None
        );
    }
}
