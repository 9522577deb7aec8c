#!/usr/bin/env bash
# Run (repository root, on a CUDA machine): bash benchmarks/gpu/run_gpu_check.sh SMOLLM2_HF_DIR
# Writes $OUT/training_gpu.json (LoRA vs QLoRA on CUDA: tokens/s, peak CUDA memory, frozen-base
# memory) and $OUT/training_gpu.log. Needs torch with CUDA, transformers, peft, accelerate and,
# for QLoRA, bitsandbytes; a missing package is reported in the JSON, not fatal. No network.
# Budget: under 3 minutes on one H100 (two fresh processes of ~40 s each, plus the checks).
# Extra flags for train_bench_gpu.py go in GPU_CHECK_ARGS (a CPU dry run of this script:
# GPU_CHECK_ARGS="--allow-cpu --batch-size 2 --max-seq-length 64", with a tiny model as base).
set -uo pipefail

BASE="${1:?usage: bash benchmarks/gpu/run_gpu_check.sh SMOLLM2_HF_DIR [STEPS]}"
STEPS="${2:-40}"
OUT="${OUT:-$(mktemp -d)}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "== $(date -u +%FT%TZ) GPU check on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
} > "$OUT/training_gpu.log"

timeout 170 "$PY" benchmarks/gpu/train_bench_gpu.py --base "$BASE" --steps "$STEPS" \
  --out "$OUT/training_gpu.json" ${GPU_CHECK_ARGS:-} >> "$OUT/training_gpu.log" 2>&1
rc=$?
tail -n 40 "$OUT/training_gpu.log"
echo "== exit $rc; results: $OUT/training_gpu.json"
exit $rc
