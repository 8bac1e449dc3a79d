-- The stack's custom backup functions, in PL/Python (plpython3u, untrusted: only a
-- superuser can create them). They are SECURITY DEFINER with a fixed search_path,
-- EXECUTE is revoked from PUBLIC and granted to the application role, so the app
-- can call them without being able to run arbitrary Python in the server.
--
--   backup_report()            -> jsonb  row counts per table, database size, job
--                                        status counts, server/python versions, time
--   backup_write(name text)    -> jsonb  writes a JSON dump of public.jobs to
--                                        <imgbuild.backup_dir>/<name>.json (default
--                                        name jobs-YYYYmmddTHHMMSSZ), atomically,
--                                        mode 0600; returns path, rows, bytes, sha256
--   backup_list()              -> jsonb  the *.json files in the backup directory
--
-- imgbuild.backup_dir is set in postgresql.conf by entrypoint.sh
-- (POSTGRES_BACKUP_DIR, default /var/lib/postgresql/backups, a volume).
\connect :"app_db"

CREATE OR REPLACE FUNCTION public.backup_report()
RETURNS jsonb
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
import json
import sys

tables = {}
for r in plpy.execute("""
        SELECT n.nspname AS schema, c.relname AS name
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%'
        ORDER BY 1, 2"""):
    q = "SELECT count(*) AS n FROM %s.%s" % (
        plpy.quote_ident(r["schema"]), plpy.quote_ident(r["name"]))
    tables["%s.%s" % (r["schema"], r["name"])] = plpy.execute(q)[0]["n"]

info = plpy.execute("""
    SELECT current_database() AS database,
           pg_database_size(current_database()) AS size_bytes,
           pg_size_pretty(pg_database_size(current_database())) AS size,
           current_setting('server_version') AS server_version,
           to_char(clock_timestamp() AT TIME ZONE 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS generated_at,
           current_setting('imgbuild.backup_dir', true) AS backup_dir""")[0]

jobs = {}
if plpy.execute("SELECT to_regclass('public.jobs') IS NOT NULL AS ok")[0]["ok"]:
    for r in plpy.execute("SELECT status, count(*) AS n FROM public.jobs GROUP BY status"):
        jobs[r["status"]] = r["n"]

return json.dumps({
    "database": info["database"],
    "generated_at": info["generated_at"],
    "size_bytes": info["size_bytes"],
    "size": info["size"],
    "server_version": info["server_version"],
    "python_version": sys.version.split()[0],
    "tables": tables,
    "jobs_by_status": jobs,
    "backup_dir": info["backup_dir"] or "/var/lib/postgresql/backups",
})
$$;

CREATE OR REPLACE FUNCTION public.backup_write(name text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
import hashlib
import json
import os
import re

directory = plpy.execute(
    "SELECT current_setting('imgbuild.backup_dir', true) AS d")[0]["d"] \
    or "/var/lib/postgresql/backups"
stamp = plpy.execute("""SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC',
                         'YYYYMMDD"T"HH24MISS"Z"') AS s""")[0]["s"]
base = name if name else "jobs-" + stamp
# A file name inside the backup directory, never a path.
if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", base) or ".." in base:
    plpy.error("invalid backup name %r: use letters, digits, '_', '.', '-'" % base,
               sqlstate="22023")  # invalid_parameter_value
if not base.endswith(".json"):
    base += ".json"

r = plpy.execute("""
    SELECT count(*) AS n,
           coalesce(jsonb_agg(to_jsonb(j) ORDER BY j.created_at, j.id), '[]'::jsonb)::text AS rows
    FROM public.jobs j""")[0]
doc = {
    "format": "imgbuild-jobs-backup/1",
    "database": plpy.execute("SELECT current_database() AS d")[0]["d"],
    "created_at": stamp,
    "table": "public.jobs",
    "row_count": r["n"],
}
head = json.dumps(doc, sort_keys=True)
data = (head[:-1] + ', "rows": ' + r["rows"] + "}\n").encode("utf-8")

os.makedirs(directory, mode=0o700, exist_ok=True)
path = os.path.join(directory, base)
tmp = path + ".tmp"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
try:
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
except Exception:
    try:
        os.unlink(tmp)
    except OSError:
        pass
    raise

return json.dumps({
    "path": path,
    "rows": r["n"],
    "bytes": len(data),
    "sha256": hashlib.sha256(data).hexdigest(),
    "created_at": stamp,
})
$$;

CREATE OR REPLACE FUNCTION public.backup_list()
RETURNS jsonb
LANGUAGE plpython3u
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
import json
import os

directory = plpy.execute(
    "SELECT current_setting('imgbuild.backup_dir', true) AS d")[0]["d"] \
    or "/var/lib/postgresql/backups"
files = []
if os.path.isdir(directory):
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_file() and entry.name.endswith(".json"):
            st = entry.stat()
            files.append({"name": entry.name, "bytes": st.st_size, "mtime": int(st.st_mtime)})
return json.dumps({"backup_dir": directory, "files": files})
$$;

REVOKE ALL ON FUNCTION public.backup_report() FROM PUBLIC;
REVOKE ALL ON FUNCTION public.backup_write(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.backup_list() FROM PUBLIC;

SELECT :'app_user' <> '' AS have_app_user \gset
\if :have_app_user
GRANT EXECUTE ON FUNCTION public.backup_report() TO :"app_user";
GRANT EXECUTE ON FUNCTION public.backup_write(text) TO :"app_user";
GRANT EXECUTE ON FUNCTION public.backup_list() TO :"app_user";
\endif
