#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every test of the
# workspace (unit, integration against real engines/registries/archives, and the
# end-to-end stack test). Used by CI (.ci/run) exactly as written in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked --release --bin imgbuild
cargo test --locked --workspace --release -- --test-threads 2
# the end-to-end test builds the same stack the integration tests just built: it
# reuses their store (target/tmp/stack/store), so that nothing (the arm64 compile of
# psycopg-c under emulation above all) is built twice in one run
stack_store="$PWD/target/tmp/stack/store"
if [ -d "$stack_store" ]; then export IMGBUILD_STORE="$stack_store"; fi
scripts/e2e.sh
