#!/usr/bin/env bash
# Train on a lent GPU machine (docs/training.md): CONFIG (default gpu) from the pre-tokenized
# corpus (`python -m training tokenize`), weights-only (no spaCy there), the whole call done within
# LIMIT_S wall-clock seconds (default 600, the machines' limit per command), start-up included:
# the LM and classifier seconds are derived from what is left once fastai is installed and
# imported (training/budget.py). fastai comes from the wheels in $GPU_WHEELS (default
# .gpu/wheels, made by scripts/gpu-wheels.sh) when the machine's Python lacks it. Copies to
# RESULTS_DIR, in the run directory's layout, everything `python -m training rebuild` needs
# (config, vocab, metrics, fp16 weight chunks) and the log, also when the limit cuts training short.
# TRAIN_STAGE (default all) picks the stage: `all` (LM + classifier) or `distill` (a student from
# the corpus and the soft labels given as `--soft-labels FILE` among the training args).
#   [TRAIN_STAGE=distill] scripts/train-gpu.sh CORPUS_DIR RUN_DIR RESULTS_DIR [LIMIT_S] [CONFIG]
#       [training args...]
set -uo pipefail
started=$(date +%s)
corpus=$1 run=$2 results=$3 limit=${4:-600} config=${5:-gpu}
shift $(($# < 5 ? $# : 5))
PYTHON=${PYTHON:-python3}
stage=${TRAIN_STAGE:-all}
COPY_S=10  # kept after training stops: copying the results back
mkdir -p "$results"
log="$results/train.log"

if ! "$PYTHON" -c 'import fastai' 2>/dev/null; then
  wheels=${GPU_WHEELS:-.gpu/wheels} site=${GPU_SITE:-/tmp/gpu-site}
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "fastai is not installed and $wheels holds no wheels: run scripts/gpu-wheels.sh here" \
      "and carry $wheels" | tee "$log" >&2
    exit 2
  fi
  whl=("$wheels"/*.whl)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${whl[@]}" || exit 2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed ${#whl[@]} wheels from $wheels in $(($(date +%s) - started)) s" | tee "$log"
fi

finish_by=$((started + limit - COPY_S))
left=$((finish_by - $(date +%s)))
if [ "$left" -le 0 ]; then  # (`timeout 0` would mean no limit at all)
  echo "no time left to train: start-up took $(($(date +%s) - started)) s of ${limit} s" \
    | tee -a "$log"
  exit 124
fi
# the hard stop, should the budgets be wrong: SIGINT at the deadline, SIGKILL 5 s later
PYTHONUNBUFFERED=1 timeout --signal=INT --kill-after=5 "$left" \
  "$PYTHON" -m training "$stage" --config "$config" --data "$corpus" --out "$run" --weights-only \
  --finish-by "$finish_by" "$@" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
"$PYTHON" -m training.run_files "$run" "$results"
echo "wall time $(($(date +%s) - started)) s of the ${limit} s limit, exit status $status" \
  | tee -a "$log"
exit "$status"
