"""imgbuild demo stack: the web application (Flask, served by gunicorn).

Runs as ``gunicorn --config /app/gunicorn.conf.py app:app`` in WORKDIR /app.

Endpoints
  POST /api/jobs           {"kind": "wordcount", "text": "..."} | {"kind": "add", "a": 2, "b": 3}
                           | {"kind": "pyinfo"} | {"kind": "sleep", "seconds": 1.5}
                           optional "queue": one of JOB_QUEUES (default "default").
                           Inserts a row (status "queued") in PostgreSQL, then sends the
                           Celery task "jobs.<kind>" by name (the app does not import the
                           worker code) to RabbitMQ with the job id as task id.
                           -> 202 {"id": ..., "status": "queued", ...}
  GET  /api/jobs/<id>      the job row (status, result, error, times) from PostgreSQL
  GET  /api/jobs           the latest jobs (?limit=N, max 100)
  GET  /api/stats          request/job counters kept in Redis + job counts from PostgreSQL
  GET  /api/admin/backup   (basic auth) PL/Python backup_report() + backup_list()
  POST /api/admin/backup   (basic auth) backup_write(name) then backup_report(); body
                           optional {"name": "file-name"}
  GET  /healthz            the process is up; ?deep=1 also checks PostgreSQL, RabbitMQ, Redis

Configuration, from the environment only
  DATABASE_URL        postgresql://app:PASSWORD@postgres:5432/app  (required)
  CELERY_BROKER_URL   amqp://USER:PASS@rabbitmq:5672//              (required)
  REDIS_URL           redis://redis:6379/0  Celery result backend + counters (required)
  SECRET_KEY          Flask secret key (a random one is used, with a warning, if unset)
  ADMIN_USER          basic-auth user of /api/admin/*  (admin endpoints answer 503 if
  ADMIN_PASSWORD      basic-auth password               either is unset)
  JOB_QUEUES          queues a job may ask for (default "default,python3"; add "gpu"
                      when a worker-gpu runs)
  DEFAULT_QUEUE       queue of jobs that name none (default "default")
The passwords inside the URLs must be URL-safe (or percent-encoded).
"""

import base64
import binascii
import hmac
import logging
import os
import secrets
import time
import uuid
from functools import wraps

import psycopg
import redis
from celery import Celery
from flask import Flask, jsonify, request
from kombu import Exchange, Queue
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

log = logging.getLogger("imgbuild.app")

DATABASE_URL = os.environ.get("DATABASE_URL", "")
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
ADMIN_USER = os.environ.get("ADMIN_USER", "")
ADMIN_PASSWORD = os.environ.get("ADMIN_PASSWORD", "")
JOB_QUEUES = [q.strip() for q in os.environ.get("JOB_QUEUES", "default,python3").split(",") if q.strip()]
DEFAULT_QUEUE = os.environ.get("DEFAULT_QUEUE", "default")

# kind -> validator(body) -> kwargs of the Celery task "jobs.<kind>"
MAX_TEXT = 100_000


def _number(body, key):
    v = body.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f'"{key}" must be a number')
    return v


def _wordcount(body):
    text = body.get("text")
    if not isinstance(text, str):
        raise ValueError('"text" must be a string')
    if len(text) > MAX_TEXT:
        raise ValueError(f'"text" is longer than {MAX_TEXT} characters')
    return {"text": text}


def _add(body):
    return {"a": _number(body, "a"), "b": _number(body, "b")}


def _pyinfo(body):
    return {}


def _sleep(body):
    s = _number(body, "seconds")
    if not 0 <= s <= 30:
        raise ValueError('"seconds" must be between 0 and 30')
    return {"seconds": s}


KINDS = {"wordcount": _wordcount, "add": _add, "pyinfo": _pyinfo, "sleep": _sleep}

REDIS_PREFIX = "imgbuild:"


def _queue(name):
    # Same declaration as the worker's (and as Celery's own for a missing queue).
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def make_celery():
    c = Celery("imgbuild-app", broker=BROKER_URL or None, backend=REDIS_URL or None)
    c.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=DEFAULT_QUEUE,
        task_queues=[_queue(q) for q in dict.fromkeys([DEFAULT_QUEUE, *JOB_QUEUES])],
        task_create_missing_queues=True,
        broker_connection_timeout=5,
        broker_connection_retry_on_startup=True,
        redis_socket_timeout=5,
        redis_socket_connect_timeout=5,
        enable_utc=True,
    )
    return c


celery_client = make_celery()
redis_client = (
    redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)
    if REDIS_URL
    else None
)

app = Flask(__name__)
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)
app.json.sort_keys = False
if os.environ.get("SECRET_KEY"):
    app.config["SECRET_KEY"] = os.environ["SECRET_KEY"]
else:
    log.warning("SECRET_KEY is not set; using a random key (not stable across processes)")
    app.config["SECRET_KEY"] = secrets.token_hex(32)


def db():
    if not DATABASE_URL:
        raise RuntimeError("DATABASE_URL is not set")
    return psycopg.connect(DATABASE_URL, autocommit=True, connect_timeout=5, row_factory=dict_row)


def error(status, message, **extra):
    return jsonify(error=message, **extra), status


def bump(*fields):
    """Counters in Redis; the app keeps working (and logs) if Redis is down."""
    if redis_client is None:
        return
    try:
        pipe = redis_client.pipeline(transaction=False)
        for key, field in fields:
            if field is None:
                pipe.incr(REDIS_PREFIX + key)
            else:
                pipe.hincrby(REDIS_PREFIX + key, field, 1)
        pipe.execute()
    except redis.RedisError as e:
        log.warning("redis counter update failed: %s", e)


@app.after_request
def count_request(response):
    if request.path.startswith("/api/"):
        bump(("requests:total", None), ("requests:by_endpoint", request.endpoint or "unknown"))
    return response


@app.errorhandler(HTTPException)
def http_error(e):
    return error(e.code, e.description or e.name)


@app.errorhandler(psycopg.OperationalError)
def db_down(e):
    log.error("database unavailable: %s", e)
    return error(503, "database unavailable")


def require_admin(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        if not ADMIN_USER or not ADMIN_PASSWORD:
            return error(503, "admin endpoints disabled: ADMIN_USER/ADMIN_PASSWORD not set")
        ok = False
        header = request.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            # evaluate both comparisons: no early exit on the user name
            ok_user = hmac.compare_digest(user.encode(), ADMIN_USER.encode())
            ok_pass = hmac.compare_digest(password.encode(), ADMIN_PASSWORD.encode())
            ok = ok_user and ok_pass
        if not ok:
            resp, status = error(401, "authentication required")
            resp.headers["WWW-Authenticate"] = 'Basic realm="imgbuild admin", charset="UTF-8"'
            return resp, status
        return view(*args, **kwargs)

    return wrapper


JOB_COLUMNS = (
    "id, kind, queue, status, payload, result, error, worker, created_at, started_at, finished_at, updated_at"
)


def job_json(row):
    out = dict(row)
    out["id"] = str(out["id"])
    for k in ("created_at", "started_at", "finished_at", "updated_at"):
        if out.get(k) is not None:
            out[k] = out[k].isoformat()
    return out


@app.post("/api/jobs")
def create_job():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return error(400, "expected a JSON object")
    kind = body.get("kind")
    if kind not in KINDS:
        return error(400, "unknown kind", kinds=sorted(KINDS))
    queue = body.get("queue") or DEFAULT_QUEUE
    if queue not in JOB_QUEUES:
        return error(400, "unknown queue", queues=JOB_QUEUES)
    try:
        kwargs = KINDS[kind](body)
    except ValueError as e:
        return error(400, str(e))

    job_id = str(uuid.uuid4())
    with db() as conn:
        conn.execute(
            "INSERT INTO jobs (id, kind, queue, payload, status) VALUES (%s, %s, %s, %s, 'queued')",
            (job_id, kind, queue, Jsonb(kwargs)),
        )
        try:
            celery_client.send_task(
                f"jobs.{kind}",
                kwargs=kwargs,
                task_id=job_id,
                queue=queue,
                retry=True,
                retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 2},
            )
        except Exception as e:  # kombu/amqp raise many types when the broker is away
            log.error("could not send job %s to the broker: %s", job_id, e)
            conn.execute(
                "UPDATE jobs SET status = 'failure', error = %s, finished_at = now(), updated_at = now() "
                "WHERE id = %s",
                (f"broker unavailable: {e}", job_id),
            )
            return error(503, "broker unavailable", id=job_id)
    bump(("jobs:submitted", queue), ("jobs:by_kind", kind))
    resp = jsonify(id=job_id, status="queued", kind=kind, queue=queue, url=f"/api/jobs/{job_id}")
    resp.status_code = 202
    resp.headers["Location"] = f"/api/jobs/{job_id}"
    return resp


@app.get("/api/jobs/<job_id>")
def get_job(job_id):
    try:
        job_id = str(uuid.UUID(job_id))
    except ValueError:
        return error(404, "no such job")
    with db() as conn:
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,)).fetchone()
    if row is None:
        return error(404, "no such job")
    return jsonify(job_json(row))


@app.get("/api/jobs")
def list_jobs():
    try:
        limit = max(1, min(100, int(request.args.get("limit", 20))))
    except ValueError:
        return error(400, "limit must be an integer")
    with db() as conn:
        rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT %s", (limit,)).fetchall()
    return jsonify(jobs=[job_json(r) for r in rows])


@app.get("/api/stats")
def stats():
    out = {"redis": None, "jobs_by_status": None}
    if redis_client is not None:
        try:
            pipe = redis_client.pipeline(transaction=False)
            pipe.get(REDIS_PREFIX + "requests:total")
            pipe.hgetall(REDIS_PREFIX + "requests:by_endpoint")
            pipe.hgetall(REDIS_PREFIX + "jobs:submitted")
            pipe.hgetall(REDIS_PREFIX + "jobs:by_kind")
            pipe.hgetall(REDIS_PREFIX + "jobs:completed")
            pipe.dbsize()
            total, by_ep, submitted, by_kind, completed, dbsize = pipe.execute()
            ints = lambda h: {k: int(v) for k, v in h.items()}  # noqa: E731
            out["redis"] = {
                "requests_total": int(total or 0),
                "requests_by_endpoint": ints(by_ep),
                "jobs_submitted_by_queue": ints(submitted),
                "jobs_submitted_by_kind": ints(by_kind),
                "jobs_completed_by_queue": ints(completed),
                "keys": dbsize,
            }
        except redis.RedisError as e:
            out["redis"] = {"error": str(e)}
    with db() as conn:
        rows = conn.execute("SELECT status, count(*) AS n FROM jobs GROUP BY status ORDER BY status").fetchall()
    out["jobs_by_status"] = {r["status"]: r["n"] for r in rows}
    return jsonify(out)


@app.get("/api/admin/backup")
@require_admin
def backup_report():
    with db() as conn:
        report = conn.execute("SELECT backup_report() AS r").fetchone()["r"]
        files = conn.execute("SELECT backup_list() AS l").fetchone()["l"]
    return jsonify(report=report, backups=files)


@app.post("/api/admin/backup")
@require_admin
def backup_write():
    body = request.get_json(silent=True) or {}
    name = body.get("name") if isinstance(body, dict) else None
    if name is not None and not isinstance(name, str):
        return error(400, '"name" must be a string')
    with db() as conn:
        try:
            written = conn.execute("SELECT backup_write(%s) AS w", (name,)).fetchone()["w"]
        except psycopg.errors.InvalidParameterValue as e:  # bad name (SQLSTATE 22023)
            return error(400, "invalid backup name", detail=e.diag.message_primary)
        report = conn.execute("SELECT backup_report() AS r").fetchone()["r"]
    log.info("backup written: %s", written)
    return jsonify(written=written, report=report), 201


def _check(fn):
    t0 = time.monotonic()
    try:
        fn()
        return {"ok": True, "ms": round((time.monotonic() - t0) * 1000, 1)}
    except Exception as e:  # report, don't raise: this is a health check
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def _check_db():
    with db() as conn:
        conn.execute("SELECT 1 FROM jobs LIMIT 1")


def _check_broker():
    with celery_client.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)


def _check_redis():
    if redis_client is None:
        raise RuntimeError("REDIS_URL is not set")
    redis_client.ping()


@app.get("/healthz")
def healthz():
    if request.args.get("deep") not in ("1", "true", "yes"):
        return jsonify(status="ok", service="app")
    checks = {"database": _check(_check_db), "broker": _check(_check_broker), "redis": _check(_check_redis)}
    ok = all(c["ok"] for c in checks.values())
    return jsonify(status="ok" if ok else "degraded", service="app", checks=checks), (200 if ok else 503)


if __name__ == "__main__":  # development only: python app.py
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
