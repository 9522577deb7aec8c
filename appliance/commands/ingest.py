"""`expert ingest SRC --index DIR`: build or update a retrieval index from a folder.

Run: `expert ingest examples/plant/docs --index var/index --embedder var/embedder`
Tests: .venv/bin/pytest tests/appliance/test_retrieval.py

Re-running on a changed folder adds new and changed files, removes deleted ones and skips
unchanged ones; unreadable files are listed and skipped.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from appliance.errors import UserFacingError

HELP = "Ingest a folder of documents into a retrieval index."
DEFAULT_EMBEDDER = Path(os.environ.get("EXPERT_EMBEDDER", "var/embedder"))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ingest", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, help="folder of documents (pdf docx html md txt csv)")
    parser.add_argument("--index", type=Path, required=True, help="index folder to create/update")
    parser.add_argument(
        "--embedder",
        type=Path,
        default=DEFAULT_EMBEDDER,
        help=f"ONNX embedder folder (default: $EXPERT_EMBEDDER or {DEFAULT_EMBEDDER})",
    )
    parser.add_argument(
        "--metadata",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata for every document, e.g. --metadata site=riverside (repeatable)",
    )
    parser.add_argument("--chunk-tokens", type=int, default=None, help="chunk size in tokens")
    parser.add_argument("--overlap-tokens", type=int, default=None, help="overlap in tokens")
    parser.add_argument(
        "--rebuild", action="store_true", help="start over (needed after changing the embedder)"
    )
    parser.add_argument("--threads", type=int, default=None, help="embedding threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from appliance.documents import ChunkingConfig
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import ingest_folder

    if not (args.embedder / "embedder.json").is_file():
        raise UserFacingError(
            f"no embedder at {args.embedder}; export one with "
            f"`expert export-embedder --out {args.embedder}` or pass --embedder DIR"
        )
    chunking = None
    if args.chunk_tokens is not None or args.overlap_tokens is not None:
        try:
            chunking = ChunkingConfig(
                max_tokens=args.chunk_tokens or ChunkingConfig.max_tokens,
                overlap_tokens=(
                    args.overlap_tokens
                    if args.overlap_tokens is not None
                    else ChunkingConfig.overlap_tokens
                ),
            )
        except ValueError as exc:
            raise UserFacingError(f"chunking: {exc}") from exc
    embedder = OnnxEmbedder(args.embedder, threads=args.threads)
    report = ingest_folder(
        args.src,
        args.index,
        embedder,
        metadata=dict(args.metadata),
        progress=not args.quiet,
        chunking=chunking,
        rebuild=args.rebuild,
    )
    print(report.summary())
    return 0
