"""`expert synth`: synthesize verified question/answer training pairs from an ingested index.

Run: `expert synth --bundle DIR --out DIR [--holdout EVAL.jsonl] [--generative N --teacher DIR]`
Tests: .venv/bin/pytest tests/build/test_synth.py

The work is done by build/synth.py; this module is its command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.errors import UserFacingError
from build.synth import ROUND_TRIP_K, format_report, load_holdout, synthesize, write_outputs

HELP = "Synthesize verified question/answer training pairs from an ingested index."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("--bundle", type=Path, help="a bundle: its index, embedder, model (teacher) and wording")
    p("--index", type=Path, help="an index folder (expert ingest); default: the bundle's")
    p("--embedder", type=Path, help="the embedder that built --index (default: INDEX/../embedder)")
    p("--out", type=Path, required=True, help="output folder (pairs.jsonl, dropped.jsonl, report)")
    p("--teacher", type=Path, help="ONNX model folder of the teacher (default: the bundle's model)")
    p("--generative", type=int, default=0, help="chunks the teacher writes a pair for (default 0)")
    p("--retries", type=int, default=2, help="teacher retries on output that is not valid JSON")
    p("--unanswerable", type=float, default=0.1, help="share of unanswerable pairs (default 0.1)")
    p(
        "--holdout",
        type=Path,
        action="append",
        default=[],
        help="eval JSONL never to copy; repeatable",
    )
    p("--k", type=int, default=ROUND_TRIP_K, help="round trip: evidence chunk in the top k")
    p("--languages", default="auto", help="auto (es+en for Spanish documents) or e.g. en,es")
    p("--domain", help="abstention wording for this domain (default: the bundle's)")
    p("--max-pairs", type=int, help="cap on structured candidates (a quick look at a big corpus)")
    p("--seed", type=int, default=42)
    p("--threads", type=int, help="teacher onnxruntime threads")


def run(args: argparse.Namespace) -> int:
    from appliance.embedding import OnnxEmbedder
    from appliance.prompting import wording, wording_from_manifest
    from appliance.retrieval import Retriever

    if args.generative < 0 or args.retries < 0:
        raise UserFacingError("--generative and --retries must be >= 0")
    if not 0 <= args.unanswerable < 1:
        raise UserFacingError("--unanswerable must be a share in [0, 1), e.g. 0.1")
    bundle = None
    if args.bundle is not None:
        from appliance.bundle import load_bundle

        bundle = load_bundle(args.bundle)
    index = args.index or (bundle.index_dir if bundle else None)
    if index is None:
        raise UserFacingError("pass --index DIR (an ingested index) or --bundle DIR")
    embedder = args.embedder or (bundle.embedder_dir if bundle and not args.index else None)
    if embedder is None:
        embedder = Path(index).parent / "embedder"
        if not embedder.is_dir():
            raise UserFacingError(
                f"pass --embedder DIR: the embedder that built {index} (none next to it)"
            )
    if args.domain:
        words = wording(args.domain)
    else:
        words = wording_from_manifest(bundle.manifest if bundle else None)
    generator = None
    if args.generative:
        teacher = args.teacher or (bundle.llm_dir if bundle else None)
        if teacher is None:
            raise UserFacingError("--generative needs --teacher LLM_DIR or --bundle DIR")
        from appliance.generation.genai import GenaiGenerator

        generator = GenaiGenerator(Path(teacher), threads=args.threads)
    retriever = Retriever.open(Path(index), OnnxEmbedder(Path(embedder)))
    try:
        result = synthesize(
            retriever=retriever,
            abstain=words.abstain,
            holdout=load_holdout(args.holdout),
            generator=generator,
            generative=args.generative,
            retries=args.retries,
            unanswerable=args.unanswerable,
            k=args.k,
            seed=args.seed,
            languages=args.languages,
            max_pairs=args.max_pairs,
        )
    finally:
        retriever.close()
    paths = write_outputs(result, args.out)
    print(format_report(result).split("\n## ")[0].rstrip())
    print(
        f"\nkept pairs: {paths['pairs']}  dropped: {paths['dropped']}  report: {paths['report_md']}"
    )
    return 0
