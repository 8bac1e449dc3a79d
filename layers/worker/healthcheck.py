"""Container health check of a Celery worker (the image has no shell).

    /opt/venv/bin/python /app/healthcheck.py [NODE]

Pings the worker node NODE (default "celery@<hostname>", Celery's default node name
in a container) through the broker; exit 0 when it answers within 5 s.
"""
import socket
import sys

from worker import app

node = sys.argv[1] if len(sys.argv) > 1 else "celery@" + socket.gethostname()
# No connection pool: each connection is closed (AMQP close) as soon as it is
# released. Pooled ones are only dropped at exit, which left RabbitMQ two "client
# unexpectedly closed TCP connection" warnings per check.
app.conf.broker_pool_limit = 0
try:
    replies = app.control.ping(destination=[node], timeout=5.0)
except Exception as e:  # broker unreachable etc.
    print(f"unhealthy: {type(e).__name__}: {e}")
    sys.exit(1)
if not any(node in r for r in replies):
    print(f"unhealthy: no reply from {node}")
    sys.exit(1)
print(f"ok: {node}")
