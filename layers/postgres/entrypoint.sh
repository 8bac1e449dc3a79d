#!/bin/sh
# PostgreSQL 17 + PL/Python entrypoint for the imgbuild "postgres-plpython" image.
#
# POSIX sh, using only shell builtins and the PostgreSQL binaries (initdb, pg_ctl,
# psql, postgres): the image has dash but no coreutils. Runs as user postgres.
#
# First start (no "$PGDATA/PG_VERSION"):
#   1. initdb (UTF8, C.UTF-8, scram-sha-256 for TCP, peer for the local socket);
#      the superuser password comes from POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE
#      and is fed to initdb through a pipe: it is never written to disk in clear.
#   2. listen_addresses = '*', "host all all all scram-sha-256" in pg_hba.conf,
#      imgbuild.backup_dir (used by the backup_* functions).
#   3. a temporary server on the unix socket only (no TCP, so health checks stay
#      red) runs every *.sql file of $POSTGRES_INITDB_DIR with psql (sorted) and
#      sources every *.sh file; psql gets the variables app_user and app_db, and
#      the SQL reads the app password with \getenv (not on any command line).
#   4. the temporary server is stopped.
# Every start: the secrets are removed from the environment (PL/Python functions
# could read os.environ), then `exec postgres "$@"`.
#
# Environment:
#   PGDATA                     data directory (default /var/lib/postgresql/data)
#   POSTGRES_PASSWORD[_FILE]   superuser "postgres" password (required on first start)
#   APP_DB_USER                application role to create (default "app"; "" = none)
#   APP_DB_NAME                application database (default "app")
#   APP_DB_PASSWORD[_FILE]     its password (default: POSTGRES_PASSWORD, with a warning)
#   POSTGRES_INITDB_DIR        init scripts (default /docker-entrypoint-initdb.d)
#   POSTGRES_BACKUP_DIR        where backup_write() writes (default /var/lib/postgresql/backups)
#   PGHOST                     socket directory for the init server (default /var/run/postgresql)
#   PGPORT                     port (default 5432; also names the socket file)
# Arguments: options are passed to postgres (e.g. -c log_statement=all); a first
# argument that is not an option (e.g. "psql") is executed instead.
set -eu

log() { printf 'pg-entrypoint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# file_env VAR: take VAR from $VAR or from the first line of the file $VAR_FILE.
file_env() {
    _v=$1
    eval "_val=\${$_v:-}"
    eval "_file=\${${_v}_FILE:-}"
    if [ -n "$_val" ] && [ -n "$_file" ]; then
        die "both $_v and ${_v}_FILE are set; use one"
    fi
    if [ -n "$_file" ]; then
        [ -r "$_file" ] || die "${_v}_FILE=$_file is not readable"
        IFS= read -r _val < "$_file" || :
    fi
    eval "$_v=\$_val"
    export "$_v"
    unset "${_v}_FILE" _v _val _file
}

# "postgres -c x=y" and "-c x=y" both mean: run the server with these options.
if [ "${1:-}" = postgres ]; then
    shift
fi
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
INITDB_DIR=${POSTGRES_INITDB_DIR:-/docker-entrypoint-initdb.d}
BACKUP_DIR=${POSTGRES_BACKUP_DIR:-/var/lib/postgresql/backups}
SOCKET_DIR=${PGHOST:-/var/run/postgresql}
APP_DB_USER=${APP_DB_USER-app}
APP_DB_NAME=${APP_DB_NAME:-app}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    file_env POSTGRES_PASSWORD
    file_env APP_DB_PASSWORD
    [ -n "$POSTGRES_PASSWORD" ] ||
        die "database is not initialised and neither POSTGRES_PASSWORD nor POSTGRES_PASSWORD_FILE is set"
    if [ -n "$APP_DB_USER" ] && [ -z "$APP_DB_PASSWORD" ]; then
        log "warning: APP_DB_PASSWORD not set; role $APP_DB_USER gets the superuser password"
        APP_DB_PASSWORD=$POSTGRES_PASSWORD
        export APP_DB_PASSWORD
    fi

    log "initialising $PGDATA"
    # initdb reads the first line of --pwfile; a pipe keeps the password off the disk.
    printf '%s\n' "$POSTGRES_PASSWORD" | initdb -D "$PGDATA" --username=postgres \
        --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 --pwfile=/dev/stdin

    {
        printf '\n# added by pg-entrypoint\n'
        printf "listen_addresses = '*'\n"
        printf "password_encryption = 'scram-sha-256'\n"
        printf "imgbuild.backup_dir = '%s'\n" "$BACKUP_DIR"
    } >> "$PGDATA/postgresql.conf"
    {
        printf '\n# added by pg-entrypoint: password login from any address (private network)\n'
        printf 'host all all all scram-sha-256\n'
    } >> "$PGDATA/pg_hba.conf"

    log "starting a temporary server (unix socket $SOCKET_DIR only) for the init scripts"
    pg_ctl -D "$PGDATA" -w -t 120 \
        -o "-c listen_addresses='' -c unix_socket_directories='$SOCKET_DIR'" start

    for f in "$INITDB_DIR"/*; do
        case $f in
            *.sql)
                log "running $f"
                psql -X -q -v ON_ERROR_STOP=1 --no-password -h "$SOCKET_DIR" \
                    -U postgres -d postgres \
                    -v app_user="$APP_DB_USER" -v app_db="$APP_DB_NAME" -f "$f" ;;
            *.sh)
                log "sourcing $f"
                . "$f" ;;
            *)
                [ ! -e "$f" ] || log "ignoring $f" ;;
        esac
    done

    pg_ctl -D "$PGDATA" -w -t 120 -m fast stop
    log "initialisation complete"
fi

# Nothing secret goes into the server's environment (plpython3u can read os.environ).
unset POSTGRES_PASSWORD POSTGRES_PASSWORD_FILE APP_DB_PASSWORD APP_DB_PASSWORD_FILE
exec postgres -D "$PGDATA" "$@"
