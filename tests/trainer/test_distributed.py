# Run: .venv/bin/pytest tests/trainer/test_distributed.py   (~1 min on 2 cores)
"""Two-process data-parallel training (accelerate launch, gloo on CPU) equals one process.

`accelerate launch --multi_gpu --num_processes 2 -m appliance.cli train ...` on a machine
without GPUs runs two CPU processes joined by gloo: the same code path as DDP on two GPUs. With
the same global batch (2 per process x 2 processes = 4 in one process), a data set that divides
into whole global batches, and no dropout, every step sees the same examples and the averaged
gradient equals the one-process gradient, so the losses must agree to float rounding.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.trainer.trainer_samples import TINY, qa_records, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one_with_the_same_global_batch(
    tiny_phi3_hf: Path, tmp_path: Path
) -> None:
    from trainer.config import TrainConfig
    from trainer.train import train

    records = qa_records()  # 24 conversations
    data = write_jsonl(tmp_path / "train.jsonl", records[4:])  # 20 = 5 global batches of 4
    evald = write_jsonl(tmp_path / "eval.jsonl", records[:4])
    common = {
        "learning_rate": TINY["learning_rate"],
        "dropout": 0.0,
        "epochs": 2,
        "early_stopping_patience": 0,
        "seed": 42,
    }
    one = train(
        TrainConfig(
            base=tiny_phi3_hf,
            data=data,
            eval_data=evald,
            out=tmp_path / "one",
            batch_size=4,
            logging_steps=1,
            **common,
        )
    )

    config = tmp_path / "settings.toml"
    config.write_text("logging_steps = 1\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "appliance.cli", "train",
        "--base", str(tiny_phi3_hf), "--data", str(data), "--eval-data", str(evald),
        "--out", str(tmp_path / "two"), "--config", str(config), "--batch-size", "2",
        "--lr", str(common["learning_rate"]), "--dropout", "0", "--epochs", "2",
        "--early-stopping-patience", "0", "--seed", "42",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count('"global_step": 10') == 2  # both processes ran all 10 steps

    two = tmp_path / "two"
    summary = json.loads((two / "training_summary.json").read_text())
    assert summary["global_step"] == one.global_step == 10
    assert summary["train_tokens"] == one.train_tokens  # the same examples, once each
    steps_one = {r["step"]: r for r in _records(one.out) if "loss" in r}
    steps_two = {r["step"]: r for r in _records(two) if "loss" in r}
    assert sorted(steps_one) == sorted(steps_two) == list(range(1, 11))
    for step, r in steps_one.items():
        assert abs(r["loss"] - steps_two[step]["loss"]) < 1e-3 * r["loss"], step
        # equal gradient norms: the gradients really were averaged across the two processes
        assert abs(r["grad_norm"] - steps_two[step]["grad_norm"]) < 1e-3 * r["grad_norm"], step
    assert abs(summary["eval_loss"] - one.eval_loss) < 1e-3 * one.eval_loss
    assert summary["eval_loss"] < summary["eval_loss_before"]

    # One adapter, written once by the main process, with the same weights as one process's.
    from safetensors.torch import load_file

    assert sorted(p.name for p in two.rglob("adapter_model.safetensors")) == [
        "adapter_model.safetensors"
    ]
    assert not (two / "checkpoints").exists()
    a, b = (
        load_file(one.out / "adapter_model.safetensors"),
        load_file(two / "adapter_model.safetensors"),
    )
    assert a.keys() == b.keys() and a
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= 1e-4 + 1e-3 * a[name].abs().max().item()
