//! The core: reproducibility, the layer cache, the store's robustness, bad input.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::*;

#[test]
fn reproducible_across_checkouts_umask_mtimes_and_jobs() {
    let a = Fixture::new("hello");
    enrich_site(a.path());
    // A file of several compression blocks (gzip works in 1 MiB blocks, in parallel
    // with --jobs > 1), and a second image beside `hello` so that two images build
    // at the same time with --jobs 2.
    let mut x: u32 = 7;
    let big: Vec<u8> = (0..3_500_000)
        .map(|_| {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    std::fs::write(a.path().join("layers/site/big.bin"), &big).unwrap();
    std::fs::write(
        a.path().join("recipes/sibling.toml"),
        "from = \"base\"\n[[layers]]\nfiles = [ { src = \"layers/site\", dest = \"/www\" } ]\n",
    )
    .unwrap();
    let da = digests(&a.build_json(&["all", "--jobs", "1"]));
    assert_eq!(da.len(), 3, "{da:?}");

    // Another checkout in another directory, copied under a real umask of 077
    // (group and other bits cleared, as a checkout by such a user has them;
    // hardlinks kept), with setuid and sticky put back (git does not carry them,
    // they are content), every mtime touched, built under umask 077 with other
    // parallelism and a fresh store.
    let b = tempfile::tempdir().unwrap();
    let dst = b.path().join("elsewhere/checkout");
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "umask 077 && cp -r --preserve=links {src} {dst} && chmod u+s {dst}/layers/site/suid && chmod +t {dst}/layers/site/sticky && find {dst} -exec touch -h -d '2031-05-06 07:08:09' {{}} +",
        src = a.path().display(),
        dst = dst.display(),
    )));
    // umask 077 really changed the modes we read from disk
    let m = std::fs::metadata(dst.join("layers/site/index.html"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(m & 0o077, 0, "umask did not apply: {m:o}");
    let store = tempfile::tempdir().unwrap();
    let out = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg("umask 077 && exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_imgbuild"))
            .arg("-C")
            .arg(&dst)
            .arg("--store")
            .arg(store.path())
            .args(["--json", "all", "--jobs", "2"]),
    );
    let db = digests(&serde_json::from_str(&out).unwrap());
    assert_eq!(da, db, "digests differ between checkouts");

    // SOURCE_DATE_EPOCH changes mtimes and `created`, so it changes the digests.
    let out = run_ok(
        a.cmd()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["--json", "all"]),
    );
    let dc = digests(&serde_json::from_str(&out).unwrap());
    assert_ne!(da, dc);
}

#[test]
fn second_build_is_cached_and_one_change_rebuilds_one_layer() {
    let f = Fixture::new("hello");
    let first = f.build_json(&["all"]);
    assert!(layers_of(&first, "hello").iter().all(|(_, c)| !c));
    let second = f.build_json(&["all"]);
    for name in ["base", "hello"] {
        assert!(
            layers_of(&second, name).iter().all(|(_, c)| *c),
            "{name} not fully cached: {second}"
        );
    }
    assert_eq!(digests(&first), digests(&second));

    // One file of the hello layer changes: exactly that layer is rebuilt.
    std::fs::write(
        f.path().join("layers/site/index.html"),
        "<h1>changed</h1>\n",
    )
    .unwrap();
    let third = f.build_json(&["all"]);
    let (l_old, l_new) = (layers_of(&second, "hello"), layers_of(&third, "hello"));
    assert_eq!(
        l_new[0],
        (l_old[0].0.clone(), true),
        "the base layer must come from the cache"
    );
    assert!(!l_new[1].1, "the changed layer must be rebuilt");
    assert_ne!(l_new[1].0, l_old[1].0);
    assert!(layers_of(&third, "base").iter().all(|(_, c)| *c));
    // The base image is untouched, the hello image changed.
    let (d2, d3) = (digests(&second), digests(&third));
    assert_eq!(d2[0], d3[0]);
    assert_ne!(d2[1], d3[1]);
}

#[test]
fn a_change_within_the_same_mtime_tick_is_seen() {
    let f = Fixture::new("hello");
    let idx = f.path().join("layers/site/index.html");
    std::fs::write(&idx, "AAAA\n").unwrap();
    let first = f.build_json(&["all"]);
    // Same size, and the mtime set back to exactly what it was.
    let mtime = run_ok(Command::new("stat").args(["-c", "%y"]).arg(&idx));
    std::fs::write(&idx, "BBBB\n").unwrap();
    run_ok(Command::new("touch").arg("-d").arg(mtime.trim()).arg(&idx));
    let second = f.build_json(&["all"]);
    assert_ne!(
        layers_of(&first, "hello")[1].0,
        layers_of(&second, "hello")[1].0
    );
}

#[test]
fn a_corrupt_blob_in_the_store_is_never_used() {
    let f = Fixture::new("hello");
    let first = f.build_json(&["all"]);
    let (layer, _) = layers_of(&first, "hello")[1].clone();
    let blob = f
        .store
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let second = f.build_json(&["all"]);
    let l = &layers_of(&second, "hello")[1];
    assert_eq!(l.0, layer, "the rebuilt layer has the same digest");
    assert!(
        !l.1,
        "the corrupt cached layer must have been rebuilt, not reused"
    );
    // and the output verifies with an independent tool
    skopeo_accepts(&f.path().join("out/hello.tar"));
    // and the layout in out/oci holds the good bytes, not the corrupted ones
    let hex = layer.trim_start_matches("sha256:");
    let sum =
        run_ok(Command::new("sha256sum").arg(f.path().join("out/oci/blobs/sha256").join(hex)));
    assert!(sum.starts_with(hex), "{sum}");
}

#[test]
fn two_processes_on_one_store_both_succeed() {
    let f = Fixture::new("hello");
    enrich_site(f.path());
    let spawn = || {
        f.cmd()
            .args(["--json", "-q", "all"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let da = digests(&serde_json::from_slice(&a.stdout).unwrap());
    let db = digests(&serde_json::from_slice(&b.stdout).unwrap());
    assert_eq!(da, db);

    // Two builds of different images into one out/ at once: out/oci keeps both
    // (neither loses the other's index entry nor blobs), and skopeo reads both.
    std::fs::write(
        f.path().join("recipes/other.toml"),
        "[[layers]]\nfiles = [ { dest = \"/other\", content = \"other\\n\" } ]\n",
    )
    .unwrap();
    for _ in 0..10 {
        // from an empty out/ each time: both builds start the index afresh
        let _ = std::fs::remove_dir_all(f.path().join("out"));
        let spawn = |name: &str| {
            f.cmd()
                .args(["-q", "build", name])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn("hello"), spawn("other"));
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        assert!(a.status.success() && b.status.success());
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(f.path().join("out/oci/index.json")).unwrap())
                .unwrap();
        let mut names: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        names.sort();
        // each image, and its SBOM and provenance (OCI artifacts naming it as subject)
        assert_eq!(
            names,
            [
                "base",
                "base.provenance",
                "base.sbom",
                "hello",
                "hello.provenance",
                "hello.sbom",
                "other",
                "other.provenance",
                "other.sbom"
            ],
            "{index}"
        );
        // skopeo copy reads and verifies every blob of each image
        for name in names {
            let to = tempfile::tempdir().unwrap();
            run_ok(
                Command::new("skopeo")
                    .arg("copy")
                    .arg(format!("oci:{}:{name}", f.path().join("out/oci").display()))
                    .arg(format!("dir:{}", to.path().display())),
            );
        }
    }
}

#[test]
fn a_killed_build_leaves_the_store_usable() {
    let f = Fixture::new("hello");
    // A large incompressible input so the build is still running when killed.
    run_ok(
        Command::new("head")
            .args(["-c", "200000000", "/dev/urandom"])
            .stdout(std::fs::File::create(f.path().join("layers/site/big.bin")).unwrap()),
    );
    let temps = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".tmp") || n.ends_with(".link") || !n.contains('.'))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut left = vec![];
    for delay_ms in [50u64, 300, 900] {
        let mut child = f.cmd().args(["-q", "all"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        left.extend(temps(&f.store.join("tmp")));
    }
    // at least one kill landed while a blob was being written
    assert!(!left.is_empty(), "no kill interrupted a write");
    let after_kill = f.build_json(&["all"]);
    // the next build removed what the killed ones left
    assert_eq!(temps(&f.store.join("tmp")), Vec::<String>::new());
    for dir in [f.path().join("out"), f.path().join("out/oci/blobs/sha256")] {
        let dotted: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp") || n.ends_with(".link"))
            .collect();
        assert!(dotted.is_empty(), "{}: {dotted:?}", dir.display());
    }
    let fresh = Fixture::new("hello");
    std::fs::copy(
        f.path().join("layers/site/big.bin"),
        fresh.path().join("layers/site/big.bin"),
    )
    .unwrap();
    let clean = fresh.build_json(&["all"]);
    assert_eq!(digests(&after_kill), digests(&clean));
    skopeo_accepts(&f.path().join("out/hello.tar"));
}

#[test]
fn inspect_shows_layers_and_cache_state() {
    let f = Fixture::new("hello");
    f.build_json(&["all"]);
    f.build_json(&["all"]);
    let out = run_ok(f.cmd().args(["inspect", "hello"]));
    assert!(out.contains("reference  imgbuild/hello:latest"), "{out}");
    assert_eq!(out.matches(" cached ").count(), 2, "{out}");
    let unknown = f.run(&["inspect", "nosuch"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no build of `nosuch`"));
}

/// Each bad input gives one clear line naming the file and line, exit 1, and
/// writes no output at all.
#[test]
fn bad_input_gives_clear_errors_and_writes_nothing() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown key",
            "[config]\nentrypont = [\"/x\"]\n",
            "recipes/bad.toml:2:1: unknown field `entrypont`",
        ),
        (
            "missing src",
            "[[layers]]\nfiles = [ { src = \"layers/nope\", dest = \"/x\" } ]\n",
            "recipes/bad.toml:2:19: src \"layers/nope\" does not exist",
        ),
        (
            "src outside",
            "[[layers]]\nfiles = [ { src = \"../../etc/passwd\", dest = \"/x\" } ]\n",
            "recipes/bad.toml:2:19: src \"../../etc/passwd\" leaves the project directory",
        ),
        (
            "unknown from",
            "from = \"nosuch\"\n",
            "recipes/bad.toml:1:8: unknown `from = \"nosuch\"`",
        ),
        (
            "invalid mode",
            "[[layers]]\ndirs = [ { path = \"/d\", mode = \"0999\" } ]\n",
            "recipes/bad.toml:2:32: invalid mode \"0999\"",
        ),
        (
            "relative dest",
            "[[layers]]\nfiles = [ { content = \"x\", dest = \"etc/x\" } ]\n",
            "recipes/bad.toml:2:35: dest \"etc/x\" must be an absolute path",
        ),
        (
            "unknown key in an inline table",
            "[[layers]]\nfiles = [ { src = \"layers/site\", dest = \"/x\", mdoe = \"0644\" } ]\n",
            "recipes/bad.toml:2:47: unknown field `mdoe`",
        ),
        (
            "src escaping through a symlink",
            "[[layers]]\nfiles = [ { src = \"layers/escape\", dest = \"/x\" } ]\n",
            "recipes/bad.toml:2:19: src \"layers/escape\" resolves to /etc, outside the project directory",
        ),
        (
            "the whole project as src",
            "[[layers]]\nfiles = [ { src = \".\", dest = \"/x\" } ]\n",
            "recipes/bad.toml:2:19: src \".\" is the whole project directory",
        ),
        (
            "two entries at one destination",
            "[[layers]]\nfiles = [ { content = \"a\", dest = \"/etc/x\" } ]\nsymlinks = [ { path = \"/etc/x\", target = \"y\" } ]\n",
            "recipes/bad.toml:3:23: /etc/x is written twice in this layer (first at line 2); keep one",
        ),
        (
            "a file and a directory at one path",
            "[[layers]]\nfiles = [ { content = \"a\", dest = \"/srv\" } ]\ndirs = [ { path = \"/srv/\" } ]\n",
            "recipes/bad.toml:3:19: /srv/ is written twice in this layer (first at line 2); keep one",
        ),
        (
            "an unknown layer key",
            "[[layers]]\nfilez = []\n",
            "unknown field `filez`, expected one of `debian`, `python`, `build`, `archive`, `files`, `dirs`, `symlinks`, `users`, `groups`, `allow_missing`",
        ),
    ];
    for (what, recipe, expected) in cases {
        let f = Fixture::new("hello");
        std::os::unix::fs::symlink("/etc", f.path().join("layers/escape")).unwrap();
        std::fs::write(f.path().join("recipes/bad.toml"), recipe).unwrap();
        let out = f.run(&["all"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains(expected),
            "{what}: expected `{expected}` in:\n{err}"
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{what}: expected one line:\n{err}"
        );
        assert!(!f.path().join("out").exists(), "{what}: output was written");
        assert_eq!(blob_count(&f), 0, "{what}: something was stored");
    }
    // A cycle names the chain.
    let f = Fixture::new("hello");
    std::fs::write(f.path().join("recipes/a.toml"), "from = \"b\"\n").unwrap();
    std::fs::write(f.path().join("recipes/b.toml"), "from = \"a\"\n").unwrap();
    let out = f.run(&["all"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("recipes/b.toml:1:8: `from` cycle: a -> b -> a"),
        "{err}"
    );
    assert!(!f.path().join("out").exists());
    assert_eq!(blob_count(&f), 0);
}

fn blob_count(f: &Fixture) -> usize {
    std::fs::read_dir(f.store.join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn the_oci_layout_keeps_only_blobs_its_images_use() {
    let f = Fixture::new("hello");
    f.build_json(&["all"]);
    for v in ["v2", "v3"] {
        std::fs::write(f.path().join("layers/site/index.html"), v).unwrap();
        f.build_json(&["all"]);
    }
    // base: config, layer, manifest; hello: config, 2 layers (one shared), manifest;
    // per image an SBOM and a provenance document, each with its artifact manifest,
    // and the empty config the artifacts share
    let n = std::fs::read_dir(f.path().join("out/oci/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(n, 6 + 2 * 4 + 1, "stale blobs left in out/oci");
    require("skopeo");
    for name in ["base", "hello"] {
        run_ok(
            Command::new("skopeo")
                .arg("inspect")
                .arg(format!("oci:{}:{name}", f.path().join("out/oci").display())),
        );
    }
}
