"""`expert bench`: run the benchmark suites against their peers (what `make bench` runs).

Run: `expert bench --bundle var/bundles/bundle-plant-0.1.0 --work var/work`
     `expert bench --suites generation --quick`
Tests: .venv/bin/pytest tests/benchmarks/test_bench_schema.py

The suites live in benchmarks/ (a source checkout; not in the wheels): benchmarks/run.py runs
them, each in its own process, and writes benchmarks/results/.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from appliance.errors import UserFacingError

HELP = "Run the benchmark suites against their peers."
SUITES_HELP = "generation, retrieval, embedding, training, service"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="the bundle to measure (its llm/, embedder/ and index/)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("var/work"),
        help="build work folder with smollm2-hf/, smollm2-int4/, embedder/ (default var/work)",
    )
    parser.add_argument(
        "--plant",
        type=Path,
        default=Path("examples/plant"),
        help="example plant folder (documents and Q&A) for prompts and queries",
    )
    parser.add_argument(
        "--suites",
        default=None,
        help=f"comma list of suites ({SUITES_HELP}) or modules; default all",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for every engine, ours and peers alike (default: usable cores)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default benchmarks/results)"
    )
    parser.add_argument(
        "--no-spinning",
        dest="spinning",
        action="store_false",
        help="engines' threads sleep between operators instead of spinning (for a box shared "
        "with other busy jobs; see benchmarks/generation_bench.py GenerationBenchConfig.spinning)",
    )
    parser.add_argument(
        "--carry-over",
        type=Path,
        default=None,
        help="a previous results JSON: the records of suites this run does not run are copied "
        "from it, each marked carried_over_from=<its date> (a partial re-run keeps one report)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds one suite may run before it is stopped (default 1800)",
    )


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("benchmarks") is None:
        raise UserFacingError(
            "the benchmark suites are not installed with the wheels; run `expert bench` from a "
            "source checkout (`make bench`)"
        )
    from benchmarks.run import run_benchmarks

    optional = {"out": args.out, "timeout_s": args.timeout}
    return run_benchmarks(
        bundle=args.bundle,
        work=args.work,
        plant=args.plant,
        suites=args.suites,
        quick=args.quick,
        threads=args.threads,
        spinning=args.spinning,
        carry_over_from=args.carry_over,
        **{k: v for k, v in optional.items() if v is not None},
    )
