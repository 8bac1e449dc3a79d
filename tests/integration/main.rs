//! The one integration-test binary: runs the real `imgbuild` on fixture projects
//! and checks the results with independent tools (skopeo, umoci, docker, podman).
//! A missing tool is a failure, never a skip: `.ci/run` installs them.

mod support;

mod build_step;
mod cli_output;
mod copy_from_image;
mod core_build;
mod debian_releases;
mod defects;
mod engines;
mod gc;
mod linkage;
mod load_pin;
mod plan;
mod platforms;
mod push;
mod python_targets;
mod registry_cache;
mod sdist_git;
mod setup_cmd;
mod sources;
mod stack_images;
mod supply_chain;
mod temps;
