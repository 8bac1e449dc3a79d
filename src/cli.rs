//! Command-line types only (clap). Meaning lives in `ops`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "imgbuild", version, about = "Daemonless, declarative, reproducible OCI image builder")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct Global {
    /// Project root (holds recipes/, layers/).
    #[arg(short = 'C', long = "directory", global = true, default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,
    /// Content-addressed store [default: $XDG_CACHE_HOME/imgbuild or ~/.cache/imgbuild].
    #[arg(long, global = true, env = "IMGBUILD_STORE", value_name = "DIR")]
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
        /// Fail if a recipe no longer matches imgbuild.lock (instead of resolving).
        #[arg(long)]
        locked: bool,
    },
    /// Build the named recipes and what they are built from.
    Build {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Fail if a recipe no longer matches imgbuild.lock (instead of resolving).
        #[arg(long)]
        locked: bool,
    },
    /// Resolve every recipe afresh and write imgbuild.lock.
    Lock,
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
