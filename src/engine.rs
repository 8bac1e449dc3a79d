//! The local container engine (Docker or Podman), as `load` and `pin` talk to it:
//! which one answers, what it calls an image, and whether an image it has is a
//! given build.

use std::process::{Command, Stdio};

use anyhow::{Result, bail};

use crate::cache::ImageRecord;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Auto,
    Docker,
    Podman,
}

fn works(bin: &str) -> bool {
    Command::new(bin)
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn pick(engine: Engine) -> Result<&'static str> {
    Ok(match engine {
        Engine::Docker => "docker",
        Engine::Podman => "podman",
        Engine::Auto if works("docker") => "docker",
        Engine::Auto if works("podman") => "podman",
        Engine::Auto => bail!(
            "no container engine answers (`docker info` and `podman info` failed); start one or pass --engine"
        ),
    })
}

/// The image ID the engine has for `reference`, if any (hex, without `sha256:`).
pub fn engine_image_id(bin: &str, reference: &str) -> Option<String> {
    let out = Command::new(bin)
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("sha256:")
            .to_owned()
    })
}

/// The name `bin` knows a loaded `repo:tag` by: podman keeps unqualified names
/// (no registry host in the first component) under `localhost/`.
pub fn engine_name(bin: &str, repo_tag: &str) -> String {
    let qualified = repo_tag
        .split_once('/')
        .is_some_and(|(first, _)| first.contains(['.', ':']) || first == "localhost");
    if bin == "podman" && !qualified {
        format!("localhost/{repo_tag}")
    } else {
        repo_tag.to_owned()
    }
}

/// Whether an engine's image ID is this build. Docker's classic store and Podman
/// use the config digest; Docker's containerd image store uses the manifest digest.
pub fn is_this_build(rec: &ImageRecord, engine_id: &str) -> bool {
    engine_id == rec.config_digest.hex() || engine_id == rec.manifest_digest.hex()
}
