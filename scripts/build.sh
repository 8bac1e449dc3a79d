#!/usr/bin/env bash
# Builds every image of recipes/ into out/ (and the store), from imgbuild.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release --bin imgbuild
exec target/release/imgbuild all "$@"
