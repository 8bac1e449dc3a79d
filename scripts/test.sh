#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every test of the
# workspace (unit, integration against real engines/registries/archives, and the
# end-to-end stack test). Used by CI (.ci/run) exactly as written in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked --release --bin imgbuild
cargo test --locked --workspace --release -- --test-threads 2
scripts/e2e.sh
