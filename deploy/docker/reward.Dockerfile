# syntax=docker/dockerfile:1
# clinalign/reward: scores (prompt, response) pairs with a reward model.
# gRPC on 50052, Prometheus /metrics on 9102. Build from the repository root with
# `make images`, or: docker build -f deploy/docker/reward.Dockerfile --build-arg VARIANT=cuda .
# VARIANT=cpu (default) installs torch from https://download.pytorch.org/whl/cpu; VARIANT=cuda
# from https://download.pytorch.org/whl/$TORCH_CUDA (CUDA libraries inside the wheels).
# The base is python:3.11-slim-bookworm (Python 3.11.16) pinned by its OCI index digest; every
# Dockerfile here uses the same one (tests/deploy/test_dockerfiles.py checks it).

FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b AS builder
ARG VARIANT=cpu
ARG TORCH_CUDA=cu128
# Compilers for any sdist; apt versions follow the digest-pinned bookworm base.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY deploy/docker/install.sh deploy/docker/install.sh
COPY deploy/docker/requirements deploy/docker/requirements
RUN VARIANT="$VARIANT" TORCH_CUDA="$TORCH_CUDA" bash deploy/docker/install.sh deps reward
COPY pyproject.toml README.md ./
COPY scripts/gen_protos.sh scripts/gen_protos.sh
COPY protos protos
COPY services services
RUN bash deploy/docker/install.sh package

FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
ARG VERSION=0.0.0
LABEL org.opencontainers.image.title="clinalign-reward" \
      org.opencontainers.image.description="ClinAlign reward service" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.licenses="Apache-2.0"
# uid/gid 10001, as the Helm chart's and the trainer's job pods' securityContext expect; the
# data directory is a mount point (PVC or emptyDir) the service user can write.
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
EXPOSE 50052 9102
CMD ["python", "-m", "clinalign.reward"]
