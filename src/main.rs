//! imgbuild: recipes in, reproducible OCI images out.
//!
//! `main` parses the command line, opens the project, runs one `ops` function and
//! turns an error into a one-line reason (with its causes) and exit code 1.

mod cache;
mod cli;
mod lockfile;
mod lower;
mod oci;
mod ops;
mod progress;
mod project;
mod recipe;
mod settings;
mod sink;
mod source;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use serde_json::json;

use cli::{Cli, Command};
use progress::{Progress, Verbosity};
use project::Project;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!(": {cause}"));
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    let verbosity = if g.quiet {
        Verbosity::Quiet
    } else if g.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    let project = Project::open(&g.dir, g.store.clone(), g.out.clone(), g.jobs, Progress::new(verbosity))?;
    match &cli.command {
        Command::All { locked } | Command::Build { locked, .. } => {
            let names = match &cli.command {
                Command::Build { names, .. } => Some(names.clone()),
                _ => None,
            };
            let records = ops::build::build(&project, &ops::build::BuildOptions { names, locked: *locked })?;
            if g.json {
                let images: Vec<_> = records
                    .iter()
                    .map(|r| {
                        json!({
                            "name": r.name,
                            "reference": r.reference,
                            "manifest_digest": r.manifest_digest,
                            "config_digest": r.config_digest,
                            "tarball": r.tarball,
                            "layers": r.layers.iter().map(|l| json!({
                                "digest": l.digest, "diff_id": l.diff_id, "size": l.size, "cached": l.cached,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&json!({ "images": images }))?);
            }
            Ok(())
        }
        Command::Lock => ops::lock::lock(&project),
        Command::Inspect { name } => ops::inspect::inspect(&project, name, g.json),
        Command::Gc { keep_days, dry_run } => ops::gc::gc(&project, *keep_days, *dry_run),
    }
}
