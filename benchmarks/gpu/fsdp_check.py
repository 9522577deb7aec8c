"""`expert train` under the committed FSDP accelerate config on CUDA, beside a plain run.

Run: bash benchmarks/gpu/fsdp_run.sh        (on a lent CUDA box; see that script for what it carries)
     python3 benchmarks/gpu/fsdp_check.py --base DIR --out result.json [--steps 30] [--phi3-base DIR]

Each run is a fresh process of the real CLI (`python3 -m appliance.cli train`, or the same under
`accelerate launch --config_file trainer/accelerate/fsdp.yaml --num_processes 1`), LoRA, bf16, on
examples/plant/qa/train.jsonl. One GPU means one FSDP process: this checks that the FSDP path
(wrapping the PEFT model, mixed precision, gathering the adapter on save) runs and writes an
adapter with the same tensors as the plain run; it cannot show memory split over GPUs.
The bases are random-weight checkpoints (benchmarks/gpu/random_checkpoint.py): loss values are
recorded but mean nothing; throughput and peak memory do.
Checks in the JSON: both runs finish, the FSDP adapter has the plain adapter's tensor names and
shapes, no empty tensor, and its lora_B weights moved from zero.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "plant" / "qa" / "train.jsonl"
FSDP_CONFIG = REPO / "trainer" / "accelerate" / "fsdp.yaml"


def environment() -> dict:
    import torch

    from appliance.common.versions import package_versions

    names = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers")
    env: dict = {"python": sys.version.split()[0], "packages": package_versions(names)}
    env["cuda"] = torch.cuda.is_available()
    if env["cuda"]:
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return env


def run_training(
    name: str, base: Path, work: Path, steps: int, fsdp: bool, extra: list[str]
) -> dict:
    out = work / name
    train_args = [
        "-m", "appliance.cli", "train", "--base", str(base), "--data", str(DATA),
        "--out", str(out), "--method", "lora", "--max-steps", str(steps), "--epochs", "100",
        "--batch-size", "8", "--max-seq-length", "512", "--early-stopping-patience", "0",
        "--eval-fraction", "0.05", *extra,
    ]  # fmt: skip
    if fsdp:
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG),
            "--num_processes", "1", *train_args,
        ]  # fmt: skip
    else:
        cmd = [sys.executable, *train_args]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    wall = time.perf_counter() - started
    record: dict = {
        "name": name,
        "command": " ".join(cmd[1:]),
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
    }
    summary = out / "training_summary.json"
    if proc.returncode != 0 or not summary.is_file():
        text = (proc.stderr or "") + (proc.stdout or "")
        errors = [ln for ln in text.splitlines() if "Error" in ln or "error:" in ln]
        record["error_lines"] = list(dict.fromkeys(errors))[:15]
        record["error_tail"] = text[-3000:]
        return record
    s = json.loads(summary.read_text())
    record.update(
        {
            k: s.get(k)
            for k in (
                "global_step",
                "train_runtime_s",
                "train_tokens",
                "tokens_per_second",
                "peak_cuda_memory_mib",
                "eval_loss_before",
                "eval_loss",
            )
        }
    )
    record["adapter"] = str(out / "adapter_model.safetensors")
    return record


def compare_adapters(plain: Path, fsdp: Path) -> dict:
    from safetensors.torch import load_file

    a, b = load_file(str(plain)), load_file(str(fsdp))
    shapes_a = {k: list(v.shape) for k, v in a.items()}
    shapes_b = {k: list(v.shape) for k, v in b.items()}
    b_moved = [float(v.abs().max()) for k, v in b.items() if "lora_B" in k]
    return {
        "tensors": len(b),
        "same_names_and_shapes": shapes_a == shapes_b,
        "empty_tensors": sum(1 for v in b.values() if v.numel() == 0),
        "lora_B_trained": bool(b_moved) and min(b_moved) > 0,
        "dtype": str(next(iter(b.values())).dtype) if b else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, required=True, help="SmolLM2-shaped checkpoint")
    parser.add_argument("--phi3-base", type=Path, help="optional larger checkpoint (FSDP only)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fsdp_check"))
    parser.add_argument("--budget-s", type=float, default=200.0, help="skip the large run after")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    result: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "env": environment(),
        "accelerate_config": FSDP_CONFIG.read_text(),
        "settings": {"steps": args.steps, "batch_size": 8, "max_seq_length": 512, "rank": 16},
        "data": str(DATA.relative_to(REPO)),
        "runs": [],
        "checks": {},
    }

    def save() -> None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    plain = run_training("smollm2_plain", args.base, args.work, args.steps, False, [])
    result["runs"].append(plain)
    save()
    fsdp = run_training("smollm2_fsdp", args.base, args.work, args.steps, True, [])
    result["runs"].append(fsdp)
    if fsdp["returncode"] != 0:  # one retry without the trainer's gradient checkpointing
        retry = ["--no-gradient-checkpointing"]
        fsdp = run_training("smollm2_fsdp_no_gc", args.base, args.work, args.steps, True, retry)
        result["runs"].append(fsdp)
    save()
    checks = result["checks"]
    checks["plain_finished"] = plain["returncode"] == 0 and "global_step" in plain
    checks["fsdp_finished"] = fsdp["returncode"] == 0 and "global_step" in fsdp
    if checks["plain_finished"] and checks["fsdp_finished"]:
        checks["adapter"] = compare_adapters(Path(plain["adapter"]), Path(fsdp["adapter"]))
        checks["fsdp_vs_plain_tokens_per_second"] = round(
            fsdp["tokens_per_second"] / plain["tokens_per_second"], 3
        )
    save()
    if args.phi3_base is not None:
        if time.perf_counter() - started < args.budget_s:
            big = run_training("phi3mini_shape_fsdp", args.phi3_base, args.work, 8, True, [])
            result["runs"].append(big)
            checks["phi3mini_shape_fsdp_finished"] = big["returncode"] == 0
        else:
            result["skipped"] = f"phi3-mini shape: over the {args.budget_s:.0f} s budget"
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    save()
    ok = checks["plain_finished"] and checks["fsdp_finished"]
    ok = (
        ok and checks["adapter"]["same_names_and_shapes"] and not checks["adapter"]["empty_tensors"]
    )
    print(json.dumps(checks, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
