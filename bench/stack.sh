# shellcheck shell=bash
# bench/stack.sh: the stack benchmark (issue 6), sourced by bench/run.sh, which
# provides W, RES, REPO, IB, say, die. `bench/run.sh stack` runs only this section.
#
# From a warm store and with the stack running, one app source file changes; timed
# until nginx serves the change and every service is healthy again:
#   imgbuild  `imgbuild all --load --locked` + `docker-compose up -d`
#   docker    `docker build` of every bench/stack/*.Dockerfile + `docker-compose up -d`
# Rounds alternate (imgbuild, docker, imgbuild, ...). Before each timed run the stack is
# brought, untimed, to that side's images and to health, so each run starts from a
# running stack of its own images; the timed part is edit -> build -> up -> serving ->
# healthy. The compose file is the project's deploy/compose.yaml: the two sides differ
# only in the IMGBUILD_<RECIPE>_IMAGE variables (the pins) given to docker-compose.
#
# Docker cannot pull a base image here, so its Dockerfiles start from the images
# imgbuild built (bench/stack/README.md): docker's best case. Everything lives under
# $W/stack (project copy, private store); images are named imgbuild-bench/* (imgbuild)
# and imgbuild-bench-docker/* (docker build), never imgbuild/*, and are removed at
# the end with every app/worker image a round made. Knobs: BENCH_STACK_RUNS (rounds,
# default 5), BENCH_STACK_STORE (store, default $W/stack/store, warmed once).
#
# The results go to $RES/stack-rounds.tsv and $RES/stack.env; stack_write_section
# puts a "5. The stack" section into BENCHMARKS.md between markers, keeping the one of
# an earlier run when this section did not run.

STACK_BEGIN='<!-- bench/stack.sh: begin -->'
STACK_END='<!-- bench/stack.sh: end -->'
STACK_SERVICES=(postgres rabbitmq redis app worker-default worker-python3 nginx)
STACK_IMAGES=(app nginx postgres-plpython rabbitmq redis venv worker)

# the images of one side, as docker-compose environment (the pins)
stack_pins() {
  local prefix=$1 r var
  for r in "${STACK_IMAGES[@]}"; do
    var=IMGBUILD_$(tr 'a-z.-' 'A-Z__' <<< "$r")_IMAGE
    printf '%s=%s/%s:latest\n' "$var" "$prefix" "$r"
  done
}

stack_dc() { # stack_dc SIDE ARGS...: docker-compose with SIDE's images
  local side=$1; shift
  local prefix=imgbuild-bench
  [[ $side == docker ]] && prefix=imgbuild-bench-docker
  # shellcheck disable=SC2046
  env $(stack_pins "$prefix") docker-compose --env-file "$SP/deploy/.env" \
    -f "$SP/deploy/compose.yaml" -p "$STACK_PROJECT" "$@"
}

# "service status/health" of every container of the project
stack_states() {
  local id
  for id in $(docker ps -aq --filter "label=com.docker.compose.project=$STACK_PROJECT"); do
    docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id"
  done
}

stack_all_healthy() {
  local states svc
  states=$(stack_states)
  for svc in "${STACK_SERVICES[@]}"; do
    grep -qx "$svc running/healthy" <<< "$states" || return 1
  done
}

stack_serving() { # stack_serving STAMP: nginx -> app answers with this stamp
  curl -s --max-time 2 "http://127.0.0.1:$STACK_PORT/healthz" 2>/dev/null | grep -q "\"bench\":\"$1\""
}

# stack_wait WHAT TIMEOUT CMD...: polls CMD every 0.1 s; dies after TIMEOUT seconds
stack_wait() {
  local what=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      stack_states >&2 || true
      die "stack: $what not reached after ${timeout}s"
    fi
    sleep 0.1
  done
}

stack_edit() { # a new stamp in the one changed app file
  STACK_STAMP=$(date +%s%N)
  sed -i "s/^BENCH_STAMP = .*/BENCH_STAMP = \"$STACK_STAMP\"/" "$SP/layers/app/app.py"
}

stack_build() { # stack_build SIDE: build (and load) that side's images
  local d
  if [[ $1 == imgbuild ]]; then
    "$IB" -q -C "$SP" --store "$SS" all --load --locked --engine docker
  else
    for d in "$REPO"/bench/stack/*.Dockerfile; do
      docker build -q -f "$d" -t "imgbuild-bench-docker/$(basename "$d" .Dockerfile):latest" "$SP" \
        > /dev/null 2> "$SW/docker-build.log" || { cat "$SW/docker-build.log" >&2; die "stack: docker build -f $d failed"; }
    done
  fi
  # every app/worker image a round makes is removed at the end
  docker image inspect -f '{{.Id}}' "$(stack_prefix "$1")/app:latest" "$(stack_prefix "$1")/worker:latest" >> "$SW/made-ids"
}

stack_prefix() { [[ $1 == docker ]] && echo imgbuild-bench-docker || echo imgbuild-bench; }

# brings SIDE's images to the current app file and the running stack to them,
# healthy and serving (untimed)
stack_switch() {
  stack_build "$1"
  stack_dc "$1" up -d > "$SW/up.log" 2>&1 || { cat "$SW/up.log" >&2; die "stack: docker-compose up ($1) failed"; }
  stack_wait "serving $STACK_STAMP ($1)" 300 stack_serving "$STACK_STAMP"
  stack_wait "all healthy ($1)" 300 stack_all_healthy
}

stack_teardown() {
  [[ -n "${STACK_PROJECT:-}" && -d "${SP:-/nonexistent}" ]] || return 0
  stack_dc imgbuild down -v -t 10 > /dev/null 2>&1 || true
  local r id
  for r in "${STACK_IMAGES[@]}"; do
    docker rmi "imgbuild-bench/$r:latest" "imgbuild-bench-docker/$r:latest" > /dev/null 2>&1 || true
  done
  # the app/worker images the rounds made, once no tag names them (an image that
  # is also someone else's, e.g. the unchanged worker = imgbuild/worker, stays)
  if [[ -s "$SW/made-ids" ]]; then
    for id in $(sort -u "$SW/made-ids"); do
      [[ $(docker image inspect -f '{{len .RepoTags}}' "$id" 2>/dev/null) == 0 ]] &&
        docker rmi "$id" > /dev/null 2>&1 || true
    done
    rm -f "$SW/made-ids"
  fi
}

stack_bench() {
  local t
  for t in docker docker-compose curl git; do
    command -v "$t" > /dev/null 2>&1 || die "stack: $t is not installed"
  done
  docker info > /dev/null 2>&1 || die "stack: the Docker engine is not reachable"
  SW=$W/stack SP=$W/stack/proj SS=${BENCH_STACK_STORE:-$W/stack/store}
  STACK_PROJECT=imgbuild-bench-stack
  local runs=${BENCH_STACK_RUNS:-5}
  mkdir -p "$SW"
  trap 'stack_teardown; cleanup' EXIT
  stack_teardown # what an interrupted run left

  say "stack: project copy, secrets, warm store (untimed)"
  rm -rf "$SP"; mkdir -p "$SP"
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard) |
    (cd "$REPO" && while IFS= read -r -d '' f; do
       case /$f in */.env) continue ;; esac
       if [[ -e $f || -L $f ]]; then printf '%s\0' "$f"; fi
     done) | (cd "$REPO" && tar --null -T - -cf -) | tar -xf - -C "$SP"
  # imgbuild's images get their own names (never imgbuild/*, which others use)
  for t in "$SP"/recipes/*.toml; do
    sed -i "1i repository = \"imgbuild-bench/$(basename "$t" .toml)\"" "$t"
  done
  # the one file that changes: the app's /healthz reports BENCH_STAMP
  grep -q '^        return jsonify(status="ok", service="app")$' "$SP/layers/app/app.py" ||
    die "stack: layers/app/app.py has no plain /healthz answer to stamp"
  sed -i 's/^        return jsonify(status="ok", service="app")$/        return jsonify(status="ok", service="app", bench=BENCH_STAMP)/' "$SP/layers/app/app.py"
  printf '\nBENCH_STAMP = "0"\n' >> "$SP/layers/app/app.py"
  STACK_STAMP=0
  printf '*\n!layers/app\n!layers/worker\n' > "$SP/.dockerignore"
  STACK_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$IB" -q -C "$SP" setup --non-interactive --set "NGINX_PORT=$STACK_PORT"
  "$IB" -q -C "$SP" --store "$SS" all --load --locked --engine docker
  say "stack: start the stack (untimed)"
  stack_build docker
  stack_switch imgbuild
  {
    echo "runs=$runs"
    echo "v_docker=$(docker version --format '{{.Server.Version}}' 2>/dev/null)"
    echo "v_compose=$(docker-compose version --short 2>/dev/null)"
    echo "app_files=$(find "$SP/layers/app" -type f | wc -l)"
    echo "app_bytes=$(du -sb "$SP/layers/app" | cut -f1)"
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
  } > "$RES/stack.env"
  printf 'side\tround\tbuild\tup\tserving\thealthy\trecreated\n' > "$RES/stack-rounds.tsv"

  local r side t0 t1 t2 t3 t4 before after recreated
  for ((r = 1; r <= runs; r++)); do
    for side in imgbuild docker; do
      printf '   stack: round %s/%s, %s\n' "$r" "$runs" "$side" >&2
      stack_switch "$side"
      before=$(docker ps -q --filter "label=com.docker.compose.project=$STACK_PROJECT" | sort)
      stack_edit
      t0=$EPOCHREALTIME
      stack_build "$side"
      t1=$EPOCHREALTIME
      stack_dc "$side" up -d > "$SW/up.log" 2>&1 || { cat "$SW/up.log" >&2; die "stack: docker-compose up ($side) failed"; }
      t2=$EPOCHREALTIME
      stack_wait "serving the change ($side)" 300 stack_serving "$STACK_STAMP"
      t3=$EPOCHREALTIME
      stack_wait "all healthy ($side)" 300 stack_all_healthy
      t4=$EPOCHREALTIME
      after=$(docker ps -q --filter "label=com.docker.compose.project=$STACK_PROJECT" | sort)
      recreated=$(comm -13 <(echo "$before") <(echo "$after") | wc -l)
      # the app container runs the image this side just built
      [[ $(docker inspect -f '{{.Image}}' "$(stack_dc "$side" ps -q app)") == \
         $(docker image inspect -f '{{.Id}}' "$(stack_prefix "$side")/app:latest") ]] ||
        die "stack: the app does not run the image $side just built"
      # build and up: durations; serving and healthy: from the edit
      python3 -c 'import sys; t0, t1, t2, t3, t4 = (float(x) for x in sys.argv[4:])
print("\t".join(sys.argv[1:3] + ["%.3f" % x for x in (t1 - t0, t2 - t1, t3 - t0, t4 - t0)] + [sys.argv[3]]))' \
        "$side" "$r" "$recreated" "$t0" "$t1" "$t2" "$t3" "$t4" >> "$RES/stack-rounds.tsv"
    done
  done
  echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/stack.env"
  stack_teardown
  trap cleanup EXIT
}

# Before report.py rewrites BENCHMARKS.md: keep the stack section of an earlier run.
stack_keep_section() {
  local md=$REPO/BENCHMARKS.md
  [[ -f $md ]] || return 0
  awk -v b="$STACK_BEGIN" -v e="$STACK_END" '$0 == b {on = 1} on {print} $0 == e {on = 0}' "$md" > "$RES/stack-section.old.md"
}

# The section: from this run's results, else the one kept; printed, and put into
# BENCHMARKS.md (before "## Analysis", or at the end) unless BENCH_NO_REPORT=1.
stack_write_section() {
  local md=$REPO/BENCHMARKS.md section=$RES/stack-section.md
  if [[ -s $RES/stack-rounds.tsv ]]; then
    python3 - "$RES" "$STACK_BEGIN" "$STACK_END" > "$section" <<'EOF'
import csv, os, statistics, sys
res, begin, end = sys.argv[1:4]
env = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(res, "stack.env")) if "=" in l)
rows = list(csv.DictReader(open(os.path.join(res, "stack-rounds.tsv")), delimiter="\t"))
med = {s: {k: statistics.median(float(r[k]) for r in rows if r["side"] == s) for k in ("build", "up", "serving", "healthy")} for s in ("imgbuild", "docker")}
n = {s: sum(r["side"] == s for r in rows) for s in ("imgbuild", "docker")}
rec = {s: sorted({r["recreated"] for r in rows if r["side"] == s}) for s in ("imgbuild", "docker")}
def f(x): return f"{x:.2f} s"
print(begin)
print("## 5. The stack: one app file changed, to a running updated stack")
print()
print(f"Run {env.get('date', '?')} by `bench/stack.sh` ({n['imgbuild']} round(s) per side, alternating; load at start "
      f"{env.get('load_start', '?')}, at end {env.get('load_end', '?')}); Docker {env.get('v_docker', '?')}, "
      f"docker-compose {env.get('v_compose', '?')}. The stack of `deploy/compose.yaml` runs; from a warm store, "
      f"one line of `layers/app/app.py` changes (the app dir: {env.get('app_files', '?')} files, "
      f"{int(env.get('app_bytes', 0)) / 1000:.1f} kB); timed from the edit until nginx serves the changed "
      "`/healthz` and all 7 services are healthy again:")
print()
print("- **imgbuild**: `imgbuild all --load --locked` (every recipe; only the app layer is rebuilt, only the app "
      "image loaded, the others skipped) + `docker-compose up -d`;")
print("- **docker**: `docker build` of every `bench/stack/*.Dockerfile` (legacy builder, layer cache warm) + "
      "`docker-compose up -d`.")
print()
print("Both sides use the same compose file; only the image variables (`IMGBUILD_<RECIPE>_IMAGE`) differ. "
      "Before each timed run the stack is brought, untimed, to that side's images and to health.")
print()
print("| median | imgbuild | docker build | ratio |")
print("|---|---:|---:|---:|")
for k, label in [("build", "build (+ load): its duration"), ("up", "`docker-compose up -d`: its duration"), ("serving", "edit → nginx serves the change"), ("healthy", "**edit → all services healthy**")]:
    a, b = med["imgbuild"][k], med["docker"][k]
    print(f"| {label} | {f(a)} | {f(b)} | {a / b:.2f}× |" if b > 0 else f"| {label} | {f(a)} | {f(b)} | - |")
print()
print(f"Containers recreated per run: imgbuild {', '.join(rec['imgbuild'])}, docker {', '.join(rec['docker'])} "
      "(the app; nginx is not recreated by docker-compose 1.29 when only its dependency changes).")
print()
print("How to read it:")
print()
print("- **This is docker's best case.** No base image can be pulled on this machine, so the Dockerfiles start "
      "`FROM` the images imgbuild built and loaded (`bench/stack/README.md`): the app and worker Dockerfiles "
      "copy their directory onto imgbuild's venv image, the others are a bare `FROM`. No `apt-get` or "
      "`pip install` ever runs on the docker side and its layer cache is warm, as it would be for an "
      "app-only change with a well-ordered Dockerfile; a change to the requirements or the packages would "
      "rebuild those layers with docker and only the changed layer with imgbuild.")
print("- **The floor is the health check, not the build.** Docker 20.10 runs a new container's first health "
      "check one `interval` (10 s for the app) after it starts, and docker-compose 1.29's `up -d` waits for the "
      "recreated app to be healthy (nginx depends on it with `condition: service_healthy`) before it returns, so "
      "`up` takes 10 s or more on either side and the end-to-end times differ by the build times only.")
print("- The build row is where the tools differ: imgbuild re-checks all 7 images (stat walk, cache lookups, "
      "tarballs) and loads the one new image through `docker load`; `docker build` re-checks 6 Dockerfiles "
      "against its cache and writes one new layer in place.")
print()
print("Per run (seconds; build and up are durations, serving and healthy are from the edit):")
print()
print("| side | round | build | up | serving | healthy |")
print("|---|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['side']} | {r['round']} | {float(r['build']):.2f} | {float(r['up']):.2f} | {float(r['serving']):.2f} | {float(r['healthy']):.2f} |")
print(end)
EOF
  elif [[ -s $RES/stack-section.old.md ]]; then
    cp "$RES/stack-section.old.md" "$section"
  else
    return 0
  fi
  [[ -s $RES/stack-rounds.tsv ]] && cat "$section" >&2
  [[ "${BENCH_NO_REPORT:-}" == 1 ]] && return 0
  python3 - "$md" "$section" "$STACK_BEGIN" "$STACK_END" <<'EOF'
import os, sys
md, section, begin, end = sys.argv[1:5]
new = open(section).read().rstrip("\n")
text = open(md).read() if os.path.exists(md) else "# Benchmarks\n"
if begin in text and end in text:
    a, b = text.index(begin), text.index(end) + len(end)
    text = text[:a] + new + text[b:]
elif "\n## Analysis\n" in text:
    a = text.index("\n## Analysis\n") + 1
    text = text[:a] + new + "\n\n" + text[a:]
else:
    text = text.rstrip("\n") + "\n\n" + new + "\n"
open(md + ".tmp", "w").write(text)
os.replace(md + ".tmp", md)
EOF
  echo "wrote the stack section of $md" >&2
}
