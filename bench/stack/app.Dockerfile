# recipes/app.toml as a Dockerfile (bench/stack.sh; see README.md here)
FROM imgbuild-bench/venv:latest
USER nonroot
WORKDIR /app
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 HOME=/home/nonroot VIRTUAL_ENV=/opt/venv PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/app GUNICORN_BIND=0.0.0.0:8000
EXPOSE 8000/tcp
STOPSIGNAL SIGTERM
LABEL org.opencontainers.image.title="imgbuild demo: app" \
      org.opencontainers.image.description="Flask + gunicorn web app: jobs API, health, stats, admin backup"
COPY layers/app /app
ENTRYPOINT ["/opt/venv/bin/gunicorn", "--config", "/app/gunicorn.conf.py"]
CMD ["app:app"]
