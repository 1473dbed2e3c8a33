#!/usr/bin/env bash
# Download the wheels of scripts/gpu-wheels.txt for a lent GPU machine (no internet there), into
# DEST (default .gpu/wheels, git-ignored), for its Python (default 3.12, the H200 machines').
# Each call of scripts/train-gpu.sh there installs them from that folder (carried with the tree).
#   scripts/gpu-wheels.sh [DEST] [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.gpu/wheels} pyver=${2:-3.12}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
mkdir -p "$dest"
rm -f "$dest"/*.whl  # exactly the list: a stale second version would stop the install there
grep -v '^#' scripts/gpu-wheels.txt | grep . | xargs "$PYTHON" -m pip download -q --no-deps \
  --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$dest"
ls -l "$dest"
