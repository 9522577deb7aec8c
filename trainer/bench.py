"""Training throughput and memory of one method, measured through the real `train()` path.

Run: .venv/bin/python -m trainer.bench --base DIR --data FILE --method qlora --steps 20 --json OUT
Used by benchmarks/training_bench.py (CPU) and benchmarks/gpu/ (CUDA); each method runs in a fresh
process (`measure_in_subprocess`) so one method's peak memory cannot leak into the other's.

Measured:
- train_tokens_per_s: non-padding tokens per second over the optimizer steps after the first
  `warmup` ones (no evaluation or checkpointing inside the timed window);
- frozen_base_bytes: bytes of the frozen base weights as loaded for training (4-bit data plus
  quantization statistics for QLoRA), each storage counted once;
- peak_bytes: torch.cuda.max_memory_allocated() over the training steps on CUDA; on the CPU, the
  process's peak resident set size (it includes Python, torch and the model load).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.common.versions import package_versions

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]


def measure(
    base: Path,
    data: Path,
    method: str,
    *,
    steps: int = 20,
    warmup: int = 2,
    batch_size: int = 4,
    max_seq_length: int = 512,
    rank: int = 16,
    gradient_checkpointing: bool = True,
    precision: str = "auto",
) -> dict[str, Any]:
    """Train `steps` optimizer steps and return the measurements (see the module docstring)."""
    import torch
    from transformers import TrainerCallback

    from trainer.config import TrainConfig
    from trainer.modeling import frozen_weight_bytes
    from trainer.train import train

    cuda = torch.cuda.is_available()
    meter: dict[str, Any] = {"t": None, "tokens": None, "timed_s": 0.0, "timed_tokens": 0}

    class Meter(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            meter["frozen_base_bytes"] = frozen_weight_bytes(model)
            meter["trainable_params"] = sum(
                p.numel() for p in model.parameters() if p.requires_grad
            )
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if cuda:
                torch.cuda.synchronize()
                meter["cuda_peak"] = torch.cuda.max_memory_allocated()
            now, seen = time.perf_counter(), int(state.num_input_tokens_seen)
            if state.global_step > warmup and meter["t"] is not None:
                meter["timed_s"] += now - meter["t"]
                meter["timed_tokens"] += seen - meter["tokens"]
            meter["t"], meter["tokens"] = now, seen

    with tempfile.TemporaryDirectory(prefix=f"bench-{method}-") as tmp:
        config = TrainConfig(
            base=base,
            data=data,
            out=Path(tmp) / "out",
            method=method,
            rank=rank,
            alpha=2 * rank,
            dropout=0.05,
            learning_rate=2e-4,
            max_steps=steps,
            epochs=1,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            overlong="truncate",
            gradient_checkpointing=gradient_checkpointing,
            early_stopping_patience=0,
            eval_fraction=0.05,
            precision=precision,
            logging_steps=max(1, steps // 4),
        )
        started = time.perf_counter()
        result = train(config, callbacks=[Meter()])
        wall = time.perf_counter() - started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    tps = meter["timed_tokens"] / meter["timed_s"] if meter["timed_s"] > 0 else None
    return {
        "method": method,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "dtype": _dtype_name(config),
        "steps": result.global_step,
        "timed_steps": max(0, result.global_step - warmup),
        "batch_size": batch_size,
        "max_seq_length": max_seq_length,
        "rank": rank,
        "gradient_checkpointing": gradient_checkpointing,
        "train_tokens_per_s": tps,
        "frozen_base_bytes": meter.get("frozen_base_bytes"),
        "trainable_params": meter.get("trainable_params"),
        "peak_bytes": meter.get("cuda_peak") if cuda else peak_rss,
        "peak_kind": "torch.cuda.max_memory_allocated" if cuda else "process peak RSS",
        "peak_rss_bytes": peak_rss,
        "train_loss_first": next((h["loss"] for h in result.history if "loss" in h), None),
        "train_loss_last": next((h["loss"] for h in reversed(result.history) if "loss" in h), None),
        "eval_loss_before": result.eval_loss_before,
        "eval_loss_after": result.eval_loss,
        "wall_s": round(wall, 2),
        "versions": _versions(),
    }


def _dtype_name(config: Any) -> str:
    from trainer.modeling import device_and_dtype

    return str(device_and_dtype(config)[1]).replace("torch.", "")


def _versions() -> dict[str, str | None]:
    return package_versions(("torch", "transformers", "peft", "bitsandbytes", "accelerate"))


def measure_in_subprocess(
    base: Path, data: Path, method: str, timeout_s: float = 1800, **kwargs: Any
) -> dict[str, Any]:
    """`measure` in a fresh Python process; returns its JSON (or {"error": ...})."""
    with tempfile.TemporaryDirectory(prefix="bench-json-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "trainer.bench", "--base", str(base), "--data", str(data)]
        cmd += ["--method", method, "--json", str(out)]
        for key, value in kwargs.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                cmd += [flag] if value else ["--no-" + key.replace("_", "-")]
            else:
                cmd += [flag, str(value)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            tail = (
                exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
            )
            return {
                "method": method,
                "error": f"timed out after {timeout_s} s: {(tail or '')[-2000:]}",
            }
        if proc.returncode != 0 or not out.is_file():
            return {"method": method, "error": (proc.stderr or proc.stdout)[-3000:]}
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Measure LoRA/QLoRA training throughput and memory."
    )
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--method", choices=("lora", "qlora"), required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--precision", default="auto")
    parser.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    result = measure(
        args.base,
        args.data,
        args.method,
        steps=args.steps,
        warmup=args.warmup,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        rank=args.rank,
        gradient_checkpointing=args.gradient_checkpointing,
        precision=args.precision,
    )
    args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
