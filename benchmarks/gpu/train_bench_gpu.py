"""LoRA vs QLoRA on CUDA: the training benchmark's GPU run, in one short self-checking script.

Run: bash benchmarks/gpu/run_gpu_check.sh SMOLLM2_HF_DIR      (wraps this with a time limit)
     python3 benchmarks/gpu/train_bench_gpu.py --base SMOLLM2_HF_DIR --out result.json [--steps 40]

Needs only this repository's trainer/ and benchmarks/records.py, the checkpoint folder, and
torch (CUDA), transformers, peft, accelerate, bitsandbytes. Each method trains in a fresh
process through the real `trainer.train.train` path (trainer.bench), bf16 where the GPU has
it, on examples/plant/qa/train.jsonl (or a generated set when that file is absent).
The JSON holds the environment, both raw measurements, the suite records (as
benchmarks/results/latest.json has them) and the check "frozen base: QLoRA <= 30% of LoRA".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from appliance.common.versions import package_versions  # noqa: E402

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "safetensors",
    "tokenizers",
)


def environment() -> dict:
    env: dict = {"python": sys.version.split()[0], "packages": package_versions(PACKAGES)}
    try:
        import torch

        env["cuda"] = torch.cuda.is_available()
        if env["cuda"]:
            env["gpu"] = torch.cuda.get_device_name(0)
            env["bf16"] = torch.cuda.is_bf16_supported()
            env["gpu_memory_gib"] = round(
                torch.cuda.get_device_properties(0).total_memory / 2**30, 1
            )
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        env["cuda"] = False
        env["torch_error"] = repr(exc)
    return env


def training_data(tmp: Path) -> Path:
    data = REPO / "examples" / "plant" / "qa" / "train.jsonl"
    if data.is_file():
        return data
    path = tmp / "train.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(240):
            q = f"What is the set point of loop TIC-{100 + i} in area {i % 7}?"
            a = f"TIC-{100 + i} is set to {20 + i % 50} °C; alarm at {30 + i % 50} °C."
            fh.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": q},
                            {"role": "assistant", "content": a},
                        ]
                    }
                )
                + "\n"
            )
    return path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, required=True, help="SmolLM2 HF checkpoint folder")
    parser.add_argument("--out", type=Path, required=True, help="result JSON path")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument(
        "--allow-cpu", action="store_true", help="dry run of this script without a GPU"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    report: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "env": environment(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=2, default=str))

    save()
    print(json.dumps(report["env"], indent=2), flush=True)
    if not (args.base / "config.json").is_file():
        report["error"] = f"{args.base} has no config.json: pass the SmolLM2 HF checkpoint folder"
        save()
        return 2
    missing = [
        p
        for p in ("torch", "transformers", "peft", "accelerate")
        if not report["env"]["packages"][p]
    ]
    if missing or not (report["env"].get("cuda") or args.allow_cpu):
        report["error"] = (
            f"cannot run: missing packages {missing}" if missing else "no CUDA device visible"
        )
        save()
        return 2

    from trainer.bench import measure_in_subprocess

    settings = {
        "steps": args.steps,
        "warmup": 3,
        "batch_size": args.batch_size,
        "max_seq_length": args.max_seq_length,
        "rank": 16,
    }
    report["settings"] = settings
    methods = ["lora", "qlora"] if report["env"]["packages"]["bitsandbytes"] else ["lora"]
    if "qlora" not in methods:
        report["qlora"] = {"error": "bitsandbytes is not installed"}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        data = training_data(Path(tmp))
        report["data"] = str(data.relative_to(REPO) if data.is_relative_to(REPO) else data.name)
        for method in methods:
            started = time.perf_counter()
            print(f"== {method}: {args.steps} steps", flush=True)
            report[method] = measure_in_subprocess(
                args.base,
                data,
                method,
                timeout_s=float(os.environ.get("GPU_CHECK_TIMEOUT_S", "75"))
                if report["env"].get("cuda")
                else 1800,
                **settings,
            )
            report[method]["process_s"] = round(time.perf_counter() - started, 1)
            print(json.dumps(report[method], indent=2, default=str)[:3000], flush=True)
            save()

    lora, qlora = report.get("lora", {}), report.get("qlora", {})
    if "error" not in lora and "error" not in qlora and lora and qlora:
        ratio = qlora["frozen_base_bytes"] / lora["frozen_base_bytes"]
        report["check_frozen_base_ratio"] = {
            "ratio": round(ratio, 4),
            "target": 0.30,
            "ok": ratio <= 0.30,
        }
        try:
            from benchmarks.training_bench import records_from

            report["records"] = records_from(lora, qlora)
        except Exception as exc:  # noqa: BLE001 - the raw numbers above still stand
            report["records_error"] = repr(exc)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save()
    print(
        json.dumps(
            {k: report.get(k) for k in ("check_frozen_base_ratio", "records")},
            indent=2,
            default=str,
        )
    )
    return 0 if "error" not in lora else 1


if __name__ == "__main__":
    sys.exit(main())
