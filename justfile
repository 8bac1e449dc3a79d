# Developer shortcuts. The two commands that matter on a fresh machine are
# `scripts/build.sh` (build the stack) and `scripts/test.sh` (install + test).

# Build every image in recipes/ into out/
build *ARGS:
    scripts/build.sh {{ARGS}}

# Install test dependencies and run every test (what CI runs)
test:
    scripts/test.sh

# The end-to-end stack test: build, load, set up secrets, compose up, check, tear down
e2e:
    scripts/e2e.sh

# Benchmarks side by side with peer tools; results go to BENCHMARKS.md
bench:
    bench/run.sh

# Re-resolve Debian packages and rewrite imgbuild.lock
lock:
    cargo run --release --bin imgbuild -- lock

# Lints
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
