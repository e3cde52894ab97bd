# The lifelong image: the `lifelong` command (GM, LC, broker, client) for Kubernetes.
#
#   docker build -t lifelong:0.1.0 .
#
# deploy/k8s runs it as `lifelong gm` (image lifelong:0.1.0, user 10001); docs/operations.md
# says how to build it and load it into a cluster. It installs what the tests install: this
# repository's package with its `kubernetes` extra (tests/unit/test_dockerfile.py checks that;
# tests/integration/test_image_install.py runs the install step below in a throwaway venv; the
# image build itself is not run in the tests, which have no Docker engine).
#
# Base: the official python:3.11-slim-bookworm image (Python 3.11.16), pinned by the digest of
# its multi-platform index as the Docker Official Images record it (not pulled on the machine
# that wrote this file). Move both the tag and the digest together when you update it.
FROM python:3.11.16-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lifelong/bin:$PATH

# The source (.dockerignore keeps out .venv, .git, caches and build output).
COPY . /src

# One venv under /opt/lifelong, as on an edge host (deploy/systemd/lifelong-lc.service).
RUN python -m venv /opt/lifelong \
    && /opt/lifelong/bin/pip install --no-cache-dir "/src[kubernetes]" \
    && rm -rf /src

# The same numeric user as the manifests' securityContext (runAsUser/runAsGroup 10001).
RUN groupadd --system --gid 10001 lifelong \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin lifelong
USER 10001:10001

ENTRYPOINT ["lifelong"]
CMD ["--help"]
