# syntax=docker/dockerfile:1
# otlp-ingest container: multi-stage, non-root, read-only-root friendly.
#   docker build -t otlp-ingest .
#   docker run --rm -p 4317:4317 -p 4318:4318 -p 8888:8888 --read-only --tmpfs /tmp \
#     --shm-size 256m -v otlp-data:/var/lib/otlp-ingest otlp-ingest
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install the package and its dependencies into a self-contained venv -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# A C compiler for the project's C extensions (setup.py: the wire proof, the HTTP/1.1
# fast path's head scanner, the ring's record writer and reader; without them the slower Python
# paths run): in this stage only, the runtime image has none. Python's headers too where the base
# lacks them (a base with Debian's python3.11, scripts/build-image.sh; python:3.11-slim has them),
# so a runtime on such a base carries no headers either. Not pinned: Debian's point releases
# replace these versions, and the stage is thrown away.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && if [ ! -f "$(python -c 'import sysconfig; print(sysconfig.get_path("include"))')/Python.h" ]; then \
         apt-get install -y --no-install-recommends \
           "libpython$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')-dev"; \
       fi \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
COPY pyproject.toml setup.py README.md ./
COPY otlp_ingest ./otlp_ingest
# Wheels for the binary dependencies (grpcio, protobuf upb, uvloop, msgspec). pip byte-compiles
# the venv here, so nothing needs to write .pyc at run time. The checks run isolated (-I): in
# /src the source tree, which has no compiled extensions, would shadow the installed package
# (issue 19: the build failed for every user with ModuleNotFoundError), and the build must fail
# loudly if an extension was not built.
RUN /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/python -I -c "import otlp_ingest, grpc, google.protobuf, uvloop, msgspec" \
    && /opt/venv/bin/python -I -c "import otlp_ingest.otlp._wirecheck, otlp_ingest.receiver._http1scan, \
otlp_ingest.ring._records"

# --- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="otlp-ingest" \
      org.opencontainers.image.description="OpenTelemetry (OTLP) ingest gateway"
# A fixed uid/gid so Kubernetes' runAsUser/fsGroup (10001) and volume ownership agree. The data
# dir and the durable queue's dir (OTLP_QUEUE_DIR=/var/lib/otlp-queue, as in the durable overlay)
# exist owned by it: Docker gives a new named volume the owner of the directory it is mounted on
# (root, for a path the image lacks), and the server must write there.
RUN groupadd --system --gid 10001 otlp \
    && useradd --system --uid 10001 --gid otlp --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin otlp \
    && mkdir -p /var/lib/otlp-ingest /var/lib/otlp-queue \
    && chown otlp:otlp /var/lib/otlp-ingest /var/lib/otlp-queue
COPY --from=build /opt/venv /opt/venv
# Writable paths at run time: /tmp (Prometheus multiprocess dir, temp files), the data dir (file
# sink), /dev/shm (rings) and, in durable mode, the queue dir. Everything else may be mounted
# read-only.
# The server listens on 127.0.0.1 by default (a laptop's `make run`); in a container only every
# interface is reachable through the published ports, so the image sets 0.0.0.0 explicitly.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OTLP_BIND=0.0.0.0 \
    OTLP_DATA_DIR=/var/lib/otlp-ingest
USER 10001:10001
WORKDIR /var/lib/otlp-ingest
EXPOSE 4317 4318 8888
# Liveness of the supervisor; python instead of curl keeps the slim image free of extra packages.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:' + os.environ.get('OTLP_ADMIN_PORT', '8888') + '/health', timeout=2)"]
# Exec form: the supervisor is PID 1 and gets SIGTERM directly. It installs its own SIGTERM/SIGINT
# handlers (stop receivers, drain exporters within OTLP_SHUTDOWN_TIMEOUT) and reaps its children
# itself, so no init (tini) is needed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "otlp_ingest"]
CMD ["serve"]
