"""`expert merge`: merge a LoRA/QLoRA adapter into its full-precision base.

Run: `expert merge --base DIR --adapter DIR --out DIR [--dtype auto|fp32|bf16|fp16] [--verify]`
Tests: .venv/bin/pytest tests/trainer/test_merge.py

The work is done by trainer/merge.py; this module is its command line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.merge import DTYPES, merge_adapter

HELP = "Merge a LoRA/QLoRA adapter into its full-precision base."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("merge", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base", type=Path, required=True, help="the base checkpoint the adapter was trained on"
    )
    parser.add_argument(
        "--adapter", type=Path, required=True, help="an `expert train` output folder"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="new folder for the merged checkpoint"
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="saved dtype (default: the base's)"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="compare logits of adapter and merged model (loads the base twice)",
    )


def run(args: argparse.Namespace) -> int:
    record = merge_adapter(args.base, args.adapter, args.out, dtype=args.dtype, verify=args.verify)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "dtype": record["dtype"],
                "verify": record["verify_max_abs_logit_diff"],
            }
        )
    )
    return 0
