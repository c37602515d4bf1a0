#!/usr/bin/env bash
# Rewrites the settings tables at the end of README.md from the settings classes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
head_lines=$(grep -n '^| variable | default | meaning |$' README.md | head -1 | cut -d: -f1)
head -n $((head_lines - 1)) README.md > README.md.tmp
"$PY" scripts/settings_table.py >> README.md.tmp
mv README.md.tmp README.md
