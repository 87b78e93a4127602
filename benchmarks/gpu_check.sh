#!/usr/bin/env bash
# Every GPU benchmark in one prepared run (under 8 minutes on one GPU); numbers go to $RESULTS.
#   bash benchmarks/gpu_check.sh [results.jsonl]
# Each line runs one benchmark's GPU part with its own time limit; a failing one is recorded and the
# others still run. Add a line per GPU benchmark (CLIP scoring, recaptioning, trainer MFU).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RESULTS=${1:-${RESULTS:-work/gpu_check/results.jsonl}}
mkdir -p "$(dirname "$RESULTS")"
export PYTHONPATH=${PYTHONPATH:-$PWD} HF_HUB_OFFLINE=1
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())' || exit 2

run() {  # run NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tail -n 40
  local rc=${PIPESTATUS[0]}
  echo "{\"check\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" >> "$RESULTS"
}

# trainer: ViT-L/14 336 px + ~1.2B LLM (random weights, from configs), bf16, packed 4096-token sequences
run train 240 "$PY" benchmarks/bench_train.py --gpu-only --gpu-steps 25 --json "$RESULTS"

echo "results: $RESULTS"
