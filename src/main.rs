//! imgbuild: recipes in, reproducible OCI images out.
//!
//! `main` parses the command line, opens the project, runs one `ops` function and
//! turns an error into a one-line reason (with its causes) and exit code 1.

mod builder;
mod cache;
mod cli;
mod engine;
mod lockfile;
mod lower;
mod naming;
mod oci;
mod ops;
mod plan;
mod platform;
mod progress;
mod project;
mod recipe;
mod remote_cache;
mod report;
mod settings;
mod sink;
mod source;
mod supply;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

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
        sign: a.sign.clone(),
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
    let mut project = Project::open(
        &g.dir,
        g.store.clone(),
        g.out.clone(),
        g.jobs,
        Progress::new(verbosity),
    )?;
    match &cli.command {
        Command::All { build } | Command::Build { build, .. } => {
            let names = match &cli.command {
                Command::Build { names, .. } => Some(names.clone()),
                _ => None,
            };
            project.write_out = !build.cache.no_out;
            project.remote_cache = remote_cache::RemoteCache::open(
                &project,
                build.cache.repository.as_deref(),
                build.cache.mode,
                build.cache.verify,
            )?;
            let records = ops::build::build(
                &project,
                &ops::build::BuildOptions {
                    names: names.clone(),
                    locked: build.locked,
                    expect_cached: build.expect_cached,
                    check_reproducible: build.check_reproducible,
                    sbom_format: build.sbom_format,
                    platforms: build.platforms.clone(),
                },
            )?;
            // One JSON document: the build, plus what --load and --push did.
            let mut report = report::BuildReport::new(&records);
            if build.load {
                report.load = Some(ops::load::load(
                    &project,
                    names.as_deref(),
                    build.engine,
                    None,
                )?);
            }
            if build.push {
                report.push = Some(ops::push::push(
                    &project,
                    &push_options(names, &build.push_args),
                )?);
            }
            if let Some(rc) = &project.remote_cache {
                let pushed: Vec<String> = report
                    .push
                    .iter()
                    .flat_map(|p| p.images.iter().map(|i| i.reference.clone()))
                    .collect();
                rc.write_entries(&project.store, &pushed);
                let r = rc.report();
                project.progress.line(format!(
                    "registry cache {} ({}): {} hit(s) of {} lookup(s), {} downloaded, {} entries written",
                    r.repository,
                    serde_json::to_value(r.mode)?.as_str().unwrap_or(""),
                    r.hits,
                    r.lookups,
                    r.downloads,
                    r.written
                ));
                report.cache = Some(r);
            }
            report.set_requests(&project);
            if project.remote_cache.is_some() {
                for (registry, c) in &report.requests {
                    project.progress.line(format!(
                        "registry {registry}: {} manifest GET(s), {} HEAD(s), {} blob download(s) ({}), {} upload(s) ({} up), {} mount(s)",
                        c.manifest_gets,
                        c.heads,
                        c.blob_gets,
                        progress::human(c.bytes_down),
                        c.blob_uploads,
                        progress::human(c.bytes_up),
                        c.blob_mounts
                    ));
                }
            }
            if g.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(())
        }
        Command::Plan {
            names,
            locked,
            cache,
            platforms,
        } => {
            let names = (!names.is_empty()).then(|| names.clone());
            project.remote_cache = remote_cache::RemoteCache::open(
                &project,
                cache.as_deref(),
                Some(remote_cache::CacheMode::Read),
                0,
            )?;
            let platforms =
                platform::Selection::new(&settings::Settings::load(&project.root)?, platforms)?;
            let (plan, _) = builder::plan(&project, names.as_deref(), *locked, false, &platforms)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", plan.render());
            }
            Ok(())
        }
        Command::Push { names, push_args } => {
            let names = (!names.is_empty()).then(|| names.clone());
            // `[cache] repository` on the same registry: blobs of cache hits never
            // downloaded are mounted from it
            project.remote_cache = remote_cache::RemoteCache::open(
                &project,
                None,
                Some(remote_cache::CacheMode::Read),
                0,
            )?;
            let report = ops::push::push(&project, &push_options(names, push_args))?;
            if g.json {
                let mut doc = report::BuildReport {
                    push: Some(report),
                    ..Default::default()
                };
                doc.set_requests(&project);
                println!("{}", serde_json::to_string_pretty(&doc)?);
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
        Command::Load {
            names,
            engine,
            platform,
        } => {
            let names = (!names.is_empty()).then(|| names.clone());
            let platform = platform
                .as_deref()
                .map(platform::Platform::parse)
                .transpose()
                .map_err(|e| e.context("--platform"))?;
            let loaded = ops::load::load(&project, names.as_deref(), *engine, platform)?;
            if g.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report::BuildReport {
                        load: Some(loaded),
                        ..Default::default()
                    })?
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
                    serde_json::to_string_pretty(&ops::pin::PinReport { env_file, pins })?
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
        Command::Sign {
            image,
            key,
            registry,
            insecure,
        } => {
            let signed = ops::sign::sign(&project, image, key, registry.as_deref(), insecure)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&signed)?);
            }
            Ok(())
        }
        Command::VerifySignature {
            image,
            key,
            registry,
            insecure,
        } => ops::sign::verify_signature(&project, image, key, registry.as_deref(), insecure),
        Command::Verify {
            image,
            recipe,
            fresh,
            insecure,
        } => {
            let report = ops::verify::verify(
                &project,
                &ops::verify::VerifyOptions {
                    image: image.clone(),
                    recipe: recipe.clone(),
                    fresh: *fresh,
                    insecure: insecure.clone(),
                },
            )?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            if report.matches {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "`{}` does not reproduce from this checkout",
                    report.image
                ))
            }
        }
        Command::Lock => ops::lock::lock(&project),
        Command::Inspect { name } => ops::inspect::inspect(&project, name, g.json),
        Command::Gc { keep_days, dry_run } => ops::gc::gc(&project, *keep_days, *dry_run, g.json),
    }
}
