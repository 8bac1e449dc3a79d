"""gunicorn settings for the app image (entrypoint: gunicorn --config /app/gunicorn.conf.py).

Environment:
  GUNICORN_BIND     listen address (default 0.0.0.0:8000; nginx proxies to app:8000)
  WEB_CONCURRENCY   worker processes (read by gunicorn itself; default here: 2)
  GUNICORN_THREADS  threads per worker (default 4, gthread worker)
"""
import os

bind = [os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = 60
graceful_timeout = 20
keepalive = 5
# Logs to the container's stdout/stderr.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# Heartbeat files in /dev/shm when it exists (the image may run with a read-only /tmp).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# nginx in front sets X-Forwarded-*; trust it (it is on the private network).
forwarded_allow_ips = "*"
