#!/usr/bin/env bash
# End-to-end test of the demo stack (`just e2e`; run by scripts/test.sh after cargo test).
#
#   1. copy the project's files (git ls-files: tracked and untracked-but-not-ignored,
#      as they are in the working tree; never deploy/.env) into a private temp dir and
#      write the copy's deploy/.env with generated secrets (imgbuild setup
#      --non-interactive) BEFORE anything is built: the real deploy/.env, if it
#      exists, is never read or touched
#   2. build every image of the copy (same store: cached layers are reused, and a
#      layer whose inputs included the env file would get a new fingerprint and be
#      rebuilt with it), load them into Docker (imgbuild all --load --locked) and pin
#      them by image ID in the copy's env file (imgbuild pin --local)
#   3. start the copy's stack with docker-compose under a unique project name and
#      wait (bounded) until every service is healthy, each running its pinned image
#   4. through nginx only (the one published port, on 127.0.0.1): static files, a job
#      on each queue completed by its own worker, the rows in PostgreSQL (API and psql),
#      the PL/Python backup function (admin endpoint and psql), RabbitMQ and Redis use
#   5. scan every blob of every image built (layers decompressed, configs, manifests)
#      for every generated value (secrets and broker user); self-checks: a value planted
#      in a gzip stream is found, and so is the env file in an image built from the
#      copy with deploy/ in a layer
#   6. always (trap): docker-compose down -v, check nothing is left, remove the temp dir
# Exit status 0 only if every check passed.
#
# Needs: docker (20.10+), docker-compose 1.29.x, curl, python3 (JSON parsing; it comes
# with Debian's docker-compose), gzip, tar, git, and cargo unless IMGBUILD_BIN is given.
# Environment:
#   IMGBUILD_BIN          use this imgbuild binary instead of `cargo build` + target/release
#   IMGBUILD_STORE        the store (read by imgbuild itself; default ~/.cache/imgbuild)
#   E2E_PORT              host port for nginx (default: a free one from 18080 up)
#   E2E_HEALTH_TIMEOUT    seconds to wait for every service to be healthy (default 180)
#   E2E_JOB_TIMEOUT       seconds to wait for a job to finish (default 60)
#   E2E_KEEP=1            leave the stack running at the end (for debugging; prints how
#                         to remove it). Never use in CI.
set -uo pipefail
# the last part of a pipeline runs in this shell: checks in it record their results
shopt -s lastpipe

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# the copy of the project (under $TMP) that is set up, built and run
COPY=""
COMPOSE_FILE_PATH=""
ENV_FILE=""
TEMPLATE=""
PROJECT=imgbuild-e2e-$$
HEALTH_TIMEOUT=${E2E_HEALTH_TIMEOUT:-180}
JOB_TIMEOUT=${E2E_JOB_TIMEOUT:-60}
# the services a plain `docker-compose up` must run (worker-gpu is in the gpu profile)
SERVICES=(postgres rabbitmq redis app worker-default worker-python3 nginx)
QUEUES=(default python3)

T0=$SECONDS
PASSED=0
FAILED=()
STEP=0
STEPS=6
TMP=""
STACK_STARTED=0

say() { printf '[e2e] %s\n' "$*"; }
step() {
    STEP=$1
    shift
    printf '\n[e2e] ==== step %s/%s: %s ====\n' "$STEP" "$STEPS" "$*"
}
pass() {
    PASSED=$((PASSED + 1))
    printf '[e2e]   PASS  %s\n' "$*"
}
fail() {
    FAILED+=("step $STEP: $*")
    printf '[e2e]   FAIL  %s\n' "$*"
}
info() { printf '[e2e]         %s\n' "$*"; }
# indent a command's output under the current check
indent() { sed 's/^/[e2e]         | /'; }
# fatal: record, stop here (the EXIT trap tears down and summarises)
die() {
    fail "$*"
    exit 1
}

# ---------------------------------------------------------------------------------
# teardown and summary, always (step 6)

teardown() {
    local rc=$?
    trap - EXIT INT TERM
    step 6 "stop the stack and remove its volumes (docker-compose down -v)"
    if [ "${E2E_KEEP:-}" = 1 ] && [ "$STACK_STARTED" = 1 ]; then
        info "E2E_KEEP=1: leaving project $PROJECT running; remove it with:"
        info "  docker-compose --env-file $ENV_FILE -f $COMPOSE_FILE_PATH -p $PROJECT down -v"
    elif [ "$STACK_STARTED" = 1 ]; then
        if dc down -v --remove-orphans -t 30 > "$TMP/down.log" 2>&1; then
            pass "docker-compose -p $PROJECT down -v"
        else
            fail "docker-compose -p $PROJECT down -v failed:"
            indent < "$TMP/down.log"
        fi
        local left
        left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"
            docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT"
            docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")
        if [ -z "$left" ]; then
            pass "no container, volume or network of $PROJECT is left"
        else
            fail "left behind by $PROJECT: $(echo $left)"
        fi
    else
        info "the stack was not started"
    fi
    if [ -n "$TMP" ] && [ "${E2E_KEEP:-}" != 1 ]; then
        rm -rf "$TMP" && pass "removed the temp dir with the project copy and its env file ($TMP)"
    fi

    local took=$((SECONDS - T0))
    printf '\n'
    if [ ${#FAILED[@]} -eq 0 ] && [ "$rc" -eq 0 ]; then
        say "RESULT: PASS ($PASSED checks passed in ${took}s)"
        exit 0
    fi
    say "RESULT: FAIL (${#FAILED[@]} failed, $PASSED passed, ${took}s)"
    local f
    for f in "${FAILED[@]}"; do say "  - $f"; done
    [ ${#FAILED[@]} -gt 0 ] || say "  - exited with status $rc outside a check"
    exit 1
}
trap teardown EXIT
trap 'fail "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------------------------
# helpers

dc() { docker-compose --env-file "$ENV_FILE" -f "$COMPOSE_FILE_PATH" -p "$PROJECT" "$@"; }

# jeval FILE EXPR: evaluate a Python expression over the JSON document d in FILE;
# prints str() of the result, exit 1 if the file is not JSON or the expression fails.
jeval() {
    python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(eval(sys.argv[2], {"d": d}))' "$1" "$2" 2>/dev/null
}

# http METHOD PATH [curl args...]: request through nginx; prints the status code,
# the body goes to $TMP/body, the headers to $TMP/headers.
http() {
    local method=$1 path=$2
    shift 2
    curl -sS --max-time 20 -X "$method" -o "$TMP/body" -D "$TMP/headers" \
        -w '%{http_code}' "$@" "$BASE$path" 2>"$TMP/curl.err" || {
        cat "$TMP/curl.err" >&2
        echo 000
    }
}

body_excerpt() { head -c 600 "$TMP/body" | tr '\n' ' '; }

# the services' containers and states: "service id status health" lines
states() {
    local id
    for id in $(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"); do
        docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}} {{.Id}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id"
    done
}

# show what is wrong with a service: state, last health check outputs, logs
diagnose() {
    local svc=$1 id
    id=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" \
        --filter "label=com.docker.compose.service=$svc" | head -n1)
    if [ -z "$id" ]; then
        info "$svc: no container"
        return
    fi
    info "$svc: $(docker inspect -f 'status={{.State.Status}} exit={{.State.ExitCode}} restarts={{.RestartCount}} health={{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")"
    info "$svc: last health checks:"
    docker inspect -f '{{if .State.Health}}{{range .State.Health.Log}}exit {{.ExitCode}}: {{.Output}}{{"\n"}}{{end}}{{end}}' "$id" |
        grep -v '^$' | tail -n 3 | indent
    info "$svc: last 60 log lines:"
    docker logs --tail 60 "$id" 2>&1 | indent
}

# psql as the postgres superuser over the unix socket (peer auth), in the app database
psql_app() { dc exec -T postgres psql -X -q -At -v ON_ERROR_STOP=1 -d "${ENVF[APP_DB_NAME]:-app}" "$@"; }

# job_wait ID: poll GET /api/jobs/ID until it is finished; leaves the last body in $TMP/body
job_wait() {
    local id=$1 deadline=$((SECONDS + JOB_TIMEOUT)) code status
    while :; do
        code=$(http GET "/api/jobs/$id")
        status=$(jeval "$TMP/body" 'd.get("status")')
        if [ "$code" = 200 ] && { [ "$status" = success ] || [ "$status" = failure ]; }; then
            return 0
        fi
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.5
    done
}

# ---------------------------------------------------------------------------------
say "imgbuild end-to-end test: project $PROJECT, repository $ROOT"
for tool in docker docker-compose curl python3 gzip tar git; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (needed by scripts/e2e.sh)"
done
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed)"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/imgbuild-e2e.XXXXXX") || die "mktemp failed"
chmod 700 "$TMP"

# ---------------------------------------------------------------------------------
step 1 "copy the project, set up its secrets non-interactively (imgbuild setup) before building"
# The real deploy/.env is only ever stat()ed (never opened): its inode, size and times
# must be the same at the end.
deploy_env_before=""
[ -e "$ROOT/deploy/.env" ] && deploy_env_before=$(stat -c '%i %s %Y %Z' "$ROOT/deploy/.env")
COPY=$TMP/project
mkdir -p "$COPY"
# tracked and untracked-but-not-ignored files, as they are in the working tree
# (deleted ones skipped); never any .env
if (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) > "$TMP/files" 2> "$TMP/git.err"; then
    n=0
    while IFS= read -r -d '' f; do
        case /$f in */.env) continue ;; esac
        [ -e "$ROOT/$f" ] || [ -L "$ROOT/$f" ] || continue
        printf '%s\0' "$f"
        n=$((n + 1))
    done < "$TMP/files" > "$TMP/files.copy"
    if (cd "$ROOT" && tar --null -T "$TMP/files.copy" -cf -) | tar -xf - -C "$COPY"; then
        pass "copied $n files of the working tree (git ls-files) to $COPY"
    else
        die "copying the project to $COPY failed"
    fi
else
    indent < "$TMP/git.err"
    die "git ls-files failed in $ROOT (scripts/e2e.sh copies the files git knows)"
fi
[ ! -e "$COPY/deploy/.env" ] && pass "the copy has no deploy/.env yet" || die "the copy has a deploy/.env"
COMPOSE_FILE_PATH=$COPY/deploy/compose.yaml
ENV_FILE=$COPY/deploy/.env
TEMPLATE=$COPY/deploy/.env.example

# nginx's host port: free, on 127.0.0.1 (NGINX_PORT is optional in the template)
if [ -n "${E2E_PORT:-}" ]; then
    PORT=$E2E_PORT
else
    PORT=""
    for ((p = 18080; p < 18180; p++)); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            PORT=$p
            break
        fi
    done
    [ -n "$PORT" ] || die "no free port in 18080-18179 (set E2E_PORT)"
fi
BASE=http://127.0.0.1:$PORT

if [ -n "${IMGBUILD_BIN:-}" ]; then
    IMGBUILD=$IMGBUILD_BIN
    [ -x "$IMGBUILD" ] || die "IMGBUILD_BIN=$IMGBUILD is not an executable"
    info "using IMGBUILD_BIN=$IMGBUILD"
else
    IMGBUILD=$ROOT/target/release/imgbuild
    if command -v cargo >/dev/null 2>&1; then
        if (cd "$ROOT" && cargo build --locked --release --bin imgbuild) > "$TMP/cargo.log" 2>&1; then
            pass "cargo build --locked --release --bin imgbuild"
        else
            tail -n 40 "$TMP/cargo.log" | indent
            die "cargo build --locked --release --bin imgbuild failed"
        fi
    elif [ -x "$IMGBUILD" ]; then
        info "cargo not found: using the existing $IMGBUILD"
    else
        die "no cargo and no $IMGBUILD: build imgbuild first or set IMGBUILD_BIN"
    fi
fi

# the default place: the copy's deploy/.env, beside its compose file
if "$IMGBUILD" -C "$COPY" setup --non-interactive --set "NGINX_PORT=$PORT" > "$TMP/setup.log" 2>&1; then
    pass "imgbuild -C <copy> setup --non-interactive --set NGINX_PORT=$PORT"
else
    indent < "$TMP/setup.log"
    die "imgbuild setup failed"
fi
indent < "$TMP/setup.log"
mode=$(stat -c '%a' "$ENV_FILE")
[ "$mode" = 600 ] && pass "env file mode is 0600" || fail "env file mode is $mode, expected 0600"

# KEY=VALUE lines of the template and of the written file. Generated values: the
# secrets (change-me...) and the generated names (...XXXX, the broker user).
declare -A ENVF=()
SECRET_KEYS=()
NAME_KEYS=()
ALL_KEYS=()
while IFS= read -r line; do
    [[ $line =~ ^#?[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
    ALL_KEYS+=("$key")
    [[ $line == \#* ]] && continue
    [[ $value == change-me* ]] && SECRET_KEYS+=("$key")
    [[ $value == *XXXX ]] && NAME_KEYS+=("$key")
done < "$TEMPLATE"
read_env() {
    ENVF=()
    while IFS= read -r line; do
        [[ $line =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] && ENVF[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
    done < "$ENV_FILE"
}
read_env
[ ${#SECRET_KEYS[@]} -gt 0 ] || die "deploy/.env.example has no change-me secrets: nothing to check"
declare -A seen=()
ok=1
for k in "${SECRET_KEYS[@]}"; do
    v=${ENVF[$k]:-}
    if ! [[ $v =~ ^[0-9a-f]{48}$ ]]; then
        fail "$k is not a generated 48-hex secret"
        ok=0
    elif [ -n "${seen[$v]:-}" ]; then
        fail "$k has the same value as ${seen[$v]}"
        ok=0
    fi
    seen[$v]=$k
done
[ $ok = 1 ] && pass "${#SECRET_KEYS[@]} secrets generated, distinct, 48 hex: ${SECRET_KEYS[*]}"
for k in "${NAME_KEYS[@]}"; do
    [[ ${ENVF[$k]:-} =~ ^[a-z_]*[0-9a-f]{8}$ ]] && pass "$k generated: ${ENVF[$k]%????????}<8 hex>" ||
        fail "$k is not a generated name"
done
[ "${ENVF[NGINX_PORT]:-}" = "$PORT" ] && pass "NGINX_PORT=$PORT (--set fills the optional key)" ||
    fail "NGINX_PORT is '${ENVF[NGINX_PORT]:-}', expected $PORT"
if grep -qE 'change-me|XXXX' "$ENV_FILE"; then
    fail "a template placeholder is left in the env file"
else
    pass "no change-me/XXXX placeholder left"
fi
info "nginx will be published on $BASE"

# ---------------------------------------------------------------------------------
step 2 "build the copy (same store) and load it (imgbuild all --load --locked), pin the images (imgbuild pin --local)"
info "store: ${IMGBUILD_STORE:-default (~/.cache/imgbuild)}"
t=$SECONDS
"$IMGBUILD" -C "$COPY" all --load --locked --engine docker > "$TMP/build.log" 2>&1
rc=$?
indent < "$TMP/build.log"
[ $rc -eq 0 ] || die "imgbuild -C <copy> all --load --locked exited with $rc"
pass "imgbuild -C <copy> all --load --locked ($((SECONDS - t))s)"

# every recipe has its archive, and Docker runs exactly what was built
RECIPES=()
declare -A CONFIG=()
for r in "$COPY"/recipes/*.toml; do RECIPES+=("$(basename "$r" .toml)"); done
for name in "${RECIPES[@]}"; do
    tarball=$COPY/out/$name.tar
    if [ ! -s "$tarball" ]; then
        fail "recipes/$name.toml: no out/$name.tar"
        continue
    fi
    tar -xOf "$tarball" manifest.json > "$TMP/manifest.json" 2>/dev/null ||
        { fail "out/$name.tar has no manifest.json"; continue; }
    config=$(jeval "$TMP/manifest.json" 'd[0]["Config"].rsplit("/", 1)[1]')
    tag=$(jeval "$TMP/manifest.json" 'd[0]["RepoTags"][0]')
    CONFIG[$name]=$config
    loaded=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null)
    if [ -n "$config" ] && [ "$loaded" = "sha256:$config" ]; then
        pass "$tag in Docker is out/$name.tar (config sha256:${config:0:12})"
    else
        fail "$tag in Docker is '${loaded:-missing}', out/$name.tar has config sha256:$config"
    fi
done

if "$IMGBUILD" -C "$COPY" pin --local --engine docker > "$TMP/pin.log" 2>&1; then
    pass "imgbuild -C <copy> pin --local --engine docker"
else
    indent < "$TMP/pin.log"
    die "imgbuild pin --local failed"
fi
indent < "$TMP/pin.log"
read_env
ok=1
for name in "${RECIPES[@]}"; do
    var=IMGBUILD_$(tr 'a-z.-' 'A-Z__' <<< "$name")_IMAGE
    [ "${ENVF[$var]:-}" = "sha256:${CONFIG[$name]:-?}" ] || { fail "$var is '${ENVF[$var]:-}', expected sha256:${CONFIG[$name]:-?}"; ok=0; }
done
[ $ok = 1 ] && pass "the env file pins all ${#RECIPES[@]} images by image ID (IMGBUILD_<NAME>_IMAGE)"
for k in "${SECRET_KEYS[@]}" "${NAME_KEYS[@]}"; do
    [ "$(grep -c "^$k=" "$ENV_FILE")" = 1 ] || { fail "pin changed the $k line"; ok=0; }
done
[ $ok = 1 ] && pass "pin kept every other line of the env file"
mode=$(stat -c '%a' "$ENV_FILE")
[ "$mode" = 600 ] && pass "env file mode is still 0600 after pin" || fail "env file mode is $mode after pin"

if [ -n "$deploy_env_before" ]; then
    [ "$(stat -c '%i %s %Y %Z' "$ROOT/deploy/.env")" = "$deploy_env_before" ] &&
        pass "the real deploy/.env is untouched (same inode, size, mtime, ctime)" || fail "deploy/.env was modified"
elif [ -e "$ROOT/deploy/.env" ]; then
    fail "deploy/.env was created in the real checkout"
else
    pass "no deploy/.env in the real checkout, none created"
fi

# Variables from the caller's environment would override the env file: drop them.
for k in "${ALL_KEYS[@]}" $(compgen -e | grep -E '^IMGBUILD_[A-Z0-9_]+_IMAGE$'); do unset "$k"; done
unset COMPOSE_PROFILES COMPOSE_FILE COMPOSE_PROJECT_NAME

# ---------------------------------------------------------------------------------
step 3 "start the stack (docker-compose -p $PROJECT up -d) and wait for every health check"
if dc config -q > "$TMP/config.log" 2>&1; then
    pass "docker-compose config: the copy's deploy/compose.yaml is valid with its env file"
else
    indent < "$TMP/config.log"
    die "docker-compose config failed"
fi
STACK_STARTED=1
t=$SECONDS
timeout 600 docker-compose --env-file "$ENV_FILE" -f "$COMPOSE_FILE_PATH" -p "$PROJECT" up -d \
    > "$TMP/up.log" 2>&1
rc=$?
grep -v '^$' "$TMP/up.log" | indent
if [ $rc -eq 0 ]; then
    pass "docker-compose up -d ($((SECONDS - t))s)"
else
    fail "docker-compose up -d exited with $rc"
fi

healthy=0
deadline=$((SECONDS + HEALTH_TIMEOUT))
last_report=-100
while :; do
    declare -A health=()
    while read -r svc _ status hs; do
        [ -n "$svc" ] && health[$svc]="$status/$hs"
    done < <(states)
    waiting=()
    for svc in "${SERVICES[@]}"; do
        [ "${health[$svc]:-}" = running/healthy ] || waiting+=("$svc=${health[$svc]:-no-container}")
    done
    if [ ${#waiting[@]} -eq 0 ]; then
        healthy=1
        break
    fi
    [ $SECONDS -lt $deadline ] || break
    if [ $((SECONDS - last_report)) -ge 15 ]; then
        info "$((SECONDS - t))s, waiting for: ${waiting[*]}"
        last_report=$SECONDS
    fi
    sleep 2
done
if [ $healthy = 1 ]; then
    pass "all ${#SERVICES[@]} services are healthy, $((SECONDS - t))s after up: ${SERVICES[*]}"
else
    fail "not healthy after waiting ${HEALTH_TIMEOUT}s ($((SECONDS - t))s after up): ${waiting[*]}"
    for w in "${waiting[@]}"; do diagnose "${w%%=*}"; done
fi

# only nginx publishes a port, and only on 127.0.0.1; the gpu worker is not started
published=$(for id in $(docker ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
    docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}}{{range $p, $b := .NetworkSettings.Ports}}{{range $b}} {{.HostIp}}:{{.HostPort}}->{{$p}}{{end}}{{end}}' "$id"
done | awk 'NF > 1')
if [ "$published" = "nginx 127.0.0.1:$PORT->8080/tcp" ]; then
    pass "the only published port is nginx's, 127.0.0.1:$PORT->8080/tcp"
else
    fail "published ports: $(echo $published) (expected only nginx 127.0.0.1:$PORT->8080/tcp)"
fi
# every service runs the image pinned in the env file
declare -A RECIPE_OF=([nginx]=nginx [app]=app [worker-default]=worker [worker-python3]=worker
    [postgres]=postgres-plpython [rabbitmq]=rabbitmq [redis]=redis)
ok=1
while read -r svc id _; do
    r=${RECIPE_OF[$svc]:-}
    [ -n "$r" ] || continue
    img=$(docker inspect -f '{{.Image}}' "$id")
    [ "$img" = "sha256:${CONFIG[$r]:-?}" ] || { fail "$svc runs $img, not the pinned sha256:${CONFIG[$r]:-?} ($r)"; ok=0; }
done < <(states)
[ $ok = 1 ] && pass "every service runs the image ID pinned for its recipe"
if states | grep -q '^worker-gpu '; then
    fail "worker-gpu runs without --profile gpu"
else
    pass "worker-gpu (profile gpu) is not started"
fi

# ---------------------------------------------------------------------------------
step 4 "use the stack through nginx ($BASE) and check every service took part"
if [ $healthy != 1 ]; then
    fail "skipped: the stack is not healthy (see step 3)"
else
    # -- static files, from the nginx image
    code=$(http GET /nginx-health)
    [ "$code" = 200 ] && pass "GET /nginx-health -> 200" || fail "GET /nginx-health -> $code"
    # the application's static files: copied out of the app image (/app/static)
    for f in /:index.html /static/index.html:index.html /static/app.css:app.css; do
        path=${f%%:*} src=$COPY/layers/app/static/${f#*:}
        code=$(http GET "$path")
        if [ "$code" = 200 ] && cmp -s "$TMP/body" "$src"; then
            pass "GET $path -> 200, byte-identical to layers/app/static/${f#*:} (copied out of the app image)"
        else
            fail "GET $path -> $code, body differs from layers/app/static/${f#*:}: $(body_excerpt)"
        fi
    done
    # the web client: bundled from client/src by the nginx recipe's build step
    code=$(http GET /client/app.js)
    if [ "$code" = 200 ] && grep -q '/api/jobs' "$TMP/body" && ! grep -Eq '^(import|export) ' "$TMP/body" \
        && [ "$(wc -l < "$TMP/body")" -le 2 ]; then
        pass "GET /client/app.js -> 200: the client bundled from client/src (one minified file, no module statements left)"
    else
        fail "GET /client/app.js -> $code, not the bundled client: $(body_excerpt)"
    fi
    grep -q '<script src="/client/app.js">' "$COPY/layers/app/static/index.html" \
        && pass "index.html loads the bundled client" || fail "index.html does not load /client/app.js"
    if grep -qi '^etag:' "$TMP/headers"; then
        fail "static files carry an ETag (constant mtimes make it stale across releases)"
    else
        pass "no ETag on static files (all mtimes are equal in a reproducible image)"
    fi
    code=$(http GET /static/missing.txt)
    [ "$code" = 404 ] && pass "GET /static/missing.txt -> 404" || fail "GET /static/missing.txt -> $code"

    # -- the app sees PostgreSQL, RabbitMQ and Redis
    code=$(http GET '/healthz?deep=1')
    if [ "$code" = 200 ] && [ "$(jeval "$TMP/body" 'd["status"]')" = ok ]; then
        pass "GET /healthz?deep=1 -> 200: database, broker and redis ok"
    else
        fail "GET /healthz?deep=1 -> $code: $(body_excerpt)"
    fi

    # -- one job per queue, each done by its own worker
    declare -A JOB=() SUM=()
    for q in "${QUEUES[@]}"; do
        a=$((RANDOM % 1000)) b=$((RANDOM % 1000))
        code=$(http POST /api/jobs -H 'Content-Type: application/json' \
            -d "{\"kind\":\"add\",\"a\":$a,\"b\":$b,\"queue\":\"$q\"}")
        id=$(jeval "$TMP/body" 'd["id"]')
        if [ "$code" = 202 ] && [ -n "$id" ] && [ "$(jeval "$TMP/body" 'd["status"]')" = queued ]; then
            pass "POST /api/jobs add($a, $b) on queue $q -> 202 queued, id $id"
            JOB[$q]=$id SUM[$q]=$((a + b))
        else
            fail "POST /api/jobs on queue $q -> $code: $(body_excerpt)"
        fi
    done
    for q in "${!JOB[@]}"; do
        id=${JOB[$q]}
        if ! job_wait "$id"; then
            fail "job $id ($q) not finished after ${JOB_TIMEOUT}s: $(body_excerpt)"
            diagnose "worker-$q"
            continue
        fi
        got=$(jeval "$TMP/body" '"%s %s %s %s" % (d["status"], (d["result"] or {}).get("sum"), d["queue"], d["worker"])')
        want="success ${SUM[$q]} $q celery@worker-$q"
        [ "$got" = "$want" ] && pass "GET /api/jobs/$id -> $got" ||
            fail "GET /api/jobs/$id -> '$got', expected '$want'"
    done
    code=$(http POST /api/jobs -H 'Content-Type: application/json' -d '{"kind":"add","a":1,"b":2,"queue":"gpu"}')
    [ "$code" = 400 ] && pass "POST /api/jobs on queue gpu -> 400 (not in JOB_QUEUES without the gpu profile)" ||
        fail "POST /api/jobs on queue gpu -> $code: $(body_excerpt)"

    # -- read back through the API, and directly from PostgreSQL
    code=$(http GET '/api/jobs?limit=20')
    listed=$(jeval "$TMP/body" '" ".join(sorted(j["id"] for j in d["jobs"] if j["status"] == "success"))')
    ok=1
    for q in "${!JOB[@]}"; do [[ " $listed " == *" ${JOB[$q]} "* ]] || ok=0; done
    [ "$code" = 200 ] && [ $ok = 1 ] && pass "GET /api/jobs lists both jobs as success" ||
        fail "GET /api/jobs -> $code, jobs: $listed"
    for q in "${!JOB[@]}"; do
        id=${JOB[$q]}
        row=$(psql_app -F ' ' -c "SELECT status, result->>'sum', queue, worker FROM jobs WHERE id = '$id'" 2>&1)
        want="success ${SUM[$q]} $q celery@worker-$q"
        [ "$row" = "$want" ] && pass "psql (postgres container): jobs row $id = $row" ||
            fail "psql: jobs row $id = '$row', expected '$want'"
    done

    # -- the PL/Python backup function: admin endpoint (basic auth from the env file)
    code=$(http POST /api/admin/backup)
    [ "$code" = 401 ] && pass "POST /api/admin/backup without credentials -> 401" ||
        fail "POST /api/admin/backup without credentials -> $code"
    code=$(http POST /api/admin/backup -u "${ENVF[ADMIN_USER]}:wrong-${ENVF[ADMIN_PASSWORD]:0:4}")
    [ "$code" = 401 ] && pass "POST /api/admin/backup with a wrong password -> 401" ||
        fail "POST /api/admin/backup with a wrong password -> $code"
    api_backup=e2e-api-$$
    code=$(http POST /api/admin/backup -u "${ENVF[ADMIN_USER]}:${ENVF[ADMIN_PASSWORD]}" \
        -H 'Content-Type: application/json' -d "{\"name\":\"$api_backup\"}")
    rows=$(jeval "$TMP/body" 'd["written"]["rows"]')
    path=$(jeval "$TMP/body" 'd["written"]["path"]')
    if [ "$code" = 201 ] && [ "${rows:-0}" -ge ${#JOB[@]} ] 2>/dev/null; then
        pass "POST /api/admin/backup as ${ENVF[ADMIN_USER]} -> 201, backup_write() wrote $path ($rows rows)"
    else
        fail "POST /api/admin/backup as ${ENVF[ADMIN_USER]} -> $code: $(body_excerpt)"
    fi
    code=$(http GET /api/admin/backup -u "${ENVF[ADMIN_USER]}:${ENVF[ADMIN_PASSWORD]}")
    [ "$code" = 200 ] && [ "$(jeval "$TMP/body" "any(f['name'] == '$api_backup.json' for f in d['backups']['files'])")" = True ] &&
        pass "GET /api/admin/backup -> 200, backup_list() has $api_backup.json" ||
        fail "GET /api/admin/backup -> $code: $(body_excerpt)"

    # -- the backup functions directly in psql; the dump holds the jobs
    psql_backup=e2e-psql-$$
    out=$(psql_app -c "SELECT backup_write('$psql_backup')->>'path'" 2>&1)
    [ "$out" = "/var/lib/postgresql/backups/$psql_backup.json" ] &&
        pass "psql: SELECT backup_write('$psql_backup') -> $out" || fail "psql: backup_write -> $out"
    out=$(psql_app -c "SELECT string_agg(f->>'name', ' ' ORDER BY f->>'name') FROM jsonb_array_elements(backup_list()->'files') f" 2>&1)
    [[ " $out " == *" $api_backup.json "* && " $out " == *" $psql_backup.json "* ]] &&
        pass "psql: backup_list() -> $out" || fail "psql: backup_list() -> $out"
    for b in "$api_backup" "$psql_backup"; do
        out=$(psql_app -c "SELECT pg_read_file('/var/lib/postgresql/backups/$b.json')::jsonb->'rows'" 2>&1)
        ok=1
        for q in "${!JOB[@]}"; do [[ $out == *"${JOB[$q]}"* ]] || ok=0; done
        [ $ok = 1 ] && pass "psql: $b.json (in the pg-backups volume) holds both job rows" ||
            fail "psql: $b.json lacks the jobs: ${out:0:300}"
    done
    out=$(psql_app -c "SELECT backup_report()->'jobs_by_status'->>'success'" 2>&1)
    [ "${out:-0}" -ge ${#JOB[@]} ] 2>/dev/null && pass "psql: backup_report() counts $out successful jobs" ||
        fail "psql: backup_report() -> $out"

    # -- RabbitMQ: the user from the env file, the two queues and their consumers
    out=$(dc exec -T rabbitmq rabbitmqctl -q list_users 2>&1)
    user=${ENVF[RABBITMQ_DEFAULT_USER]}
    if grep -q "^${user}[[:space:]]" <<< "$out" && ! grep -q '^guest[[:space:]]' <<< "$out"; then
        pass "rabbitmqctl list_users: $user (from the env file), no guest"
    else
        fail "rabbitmqctl list_users: $(echo $out)"
    fi
    out=$(dc exec -T rabbitmq rabbitmqctl -q list_queues name messages consumers 2>&1)
    for q in "${QUEUES[@]}"; do
        line=$(awk -v q="$q" '$1 == q' <<< "$out")
        [ -n "$line" ] && [ "$(awk '{print $3}' <<< "$line")" -ge 1 ] 2>/dev/null &&
            pass "rabbitmqctl list_queues: $line (name messages consumers)" ||
            fail "rabbitmqctl list_queues has no consumed queue $q: $(echo $out)"
    done
    n=$(dc exec -T rabbitmq rabbitmqctl -q list_connections user 2>&1 | grep -c "^$user\$")
    [ "$n" -ge 3 ] && pass "rabbitmqctl list_connections: $n connections of $user (app and workers)" ||
        fail "rabbitmqctl list_connections: $n connections of $user"
    # the broker carries the job: with worker-python3 paused, the message waits in "python3"
    if dc pause worker-python3 > "$TMP/pause.log" 2>&1; then
        code=$(http POST /api/jobs -H 'Content-Type: application/json' \
            -d '{"kind":"wordcount","text":"to be or not to be","queue":"python3"}')
        id=$(jeval "$TMP/body" 'd["id"]')
        msgs=0
        for _ in $(seq 20); do
            msgs=$(dc exec -T rabbitmq rabbitmqctl -q list_queues name messages 2>/dev/null | awk '$1 == "python3" {print $2}')
            [ "${msgs:-0}" -ge 1 ] 2>/dev/null && break
            sleep 0.5
        done
        [ "$code" = 202 ] && [ "${msgs:-0}" -ge 1 ] 2>/dev/null &&
            pass "worker-python3 paused: job $id waits in RabbitMQ (queue python3: $msgs message(s))" ||
            fail "worker-python3 paused: POST -> $code, queue python3 holds '${msgs}' messages"
        http GET "/api/jobs/$id" > /dev/null
        st=$(jeval "$TMP/body" 'd["status"]')
        [ "$st" = queued ] && pass "GET /api/jobs/$id -> queued while no worker consumes python3" ||
            fail "GET /api/jobs/$id -> '$st' while worker-python3 is paused"
        dc unpause worker-python3 > "$TMP/pause.log" 2>&1 || fail "docker-compose unpause worker-python3 failed"
        if job_wait "$id" && [ "$(jeval "$TMP/body" '"%s %s" % (d["status"], d["result"]["words"])')" = "success 6" ]; then
            pass "unpaused: worker-python3 completes it -> success, 6 words"
        else
            fail "after unpause, job $id -> $(body_excerpt)"
        fi
        JOB[wordcount]=$id
    else
        fail "docker-compose pause worker-python3 failed: $(cat "$TMP/pause.log")"
    fi

    # -- Redis: Celery's results and the app's/workers' counters
    for k in "${!JOB[@]}"; do
        id=${JOB[$k]}
        out=$(dc exec -T redis redis-cli GET "celery-task-meta-$id" 2>&1)
        [[ $out == *'"status": "SUCCESS"'* ]] && pass "redis-cli GET celery-task-meta-$id -> SUCCESS (result backend)" ||
            fail "redis-cli GET celery-task-meta-$id -> ${out:0:200}"
    done
    for q in "${QUEUES[@]}"; do
        n=$(dc exec -T redis redis-cli HGET imgbuild:jobs:completed "$q" 2>&1)
        [ "$n" -ge 1 ] 2>/dev/null && pass "redis-cli HGET imgbuild:jobs:completed $q -> $n (worker counter)" ||
            fail "redis-cli HGET imgbuild:jobs:completed $q -> $n"
    done
    code=$(http GET /api/stats)
    out=$(jeval "$TMP/body" '"%s %s" % (d["redis"]["jobs_submitted_by_queue"].get("python3"), d["redis"]["requests_total"])')
    [ "$code" = 200 ] && [ "${out%% *}" -ge 2 ] 2>/dev/null && pass "GET /api/stats -> python3 jobs submitted, requests total: $out (from Redis)" ||
        fail "GET /api/stats -> $code: $(body_excerpt)"
fi

# ---------------------------------------------------------------------------------
step 5 "scan every layer and config of every image built for the generated values"
PATTERNS=$TMP/secret-values
SCAN_KEYS=("${SECRET_KEYS[@]}" "${NAME_KEYS[@]}")
for k in "${SCAN_KEYS[@]}"; do printf '%s\n' "${ENVF[$k]}"; done > "$PATTERNS"
chmod 600 "$PATTERNS"
# scan_stream LABEL < data: fail (naming the keys, never their values) if the
# stream holds a secret value; gzip -cdf decompresses a gzip stream (a layer) and
# passes anything else (config, manifest, index) through unchanged.
scan_stream() {
    local hits v k names=() st
    hits=$(gzip -cdf | grep -aoF -f "$PATTERNS" | sort -u; exit "${PIPESTATUS[0]}")
    st=$?
    if [ $st -ne 0 ]; then
        fail "$1: could not decompress it (gzip exit $st)"
        return 1
    fi
    [ -n "$hits" ] || return 0
    while IFS= read -r v; do
        for k in "${SCAN_KEYS[@]}"; do [ "${ENVF[$k]}" = "$v" ] && names+=("$k"); done
    done <<< "$hits"
    fail "$1 contains the value of ${names[*]}"
    return 1
}
# the scanner must be able to fail: a secret planted inside a gzip stream is found
planted=$( { printf 'prefix-'; printf '%s' "${ENVF[${SECRET_KEYS[0]}]}"; printf -- '-suffix\n'; } | gzip -c | base64 -w0)
if out=$(base64 -d <<< "$planted" | scan_stream "planted"; echo "$?") && [[ $out == *"contains the value of ${SECRET_KEYS[0]}"*1 ]]; then
    pass "self-check: a secret planted in a gzip stream is found (${SECRET_KEYS[0]})"
else
    fail "self-check: the scanner missed a planted secret"
fi
declare -A scanned=()
# scan_tarball FILE: every member (blobs decompressed when gzip); fails on a hit.
# Prints "blobs new" counts; returns 1 if a value was found or it could not be read.
scan_tarball() {
    local tarball=$1 name member digest label n_blobs=0 n_new=0 clean=1 st
    name=${tarball#"$COPY"/}
    tar -tf "$tarball" > "$TMP/members" || { fail "cannot list $name"; return 1; }
    while read -r member; do
        case $member in */) continue ;; esac
        if [[ $member =~ ^blobs/sha256/([0-9a-f]{64})$ ]]; then
            n_blobs=$((n_blobs + 1))
            digest=${BASH_REMATCH[1]}
            [ -z "${scanned[$digest]:-}" ] || continue
            scanned[$digest]=1
            n_new=$((n_new + 1))
            label="$name blob sha256:${digest:0:12}"
        else
            label="$name $member"
        fi
        tar -xOf "$tarball" "$member" | scan_stream "$label"
        st=("${PIPESTATUS[@]}")
        [ "${st[1]}" = 0 ] || clean=0
        [ "${st[0]}" = 0 ] || { fail "cannot read $member of $name"; clean=0; }
    done < "$TMP/members"
    SCAN_COUNTS="$n_blobs $n_new"
    [ $clean = 1 ]
}
images=0
for tarball in "$COPY"/out/*.tar; do
    [ -e "$tarball" ] || { fail "no out/*.tar to scan"; break; }
    images=$((images + 1))
    if scan_tarball "$tarball"; then
        read -r n_blobs n_new <<< "$SCAN_COUNTS"
        if [ "$n_blobs" -lt 3 ]; then
            fail "${tarball#"$COPY"/} has only $n_blobs blobs (expected manifest, config and layers)"
        else
            pass "${tarball#"$COPY"/}: $n_blobs blobs ($n_new not seen in an earlier image) + index/manifest, no generated value"
        fi
    fi
done
[ $images = ${#RECIPES[@]} ] || fail "scanned $images images, the copy has ${#RECIPES[@]} recipes"
info "scanned ${#scanned[@]} distinct blobs of $images images for ${#SCAN_KEYS[@]} generated values"

# self-check, end to end: an image of the copy whose layer takes deploy/ (where the
# env file was written before the build) is caught
cat > "$COPY/recipes/e2e-leak.toml" <<'TOML'
# scripts/e2e.sh self-check: a recipe that (wrongly) bakes deploy/ into a layer
[[layers]]
files = [ { src = "deploy", dest = "/etc/deploy" } ]
TOML
if "$IMGBUILD" -q -C "$COPY" --out "$TMP/leak-out" build e2e-leak > "$TMP/leak.log" 2>&1; then
    # in a subshell: the expected FAIL lines are captured, not recorded
    leak=$(scan_tarball "$TMP/leak-out/e2e-leak.tar"; echo "rc=$?")
    if [[ $leak == *"contains the value of"*rc=1 ]]; then
        pass "self-check: an image built with deploy/ in a layer is caught ($(grep -o 'contains the value of .*' <<< "$leak" | head -n1))"
    else
        fail "self-check: the env file baked into an image was not found"
        indent <<< "$leak"
    fi
else
    indent < "$TMP/leak.log"
    fail "self-check: imgbuild build e2e-leak failed"
fi
rm -f "$COPY/recipes/e2e-leak.toml"

exit 0
