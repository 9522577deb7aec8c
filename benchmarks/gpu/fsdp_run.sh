#!/usr/bin/env bash
# Run on a lent CUDA box from the repository root (about 4 minutes):  bash benchmarks/gpu/fsdp_run.sh
# Carried (git-ignored): .whl/ (transformers 4.57.6, tokenizers 0.22.2, huggingface-hub 0.36.2,
# peft 0.21.2: the versions this project pins; accelerate 1.15.0 and torch come with the box) and
# gpu_carry/smollm2-cfg/ (config.json and tokenizer files of the imported SmolLM2, tokenizer.json
# gzipped; the box cannot download and the 64 MiB link cannot carry the weights).
# Writes $OUT/fsdp_gpu.json (benchmarks/gpu/fsdp_check.py) and $OUT/fsdp_gpu.log.
set -u
OUT="${OUT:-$(mktemp -d)}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH="/tmp/site:$(pwd)" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch,transformers,peft,accelerate;print(torch.__version__,transformers.__version__,peft.__version__,accelerate.__version__)"
  python3 benchmarks/gpu/random_checkpoint.py --config-dir gpu_carry/smollm2-cfg --out /tmp/smollm2 --dtype bf16
  python3 benchmarks/gpu/random_checkpoint.py --config-dir gpu_carry/smollm2-cfg --out /tmp/phi3mini --phi3-mini --dtype bf16
  timeout 300 python3 benchmarks/gpu/fsdp_check.py --base /tmp/smollm2 --phi3-base /tmp/phi3mini \
      --steps 30 --budget-s 150 --out "$OUT/fsdp_gpu.json"
  echo "exit $?"
} > "$OUT/fsdp_gpu.log" 2>&1
tail -n 60 "$OUT/fsdp_gpu.log"
