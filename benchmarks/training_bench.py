"""Training suite: QLoRA (ours: 4-bit NF4 base) against LoRA (peer: full-precision base).

Run: `expert bench --suites training_bench --quick`
     (or directly: .venv/bin/python -m benchmarks.training_bench --quick)

Both methods fine-tune SmolLM2-135M on the example plant's Q&A data in one run, with the same
rank, batch, sequence limit and steps, each in a fresh process (trainer.bench). Records:
training tokens/s, memory of the frozen base weights (the design target: QLoRA <= 30% of
LoRA), and peak memory (torch.cuda.max_memory_allocated on CUDA; on the CPU the process's peak
RSS, which includes Python and torch themselves). benchmarks/gpu/ runs the same measurement on CUDA.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from benchmarks.records import make_record, skipped_record

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SUITE = "training"
PEER = "LoRA (full-precision frozen base, same run)"
FROZEN_BASE_TARGET = 0.30


def _smollm2_checkpoint(work: Path, gguf: Path | None) -> Path:
    """The SmolLM2 HF checkpoint: imported once from the embedded GGUF into <work>."""
    from build.import_model import default_gguf, import_model

    out = work / "smollm2-hf"
    if (out / "config.json").is_file():
        return out
    return import_model(gguf=gguf or default_gguf(), out=out)


def records_from(lora: dict[str, Any], qlora: dict[str, Any]) -> list[dict]:
    """Suite records from the two measurements (trainer.bench.measure results)."""
    params = {
        k: qlora.get(k)
        for k in ("device", "dtype", "steps", "timed_steps", "batch_size", "max_seq_length", "rank")
    }
    params["gradient_checkpointing"] = qlora.get("gradient_checkpointing")
    mib = 1024 * 1024
    out = [
        make_record(
            SUITE,
            "train_tokens_per_s",
            "tokens/s",
            round(qlora["train_tokens_per_s"], 1),
            round(lora["train_tokens_per_s"], 1),
            PEER,
            "higher",
            params=params,
            note="QLoRA dequantizes every frozen weight on each pass: slower per token, by design",
        ),
        make_record(
            SUITE,
            "frozen_base_memory",
            "MiB",
            round(qlora["frozen_base_bytes"] / mib, 1),
            round(lora["frozen_base_bytes"] / mib, 1),
            PEER,
            "lower",
            params=params,
            note=f"target: QLoRA <= {FROZEN_BASE_TARGET:.0%} of LoRA",
        ),
        make_record(
            SUITE,
            "peak_memory",
            "MiB",
            round(qlora["peak_bytes"] / mib, 1),
            round(lora["peak_bytes"] / mib, 1),
            PEER,
            "lower",
            params={**params, "peak_kind": qlora.get("peak_kind")},
        ),
    ]
    return out


def run(
    quick: bool = True,
    work: Path | None = None,
    plant: Path | None = None,
    gguf: Path | None = None,
) -> list[dict]:
    from trainer.bench import measure_in_subprocess

    work = Path(work) if work else REPO / "var" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    plant = Path(plant) if plant else REPO / "examples" / "plant"
    data = plant / "qa" / "train.jsonl"
    if not data.is_file():
        return [
            skipped_record(
                SUITE, "train_tokens_per_s", f"no training data at {data}", peer_name=PEER
            )
        ]
    base = _smollm2_checkpoint(work, Path(gguf) if gguf else None)
    # On 2 CPU cores one step of SmolLM2 (4 x ~100 tokens) costs ~10-30 s; quick keeps the
    # suite to a few minutes, the full run times more steps.
    settings = {
        "steps": 4 if quick else 12,
        "warmup": 1 if quick else 2,
        "batch_size": 4,
        "max_seq_length": 256,
        "rank": 16,
    }
    results = {}
    for method in ("lora", "qlora"):
        log.info("training benchmark: %s, %d steps", method, settings["steps"])
        results[method] = measure_in_subprocess(base, data, method, **settings)
        if "error" in results[method]:
            reason = f"{method} run failed: {results[method]['error'][-500:]}"
            return [skipped_record(SUITE, "train_tokens_per_s", reason, peer_name=PEER)]
    (work / "training_bench_raw.json").write_text(json.dumps(results, indent=2))
    return records_from(results["lora"], results["qlora"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(json.dumps(run(quick=args.quick, work=args.work), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
