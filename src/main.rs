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

fn push_options(names: Option<Vec<String>>, a: &cli::PushArgs) -> ops::push::PushOptions {
    ops::push::PushOptions {
        names,
        extra_tags: a.tags.clone(),
        registry_prefix: a.registry.clone(),
        insecure: a.insecure.clone(),
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
    let project = Project::open(
        &g.dir,
        g.store.clone(),
        g.out.clone(),
        g.jobs,
        Progress::new(verbosity),
    )?;
    match &cli.command {
        Command::All { locked, .. } | Command::Build { locked, .. } => {
            let names = match &cli.command {
                Command::Build { names, .. } => Some(names.clone()),
                _ => None,
            };
            let records = ops::build::build(
                &project,
                &ops::build::BuildOptions {
                    names,
                    locked: *locked,
                },
            )?;
            // One JSON document: the build, plus what --load and --push did.
            let (mut loaded, mut pushed) = (None, None);
            if let Command::All {
                push,
                load,
                push_args,
                engine,
                ..
            } = &cli.command
            {
                if *load {
                    loaded = Some(ops::load::load(&project, None, *engine)?);
                }
                if *push {
                    pushed = Some(ops::push::push(&project, &push_options(None, push_args))?);
                }
            }
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
                let mut doc = json!({ "images": images });
                if let Some(outcomes) = loaded {
                    doc["load"] = json!(outcomes);
                }
                if let Some(report) = pushed {
                    doc["push"] = serde_json::to_value(report)?;
                }
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
            Ok(())
        }
        Command::Push { names, push_args } => {
            let names = (!names.is_empty()).then(|| names.clone());
            let report = ops::push::push(&project, &push_options(names, push_args))?;
            if g.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "push": report }))?
                );
            }
            Ok(())
        }
        Command::Login {
            registry,
            username,
            password_stdin,
            insecure,
        } => {
            let password = if *password_stdin {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                s.trim_end_matches(['\n', '\r']).to_owned()
            } else if let Ok(p) = std::env::var("IMGBUILD_REGISTRY_PASSWORD") {
                p
            } else {
                rpassword::prompt_password(format!("Password for {username}@{registry}: "))?
            };
            let insecure = if *insecure {
                vec![registry.clone()]
            } else {
                vec![]
            };
            project.progress.line(ops::push::login(
                &project, registry, username, &password, &insecure,
            )?);
            Ok(())
        }
        Command::Load { names, engine } => {
            let names = (!names.is_empty()).then(|| names.clone());
            let loaded = ops::load::load(&project, names.as_deref(), *engine)?;
            if g.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "load": loaded }))?
                );
            }
            Ok(())
        }
        Command::Pin {
            names,
            env_file,
            registry,
            local,
            engine,
        } => {
            let env_file = if env_file.is_absolute() {
                env_file.clone()
            } else {
                project.root.join(env_file)
            };
            let pins = ops::pin::pin(
                &project,
                &ops::pin::PinOptions {
                    names: (!names.is_empty()).then(|| names.clone()),
                    env_file: env_file.clone(),
                    registry_prefix: registry.clone(),
                    local: *local,
                    engine: *engine,
                },
            )?;
            if g.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "env_file": env_file, "pins": pins }))?
                );
            }
            Ok(())
        }
        Command::Setup {
            template,
            env_file,
            force,
            non_interactive,
            set,
        } => {
            let abs = |p: &std::path::Path| {
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    project.root.join(p)
                }
            };
            let msg = ops::setup::setup(&ops::setup::SetupOptions {
                template: &abs(template),
                env_file: &abs(env_file),
                force: *force,
                interactive: !*non_interactive,
                set: set.clone(),
            })?;
            project.progress.line(msg);
            Ok(())
        }
        Command::Lock => ops::lock::lock(&project),
        Command::Inspect { name } => ops::inspect::inspect(&project, name, g.json),
        Command::Gc { keep_days, dry_run } => ops::gc::gc(&project, *keep_days, *dry_run, g.json),
    }
}
