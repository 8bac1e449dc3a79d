# recipes/postgres-plpython.toml: Debian packages docker cannot install here (no base image can be
# pulled), so the image imgbuild built and loaded is the base (bench/stack.sh; README.md)
FROM imgbuild-bench/postgres-plpython:latest
