#!/usr/bin/env bash
# The quality gate (run by scripts/test.sh before pytest): ruff format + lint, then mypy on the
# product packages (the list is [tool.mypy] files in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
"$BIN/ruff" format --check .
"$BIN/ruff" check .
"$BIN/mypy"
