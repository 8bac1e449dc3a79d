//! Builds the venv tree for a requirements file and prints what it did:
//! `cargo run -p imgbuild-python --example venv -- REQUIREMENTS STORE_DIR` (without `.pyc`)

use std::time::Instant;

use imgbuild_python::{VenvSpec, fetch_wheels, fingerprint, install, parse_requirements};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(req), Some(store)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: venv REQUIREMENTS STORE_DIR");
        std::process::exit(2);
    };
    // .pyc files need the image's interpreter (its layers): imgbuild does that part
    let mut spec = VenvSpec::bookworm(req, "/opt/venv");
    spec.bytecode = false;
    let store = imgbuild_store::Store::open(store)?;
    let reqs = parse_requirements(&spec.requirements)?;
    println!("fingerprint {}", fingerprint(&spec, &reqs));
    let http = reqwest::blocking::Client::builder()
        .user_agent("imgbuild")
        .build()?;
    let t = Instant::now();
    let wheels = fetch_wheels(&spec, &reqs, &store, &http, 4)?;
    println!("fetched {} wheels in {:.2?}", wheels.len(), t.elapsed());
    let t = Instant::now();
    let mut tree = imgbuild_layer::Tree::new();
    let report = install(&spec, &reqs, &wheels, &store, None, 4, &mut tree)?;
    println!(
        "installed {} packages, {} files ({} .pyc), {} tree entries in {:.2?}",
        report.packages.len(),
        report.files,
        report.pyc_files,
        tree.len(),
        t.elapsed()
    );
    println!("scripts: {}", report.scripts.join(" "));
    for w in &report.warnings {
        println!("warning: {w}");
    }
    Ok(())
}
