#!/usr/bin/env bash
# Builds imgbuild, puts it on PATH as `imgbuild` (a copy in $IMGBUILD_BINDIR, default
# /usr/local/bin), then builds every image of recipes/ into out/ (and the store), from
# imgbuild.lock. Arguments go to `imgbuild all` (e.g. --load, --push).
set -euo pipefail
cd "$(dirname "$0")/.."
# the stack's build steps need bubblewrap, and its arm64 ones qemu's emulation
if [ "$(id -u)" = 0 ]; then
  scripts/setup.sh build
elif ! command -v bwrap >/dev/null 2>&1 || [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  echo "build.sh: the stack needs bubblewrap and qemu-aarch64 in binfmt_misc; run" \
       "scripts/setup.sh build as root (or build one platform: --platform linux/amd64)" >&2
fi
cargo build --locked --release --bin imgbuild
bindir="${IMGBUILD_BINDIR:-/usr/local/bin}"
if mkdir -p "$bindir" 2>/dev/null && [ -w "$bindir" ]; then
  # A copy (the checkout may move or be cleaned), renamed into place so that an
  # imgbuild running from it keeps its file.
  install -m 0755 target/release/imgbuild "$bindir/.imgbuild.$$.tmp"
  mv -f "$bindir/.imgbuild.$$.tmp" "$bindir/imgbuild"
else
  echo "build.sh: cannot write $bindir; imgbuild is $PWD/target/release/imgbuild" \
       "(set IMGBUILD_BINDIR to a writable directory on your PATH)" >&2
fi
exec target/release/imgbuild all "$@"
