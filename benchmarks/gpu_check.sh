#!/usr/bin/env bash
# Every GPU benchmark in one prepared script (under 8 minutes on one H100/H200): CLIP scoring,
# recaptioning, trainer MFU. Each writes its output to $RESULTS/<name>.txt; a summary prints at the end.
#   bash benchmarks/gpu_check.sh            (RESULTS defaults to $OUT, where the device runner collects files)
# One `run` line per GPU benchmark, each with its own time limit; a failing one is reported and the
# others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RESULTS=${RESULTS:-${OUT:-work/gpu_check}}
mkdir -p "$RESULTS"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())' || exit 2
status=0

run() {  # name, time limit (s), command...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$RESULTS/$name.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "!! $name exited $rc"; status=1; }
}

# CLIP scoring: ViT-L/14 336 px, bf16: the stage's pairs/s against a bare model loop
run clipscore 100 "$PY" benchmarks/bench_clipscore.py --gpu --samples 4096

# recaptioning: a ~2B VLM (SigLIP-so400m 384 px + Qwen2-1.5B-shaped decoder, random weights from configs),
# bf16, batch 128, 32 new tokens: captions/s per GPU, the stage against a bare generate loop, GPU utilisation
run recaption 140 "$PY" benchmarks/bench_recaption.py --gpu --rounds 1 --samples 512

# trainer: ViT-L/14 336 px + ~1.2B LLM (random weights, from configs), bf16, packed 4096-token sequences:
# tokens/s, MFU against the device's dense bf16 peak, data-wait share (also as JSON in train.json)
run train 240 "$PY" benchmarks/bench_train.py --gpu-only --gpu-steps 25 --json "$RESULTS/train.json"

echo "== summary"
grep -h -E "ratio|per GPU|GPU during|samples/s|captions/s|MFU" "$RESULTS"/*.txt | tail -40
exit $status
