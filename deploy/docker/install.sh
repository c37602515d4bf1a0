#!/usr/bin/env bash
# The builder stage of every image (deploy/docker/<service>.Dockerfile), run from /src with
# the files the Dockerfile copied there.
#
#   install.sh deps SERVICE   /opt/venv with SERVICE's dependencies only, every one pinned
#                             with its hashes (requirements/SERVICE.lock, made from
#                             SERVICE.txt by scripts/lock_requirements.py); with
#                             VARIANT=cpu|cuda torch first, alone, from the PyTorch index of
#                             that variant, pinned to its exact version (torch.txt)
#   install.sh package        protobuf stubs generated as `make protos` does, then the
#                             clinalign package itself (not editable, no dependencies)
#
# Two steps so the dependency layer (gigabytes with torch) is cached across code changes.
set -euo pipefail
venv=/opt/venv
req=deploy/docker/requirements
pip_install() { "$venv/bin/pip" install --no-cache-dir --disable-pip-version-check "$@"; }

deps() {
  local service="$1" torch_index=""
  case "${VARIANT:-}" in
    cpu) torch_index=https://download.pytorch.org/whl/cpu ;;
    # The CUDA libraries come inside the wheels (nvidia-* packages from the same index); the
    # node's driver reaches the container through the NVIDIA container runtime.
    cuda) torch_index="https://download.pytorch.org/whl/${TORCH_CUDA:?set TORCH_CUDA, e.g. cu128}" ;;
    "") ;;
    *) echo "install.sh: VARIANT must be cpu or cuda, not '${VARIANT}'" >&2; exit 2 ;;
  esac
  python -m venv "$venv"
  if [[ -n "$torch_index" ]]; then
    pip_install --index-url "$torch_index" -r "$req/torch.txt"
  fi
  pip_install --require-hashes --no-deps -r "$req/$service.lock"
  if [[ -z "$torch_index" ]] && "$venv/bin/pip" show --quiet torch transformers 2>/dev/null; then
    echo "install.sh: the $service image must hold neither torch nor transformers," \
      "but a dependency pulled one in" >&2
    exit 1
  fi
  "$venv/bin/pip" check
}

package() {
  # grpcio-tools and mypy-protobuf live in a throwaway environment: they never reach the
  # runtime stage, which copies /opt/venv only.
  python -m venv /opt/build-tools
  /opt/build-tools/bin/pip install --no-cache-dir --disable-pip-version-check \
    --require-hashes --no-deps -r "$req/build.lock"
  PYTHON=/opt/build-tools/bin/python bash scripts/gen_protos.sh
  pip_install --no-deps .
}

case "${1:-}" in
  deps) deps "${2:?usage: install.sh deps SERVICE}" ;;
  package) package ;;
  *) echo "usage: install.sh deps SERVICE | install.sh package" >&2; exit 2 ;;
esac
