"""A randomly initialised checkpoint of a given architecture, for speed and memory runs only.

Run: python3 benchmarks/gpu/random_checkpoint.py --config-dir DIR --out OUT [--phi3-mini] [--dtype bf16]

Training throughput and peak memory depend on the architecture, not on the weight values, so a
GPU box that cannot receive the real weights (the device link carries at most 64 MiB) measures
the same thing on random weights of the same shape. Loss curves from such a run mean nothing and
are not reported. `--config-dir` holds config.json and the tokenizer files (tokenizer.json may be
gzipped); `--phi3-mini` swaps in a Phi-3-mini-4k-shaped Phi3Config (3.8 B parameters) that keeps
that tokenizer, so the vocabulary is the tokenizer's, not Phi-3's 32,064.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--phi3-mini", action="store_true")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Phi3Config

    args.out.mkdir(parents=True, exist_ok=True)
    for f in args.config_dir.iterdir():
        if f.name.endswith(".gz"):
            with gzip.open(f, "rb") as src, (args.out / f.name[:-3]).open("wb") as dst:
                shutil.copyfileobj(src, dst)
        elif f.name != "config.json":
            shutil.copy2(f, args.out / f.name)
    base = AutoConfig.from_pretrained(str(args.config_dir))
    if args.phi3_mini:
        config = Phi3Config(
            vocab_size=base.vocab_size,
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            original_max_position_embeddings=4096,
            rope_scaling=None,
            bos_token_id=base.bos_token_id,
            eos_token_id=base.eos_token_id,
            pad_token_id=base.pad_token_id,
            tie_word_embeddings=False,
        )
    else:
        config = base
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    model.save_pretrained(str(args.out), safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"random {config.model_type} checkpoint: {n / 1e6:.1f} M parameters, "
        f"{args.dtype}, written to {args.out} in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
