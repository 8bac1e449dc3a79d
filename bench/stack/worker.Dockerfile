# recipes/worker.toml as a Dockerfile (bench/stack.sh; see README.md here)
FROM imgbuild-bench/venv:latest
USER nonroot
WORKDIR /app
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 HOME=/home/nonroot VIRTUAL_ENV=/opt/venv PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/app CELERY_QUEUES=default
STOPSIGNAL SIGTERM
LABEL org.opencontainers.image.title="imgbuild demo: worker" \
      org.opencontainers.image.description="Celery worker; queues from CELERY_QUEUES"
COPY layers/worker /app
ENTRYPOINT ["/opt/venv/bin/celery", "-A", "worker"]
CMD ["worker", "--loglevel=INFO"]
