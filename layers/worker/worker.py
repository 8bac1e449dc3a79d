"""imgbuild demo stack: the Celery worker.

Image: entrypoint ["/opt/venv/bin/celery", "-A", "worker"], cmd ["worker", "--loglevel=INFO"],
WORKDIR /app. One image serves every queue: the queues to consume are read here, from
CELERY_QUEUES, so no shell and no "-Q" argument is needed.

Tasks (sent by name by the app, with the job id as Celery task id):
  jobs.wordcount(text)      -> {"words", "lines", "chars", "top": [[word, n], ...]}
  jobs.add(a, b)            -> {"sum"}
  jobs.pyinfo()             -> python version, hostname, queue, GPU device nodes seen
  jobs.sleep(seconds)       -> {"slept"}
Each task marks its row in PostgreSQL "started" (upserting it if the app's row is
missing), then "success" with the result or "failure" with the error; the return value
also lands in the Celery result backend (Redis), and a per-queue completion counter is
kept in Redis (imgbuild:jobs:completed).

Configuration, from the environment only
  DATABASE_URL        postgresql://app:PASSWORD@postgres:5432/app  (required)
  CELERY_BROKER_URL   amqp://USER:PASS@rabbitmq:5672//              (required)
  REDIS_URL           redis://redis:6379/0  result backend + counters (required)
  CELERY_QUEUES       comma-separated queues to consume (default "default");
                      e.g. "python3", or "gpu" on a GPU host
  CELERY_CONCURRENCY  worker processes (default: celery's, the number of CPUs)
"""

import collections
import os
import platform
import re
import socket
import sys
import time

import psycopg
import redis
from celery import Celery
from celery.utils.log import get_task_logger
from kombu import Exchange, Queue
from psycopg.types.json import Jsonb

log = get_task_logger(__name__)

DATABASE_URL = os.environ.get("DATABASE_URL", "")
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
QUEUES = [q.strip() for q in os.environ.get("CELERY_QUEUES", "default").split(",") if q.strip()] or ["default"]


def _queue(name):
    # Same declaration as the app's (and as Celery's own for a missing queue).
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


app = Celery("imgbuild-worker", broker=BROKER_URL or None, backend=REDIS_URL or None)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # The worker consumes every queue in task_queues (what "-Q" would otherwise select).
    task_queues=[_queue(q) for q in QUEUES],
    task_default_queue=QUEUES[0],
    task_create_missing_queues=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_track_started=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
    result_expires=24 * 3600,
    redis_socket_timeout=5,
    redis_socket_connect_timeout=5,
    enable_utc=True,
)
if os.environ.get("CELERY_CONCURRENCY"):
    app.conf.worker_concurrency = int(os.environ["CELERY_CONCURRENCY"])

_redis = (
    redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2) if REDIS_URL else None
)


def _db():
    return psycopg.connect(DATABASE_URL, autocommit=True, connect_timeout=5)


def _mark_started(job_id, kind, queue, payload, worker):
    with _db() as conn:
        conn.execute(
            """INSERT INTO jobs (id, kind, queue, payload, status, worker, started_at, updated_at)
               VALUES (%s, %s, %s, %s, 'started', %s, now(), now())
               ON CONFLICT (id) DO UPDATE
                  SET status = 'started', worker = EXCLUDED.worker,
                      started_at = now(), updated_at = now(), error = NULL""",
            (job_id, kind, queue, Jsonb(payload), worker),
        )


def _mark_finished(job_id, status, result=None, err=None):
    with _db() as conn:
        conn.execute(
            """UPDATE jobs SET status = %s, result = %s, error = %s,
                              finished_at = now(), updated_at = now()
               WHERE id = %s""",
            (status, Jsonb(result) if result is not None else None, err, job_id),
        )


def _count_completed(queue):
    if _redis is None:
        return
    try:
        _redis.hincrby("imgbuild:jobs:completed", queue, 1)
    except redis.RedisError as e:
        log.warning("redis counter update failed: %s", e)


def job(kind):
    """Register fn as the Celery task "jobs.<kind>" with PostgreSQL bookkeeping."""

    def decorate(fn):
        @app.task(name=f"jobs.{kind}", bind=True)
        def task(self, **kwargs):
            job_id = self.request.id
            queue = (self.request.delivery_info or {}).get("routing_key") or "?"
            _mark_started(job_id, kind, queue, kwargs, self.request.hostname)
            try:
                result = fn(queue=queue, **kwargs)
            except Exception as e:
                _mark_finished(job_id, "failure", err=f"{type(e).__name__}: {e}")
                _count_completed(queue)
                raise
            _mark_finished(job_id, "success", result=result)
            _count_completed(queue)
            return result

        return task

    return decorate


WORD = re.compile(r"\w+(?:['’-]\w+)*", re.UNICODE)


@job("wordcount")
def wordcount(queue, text):
    words = [w.lower() for w in WORD.findall(text)]
    top = collections.Counter(words).most_common(5)
    return {
        "words": len(words),
        "lines": len(text.splitlines()),
        "chars": len(text),
        "top": [[w, n] for w, n in top],
    }


@job("add")
def add(queue, a, b):
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError("a and b must be numbers")
    return {"sum": a + b}


@job("pyinfo")
def pyinfo(queue):
    gpus = sorted(n for n in os.listdir("/dev") if re.fullmatch(r"nvidia\d+", n)) if os.path.isdir("/dev") else []
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "prefix": sys.prefix,
        "hostname": socket.gethostname(),
        "queue": queue,
        "gpu_devices": gpus,
    }


@job("sleep")
def sleep(queue, seconds):
    seconds = max(0.0, min(30.0, float(seconds)))
    time.sleep(seconds)
    return {"slept": seconds}
