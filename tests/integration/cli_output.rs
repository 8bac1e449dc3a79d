//! What the user sees: progress lines on a pipe (snapshots), the status line on a
//! terminal, `-q`, `-v`, and the shape of `--json`.
//!
//! Snapshots live in `tests/integration/snapshots/`; paths, timings, digests and
//! sizes are replaced by placeholders (the fixture's binary is compiled by the
//! host's gcc). `IMGBUILD_BLESS=1 cargo test --test integration cli_output`
//! rewrites them after an intended change.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::*;

pub(crate) fn normalise(text: &str, project: &Path) -> String {
    let mut s = text.replace(&project.display().to_string(), "<PROJECT>");
    // digests: full and short (12 hex digits)
    s = replace_runs(
        &s,
        |c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        12,
        "<DIGEST>",
    );
    // timings like 0.07s, sizes like 15.3 kB / 368 B
    let mut out = String::new();
    for line in s.lines() {
        let words: Vec<String> = line
            .split(' ')
            .map(|w| {
                let num = w.trim_end_matches('s');
                if w.ends_with('s') && num.contains('.') && num.parse::<f64>().is_ok() {
                    "<T>s".to_owned()
                } else if w.trim_start_matches('(').parse::<f64>().is_ok() {
                    format!("{}<N>", &w[..w.len() - w.trim_start_matches('(').len()])
                } else {
                    w.to_owned()
                }
            })
            .collect();
        // sizes are right-aligned in a column: squeeze runs of spaces
        let joined = words.join(" ");
        let mut squeezed = String::new();
        for part in joined.split(' ').filter(|p| !p.is_empty()) {
            if !squeezed.is_empty() {
                squeezed.push(' ');
            }
            squeezed.push_str(part);
        }
        out.push_str(&squeezed);
        out.push('\n');
    }
    out
}

/// Replaces every run of at least `min` characters matching `pred` with `with`.
fn replace_runs(s: &str, pred: impl Fn(char) -> bool, min: usize, with: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() >= min && run.chars().any(|c| c.is_ascii_digit()) {
            out.push_str(with);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in s.chars() {
        if pred(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

pub(crate) fn snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/integration/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("IMGBUILD_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}; run with IMGBUILD_BLESS=1 to create it. Output:\n{actual}",
            path.display()
        )
    });
    if expected != actual {
        let mut diff = String::new();
        for (i, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
            if e != a {
                diff.push_str(&format!("line {}:\n  - {e}\n  + {a}\n", i + 1));
            }
        }
        let (ne, na) = (expected.lines().count(), actual.lines().count());
        if ne != na {
            diff.push_str(&format!("{ne} lines expected, {na} found\n"));
        }
        panic!(
            "output differs from {} (IMGBUILD_BLESS=1 to accept):\n{diff}\nactual:\n{actual}",
            path.display()
        );
    }
}

fn stderr_of(f: &Fixture, args: &[&str]) -> String {
    let out = f.run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "imgbuild {args:?} failed:\n{err}");
    err
}

#[test]
fn progress_lines_on_a_pipe_match_the_snapshots() {
    let f = Fixture::new("hello");
    let cold = stderr_of(&f, &["all"]);
    assert!(
        !cold.contains('\r') && !cold.contains('\x1b'),
        "terminal control codes on a pipe:\n{cold:?}"
    );
    snapshot("build_cold", &normalise(&cold, f.path()));
    let noop = stderr_of(&f, &["all"]);
    snapshot("build_noop", &normalise(&noop, f.path()));
    snapshot(
        "inspect",
        &normalise(&run_ok(f.cmd().args(["inspect", "hello"])), f.path()),
    );

    // -q: nothing but errors
    assert_eq!(stderr_of(&f, &["-q", "all"]), "");
    // -v on a build that builds something: detail lines on top of the normal ones
    std::fs::write(f.path().join("layers/site/index.html"), "v2\n").unwrap();
    let verbose = stderr_of(&f, &["-v", "all"]);
    assert!(
        verbose
            .lines()
            .any(|l| l.contains(": wrote ") && l.contains(" entries, ")),
        "{verbose}"
    );
    assert!(verbose.lines().count() > noop.lines().count(), "{verbose}");
}

#[test]
fn a_terminal_gets_a_status_line() {
    require("script");
    let f = Fixture::new("hello");
    let cmd = format!(
        "{} -C {} --store {} all",
        env!("CARGO_BIN_EXE_imgbuild"),
        f.path().display(),
        f.store.display()
    );
    // `script` runs the command on a pseudo-terminal and copies what it printed
    let out = run_ok(Command::new("script").args(["-qec", &cmd, "/dev/null"]));
    assert!(
        out.contains("\r\x1b[2K"),
        "no status line redraws on a terminal: {out:?}"
    );
    assert!(out.contains("checking inputs"), "{out:?}");
    assert!(out.contains("built 2 image(s)"), "{out:?}");
}

#[test]
fn json_output_has_the_documented_shape() {
    let f = Fixture::new("hello");
    let v = f.build_json(&["all"]);
    let is_digest = |d: &Value| {
        d.as_str().is_some_and(|s| {
            s.len() == 71
                && s.starts_with("sha256:")
                && s[7..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    };
    let images = v["images"].as_array().expect("images");
    assert_eq!(images.len(), 2);
    for img in images {
        let name = img["name"].as_str().unwrap();
        assert!(is_digest(&img["manifest_digest"]), "{img}");
        assert!(is_digest(&img["config_digest"]), "{img}");
        assert_eq!(img["reference"], format!("imgbuild/{name}:latest"));
        let tarball = Path::new(img["tarball"].as_str().unwrap());
        assert_eq!(tarball, f.path().join("out").join(format!("{name}.tar")));
        assert!(tarball.is_file());
        // the digests are those of the blobs in out/oci, and the manifest names the config
        let blob = |d: &Value| {
            std::fs::read(
                f.path()
                    .join("out/oci/blobs/sha256")
                    .join(d.as_str().unwrap().trim_start_matches("sha256:")),
            )
            .unwrap()
        };
        let manifest: Value = serde_json::from_slice(&blob(&img["manifest_digest"])).unwrap();
        assert_eq!(manifest["config"]["digest"], img["config_digest"]);
        let layers = img["layers"].as_array().unwrap();
        assert_eq!(layers.len(), manifest["layers"].as_array().unwrap().len());
        let config: Value = serde_json::from_slice(&blob(&img["config_digest"])).unwrap();
        for (i, l) in layers.iter().enumerate() {
            assert!(is_digest(&l["digest"]) && is_digest(&l["diff_id"]), "{l}");
            assert_eq!(l["digest"], manifest["layers"][i]["digest"]);
            assert_eq!(l["size"], manifest["layers"][i]["size"]);
            assert_eq!(l["diff_id"], config["rootfs"]["diff_ids"][i]);
            assert!(l["size"].as_u64().unwrap() > 0);
            assert!(l["cached"].is_boolean());
        }
    }
}

#[test]
fn the_store_comes_from_the_environment_and_an_empty_variable_means_the_default() {
    let f = Fixture::new("hello");
    let dir = tempfile::tempdir().unwrap();
    let run = |store_env: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .arg("-C")
            .arg(f.path())
            .args(["-q", "build", "base"])
            .env("IMGBUILD_STORE", store_env)
            .env("XDG_CACHE_HOME", dir.path().join("xdg"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "IMGBUILD_STORE={store_env:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("");
    assert!(dir.path().join("xdg/imgbuild/blobs/sha256").is_dir());
    let explicit = dir.path().join("explicit");
    run(explicit.to_str().unwrap());
    assert!(explicit.join("blobs/sha256").is_dir());
}
