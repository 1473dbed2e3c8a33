#!/usr/bin/env bash
# The test command (README): sets up everything on a fresh machine, then runs the whole suite.
#   bash scripts/test.sh [pytest args...]
# Creates .venv with the dev extra (fastai, torch 2.14.1, onnx, onnxruntime, falcon, pytest, ...),
# installs the container tools (podman, buildah, runc, debootstrap) for the image test and
# Debian's chromium + chromium-driver for the demo-page browser test, and runs pytest.
# IMDB-dependent tests read IMDB_DIR (default ../shared/data/imdb) and skip without it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q --no-compile -e '.[dev]'

if [ "${SKIP_CONTAINER_TOOLS:-0}" != "1" ]; then
  bash scripts/install-container-tools.sh || echo "container tools unavailable: the image test will skip"
fi
if [ "${SKIP_BROWSER:-0}" != "1" ]; then
  bash scripts/install-chromium.sh || echo "chromium unavailable: the demo-page browser test will skip"
fi

# The quality gate first: a format, lint or type error fails the test command.
bash scripts/check.sh

export IMDB_DIR=${IMDB_DIR:-$(cd .. && pwd)/shared/data/imdb}
exec .venv/bin/python -m pytest "$@"
