# Stand-in for docker.io/library/python:3.11-slim where Docker Hub cannot be reached (built by
# scripts/compose-engine.sh on a debootstrapped bookworm; never published). Debian's Python 3.11
# with `python` and `pip` on the path and pip allowed to install system-wide, as in the real
# image, so `FROM python:3.11-slim` Dockerfiles build unchanged.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \
 && ln -s /usr/bin/python3 /usr/local/bin/python && ln -s /usr/bin/pip3 /usr/local/bin/pip
ENV LANG=C.UTF-8
CMD ["python3"]
