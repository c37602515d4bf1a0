#!/usr/bin/env bash
# GPU check on a one-GPU machine: the GPU-relevant pytest tests (PPO, reward training and
# scoring, SFT/DPO, the policy gate's sampling, the generation engine) and
# scripts/gpu_check.py (PPO and generation on CUDA/bf16 with measured timings).
# Expects the pinned packages importable (e.g. wheels from .whl/ installed with
# `pip install --target /tmp/site` and PYTHONPATH=/tmp/site:$PWD/services).
# Logs go to ${OUT:-/tmp/gpu-check}. GPU_CHECK_ALLOW_CPU=1 skips the CUDA assertions.
#
# For a GPU machine without a registry, fetch the missing pins as Python 3.12 wheels into
# an ignored .whl/ (pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux_2_17_x86_64 -d .whl NAME==VERSION for transformers, trl, datasets,
# peft, huggingface-hub, pydantic(-core, -settings), sqlalchemy, grpcio(-health-checking,
# -reflection), protobuf, the opentelemetry packages, pytest-asyncio and their small
# dependencies), put the generated stubs beside them
# (tar -czf .whl/protostubs.tar.gz $(git ls-files -o -i --exclude-standard services | grep _pb2)),
# then: pip install --no-index --no-deps --target /tmp/site .whl/*.whl &&
# PYTHONPATH=/tmp/site:$PWD/services bash scripts/gpu_check.sh
# Last run: 2026-11-26 on an NVIDIA H200 (torch 2.11.0+cu130): all passed.
set -euo pipefail
cd "$(dirname "$0")/.."
LOGS="${OUT:-/tmp/gpu-check}"
mkdir -p "$LOGS"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case ":${PYTHONPATH:-}:" in
  *":$PWD/services:"* | *":services:"*) ;;
  *) export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/services" ;;
esac
started=$SECONDS

# The gRPC stubs are git-ignored: unpack the ones carried in .whl/, else generate them.
if [ ! -f services/clinalign/common/v1/common_pb2.py ]; then
  if [ -f .whl/protostubs.tar.gz ]; then
    tar -xzf .whl/protostubs.tar.gz
    echo "stubs: unpacked .whl/protostubs.tar.gz"
  else
    mapfile -t protos < <(cd protos && find clinalign -name '*.proto' | sort)
    "$PY" -m grpc_tools.protoc -I protos --python_out=services --grpc_python_out=services \
      "${protos[@]}"
    for f in "${protos[@]}"; do touch "services/$(dirname "$f")/__init__.py"; done
    echo "stubs: generated with grpc_tools"
  fi
fi

{
  echo "== nvidia-smi -L"
  nvidia-smi -L || echo "nvidia-smi failed"
  echo "== versions"
  "$PY" - <<'EOF'
import importlib, importlib.metadata as md, os, sys
import torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
for dist, mod in [("transformers", "transformers"), ("trl", "trl"), ("accelerate", "accelerate"),
                  ("peft", "peft"), ("tokenizers", "tokenizers"), ("safetensors", "safetensors"),
                  ("datasets", "datasets"), ("huggingface_hub", "huggingface_hub"),
                  ("grpcio", "grpc"), ("protobuf", "google.protobuf"), ("numpy", "numpy"),
                  ("pandas", "pandas"), ("pyarrow", "pyarrow"), ("pydantic", "pydantic"),
                  ("sqlalchemy", "sqlalchemy"), ("pytest-asyncio", "pytest_asyncio")]:
    try:
        m = importlib.import_module(mod)
        print(f"{dist} {getattr(m, '__version__', '?')} {os.path.dirname(m.__file__ or '')}")
    except Exception as exc:  # report every package, then fail below
        print(f"{dist} IMPORT FAILED: {exc!r}")
if not torch.cuda.is_available() and os.environ.get("GPU_CHECK_ALLOW_CPU") != "1":
    sys.exit("torch.cuda.is_available() is False")
EOF
} 2>&1 | tee "$LOGS/env.log"

status=0
echo "== scripts/gpu_check.py"
if "$PY" scripts/gpu_check.py > "$LOGS/gpu_check.log" 2>&1; then
  grep '^{"name": "gpu_check"' "$LOGS/gpu_check.log" | tee "$LOGS/gpu_check.json"
else
  status=1
  echo "gpu_check.py FAILED:"
  tail -40 "$LOGS/gpu_check.log"
fi

# Two groups, each under a wall-clock limit (SIGINT, so pytest still prints its summary).
PYTEST=(-m pytest -p no:cacheprovider -q --timeout 300 -rA --durations=15)
run_group() {  # name, limit_s, tests...
  local name=$1 limit=$2
  shift 2
  echo "== pytest $name (limit ${limit}s): $*"
  local t0=$SECONDS rc=0
  timeout -s INT -k 30 "$limit" "$PY" "${PYTEST[@]}" "$@" > "$LOGS/pytest-$name.log" 2>&1 || rc=$?
  echo "pytest $name: rc=$rc in $((SECONDS - t0))s"
  grep -E "^(FAILED|ERROR|SKIPPED|XFAIL|XPASS) |[0-9]+ (passed|failed|error|skipped)|KeyboardInterrupt|Timeout" \
    "$LOGS/pytest-$name.log" | tail -30 || true
  [ "$rc" -eq 0 ] || status=1
}
run_group quick "${GPU_CHECK_QUICK_LIMIT:-140}" \
  tests/unit/test_ppo_core.py tests/unit/test_reward_bt.py tests/unit/test_generation_sampling.py \
  tests/unit/test_generation_scheduler.py tests/unit/test_policy_training.py \
  tests/integration/test_reward_training.py
run_group ppo "${GPU_CHECK_PPO_LIMIT:-180}" \
  tests/integration/test_ppo_training.py tests/integration/test_policy_gate.py

echo "gpu_check.sh: status=$status in $((SECONDS - started))s; logs in $LOGS"
exit "$status"
