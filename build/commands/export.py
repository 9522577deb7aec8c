"""`expert export`: export a checkpoint to ONNX (int4/int8/fp32) for onnxruntime-genai.

Run: `expert export --model DIR --out DIR [--backend genai|optimum] [--precision int4|int8|fp32]`
     `expert export --model DIR --out DIR --runtime-adapter NAME=LORA_DIR ...`
Tests: .venv/bin/pytest tests/build/test_export_llm.py tests/build/test_adapters.py

The work is done by build/export_llm.py; this module is its command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.errors import UserFacingError
from build.export_llm import (
    BACKENDS,
    EXECUTION_PROVIDERS,
    PRECISIONS,
    export_llm,
    read_export_record,
)
from build.int4_options import (
    ALL_ALGOS,
    BLOCK_SIZES,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_INT4_ALGO,
    EMBEDDING_BITS,
    Int4Options,
)

HELP = "Export a checkpoint to ONNX (int4/int8/fp32) for onnxruntime-genai."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="HF checkpoint folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder (must not exist)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="genai",
        help="genai: onnxruntime-genai model builder (default); optimum: Optimum "
        "export + onnxruntime MatMulNBits quantizer",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="int4")
    parser.add_argument(
        "--device",
        choices=EXECUTION_PROVIDERS,
        default="cpu",
        help="execution provider the model is built for (default cpu)",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        choices=BLOCK_SIZES,
        default=DEFAULT_BLOCK_SIZE,
        help=f"quantization block size (default {DEFAULT_BLOCK_SIZE})",
    )
    parser.add_argument(
        "--int4-algo",
        choices=ALL_ALGOS,
        default=DEFAULT_INT4_ALGO,
        help=f"weight quantization algorithm (default {DEFAULT_INT4_ALGO}; hqq: "
        "optimum backend only)",
    )
    parser.add_argument(
        "--accuracy-level",
        type=int,
        choices=(0, 1, 2, 3, 4),
        default=None,
        help="MatMulNBits compute accuracy: 4 int8 (CPU default), 1 fp32, 0 unset",
    )
    sym = parser.add_mutually_exclusive_group()
    sym.add_argument(
        "--symmetric",
        dest="symmetric",
        action="store_true",
        default=True,
        help="symmetric weight quantization (default)",
    )
    sym.add_argument(
        "--asymmetric",
        dest="symmetric",
        action="store_false",
        help="asymmetric (zero-point) weight quantization",
    )
    parser.add_argument(
        "--adapter",
        type=Path,
        default=None,
        help="peft LoRA folder to merge into the weights before export",
    )
    parser.add_argument(
        "--runtime-adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="peft LoRA folder to serve per request under NAME (repeatable); the "
        "output then holds llm/ (the base with LoRA inputs) and adapters/",
    )
    parser.add_argument(
        "--embedding-bits",
        type=int,
        choices=EMBEDDING_BITS,
        default=4,
        help="bits of an untied token embedding (GatherBlockQuantized): 4 (default), 8, or 0 "
        "to keep it fp32; a tied one shares the LM head's quantized matrix",
    )
    parser.add_argument(
        "--skip-memory-check",
        dest="memory_check",
        action="store_false",
        help="export even when the estimated peak memory exceeds what the box has available",
    )
    parser.add_argument("--force", action="store_true", help="replace a finished output folder")
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the onnxruntime-genai smoke test of the result",
    )


def run(args: argparse.Namespace) -> int:
    try:
        int4 = Int4Options(
            block_size=args.block_size,
            algo=args.int4_algo,
            symmetric=args.symmetric,
            accuracy_level=args.accuracy_level,
            embedding_bits=args.embedding_bits,
        )
    except ValueError as exc:
        raise UserFacingError(str(exc)) from exc
    if args.runtime_adapter:
        return _run_runtime_adapters(args, int4)
    out = export_llm(
        args.model,
        args.out,
        backend=args.backend,
        precision=args.precision,
        int4=int4,
        execution_provider=args.device,
        adapter_dir=args.adapter,
        force=args.force,
        verify=args.verify,
        memory_check=args.memory_check,
    )
    record = read_export_record(out)
    print(
        f"exported {args.model} -> {out} ({record['backend']}, {record['precision']}, "
        f"{record['execution_provider']}) in {record['duration_s']} s"
    )
    return 0


def _run_runtime_adapters(args: argparse.Namespace, int4: Int4Options) -> int:
    from build.adapters import export_runtime_adapters

    if args.adapter is not None:
        raise UserFacingError(
            "--adapter (merge) and --runtime-adapter cannot be combined; merge "
            "first with `expert merge`, then export that with --runtime-adapter."
        )
    adapters: dict[str, Path] = {}
    for spec in args.runtime_adapter:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserFacingError(
                f"--runtime-adapter {spec!r}: write it as NAME=DIR, e.g. "
                "maintenance=var/adapters/maintenance."
            )
        if name in adapters:
            raise UserFacingError(f"--runtime-adapter: the name {name!r} is given twice.")
        adapters[name] = Path(path)
    out = export_runtime_adapters(
        args.model,
        adapters,
        args.out,
        backend=args.backend,
        precision=args.precision,
        int4=int4,
        execution_provider=args.device,
        force=args.force,
    )
    print(
        f"exported {args.model} with runtime adapters {', '.join(adapters)} -> {out} "
        "(llm/ and adapters/; pass both to `expert bundle`)"
    )
    return 0
