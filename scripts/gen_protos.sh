#!/usr/bin/env bash
# Generates Python, gRPC and mypy stubs from protos/ into services/ (see `make protos`).
# The output is ignored by git and never edited by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
# protoc finds the mypy-protobuf plugins on PATH, next to the interpreter.
export PATH="$(dirname "$PY"):$PATH"
mapfile -t files < <(cd protos && find clinalign -name '*.proto' | sort)
"$PY" -m grpc_tools.protoc -I protos \
  --python_out=services --grpc_python_out=services \
  --mypy_out=services --mypy_grpc_out=services \
  "${files[@]}"
# Each generated directory is a regular package so mypy and setuptools see it.
for f in "${files[@]}"; do
  touch "services/$(dirname "$f")/__init__.py"
done
echo "generated stubs for ${#files[@]} proto files"
