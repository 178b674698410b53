# cdnetworks-exporter container image.
#
#   docker build -t cdnetworks-exporter .
#   docker run -p 9891:9891 cdnetworks-exporter --demo
#   docker run -p 9891:9891 -v cdnetworks-data:/data \
#     -v "$PWD/config.yml:/etc/cdnetworks-exporter/config.yml:ro" cdnetworks-exporter
#
# BASE_IMAGE must be a Debian-like image with Python >= 3.11 (python3, its venv module). CI builds on a local
# Debian bookworm made with debootstrap (scripts/test-container), since no registry is reachable there.
ARG BASE_IMAGE=docker.io/library/python:3.12-slim-bookworm

# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
# A CA bundle for pip when PyPI is reached through an intercepting proxy (mounted for the build only; this
# stage is not part of the image). Empty by default, which pip reads as "the default bundle"; declared with that
# default so that a build without it does not warn about a missing build argument.
ARG PIP_CERT=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/cdnetworks-exporter
WORKDIR /src
# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when the dependencies change,
# not on every change of the sources.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && /opt/cdnetworks-exporter/bin/pip install --requirement /tmp/requirements.txt
# Then the wheel of the project itself, installed without touching the dependencies again.
# The licence goes into the wheel's metadata (license-files), and so into the image.
COPY README.md LICENSE ./
COPY exporter ./exporter
RUN /opt/cdnetworks-exporter/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/cdnetworks-exporter/bin/pip install --no-deps /wheels/*.whl \
    && /opt/cdnetworks-exporter/bin/cdnetworks-exporter --version

# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG UID=10001
# A fixed numeric uid/gid (Kubernetes' runAsNonRoot checks the number) without needing useradd in the base.
RUN echo "cdnetworks:x:${UID}:${UID}:cdnetworks-exporter:/data:/usr/sbin/nologin" >> /etc/passwd \
    && echo "cdnetworks:x:${UID}:" >> /etc/group \
    && mkdir -p /data /etc/cdnetworks-exporter \
    && chown "${UID}:${UID}" /data
COPY --from=build /opt/cdnetworks-exporter /opt/cdnetworks-exporter

ENV PATH=/opt/cdnetworks-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    CDNETWORKS_EXPORTER_CONFIG_FILE=/etc/cdnetworks-exporter/config.yml \
    CDNETWORKS_EXPORTER_STORAGE_PATH=/data/cdnetworks-exporter.db

# The SQLite store (task history, tracked Fmgr ids, counters): keep it on a volume.
VOLUME ["/data"]
WORKDIR /data
USER ${UID}:${UID}
EXPOSE 9891

# The exporter is PID 1 and needs no init: it installs its SIGTERM/SIGINT/SIGHUP handlers before anything
# else starts (PID 1 gets no default signal actions, so a handler is what makes SIGTERM work), and it never
# starts a child process, so there are no zombies to reap. `docker run --init` adds tini if you want one.
STOPSIGNAL SIGTERM
# Python's stdlib only; follows CDNETWORKS_EXPORTER_LISTEN_ADDRESS. With TLS or basic auth in
# --web.config.file, override this (or probe from outside, as the Kubernetes manifests do).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; port = os.environ.get('CDNETWORKS_EXPORTER_LISTEN_ADDRESS', ':9891').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["cdnetworks-exporter"]

# Labels last: the revision changes with every commit, and every layer after it would be rebuilt.
ARG VERSION=0.1.0
ARG REVISION=unknown
# The repository the image is built from (scripts/test-container passes the git remote, when there is one).
ARG SOURCE=
LABEL org.opencontainers.image.title="cdnetworks-exporter" \
      org.opencontainers.image.description="Prometheus exporter for CDNetworks asynchronous task APIs (CDN prefetch/purge, Fmgr)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
