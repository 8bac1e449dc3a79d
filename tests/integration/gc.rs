//! `imgbuild gc`: what recent builds used stays (whichever build it was), every
//! bucket's unused entries go, and `--dry-run` reports the same without removing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::*;

/// Sets a file's or directory's mtime (its "last use" for gc) `days` back.
fn age(path: &Path, days: u64) {
    std::fs::File::open(path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(days * 86400))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", path.display()));
}

/// Every file under `dir` with its size and mtime (what a dry run must not change).
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            }
            out.insert(e.path(), (m.len(), m.modified().unwrap()));
        }
    }
    out
}

fn gc_json(f: &Fixture, args: &[&str]) -> Value {
    let out = run_ok(f.cmd().args(["--json", "gc"]).args(args));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON from gc ({e}):\n{out}"))
}

/// bucket name -> (removed, kept) from a gc report.
fn per_bucket(report: &Value) -> BTreeMap<String, (u64, u64)> {
    report["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["bucket"].as_str().unwrap().to_owned(),
                (b["removed"].as_u64().unwrap(), b["kept"].as_u64().unwrap()),
            )
        })
        .collect()
}

fn blob(store: &Path, digest: &str) -> PathBuf {
    store
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The regression found from outside: after building V0 then V1 of an image, gc
/// removed V0's seconds-old layer, because only the latest image record was a root.
#[test]
fn gc_keeps_the_layers_of_every_recent_build() {
    let f = Fixture::new("hello");
    let index = f.path().join("layers/site/index.html");
    let v0_text = std::fs::read(&index).unwrap();
    let v0 = f.build_json(&["all"]);
    std::fs::write(&index, "v1\n").unwrap();
    let v1 = f.build_json(&["all"]);
    assert!(
        !layers_of(&v1, "hello").last().unwrap().1,
        "V1 changed the top layer"
    );
    run_ok(f.cmd().args(["gc", "--keep-days", "7"]));
    std::fs::write(&index, v0_text).unwrap();
    let back = f.build_json(&["all"]);
    for name in ["base", "hello"] {
        for (digest, cached) in layers_of(&back, name) {
            assert!(cached, "{name}: layer {digest} of V0 was not kept by gc");
        }
    }
    assert_eq!(digests(&v0), digests(&back));
    // Nothing is recent with --keep-days 0: the next build rebuilds and still works.
    run_ok(f.cmd().args(["gc", "--keep-days", "0"]));
    let rebuilt = f.build_json(&["all"]);
    assert!(layers_of(&rebuilt, "hello").iter().all(|(_, c)| !c));
    assert_eq!(digests(&back), digests(&rebuilt));
}

#[test]
fn gc_removes_the_unused_entries_of_every_bucket_and_dry_run_only_reports() {
    let f = Fixture::new("hello");
    let s = f.store.clone();
    let v0 = f.build_json(&["all"]);
    std::fs::write(f.path().join("layers/site/index.html"), "v1\n").unwrap();
    let v1 = f.build_json(&["all"]);
    let image = |v: &Value, key: &str| -> String {
        v["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "hello")
            .unwrap()[key]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (v0_manifest, v1_manifest) = (image(&v0, "manifest_digest"), image(&v1, "manifest_digest"));
    let v0_top = layers_of(&v0, "hello").last().unwrap().0.clone();
    let v1_top = layers_of(&v1, "hello").last().unwrap().0.clone();
    let kept_hex = v1_top.trim_start_matches("sha256:").to_owned();
    let gone_hex = "ab".repeat(32);

    // What builds made, aged: V0's layer record was last used a month ago, and so was
    // the project's stat cache (kept anyway: the project has a recent image).
    let layers_dir = s.join("records/layers-v2");
    let mut v0_record = None;
    for e in std::fs::read_dir(&layers_dir).unwrap() {
        let p = e.unwrap().path();
        let rec: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        if rec["digest"] == v0_top.as_str() {
            v0_record = Some(p);
        }
    }
    let v0_record = v0_record.expect("a layer record of V0's top layer");
    age(&v0_record, 30);
    let stat_dir = s.join("records/statcache-v3");
    let own_stat = std::fs::read_dir(&stat_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    age(&own_stat, 30);

    // One entry to keep and one to drop in every other bucket, in each bucket's format.
    let w = |rel: &str, bytes: &[u8]| {
        let p = s.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let images_dir = s.join("records/images-v2");
    let own_image = std::fs::read_dir(&images_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let other_image = w(
        "records/images-v2/00000000000000ff-gone",
        &std::fs::read(&own_image).unwrap(),
    );
    age(&other_image, 30);
    let other_stat = w(
        "records/statcache-v3/00000000000000ff",
        b"imgbuild-statcache-v3\n",
    );
    age(&other_stat, 30);
    let manifest = |d: &str| format!("{{\"manifest\":\"{d}\"}}");
    let keep_base = w(
        &format!("records/bases-v1/{}", "01".repeat(32)),
        manifest(&v1_manifest).as_bytes(),
    );
    let drop_base = w(
        &format!("records/bases-v1/{}", "02".repeat(32)),
        manifest(&format!("sha256:{gone_hex}")).as_bytes(),
    );
    let keep_contents = w(&format!("records/base-contents-v1/{kept_hex}"), b"{}");
    let drop_contents = w(&format!("records/base-contents-v1/{gone_hex}"), b"{}");
    let tar = |d: &str| format!("{{\"tar\":\"{d}\"}}");
    let keep_unpack = w(
        &format!("records/debian-unpack-v1/{}", "03".repeat(32)),
        tar(&v1_top).as_bytes(),
    );
    let drop_unpack = w(
        &format!("records/debian-unpack-v1/{}", "04".repeat(32)),
        tar(&format!("sha256:{gone_hex}")).as_bytes(),
    );
    let sel = |d: &str| format!("{{\"filename\":\"x-1-py3-none-any.whl\",\"digest\":\"{d}\"}}");
    let keep_select = w(
        &format!("records/pywheel-select-v1/{}", "05".repeat(32)),
        sel(&v1_top).as_bytes(),
    );
    let drop_select = w(
        &format!("records/pywheel-select-v1/{}", "06".repeat(32)),
        sel(&format!("sha256:{gone_hex}")).as_bytes(),
    );
    w(
        &format!("unpacked/wheels-v1/{kept_hex}/manifest.json"),
        b"{}",
    );
    w(
        &format!("unpacked/wheels-v1/{gone_hex}/manifest.json"),
        b"{}",
    );
    let (keep_wheel, drop_wheel) = (
        s.join(format!("unpacked/wheels-v1/{kept_hex}")),
        s.join(format!("unpacked/wheels-v1/{gone_hex}")),
    );
    w("unpacked/pyc-v2/recent/manifest.json", b"{}");
    w("unpacked/pyc-v2/old/manifest.json", b"{}");
    let (keep_pyc, drop_pyc) = (
        s.join("unpacked/pyc-v2/recent"),
        s.join("unpacked/pyc-v2/old"),
    );
    age(&drop_pyc, 30);
    // a wheel built from an sdist, and a git archive: kept while their blob is
    for bucket in ["pywheel-built-v1", "git-archives-v1"] {
        w(
            &format!("records/{bucket}/{}", "05".repeat(32)),
            sel(&v1_top).as_bytes(),
        );
        w(
            &format!("records/{bucket}/{}", "06".repeat(32)),
            sel(&format!("sha256:{gone_hex}")).as_bytes(),
        );
    }
    // a builder root: kept while the builder image (its key, a manifest digest) is kept
    let root_hex = v1_manifest.trim_start_matches("sha256:").to_owned();
    w(
        &format!("unpacked/build-roots-v1/{root_hex}/usr/bin/x"),
        b"x",
    );
    w(
        &format!("unpacked/build-roots-v1/{gone_hex}/usr/bin/x"),
        b"x",
    );
    let (keep_root, drop_root) = (
        s.join(format!("unpacked/build-roots-v1/{root_hex}")),
        s.join(format!("unpacked/build-roots-v1/{gone_hex}")),
    );
    age(&keep_root, 30);
    age(&drop_root, 30);
    let stale_records = w("records/layers-v0/x", b"{}").parent().unwrap().to_owned();
    let stale_dirs = w("unpacked/pyc-v1/x/manifest.json", b"{}");
    let stale_dirs = stale_dirs.parent().unwrap().parent().unwrap().to_owned();
    let stray = b"a blob no build made\n";
    let stray_blob = w(&format!("blobs/sha256/{}", sha256_hex(stray)), stray);

    let expected: BTreeMap<String, u64> = [
        ("images-v2", 1),
        ("layers-v2", 1),
        ("bases-v1", 1),
        ("base-contents-v1", 1),
        ("statcache-v3", 1),
        ("debian-unpack-v1", 1),
        ("pywheel-select-v1", 1),
        ("pywheel-built-v1", 1),
        ("git-archives-v1", 1),
        ("wheels-v1", 1),
        ("pyc-v2", 1),
        ("build-roots-v1", 1),
        ("stale", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    // The dry run: the per-bucket report, and not one file changed.
    let before = listing(&s);
    let blobs_before = std::fs::read_dir(s.join("blobs/sha256")).unwrap().count() as u64;
    let dry = gc_json(&f, &["--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(listing(&s), before, "gc --dry-run changed the store");
    let dry_buckets = per_bucket(&dry);
    for (bucket, n) in &expected {
        assert_eq!(dry_buckets[bucket].0, *n, "{bucket} in {dry:#}");
    }
    let out = f.cmd().args(["gc", "--dry-run"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.lines()
            .any(|l| l.starts_with("layers-v2") && l.contains("would remove 1")),
        "{text}"
    );
    assert_eq!(listing(&s), before, "gc --dry-run changed the store");

    // The real run removes exactly that, and says so.
    let real = gc_json(&f, &[]);
    assert_eq!(
        per_bucket(&real),
        dry_buckets,
        "the dry run reported something else"
    );
    for gone in [
        &v0_record,
        &other_image,
        &other_stat,
        &drop_base,
        &drop_contents,
        &drop_unpack,
        &drop_select,
        &drop_wheel,
        &drop_pyc,
        &drop_root,
        &stale_records,
        &stale_dirs,
        &stray_blob,
        &blob(&s, &v0_top),
        &blob(&s, &v0_manifest),
    ] {
        assert!(!gone.exists(), "gc kept {}", gone.display());
    }
    for kept in [
        &own_image,
        &own_stat,
        &keep_base,
        &keep_contents,
        &keep_unpack,
        &keep_select,
        &keep_wheel,
        &keep_pyc,
        &keep_root,
        &blob(&s, &v1_top),
        &blob(&s, &v1_manifest),
    ] {
        assert!(kept.exists(), "gc removed {}", kept.display());
    }
    let blobs_after = std::fs::read_dir(s.join("blobs/sha256")).unwrap().count() as u64;
    let (removed, kept) = per_bucket(&real)["blobs"];
    assert_eq!((blobs_before - removed, kept), (blobs_after, blobs_after));

    // What is left is what the build uses: everything cached, the same images.
    let again = f.build_json(&["all"]);
    for name in ["base", "hello"] {
        assert!(layers_of(&again, name).iter().all(|(_, c)| *c), "{again:#}");
    }
    assert_eq!(digests(&again), digests(&v1));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
