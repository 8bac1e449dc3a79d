//! The linkage check through the real binary: a C++ program compiled by the host's
//! g++ (dynamically linked, it needs `libstdc++.so.6`) in an image whose Debian layer
//! has `libc6` and `libgcc-s1` but not `libstdc++6`. The build fails naming the soname,
//! the file and the package; with the package it builds and runs in docker; with
//! `allow_missing` it builds and `inspect` lists what was allowed.

use std::process::Command;

use crate::support::{DockerImage, Fixture, require, run_ok};

const RECIPE: &str = "recipes/app.toml";
const PACKAGES: &str = r#"debian = { packages = ["libc6", "libgcc-s1"] }"#;

/// The fixture with the program compiled into `layers/bin/hello++`.
fn fixture() -> Fixture {
    require("g++");
    let f = Fixture::new("linkage");
    let bin = f.path().join("layers/bin");
    std::fs::create_dir_all(&bin).unwrap();
    run_ok(
        Command::new("g++")
            .args(["-O2", "-o"])
            .arg(bin.join("hello++"))
            .arg(f.path().join("src/hello.cc")),
    );
    // independent check that the program really needs the library
    let needed = run_ok(Command::new("readelf").arg("-d").arg(bin.join("hello++")));
    assert!(needed.contains("[libstdc++.so.6]"), "{needed}");
    f
}

fn edit_recipe(f: &Fixture, from: &str, to: &str) {
    let p = f.path().join(RECIPE);
    let s = std::fs::read_to_string(&p).unwrap();
    assert!(s.contains(from), "{s}");
    std::fs::write(&p, s.replacen(from, to, 1)).unwrap();
}

#[test]
fn a_missing_library_fails_the_build_and_the_package_fixes_it() {
    let f = fixture();
    let out = f.run(&["build", "app"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "built without libstdc++6:\n{stderr}");
    for want in [
        "app.toml",
        "layer 2",
        "linkage check",
        "`/usr/local/bin/hello++`",
        "`libstdc++.so.6`",
        "`libstdc++6`",
    ] {
        assert!(stderr.contains(want), "no {want:?} in:\n{stderr}");
    }
    // only the missing library is reported: libc and libgcc_s are found
    assert!(!stderr.contains("`libc.so.6`"), "{stderr}");
    assert!(!stderr.contains("`libgcc_s.so.1`"), "{stderr}");
    assert!(!f.path().join("out/app.tar").exists());

    edit_recipe(
        &f,
        PACKAGES,
        r#"debian = { packages = ["libc6", "libgcc-s1", "libstdc++6"] }"#,
    );
    run_ok(f.cmd().args(["build", "app"]));
    let inspect = run_ok(f.cmd().args(["inspect", "app"]));
    assert!(
        inspect.contains("linkage: 1 ELF file(s) checked, all libraries found\n"),
        "{inspect}"
    );
    let image = DockerImage::load(&f.path().join("out/app.tar"), "linkage");
    let ran = run_ok(Command::new("docker").args(["run", "--rm", &image.0]));
    assert_eq!(ran, "hello from c++, linked\n");
}

#[test]
fn allow_missing_accepts_a_library_the_runtime_provides() {
    let f = fixture();
    edit_recipe(
        &f,
        "files = [",
        "allow_missing = [\"libstdc++.so.6\"]\nfiles = [",
    );
    run_ok(f.cmd().args(["build", "app"]));
    let inspect = run_ok(f.cmd().args(["inspect", "app"]));
    assert!(
        inspect.contains(
            "linkage: `libstdc++.so.6` not in the image, allowed (allow_missing): needed by /usr/local/bin/hello++"
        ),
        "{inspect}"
    );
    // the allow list is an input: removing it builds (and checks) the layer again
    edit_recipe(&f, "allow_missing = [\"libstdc++.so.6\"]\n", "");
    let out = f.run(&["build", "app"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`libstdc++6`"));
}

#[test]
fn allow_missing_takes_sonames() {
    let f = fixture();
    edit_recipe(
        &f,
        "files = [",
        "allow_missing = [\"lib/libx.so\"]\nfiles = [",
    );
    let out = f.run(&["plan"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("app.toml:12") && stderr.contains("not \"lib/libx.so\""),
        "{stderr}"
    );
}
