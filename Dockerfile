# credential-broker daemon image: `docker build -t credential-broker .`
# Usage, volumes and the sidecar pattern: deploy/README.md.
#
# PYTHON_IMAGE is any Debian-based CPython 3.11+ image laid out like the
# official one (python in /usr/local/bin, pip, /bin/sh and coreutils). The
# offline container test builds this same file FROM a stand-in it makes from
# the host's own Python (deploy/container/).
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm

# -- build: a self-contained virtualenv in /opt/broker -------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY . /src
# A wheels/ folder in the build context (see .dockerignore) makes the install
# offline: the container test fills it on the host, a normal build has none.
RUN set -eu; \
    if [ -d wheels ]; then set -- --no-index --find-links /src/wheels; fi; \
    python -m venv --without-pip /opt/broker; \
    python -m pip --python /opt/broker/bin/python install "$@" -c /src/constraints.txt /src; \
    /opt/broker/bin/broker version

# -- runtime: the venv on the same Python, an unprivileged user, two volumes ---
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="credential-broker" \
      org.opencontainers.image.description="Short-lived, least-privilege credentials from long-lived connectors" \
      org.opencontainers.image.licenses="Apache-2.0"
# uid/gid 65532 ("nonroot" by convention): a sidecar's job container joins the
# group to use the 0660 sockets (Kubernetes: fsGroup or supplementalGroups).
RUN echo 'broker:x:65532:65532:credential-broker:/var/lib/broker:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'broker:x:65532:' >> /etc/group \
    && install -d -o 65532 -g 65532 -m 0750 /run/broker \
    && install -d -o 65532 -g 65532 -m 0700 /var/lib/broker
COPY --from=build /opt/broker /opt/broker
ENV PATH=/opt/broker/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BROKER_DATA_DIR=/var/lib/broker \
    BROKER_SOCKET=/run/broker/broker.sock \
    BROKER_LOCAL_SOCKET=/run/broker/helper.sock \
    BROKER_HELPER_SOCKET=/run/broker/helper.sock
USER 65532:65532
WORKDIR /var/lib/broker
# /run/broker: broker.sock (gRPC) and helper.sock, shared with jobs.
# /var/lib/broker: the SQLite store and the secret key; keep it (or give
# BROKER_SECRET_KEY and a pre-filled store, see deploy/kubernetes/).
VOLUME ["/run/broker", "/var/lib/broker"]
# gRPC health over the Unix socket; SERVING only between startup and shutdown.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["broker", "health", "--timeout", "4"]
# The daemon itself handles SIGTERM (docker stop): NOT_SERVING, drain, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["broker", "serve"]
