"""`expert train`: fine-tune with LoRA or QLoRA on chat-format JSONL.

Run: `expert train --base DIR --data FILE --method lora|qlora --out DIR [--config FILE]`
     `accelerate launch --num_processes N -m appliance.cli train ...`   (several GPUs)
Tests: .venv/bin/pytest tests/trainer/test_train.py

The work is done by trainer/train.py; this module is its command line.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from trainer.config import (
    METHOD_DEFAULTS,
    METHODS,
    OVERLONG_POLICIES,
    PRECISIONS,
    read_config_file,
    resolve_config,
)
from trainer.train import TrainingInterrupted, train

log = logging.getLogger(__name__)

HELP = "Fine-tune with LoRA or QLoRA on chat-format JSONL."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help=HELP, description=HELP)
    add_arguments(parser)
    # The settings are this parser's own flags (the namespace also holds `expert`'s).
    settings = tuple(a.dest for a in parser._actions if a.dest not in ("help", "config"))
    parser.set_defaults(func=run, train_settings=settings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = "; ".join(
        f"{m}: " + ", ".join(f"{k}={v}" for k, v in d.items()) for m, d in METHOD_DEFAULTS.items()
    )
    parser.description = (parser.description or "") + f" Method defaults: {defaults}."
    p = parser.add_argument
    p("--base", type=Path, help="base model: a Hugging Face checkpoint folder")
    p("--data", type=Path, help="training data: chat JSONL ({'messages': [...]}) per line")
    p("--out", type=Path, help="output folder for the adapter (resumes if it holds checkpoints)")
    p("--method", choices=METHODS, help="lora (default) or qlora (4-bit NF4 base)")
    p("--config", type=Path, help="TOML or JSON file with any of these settings (flags win)")
    p("--eval-data", type=Path, help="separate eval JSONL; default: hold out --eval-fraction")
    p("--eval-fraction", type=float, help="share of questions held out for eval (default 0.1)")
    p("--rank", type=int, help="LoRA rank")
    p("--alpha", type=float, help="LoRA alpha")
    p("--dropout", type=float, help="LoRA dropout")
    p("--target-modules", help="'all-linear' (default) or a comma list such as q_proj,v_proj")
    p("--learning-rate", "--lr", dest="learning_rate", type=float, help="peak learning rate")
    p("--epochs", type=float, help="training epochs")
    p("--max-steps", type=int, help="stop after this many optimizer steps")
    p("--batch-size", type=int, help="examples per device per step (default 4)")
    p("--grad-accum", type=int, help="gradient accumulation steps (default 1)")
    p(
        "--max-seq-length",
        type=int,
        help="token limit per sample (default 2048, capped at the model's)",
    )
    p("--overlong", choices=OVERLONG_POLICIES, help="longer samples: drop (default) or truncate")
    p(
        "--early-stopping-patience",
        type=int,
        help="epochs without improvement before stopping; 0 = off",
    )
    p("--precision", choices=PRECISIONS, help="auto (bf16 on capable GPUs, else fp32)")
    p("--seed", type=int, help="random seed (default 42)")
    p(
        "--no-gradient-checkpointing",
        dest="gradient_checkpointing",
        action="store_const",
        const=False,
    )
    p(
        "--with-retrieval",
        type=Path,
        metavar="INDEX",
        help="RAG-aware training with this index folder",
    )
    p(
        "--embedder",
        type=Path,
        help="embedder folder for --with-retrieval (default: INDEX/../embedder)",
    )
    p("--retrieval-k", type=int, help="passages retrieved per question (default 3)")
    p(
        "--domain",
        help="RAG prompt wording: the domain phrase of the bundle that will serve the adapter "
        "(its manifest's prompting.domain); default: the plant's wording",
    )
    p(
        "--mix",
        action="append",
        metavar="FILE[:WEIGHT]",
        help="more chat JSONL mixed into the training split, each example repeated WEIGHT "
        "times (e.g. hand-written pairs beside synthesized ones); repeatable",
    )


def run(args: argparse.Namespace) -> int:
    file_values = read_config_file(args.config) if args.config else {}
    flags = {k: getattr(args, k) for k in args.train_settings}
    config = resolve_config(file_values, flags)
    try:
        result = train(config)
    except TrainingInterrupted as exc:
        log.warning("%s", exc)
        return 130
    print(json.dumps(result.to_json(), indent=2))
    return 0
