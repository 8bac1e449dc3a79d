//! Command-line types only (clap). Meaning lives in `ops`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "imgbuild",
    version,
    about = "Daemonless, declarative, reproducible OCI image builder"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct Global {
    /// Project root (holds recipes/, layers/).
    #[arg(
        short = 'C',
        long = "directory",
        global = true,
        default_value = ".",
        value_name = "DIR"
    )]
    pub dir: PathBuf,
    /// Content-addressed store [default: $IMGBUILD_STORE, else $XDG_CACHE_HOME/imgbuild
    /// or ~/.cache/imgbuild].
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Output directory [default: out/ in the project].
    #[arg(long, global = true, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Parallel jobs (images, compression) [default: number of CPUs].
    #[arg(short = 'j', long, global = true, value_name = "N")]
    pub jobs: Option<usize>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// More detail.
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build every recipe in recipes/.
    All {
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Build the named recipes and what they are built from.
    Build {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        build: BuildArgs,
    },
    /// Show what a build would do, layer by layer, and why; builds nothing.
    Plan {
        /// Recipes to plan (default: every recipe).
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Fail if a recipe no longer matches imgbuild.lock (instead of resolving).
        #[arg(long)]
        locked: bool,
        /// Look layers up in this registry cache too (REGISTRY/REPO) [default: `[cache]
        /// repository` of imgbuild.toml].
        #[arg(long = "cache", value_name = "REGISTRY/REPO")]
        cache: Option<String>,
        /// Plan only for these of the project's platforms (repeatable or comma list).
        #[arg(long = "platform", value_name = "PLATFORM")]
        platforms: Vec<String>,
    },
    /// Resolve every recipe afresh and write imgbuild.lock.
    Lock,
    /// Push built images to their registries (only missing blobs are sent).
    Push {
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        push_args: PushArgs,
    },
    /// Check and store registry credentials, as `docker login` does.
    Login {
        registry: String,
        #[arg(short, long)]
        username: String,
        /// Read the password from stdin (otherwise: prompt, or IMGBUILD_REGISTRY_PASSWORD).
        #[arg(long)]
        password_stdin: bool,
        /// Reach this registry over plain HTTP.
        #[arg(long)]
        insecure: bool,
    },
    /// Load built images into the local Docker or Podman engine.
    Load {
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        #[arg(long, value_enum, default_value = "auto")]
        engine: crate::engine::Engine,
        /// Load this platform's image of an image built for several (default: the
        /// build machine's, what `docker load` of out/NAME.tar gets).
        #[arg(long = "platform", value_name = "PLATFORM")]
        platform: Option<String>,
    },
    /// Pin images by digest in the stack's env file (IMGBUILD_<NAME>_IMAGE=...).
    Pin {
        /// Recipes to pin [default: every recipe].
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// The env file to update (compose reads .env beside the compose file).
        #[arg(long, default_value = "deploy/.env")]
        env_file: PathBuf,
        /// Pin PREFIX/NAME@sha256:..., where `push --registry PREFIX` sends the image.
        #[arg(long = "registry", value_name = "PREFIX", conflicts_with = "local")]
        registry: Option<String>,
        /// Pin the image ID that the local engine holds (after `imgbuild load`).
        #[arg(long)]
        local: bool,
        /// The engine --local asks.
        #[arg(long, value_enum, default_value = "auto", requires = "local")]
        engine: crate::engine::Engine,
    },
    /// Create the stack's .env with strong random secrets (mode 0600).
    Setup {
        /// Template listing the variables; `change-me...` values are generated secrets.
        #[arg(long, default_value = "deploy/.env.example")]
        template: PathBuf,
        /// The file to write (compose reads .env beside the compose file).
        #[arg(long, default_value = "deploy/.env")]
        env_file: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
        /// Never prompt, even on a terminal.
        #[arg(long)]
        non_interactive: bool,
        /// Set a variable instead of asking or generating it.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_kv)]
        set: Vec<(String, String)>,
    },
    /// Sign a pushed image in cosign's format (the `sha256-<digest>.sig` tag).
    Sign {
        /// A recipe name (its last build, where `push` sends it) or REPO@sha256:...
        #[arg(value_name = "NAME|REF")]
        image: String,
        /// cosign private key (`cosign generate-key-pair`; password in $COSIGN_PASSWORD),
        /// or an unencrypted PKCS#8 EC P-256 key.
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// Where NAME was pushed with `push --registry PREFIX`.
        #[arg(long = "registry", value_name = "PREFIX")]
        registry: Option<String>,
        #[arg(long = "insecure-registry", value_name = "HOST")]
        insecure: Vec<String>,
    },
    /// Check an image's cosign signature against a public key.
    VerifySignature {
        /// A recipe name (its last build, where `push` sends it) or REPO@sha256:... / REPO:TAG
        #[arg(value_name = "NAME|REF")]
        image: String,
        /// The public key (`cosign.pub`).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        #[arg(long = "registry", value_name = "PREFIX")]
        registry: Option<String>,
        #[arg(long = "insecure-registry", value_name = "HOST")]
        insecure: Vec<String>,
    },
    /// Rebuild an image from this checkout's recipes and lock and compare it with a
    /// built or pushed one: manifest, config, each layer, each differing file.
    Verify {
        /// A recipe name (its last build) or REPO@sha256:... (pulled); the image is
        /// rebuilt from the recipe of the same name (`--recipe` to name another).
        #[arg(value_name = "NAME|REF")]
        image: String,
        /// The recipe to rebuild [default: NAME, or the last path component of REF].
        #[arg(long)]
        recipe: Option<String>,
        /// Rebuild everything in a new, empty store (no cache entry is trusted).
        #[arg(long)]
        fresh: bool,
        #[arg(long = "insecure-registry", value_name = "HOST")]
        insecure: Vec<String>,
    },
    /// Show the last build of an image: layers, sizes, digests, cache hits.
    Inspect { name: String },
    /// Remove store content that no recent build references.
    Gc {
        /// Keep what builds of the last N days reference.
        #[arg(long, default_value_t = 7, value_name = "N")]
        keep_days: u64,
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Options of `all` and `build`.
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Fail if a recipe no longer matches imgbuild.lock (instead of resolving).
    #[arg(long)]
    pub locked: bool,
    /// Fail, naming each layer and why, if any layer would be built (for CI).
    #[arg(long)]
    pub expect_cached: bool,
    /// Run each build step that runs twice, in separate sandboxes, and fail naming
    /// the output files whose bytes differ.
    #[arg(long)]
    pub check_reproducible: bool,
    /// Build only these of the project's platforms (`[build] platforms` in
    /// imgbuild.toml); repeatable or a comma list, e.g. linux/arm64.
    #[arg(long = "platform", value_name = "PLATFORM")]
    pub platforms: Vec<String>,
    /// Then push the images built (see `imgbuild push`).
    #[arg(long)]
    pub push: bool,
    /// Then load the images built into the local engine (see `imgbuild load`).
    #[arg(long)]
    pub load: bool,
    #[command(flatten)]
    pub push_args: PushArgs,
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: crate::engine::Engine,
    /// The SBOM written beside each image (out/NAME.spdx.json or out/NAME.cdx.json)
    /// and attached to it.
    #[arg(long, value_enum, default_value = "spdx")]
    pub sbom_format: crate::supply::SbomFormat,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// The registry layer cache (options of `all`, `build` and `plan`).
#[derive(Args, Debug, Clone, Default)]
pub struct CacheArgs {
    /// Share layers through this registry repository (REGISTRY/REPO) [default: `[cache]
    /// repository` of imgbuild.toml].
    #[arg(long = "cache", value_name = "REGISTRY/REPO")]
    pub repository: Option<String>,
    /// Look layers up, write them, or both [default: `[cache] mode`, else readwrite].
    #[arg(long = "cache-mode", value_enum, value_name = "MODE")]
    pub mode: Option<crate::remote_cache::CacheMode>,
    /// Build again this percentage of registry cache hits and fail on any difference.
    #[arg(long = "cache-verify", value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100), default_value_t = 0)]
    pub verify: u8,
    /// Write nothing to out/ (no tarballs, no out/oci): with --push, cache hits are
    /// never downloaded.
    #[arg(long = "no-out", conflicts_with = "load")]
    pub no_out: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct PushArgs {
    /// Additional tag for every pushed image (repeatable), e.g. "$GIT_SHA".
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Push every image to PREFIX/NAME instead of its recipe's repository.
    #[arg(long = "registry", value_name = "PREFIX")]
    pub registry: Option<String>,
    /// Reach this registry (host[:port]) over plain HTTP (loopback always may).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure: Vec<String>,
    /// Sign each pushed image with this cosign key (password in $COSIGN_PASSWORD).
    #[arg(long = "sign", value_name = "KEY")]
    pub sign: Option<PathBuf>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}
