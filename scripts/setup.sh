#!/usr/bin/env bash
# Installs what building and testing imgbuild needs on a fresh Debian bookworm
# machine (root, Docker engine running). Idempotent: safe to run again.
#   scripts/setup.sh         everything (scripts/test.sh runs this)
#   scripts/setup.sh build   only what building the stack needs (scripts/build.sh
#                            runs this): bubblewrap, the sandbox of build steps, and
#                            qemu's user-mode emulation for the arm64 build steps
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
mode=${1:-all}
case "$mode" in
  all) packages=(skopeo umoci podman runc docker-registry uidmap gcc libc6-dev curl ca-certificates bubblewrap qemu-user-static binfmt-support) ;;
  build) packages=(ca-certificates bubblewrap qemu-user-static binfmt-support) ;;
  *) echo "setup: unknown mode '$mode' (all or build)" >&2; exit 2 ;;
esac

need_apt=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need_apt+=("$pkg")
done
# git (git requirements are fetched with it) and python3 (the sdist/git tests serve
# an index and a dumb-HTTP repository with `python3 -m http.server`), from anywhere
for tool in git python3; do
  command -v "$tool" >/dev/null 2>&1 || need_apt+=("$tool")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

# podman as a second engine: runc (crun fails on these machines), and no default
# ulimits (the sandbox refuses raising them).
conf=/etc/containers/containers.conf
if [ "$mode" = all ] && ! grep -q '^default_ulimits = \[\]' "$conf" 2>/dev/null; then
  mkdir -p /etc/containers
  printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' > "$conf"
fi

# arm64 under emulation (tests run arm64 images and foreign-architecture
# interpreters): binfmt_misc mounted and qemu-aarch64 enabled. imgbuild itself never
# needs this to build; only running a foreign image or build step does.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "setup: could not enable qemu-aarch64 in binfmt_misc" >&2; exit 1; }
if [ "$mode" = build ]; then
  echo "setup (build): ok"
  exit 0
fi

# Independent checkers of the supply-chain tests: the SPDX validator, the CycloneDX
# library (JSON schema validation), and cosign's formats re-implemented with
# `cryptography` and PyNaCl. Pinned, installed only when missing.
pip_want=("spdx-tools==0.8.5" "cyclonedx-python-lib[json-validation]==11.12.0" "cryptography==48.0.0" "pynacl==1.5.0")
pip_need=()
for req in "${pip_want[@]}"; do
  name=${req%%[=[]*}
  version=${req##*==}
  [ "$(python3 -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')" = "$version" ] || pip_need+=("$req")
done
if [ ${#pip_need[@]} -gt 0 ]; then
  echo "setup: pip installing ${pip_need[*]}"
  python3 -m pip install -q "${pip_need[@]}"
fi
command -v pyspdxtools >/dev/null 2>&1 || { echo "setup: pyspdxtools is not on PATH after installing spdx-tools" >&2; exit 1; }

# The Debian docker-registry package starts a service on :5000 on some systems;
# the tests start their own registries on free loopback ports and need nothing else.

# `just` is not installed here: the tests and CI never use it (it takes minutes to
# compile). The justfile's shortcuts are for developers: `cargo install --locked just`.

docker info >/dev/null 2>&1 || { echo "setup: the Docker engine is not running (docker info failed)" >&2; exit 1; }
command -v docker-compose >/dev/null 2>&1 || { echo "setup: docker-compose is missing (apt-get install docker-compose)" >&2; exit 1; }
echo "setup: ok"
