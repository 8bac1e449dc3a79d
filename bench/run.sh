#!/usr/bin/env bash
# imgbuild benchmarks, side by side with the peer tools in ONE run (`just bench`).
#
# Measures (hyperfine medians, ratios against targets, see BENCHMARKS.md):
#   core    cold build / no-op rebuild / one-file change of a ~92 MB, ~9.8k-file
#           site-packages (pinned wheels, bench/wheels.txt) + a small app dir, against
#           `tar | pigz` (the shell floor), a stat walk (`find -printf`) and `podman build`.
#   memory  peak RSS of a cold build as one layer grows: 100 MB, 500 MB, 1 GB.
#   debian  the nginx image from warm .debs vs dpkg-deb | tar + umoci by hand, both with
#           no unpack cache (every .deb decompressed, as by hand) and with imgbuild's
#           unpack cache warm; a no-op rebuild against an unreachable mirror (no network,
#           no .deb opened: strace).
#   push    cold / warm / one-file-change push of the stack's app and worker images
#           (recipes/, built --locked into $W/stack) to a local docker-registry, against
#           skopeo copy and podman push of the same two images.
#   stack   one app file changed on the running compose stack: imgbuild all --load +
#           docker-compose up vs docker build + docker-compose up (bench/stack.sh).
#   cache   the registry layer cache: a fresh runner (empty store) pushing the whole
#           stack to a local docker-registry, nothing changed, with --cache against
#           without it (target: under 2 s); one app file changed on a fresh runner with
#           --cache against the warm local one-file rebuild + push (target: <= 1.5x).
#           Results: $W/results/cache.md (BENCHMARKS.md is not rewritten by it).
#   platforms  the redis image for linux/amd64 alone against linux/amd64 + linux/arm64
#           (`[build] platforms`), each from a cold store (downloads included); target:
#           both platforms at most 1.3x amd64 alone (no emulation on the build path).
#           The ratio is printed and written to $W/results/platforms.env.
#   steps   a build step's overhead: `imgbuild build` of a recipe whose one build step
#           (busybox writing a file, in a busybox builder image) runs every time (its
#           env changes), against the same build with the step cached (the no-op) and
#           the same command run directly on the host. Target: the step costs at most
#           0.3 s more than the command itself. Written to $W/results/steps.env.
#
# usage: bench/run.sh [SECTION...]      e.g. `bench/run.sh push` runs only the push part
#
# Everything downloaded or generated lives under $IMGBUILD_BENCH_DIR
# (default /var/tmp/imgbuild-bench), never in the repository. The results of the run
# are written to BENCHMARKS.md at the repository root (bench/report.py).
#
# Knobs: BENCH_RUNS (timed runs per command, default 8), BENCH_SECTIONS (comma list,
# default: every section, core,memory,debian,push,stack,platforms,cache,steps; the arguments take precedence), IMGBUILD_BIN
# (skip the cargo build and use that binary), BENCH_NO_REPORT=1 (do not rewrite
# BENCHMARKS.md). A run without some of core, memory, debian and push never rewrites
# BENCHMARKS.md (it would drop the others): its report is printed and written to
# $W/results/BENCHMARKS.md. A run of `stack` updates only the stack section of
# BENCHMARKS.md; a run without it keeps the section there.
set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
W=${IMGBUILD_BENCH_DIR:-/var/tmp/imgbuild-bench}
RUNS=${BENCH_RUNS:-8}
ALL_SECTIONS=core,memory,debian,push,stack,platforms,cache,steps
SECTIONS=${BENCH_SECTIONS:-$ALL_SECTIONS}
if (($#)); then SECTIONS=$(IFS=,; echo "$*"); fi
for s in ${SECTIONS//,/ }; do
  [[ ",$ALL_SECTIONS," == *",$s,"* ]] || { echo "bench/run.sh: unknown section \`$s\` (sections: $ALL_SECTIONS)" >&2; exit 2; }
done
# the sections bench/report.py writes BENCHMARKS.md from
PARTIAL=0
for s in core memory debian push; do [[ ",$SECTIONS," == *",$s,"* ]] || PARTIAL=1; done
RES=$W/results
T0=$(date +%s)

say() { printf '\n== %s (t=%ss)\n' "$*" "$(($(date +%s) - T0))" >&2; }
want() { [[ ",$SECTIONS," == *",$1,"* ]]; }
die() { echo "bench/run.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites
missing=()
for t in hyperfine pigz tar find python3 pip:python3-pip podman umoci skopeo dpkg-deb:dpkg strace \
         docker-registry /usr/bin/time:time; do
  cmd=${t%%:*} pkg=${t#*:}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
((${#missing[@]} == 0)) || die "missing tools; install them with: apt-get install -y ${missing[*]}"
case "$W" in "$REPO"|"$REPO"/*) die "IMGBUILD_BENCH_DIR must be outside the repository" ;; esac
# command lines are built as strings (hyperfine runs them through a shell)
[[ "$W$REPO" != *[[:space:]]* ]] || die "paths with spaces are not supported: $W, $REPO"
mkdir -p "$W"
rm -rf "$RES"; mkdir -p "$RES"

if [[ -n "${IMGBUILD_BIN:-}" ]]; then
  IB=$IMGBUILD_BIN
else
  say "cargo build --release --bin imgbuild"
  (cd "$REPO" && cargo build --release --bin imgbuild)
  # a private copy: a concurrent rebuild of target/ cannot change the binary mid-run
  mkdir -p "$W/bin"
  cp "$REPO/target/release/imgbuild" "$W/bin/imgbuild.tmp" && mv "$W/bin/imgbuild.tmp" "$W/bin/imgbuild"
  IB=$W/bin/imgbuild
fi
[[ -x "$IB" ]] || die "no imgbuild binary at $IB"

# podman in a private store under $W: its images never mix with anyone else's, and
# `podman rmi` + removing $W/podman at the end cleans up everything it made.
PODMAN="podman --root $W/podman/root --runroot $W/podman/run --storage-driver overlay"

# The one process we start (the registry, its PID in $W/registry/pid) is stopped by
# PID on any exit, after checking that the PID is still our registry.
G=$W/registry
stop_registry() {
  local pid
  pid=$(cat "$G/pid" 2>/dev/null) || return 0
  if [[ -n "$pid" ]] && grep -qF "$G/config.yml" "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  fi
  rm -f "$G/pid"
}
# podman's storage here is private: when nothing of it is mounted, removing the
# directory removes every image we made, much faster than `podman rmi -af` (minutes
# for the ~40 images a run leaves on a loaded machine).
remove_podman_storage() {
  if findmnt -rn -o TARGET | grep -qF "$W/podman/"; then
    $PODMAN rmi -af >/dev/null 2>&1 || true
  else
    rm -rf "$W/podman"
  fi
}
cleanup() {
  stop_registry
  remove_podman_storage
}
trap cleanup EXIT

# hyperfine with our defaults; every benchmark exports JSON into $RES.
# Also records name, preparation and command line of each entry in $RES/NAME.cmds (TSV).
hf() {
  local name=$1; shift
  local a i r n="" prep="" in=("$@") args=() warm=()
  : > "$RES/$name.cmds"
  for ((i = 0; i < ${#in[@]}; i++)); do
    a=${in[i]}
    case "$a" in
      --warmup) warm=(--warmup "${in[++i]}"); continue ;;
      -n) n=${in[i + 1]}; args+=("$a" "${in[++i]}"); continue ;;
      --prepare) prep=${in[i + 1]}; args+=("$a" "${in[++i]}"); continue ;;
      -*) ;;
      *) printf '%s\t%s\t%s\n' "$n" "$prep" "$a" >> "$RES/$name.cmds"; n="" prep="" ;;
    esac
    args+=("$a")
  done
  # Interleaved rounds (A B C, A B C, ...) rather than hyperfine's A A A, B B B: on a
  # shared machine the load drifts, and interleaving spreads the drift over every tool.
  # Warm-up runs (if any) happen in the first round only.
  for ((r = 1; r <= RUNS; r++)); do
    printf '   %s: round %s/%s\n' "$name" "$r" "$RUNS" >&2
    hyperfine --style none --runs 1 "${warm[@]}" --export-json "$RES/$name.r$r.json" "${args[@]}" \
      || die "benchmark $name failed (round $r)"
    warm=()
  done
  python3 "$REPO/bench/merge.py" "$RES/$name.json" "$RES/$name".r*.json
  rm -f "$RES/$name".r*.json
}

# shellcheck source=bench/stack.sh
source "$REPO/bench/stack.sh" # functions only; stack_bench runs the section

# ---------------------------------------------------------------- machine and versions
say "machine"
{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc=$(nproc)"
  echo "cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
  echo "mem=$(free -m | awk '/^Mem:/{print $2 " MiB"}')"
  echo "kernel=$(uname -r)"
  echo "os=$(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "fs=$(findmnt -n -o FSTYPE -T "$W" 2>/dev/null || echo '?')"
  echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "v_imgbuild=$("$IB" --version) ($(cd "$REPO" && git rev-parse --short HEAD)$(cd "$REPO" && git diff --quiet HEAD -- src crates 2>/dev/null || echo ', dirty tree'))"
  echo "v_tar=$(tar --version | head -1)"
  echo "v_pigz=$(pigz --version 2>&1 | head -1)"
  echo "v_podman=$(podman --version)"
  echo "v_buildah=$(buildah --version 2>/dev/null | cut -d' ' -f1-3 || echo -)"
  echo "v_umoci=$(umoci --version)"
  echo "v_skopeo=$(skopeo --version)"
  echo "v_registry=$(docker-registry --version 2>/dev/null | head -1)"
  echo "v_dpkg=$(dpkg-deb --version | head -1)"
  echo "v_hyperfine=$(hyperfine --version)"
  echo "runs=$RUNS"
  echo "w=$W"
  echo "ib=$IB"
  echo "repo=$REPO"
} > "$RES/machine.env"
cat "$RES/machine.env" >&2

# ---------------------------------------------------------------- the realistic tree
C=$W/core P=$W/core/proj
CHANGED=$P/layers/sp/django/__init__.py # the file the one-file-change build benchmarks touch
make_core_tree() {
  local wheels=$W/wheels
  mkdir -p "$wheels"
  # pip checks every pinned hash (bench/wheels.txt); skipped offline when all match
  if ! (cd "$wheels" && python3 - "$REPO/bench/wheels.txt" <<'EOF'
import hashlib, os, re, sys
want = {h for h in re.findall(r"sha256:([0-9a-f]{64})", open(sys.argv[1]).read())}
have = {hashlib.sha256(open(f, "rb").read()).hexdigest() for f in os.listdir(".") if f.endswith(".whl")}
sys.exit(0 if want <= have else 1)
EOF
  ); then
    say "pip download (pinned wheels) -> $wheels"
    pip download -q --disable-pip-version-check --only-binary=:all: --no-deps --require-hashes \
      -r "$REPO/bench/wheels.txt" -d "$wheels" \
      --python-version 3.11 --platform manylinux_2_17_x86_64 --implementation cp --abi cp311
  fi
  local stamp; stamp=$(sha256sum "$REPO/bench/wheels.txt" | cut -c1-16)
  if [[ -f "$P/.stamp" && "$(cat "$P/.stamp")" == "$stamp" ]]; then return; fi
  say "unpacking wheels into $P/layers/sp"
  rm -rf "$P"; mkdir -p "$P/layers/sp" "$P/layers/app" "$P/recipes"
  python3 - "$REPO/bench/wheels.txt" "$wheels" "$P/layers/sp" "$P/layers/app" <<'EOF'
import hashlib, os, re, sys, zipfile
req, wheels, sp, app = sys.argv[1:]
want = set(re.findall(r"sha256:([0-9a-f]{64})", open(req).read()))
for f in sorted(os.listdir(wheels)):
    p = os.path.join(wheels, f)
    if f.endswith(".whl") and hashlib.sha256(open(p, "rb").read()).hexdigest() in want:
        zipfile.ZipFile(p).extractall(sp)
# the small app dir: 40 modules, templates and a static file, deterministic content
os.makedirs(os.path.join(app, "templates")); os.makedirs(os.path.join(app, "static"))
for i in range(40):
    body = "".join(f"def handler_{i}_{j}(request):\n    return {{'id': {i * 100 + j}, 'ok': True}}\n\n" for j in range(60))
    open(os.path.join(app, f"mod_{i:02}.py"), "w").write(f'"""module {i}"""\n\n' + body)
for i in range(10):
    open(os.path.join(app, "templates", f"page_{i}.html"), "w").write("<html><body>{{ content }}</body></html>\n" * 50)
open(os.path.join(app, "static", "app.css"), "w").write("body { margin: 0; padding: 0; }\n" * 400)
open(os.path.join(app, "main.py"), "w").write("import mod_00\nprint('app')\n")
EOF
  cat > "$P/recipes/core.toml" <<'EOF'
# benchmark image: a site-packages layer and an app layer (bench/run.sh)
from = "scratch"
tags = ["latest"]

[config]
entrypoint = ["/usr/bin/python3", "/app/main.py"]

[[layers]]
files = [ { src = "layers/sp", dest = "/usr/lib/python3/site-packages" } ]

[[layers]]
files = [ { src = "layers/app", dest = "/app" } ]
EOF
  cat > "$P/Containerfile" <<'EOF'
FROM scratch
COPY layers/sp /usr/lib/python3/site-packages
COPY layers/app /app
ENTRYPOINT ["/usr/bin/python3", "/app/main.py"]
EOF
  printf 'recipes\nContainerfile\n' > "$P/.containerignore"
  cp -p "$CHANGED" "$C/changed.orig"
  echo "$stamp" > "$P/.stamp"
}

IBC="$IB -q -C $P --store $C/store --out $C/out"
TAR="tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf -"
PODMAN_BUILD="$PODMAN build -q --layers --runtime runc -t bench-core -f $P/Containerfile $P"

if want core; then
  make_core_tree
  cp -p "$C/changed.orig" "$CHANGED"
  {
    for d in sp app; do
      find "$P/layers/$d" -type f -printf '%s\n' | awk -v d=$d '{s += $1; n++} END {print d "_bytes=" s; print d "_files=" n}'
      echo "${d}_dirs=$(find "$P/layers/$d" -type d | wc -l)"
    done
  } > "$RES/core-tree.env"
  cat "$RES/core-tree.env" >&2
fi

if want core; then
  say "core: cold build (empty store) vs tar|pigz vs podman build"
  hf core-cold \
    -n "imgbuild build (empty store)" --prepare "rm -rf $C/store $C/out" "$IBC build core" \
    -n "tar | pigz -6 (floor)" --prepare "rm -f $C/floor.tar.gz" "$TAR -C $P/layers . | pigz -6 > $C/floor.tar.gz" \
    -n "podman build (empty storage)" --prepare "$PODMAN rmi -af >/dev/null 2>&1 || true" "$PODMAN_BUILD" \
    -n "tar | pigz -1 (for scale: the fastest gzip level)" --prepare "rm -f $C/floor1.tar.gz" "$TAR -C $P/layers . | pigz -1 > $C/floor1.tar.gz"
  {
    echo "floor_gz_bytes=$(stat -c %s "$C/floor.tar.gz")"
    echo "floor1_gz_bytes=$(stat -c %s "$C/floor1.tar.gz")"
    echo "imgbuild_layer_bytes=$("$IB" -C "$P" --store "$C/store" --out "$C/out" --json inspect core |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(l["size"] for l in d["layers"]))' 2>/dev/null || echo '?')"
  } > "$RES/core-sizes.env"

  say "core: no-op rebuild vs stat walk vs podman"
  $IBC build core; $PODMAN_BUILD >/dev/null
  # the two fast ones get 4x the runs (they are noisy on a shared machine)
  RUNS=$((RUNS * 4)) hf core-noop --warmup 2 \
    -n "imgbuild build (no-op)" "$IBC build core" \
    -n "find -printf (stat walk)" "find $P/layers -printf '%s %T@\n' > /dev/null" \
    -n "imgbuild plan (warm store)" "$IBC plan core"
  hf core-noop-podman --warmup 1 -n "podman build (no-op)" "$PODMAN_BUILD"

  say "core: one-file change vs re-tarring that layer vs podman"
  hf core-onefile \
    -n "imgbuild build (1 file changed)" --prepare "date +%s%N >> $CHANGED" "$IBC build core" \
    -n "tar | pigz -6 of the layer (floor)" --prepare "date +%s%N >> $CHANGED" \
       "$TAR -C $P/layers/sp . | pigz -6 > $C/floor-sp.tar.gz" \
    -n "podman build (1 file changed)" --prepare "date +%s%N >> $CHANGED" "$PODMAN_BUILD"
  cp -p "$C/changed.orig" "$CHANGED"
  # where the time goes in the no-op and one-file cases (for the report): the restore
  # above is itself a change, so build once before timing a true no-op
  $IBC build core
  /usr/bin/time -v -o "$RES/core-noop.time" $IBC build core
  date +%s%N >> "$CHANGED"
  /usr/bin/time -v -o "$RES/core-onefile.time" $IBC build core
  cp -p "$C/changed.orig" "$CHANGED"
fi

# ---------------------------------------------------------------- memory as the layer grows
if want memory; then
  M=$W/mem
  say "memory: generating 100 MB / 500 MB / 1 GB trees"
  mkdir -p "$M/proj/recipes" "$M/proj/layers"
  # text: real Python source (compressible ~4x); random: incompressible
  if [[ ! -s "$M/corpus.txt" ]]; then
    make_core_tree
    find "$P/layers/sp" -name '*.py' -print0 | sort -z | xargs -0 cat > "$M/corpus.txt"
  fi
  corpus_mb=$(( $(stat -c %s "$M/corpus.txt") / 1048576 ))
  for mb in 100 500 1000; do
    d=$M/proj/layers/d$mb
    if [[ ! -f "$d/.done" ]]; then
      rm -rf "$d"; mkdir -p "$d/random" "$d/text"
      # one big file (a quarter, random) plus 1 MiB files, half random, half text
      head -c $((mb / 4))M /dev/urandom > "$d/random/big.bin"
      for ((i = 0; i < mb * 3 / 4; i++)); do
        if ((i % 2)); then
          dd if="$M/corpus.txt" of="$d/text/t$i.py" bs=1M skip=$((i % corpus_mb)) count=1 status=none
        else
          head -c 1M /dev/urandom > "$d/random/r$i.bin"
        fi
      done
      touch "$d/.done"
    fi
    printf 'from = "scratch"\n[[layers]]\nfiles = [ { src = "layers/d%s", dest = "/data" } ]\n' "$mb" > "$M/proj/recipes/mem$mb.toml"
  done
  for mb in 100 500 1000; do
    say "memory: cold build of a $mb MB layer"
    rm -rf "$M/store" "$M/out"
    /usr/bin/time -v -o "$RES/mem-$mb.time" $IB -q -C "$M/proj" --store "$M/store" --out "$M/out" build "mem$mb"
    echo "bytes=$(du -sb "$M/proj/layers/d$mb" | cut -f1)" > "$RES/mem-$mb.env"
  done
  # the floor's wall time and RSS at 1 GB, for scale
  /usr/bin/time -v -o "$RES/mem-floor-1000.time" bash -c "$TAR -C $M/proj/layers/d1000 . | pigz -6 > $M/floor.tar.gz"
  rm -rf "$M/store" "$M/out" "$M/floor.tar.gz"
fi

# ---------------------------------------------------------------- Debian: nginx
if want debian; then
  D=$W/deb DP=$W/deb/proj
  say "debian: nginx project copy and a warm download cache"
  rm -rf "$DP" "$D/out" "$D/hand"; mkdir -p "$DP/recipes" "$DP/layers"
  # nginx alone: its Debian layer and site, with the static files from layers/app/static
  # as a plain files source (the stack's recipe copies them out of the app image and
  # bundles the web client in a build step, which would bring the venv and app in)
  python3 - "$REPO/recipes/nginx.toml" > "$DP/recipes/nginx.toml" <<'EOF'
import sys
s = open(sys.argv[1]).read()
s = s[: s.index("[[layers]]\n# the web client")]
s = s.replace('{ image = "app", src = "/app/static", dest = "/var/www/static" }',
              '{ src = "layers/static", dest = "/var/www/static", owner = "root:root" }')
print(s)
EOF
  cp -r "$REPO/layers/nginx" "$DP/layers/"
  cp -r "$REPO/layers/app/static" "$DP/layers/static"
  cp "$REPO/imgbuild.lock" "$DP/"
  IBD="$IB -q -C $DP --store $D/store --out $D/out"
  $IBD build --locked nginx # downloads the .debs once (kept across runs in $D/store)
  python3 - "$DP/imgbuild.lock" > "$D/debs.txt" <<'EOF'
import sys, tomllib
lock = tomllib.load(open(sys.argv[1], "rb"))
for e in lock.get("debian", []):
    if e["recipe"] == "nginx":
        for p in e["packages"]:
            print(p["sha256"].removeprefix("sha256:"), p["name"])
EOF
  echo "debs=$(wc -l < "$D/debs.txt")" > "$RES/debian.env"
  echo "deb_bytes=$(cut -d' ' -f1 "$D/debs.txt" | sed "s|^|$D/store/blobs/sha256/|" | xargs stat -c %s | awk '{s+=$1} END {print s}')" >> "$RES/debian.env"
  cat > "$D/by-hand.sh" <<EOF
# the same closure by hand: every .deb of the lock unpacked, then umoci
set -euo pipefail
R=$D/hand/rootfs L=$D/hand/layout
mkdir -p "\$R"
while read -r hex name; do
  dpkg-deb --fsys-tarfile "$D/store/blobs/sha256/\$hex" | tar -x -C "\$R"
done < "$D/debs.txt"
mkdir -p "\$R/etc/nginx/sites-enabled"
cp "$DP/layers/nginx/default.conf" "\$R/etc/nginx/sites-enabled/default"
umoci init --layout "\$L"
umoci new --image "\$L:nginx"
umoci insert --image "\$L:nginx" "\$R" /
umoci insert --image "\$L:nginx" "$DP/layers/static" /var/www/static
umoci gc --layout "\$L"
EOF
  # no unpack cache: the layer records, the unpack records and the uncompressed data.tar
  # spools they point to all go, so every .deb is decompressed again (as by hand)
  cat > "$D/forget-unpacked.sh" <<EOF
set -eu
S=$D/store
if [ -d "\$S/records/debian-unpack-v1" ]; then
  for r in "\$S"/records/debian-unpack-v1/*; do
    [ -e "\$r" ] || continue
    spool=\$(grep -o '"tar":"sha256:[0-9a-f]*"' "\$r" | cut -d: -f3 | tr -d '"')
    [ -n "\$spool" ] && rm -f "\$S/blobs/sha256/\$spool"
  done
fi
rm -rf "\$S/records/layers-v1" "\$S/records/debian-unpack-v1" $D/out
EOF
  say "debian: build from warm .debs, nothing unpacked, vs dpkg-deb | tar + umoci"
  hf debian-build \
    -n "imgbuild build nginx (warm .debs, nothing unpacked)" --prepare "sh $D/forget-unpacked.sh" "$IBD build --locked nginx" \
    -n "dpkg-deb | tar -x + umoci (by hand)" --prepare "rm -rf $D/hand" "bash $D/by-hand.sh"
  # proof that such a build decompresses: it writes every unpack record anew
  sh "$D/forget-unpacked.sh"; $IBD build --locked nginx
  echo "unpack_records_after_cold=$(ls "$D/store/records/debian-unpack-v1" | wc -l)" >> "$RES/debian.env"
  say "debian: build from warm .debs with imgbuild's unpack cache warm"
  hf debian-build-warm \
    -n "imgbuild build nginx (warm .debs and unpack cache, no layer cache)" --prepare "rm -rf $D/store/records/layers-v1 $D/out" "$IBD build --locked nginx" \
    -n "dpkg-deb | tar -x + umoci (by hand)" --prepare "rm -rf $D/hand" "bash $D/by-hand.sh"
  say "debian: no-op rebuild with the lock, mirror unreachable"
  NOMIRROR="IMGBUILD_DEBIAN_MIRROR=http://127.0.0.1:9/ IMGBUILD_DEBIAN_SECURITY_MIRROR=http://127.0.0.1:9/"
  RUNS=$((RUNS * 4)) hf debian-noop --warmup 2 -n "imgbuild build nginx (no-op, mirror 127.0.0.1:9)" "env $NOMIRROR $IBD build --locked nginx"
  # proof: no inet connect, no .deb opened (so nothing decompressed)
  env $NOMIRROR strace -f -qq -e trace=connect,openat -o "$RES/debian-noop.strace" $IBD build --locked nginx
  {
    echo "inet_connects=$(grep -cE 'connect\(.*AF_INET' "$RES/debian-noop.strace" || true)"
    echo "debs_opened=$(grep -cFf <(cut -d' ' -f1 "$D/debs.txt") "$RES/debian-noop.strace" || true)"
  } >> "$RES/debian.env"
  rm -rf "$D/hand" "$D/out"
fi

# ---------------------------------------------------------------- platforms
if want platforms; then
  PL=$W/plat PLP=$W/plat/proj
  say "platforms: redis for amd64 alone vs amd64 + arm64, cold store"
  rm -rf "$PLP" "$PL/store" "$PL/out"; mkdir -p "$PLP/recipes"
  cp "$REPO/recipes/redis.toml" "$PLP/recipes/"
  cp -r "$REPO/layers" "$PLP/"
  { cat "$REPO/imgbuild.toml" 2>/dev/null || true
    printf '\n[build]\nplatforms = ["linux/amd64", "linux/arm64"]\n'; } > "$PLP/imgbuild.toml"
  # both architectures pinned once (the timed builds read no index: --locked)
  $IB -q -C "$PLP" --store "$PL/seed" lock
  IBP="$IB -q -C $PLP --store $PL/store --out $PL/out"
  hf platforms \
    -n "imgbuild build redis --platform linux/amd64 (cold store)" --prepare "rm -rf $PL/store $PL/out" "$IBP build --locked --platform linux/amd64 redis" \
    -n "imgbuild build redis, linux/amd64 + linux/arm64 (cold store)" --prepare "rm -rf $PL/store $PL/out" "$IBP build --locked redis"
  python3 - "$RES/platforms.json" > "$RES/platforms.env" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
one, both = (x["median"] for x in r)
print(f"amd64_s={one:.3f}\nboth_s={both:.3f}\nratio={both / one:.2f}\ntarget=1.30")
EOF
  cat "$RES/platforms.env" >&2
fi

# ---------------------------------------------------------------- steps
if want steps; then
  ST=$W/steps STP=$W/steps/proj
  say "steps: one build step's overhead against the command on the host"
  rm -rf "$STP" "$ST/out"; mkdir -p "$STP/recipes"
  printf '[[layers]]\ndebian = { packages = ["busybox-static"] }\n' > "$STP/recipes/bb.toml"
  # RUN= changes before every timed run (--prepare), so the step's fingerprint changes
  # and it runs; the no-op build leaves it alone
  cat > "$STP/recipes/step.toml" <<'RECIPE'
[[layers]]
build = { image = "bb", command = ["/bin/busybox", "sh", "-c", "/bin/busybox echo built > /out/file"],
          env = { RUN = "0" }, outputs = [ { path = "/out", dest = "/srv" } ] }
RECIPE
  IBT="$IB -q -C $STP --store $ST/store --out $ST/out"
  $IBT build step
  hf steps \
    -n "sh -c 'echo built > file' on the host" "sh -c 'echo built > $ST/host-file'" \
    -n "imgbuild build step (step cached: no-op)" "$IBT build step" \
    -n "imgbuild build step (the step runs)" --prepare "sed -i \"s/RUN = \\\"[0-9]*\\\"/RUN = \\\"\$(date +%s%N)\\\"/\" $STP/recipes/step.toml" "$IBT build step"
  python3 - "$RES/steps.json" > "$RES/steps.env" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
host, noop, step = (x["median"] for x in r)
print(f"host_s={host:.3f}\nnoop_s={noop:.3f}\nstep_s={step:.3f}\noverhead_s={step - noop - host:.3f}\ntarget_s=0.30")
EOF
  cat "$RES/steps.env" >&2
fi

# ---------------------------------------------------------------- push
if want push; then
  # The stack's app and worker images (both FROM venv: Debian's python3.11 + the venv,
  # then one small app layer each), built from a copy of the repository's recipes with
  # its lock. The first run downloads the locked .debs and wheels (Debian archive, PyPI)
  # into $W/stack/store, kept for later runs.
  S=$W/stack SP=$W/stack/proj
  say "push: the stack's app and worker images"
  rm -rf "$SP"; mkdir -p "$SP"
  cp -r "$REPO/recipes" "$REPO/layers" "$REPO/imgbuild.lock" "$SP/"
  if [[ -f "$REPO/imgbuild.toml" ]]; then cp "$REPO/imgbuild.toml" "$SP/"; fi
  IBS="$IB -q -C $SP --store $S/store --out $S/out"
  $IBS build --locked app worker
  # One application source file, as a developer's edit of the app: only the app layer
  # (and its config and manifest) differ from what the registry has.
  APP_CHANGED=$SP/layers/app/app.py
  [[ -f "$APP_CHANGED" ]] || die "$APP_CHANGED is missing (the push benchmark edits it)"

  say "push: local docker-registry"
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  REG=127.0.0.1:$PORT
  mkdir -p "$G"
  cat > "$G/config.yml" <<REGISTRY_CONFIG
version: 0.1
log: { level: error, accesslog: { disabled: true } }
storage: { filesystem: { rootdirectory: $G/data }, delete: { enabled: true } }
http: { addr: $REG }
REGISTRY_CONFIG
  # restart = stop by PID, empty the storage, start, wait for /v2/
  cat > "$G/restart.sh" <<RESTART_SCRIPT
set -eu
pid=\$(cat $G/pid 2>/dev/null || true)
if [ -n "\$pid" ] && grep -qF $G/config.yml /proc/\$pid/cmdline 2>/dev/null; then
  kill \$pid; while kill -0 \$pid 2>/dev/null; do sleep 0.05; done
fi
rm -rf $G/data
docker-registry serve $G/config.yml > $G/log 2>&1 &
echo \$! > $G/pid
for i in \$(seq 100); do python3 -c 'import urllib.request,sys; urllib.request.urlopen("http://$REG/v2/")' 2>/dev/null && exit 0; sleep 0.1; done
echo "registry did not start: \$(cat $G/log)" >&2; exit 1
RESTART_SCRIPT
  # podman pushes from its own storage: the same two images, loaded from imgbuild's tarballs
  PD_LOAD="$PODMAN load -q -i $S/out/app.tar >/dev/null && $PODMAN load -q -i $S/out/worker.tar >/dev/null"
  eval "$PD_LOAD"
  IB_PUSH="$IBS push --registry $REG/ib app worker"
  # skopeo copies one image per invocation: both, one after the other (as a CI script would)
  SK_PUSH="skopeo copy -q --dest-tls-verify=false oci-archive:$S/out/app.tar docker://$REG/sk/app:latest && skopeo copy -q --dest-tls-verify=false oci-archive:$S/out/worker.tar docker://$REG/sk/worker:latest"
  PD_PUSH="$PODMAN push -q --tls-verify=false imgbuild/app:latest docker://$REG/pd/app:latest && $PODMAN push -q --tls-verify=false imgbuild/worker:latest docker://$REG/pd/worker:latest"
  EDIT="echo \"# \$(date +%s%N)\" >> $APP_CHANGED"
  manifest_of() { "$IB" -C "$SP" --store "$S/store" --out "$S/out" --json inspect "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifest_digest"])'; }
  # bytes of (config + layers) of one image, from its manifest in the store
  image_bytes() {
    python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(sum(l["size"] for l in m["layers"]) + m["config"]["size"])' \
      "$S/store/blobs/sha256/$(manifest_of "$1" | cut -d: -f2)"
  }
  # a field of the report of `imgbuild --json push`, read from stdin
  report_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)["push"][sys.argv[1]])' "$1"; }
  {
    echo "imgbuild_push_cmd=$IB_PUSH"
    echo "app_bytes=$(image_bytes app)"
    echo "worker_bytes=$(image_bytes worker)"
  } > "$RES/push.env"
  cp -p "$APP_CHANGED" "$S/app-changed.orig"
  hf push-cold \
    -n "imgbuild push app worker (cold)" --prepare "sh $G/restart.sh" "$IB_PUSH" \
    -n "skopeo copy app, worker (cold)" --prepare "sh $G/restart.sh" "$SK_PUSH" \
    -n "podman push app, worker (cold)" --prepare "sh $G/restart.sh" "$PD_PUSH"
  # what a cold push of imgbuild sends (one more, into an empty registry)
  sh "$G/restart.sh"
  r=$($IBS --json push --registry "$REG/ib" app worker)
  echo "cold_uploaded=$(report_field bytes_uploaded <<< "$r")" >> "$RES/push.env"
  echo "cold_mounted=$(report_field bytes_mounted <<< "$r")" >> "$RES/push.env"
  bash -c "$SK_PUSH"; bash -c "$PD_PUSH"
  hf push-warm --warmup 1 \
    -n "imgbuild push app worker (nothing to send)" "$IB_PUSH" \
    -n "skopeo copy app, worker (nothing to send)" "$SK_PUSH" \
    -n "podman push app, worker (nothing to send)" "$PD_PUSH"
  hf push-onefile \
    -n "imgbuild push app worker (1 file changed)" --prepare "$EDIT && $IBS build --locked app worker" "$IB_PUSH" \
    -n "skopeo copy app, worker (1 file changed)" --prepare "$EDIT && $IBS build --locked app worker" "$SK_PUSH" \
    -n "podman push app, worker (1 file changed)" --prepare "$EDIT && $IBS build --locked app worker && $PD_LOAD" "$PD_PUSH"
  # what one push after a one-file change sends
  bash -c "$EDIT"; $IBS build --locked app worker
  r=$($IBS --json push --registry "$REG/ib" app worker)
  echo "onefile_uploaded=$(report_field bytes_uploaded <<< "$r")" >> "$RES/push.env"
  cp -p "$S/app-changed.orig" "$APP_CHANGED"
  # the registry holds what imgbuild built, byte for byte (same manifest digests)
  $IBS build --locked app worker; $IB_PUSH; bash -c "$SK_PUSH"
  ok=1 sk_same=1 manifests=""
  for d in app worker; do
    want_digest=$(manifest_of $d)
    ib_got=sha256:$(skopeo inspect --raw --tls-verify=false "docker://$REG/ib/$d:latest" | sha256sum | cut -d' ' -f1)
    sk_got=sha256:$(skopeo inspect --raw --tls-verify=false "docker://$REG/sk/$d:latest" | sha256sum | cut -d' ' -f1)
    [[ "$ib_got" == "$want_digest" ]] || ok=0
    [[ "$sk_got" == "$want_digest" ]] || sk_same=0
    manifests="$manifests $d:$want_digest"
  done
  {
    echo "ib_manifests=${manifests# }"
    echo "ib_digest_ok=$ok"
    echo "sk_digest_same=$sk_same"
  } >> "$RES/push.env"
  stop_registry
  rm -rf "$G/data"
fi

if want cache; then
  # Runner A (a kept store) builds the whole stack and fills the cache repository of a
  # local registry; each timed run is a fresh runner: an empty store under $W/cache/b.
  # Fresh runners without the cache fetch every .deb and wheel (Debian archive, PyPI):
  # fewer rounds (BENCH_CACHE_RUNS, default 3).
  K=$W/cache KP=$W/cache/proj KG=$W/cache/registry
  say "cache: the stack, runner A"
  rm -rf "$KP" "$KG" "$K/b"; mkdir -p "$KP" "$KG"
  cp -r "$REPO/recipes" "$REPO/layers" "$REPO/client" "$REPO/imgbuild.lock" "$KP/"
  if [[ -f "$REPO/imgbuild.toml" ]]; then cp "$REPO/imgbuild.toml" "$KP/"; fi
  KPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  KREG=127.0.0.1:$KPORT
  cat > "$KG/config.yml" <<REGISTRY_CONFIG
version: 0.1
log: { level: error, accesslog: { disabled: true } }
storage: { filesystem: { rootdirectory: $KG/data }, delete: { enabled: true } }
http: { addr: $KREG }
REGISTRY_CONFIG
  docker-registry serve "$KG/config.yml" > "$KG/log" 2>&1 &
  KPID=$!
  for _ in $(seq 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://$KREG/v2/')" 2>/dev/null && break
    sleep 0.1
  done
  KA="$IB -q -C $KP --store $K/a/store --out $K/a/out"
  KB="$IB -q -C $KP --store $K/b/store --out $K/b/out"
  FRESH="rm -rf $K/b"
  $KA all --locked --push --registry "$KREG/ib" --cache "$KREG/cache"
  KEDIT="echo \"# \$(date +%s%N)\" >> $KP/layers/app/app.py"
  cp -p "$KP/layers/app/app.py" "$K/app.py.orig"
  RUNS=${BENCH_CACHE_RUNS:-3} hf cache-fresh \
    -n "fresh runner, nothing changed: imgbuild all --push --no-out --cache" --prepare "$FRESH" \
    "$KB all --locked --push --no-out --registry $KREG/ib --cache $KREG/cache" \
    -n "fresh runner, nothing changed: imgbuild all --push (no cache)" --prepare "$FRESH" \
    "$KB all --locked --push --registry $KREG/ib"
  RUNS=${BENCH_CACHE_RUNS:-3} hf cache-onefile \
    -n "fresh runner, 1 app file changed: imgbuild all --push --no-out --cache" --prepare "$KEDIT && $FRESH" \
    "$KB all --locked --push --no-out --registry $KREG/ib --cache $KREG/cache" \
    -n "warm local store, 1 app file changed: imgbuild all --push" --prepare "$KEDIT" \
    "$KA all --locked --push --registry $KREG/ib"
  cp -p "$K/app.py.orig" "$KP/layers/app/app.py"
  # the request counts of one fresh cached run (what Docker Hub would count)
  rm -rf "$K/b"
  $KB --json all --locked --push --no-out --registry "$KREG/ib" --cache "$KREG/cache" > "$RES/cache-requests.json"
  kill "$KPID"; wait "$KPID" 2>/dev/null || true
  python3 - "$RES" > "$RES/cache.md" <<'CACHE_REPORT'
import json, statistics, sys
res = sys.argv[1]
def medians(name):
    return [(r["command"], statistics.median(r["times"])) for r in json.load(open(f"{res}/{name}.json"))["results"]]
out = ["## Registry cache (fresh runner, whole stack, local registry)", ""]
for name, target in (("cache-fresh", "cached < 2 s"), ("cache-onefile", "cached <= 1.5 x warm local")):
    m = medians(name)
    out.append(f"#### {name}: target {target}")
    out.append("| command | median (s) |\n|---|---|")
    out += [f"| {c} | {t:.2f} |" for c, t in m]
    out.append(f"ratio first/second: {m[0][1] / m[1][1]:.2f}")
    out.append("")
req = json.load(open(f"{res}/cache-requests.json"))
out.append("Requests of one fresh cached run: `" + json.dumps(req.get("requests", {})) + "`")
print("\n".join(out))
CACHE_REPORT
  cat "$RES/cache.md" >&2
fi

want stack && stack_bench
echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/machine.env"
echo "duration_s=$(($(date +%s) - T0))" >> "$RES/machine.env"
remove_podman_storage
say "report"
stack_keep_section
if [[ "${BENCH_NO_REPORT:-}" == 1 ]] || ! { want core || want memory || want debian || want push; }; then
  python3 "$REPO/bench/report.py" "$RES"
elif ((PARTIAL)); then
  python3 "$REPO/bench/report.py" "$RES" "$RES/BENCHMARKS.md"
else
  python3 "$REPO/bench/report.py" "$RES" "$REPO/BENCHMARKS.md"
fi
stack_write_section
