# syntax=docker/dockerfile:1
# clinalign/cds-hooks: the CDS Hooks gateway EHRs call (CDS Hooks 2.0). HTTP on 8081
# (HTTPS when CLINALIGN_TLS_CERT_FILE is set), Prometheus /metrics on 9107. Build from the
# repository root with `make images`, or: docker build -f deploy/docker/cds-hooks.Dockerfile .
# It holds no data: it calls generation and monitor over gRPC for the EHR user it verified.
# No torch and no transformers: install.sh fails the build if a dependency pulls either in.
# The base is python:3.11-slim-bookworm (Python 3.11.16) pinned by its OCI index digest; every
# Dockerfile here uses the same one (tests/deploy/test_dockerfiles.py checks it).

FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b AS builder
# Compilers for any sdist; apt versions follow the digest-pinned bookworm base.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY deploy/docker/install.sh deploy/docker/install.sh
COPY deploy/docker/requirements deploy/docker/requirements
RUN bash deploy/docker/install.sh deps cds-hooks
COPY pyproject.toml README.md ./
COPY scripts/gen_protos.sh scripts/gen_protos.sh
COPY protos protos
COPY services services
RUN bash deploy/docker/install.sh package

FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
ARG VERSION=0.0.0
LABEL org.opencontainers.image.title="clinalign-cds-hooks" \
      org.opencontainers.image.description="ClinAlign CDS Hooks gateway" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.licenses="Apache-2.0"
# uid/gid 10001, as the Helm chart's securityContext expects. The data directory is where the
# gateway makes its signing key when no file is configured; the chart mounts it from a Secret
# (cdsHooks.signingKey.existingSecret), whose public half the services trust.
RUN groupadd --system --gid 10001 clinalign \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin clinalign \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/clinalign
COPY --from=builder /opt/venv /opt/venv
# Read-only root filesystem: every cache (Hugging Face, matplotlib, tldextract, torch) goes
# under /tmp, which the pod mounts as an emptyDir.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HOME=/tmp/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib \
    CLINALIGN_HOST=0.0.0.0 \
    CLINALIGN_DATA_DIR=/var/lib/clinalign
WORKDIR /app
USER 10001:10001
EXPOSE 8081 9107
CMD ["python", "-m", "clinalign.cdshooks"]
