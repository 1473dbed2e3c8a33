#!/usr/bin/env bash
# Train the shipped models on a lent GPU machine (docs/training.md): the `gpu` config from the
# pre-tokenized corpus (`python -m training tokenize`), weights-only (no spaCy there), each phase
# fitted to a number of seconds. Copies the fp16 weights, metrics and log to RESULTS_DIR even when
# the time limit cuts the run short; `python -m training rebuild` turns them into learners.
#   scripts/train-gpu.sh CORPUS_DIR RUN_DIR RESULTS_DIR [LM_SECONDS] [CLF_SECONDS] [CONFIG]
set -uo pipefail
corpus=$1 run=$2 results=$3 lm_s=${4:-290} clf_s=${5:-180} config=${6:-gpu}; shift $(($# < 6 ? $# : 6))
mkdir -p "$results"
PYTHONUNBUFFERED=1 timeout --signal=INT $((lm_s + clf_s + 60)) python3 -m training all --config "$config" \
  --data "$corpus" --out "$run" --weights-only --lm-seconds "$lm_s" --clf-seconds "$clf_s" "$@" 2>&1 | tee "$results/train.log"
status=${PIPESTATUS[0]}
cp "$run"/weights/*.pt "$run"/metrics.json "$run"/config.json "$results"/ 2>/dev/null
ls -l "$results"
exit "$status"
