# Run on a lent CUDA box from the repo root, with .whl (wheels: bitsandbytes 0.50.2, transformers 4.57.6,
# peft 0.21.2, tokenizers 0.22.2, huggingface-hub 0.36.2) and gpu_carry/smollm2-cfg (config + tokenizer
# of the imported SmolLM2, tokenizer.json gzipped) carried: bash benchmarks/gpu/device_run.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 GPU_CHECK_TIMEOUT_S=200
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch,transformers,peft,bitsandbytes;print(torch.__version__,transformers.__version__,peft.__version__,bitsandbytes.__version__)"
python3 benchmarks/gpu/random_checkpoint.py --config-dir gpu_carry/smollm2-cfg --out /tmp/smollm2 --dtype bf16
timeout 200 python3 benchmarks/gpu/train_bench_gpu.py --base /tmp/smollm2 --steps 40 --batch-size 8 --max-seq-length 512 --out $OUT/smollm2_gpu.json 2>&1 | grep -v "it/s\]" | tail -25
python3 benchmarks/gpu/random_checkpoint.py --config-dir gpu_carry/smollm2-cfg --out /tmp/phi3mini --phi3-mini --dtype bf16
timeout 280 python3 benchmarks/gpu/train_bench_gpu.py --base /tmp/phi3mini --steps 12 --batch-size 4 --max-seq-length 512 --out $OUT/phi3mini_gpu.json 2>&1 | grep -v "it/s\]" | tail -25
echo done
