#!/usr/bin/env bash
# The serve command (README): a slim runtime venv (only the `serve` extra: onnxruntime, numpy,
# falcon, gunicorn) and the production server on the shipped bundles in models/.
#   bash scripts/serve.sh            # http://localhost:8080 (PORT, MODEL_DIR, ... see docs/configuration.md)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv-serve/bin/python ]; then
  "$PYTHON" -m venv .venv-serve
fi
.venv-serve/bin/python -m pip install -q --upgrade pip
.venv-serve/bin/python -m pip install -q -c serve-constraints.txt '.[serve]'
# What serving never loads goes (scripts/prune_runtime.py; the image does the same).
.venv-serve/bin/python scripts/prune_runtime.py \
  "$(.venv-serve/bin/python -c 'import pathlib, numpy; print(pathlib.Path(numpy.__file__).parents[1])')" >/dev/null
exec .venv-serve/bin/python -m server
