"""The command registry: which `expert` commands exist, and which of them this install can run.

Tests: .venv/bin/pytest tests/appliance/test_cli.py

Each command is one module with `register(subparsers)`: it adds its subparser and points it at
a plain function (`parser.set_defaults(func=...)`), which returns the exit status. The device
commands live here, in appliance/commands/. The build-stage commands live in build/commands/
and are loaded only when the build extra is installed (torch, transformers and this project's
`build` package); otherwise they are still listed, and each says that it needs the extra and how
to install it (exit 2). This module is the one place in `appliance` that names the build stage.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# Device commands, in `expert --help` order: modules appliance/commands/<name>.py.
DEVICE_COMMANDS = ("serve", "ingest", "keys", "device")

# Build-stage commands, by name only (their modules are build/commands/*.py).
BUILD_COMMANDS = (
    "import-model",
    "fetch-model",
    "synth",
    "train",
    "merge",
    "export",
    "export-embedder",
    "bundle",
    "eval",
    "package",
    "bench",
)

# What must be importable for the build commands: the stage's key dependencies and its package.
BUILD_EXTRA_MODULES = ("torch", "transformers", "build.commands")

BUILD_EXTRA_INSTALL = (
    "`pip install torch==2.13.0 && pip install 'industry-expert[build]'` "
    "(from a source checkout: `make venv`)"
)


def missing_build_modules() -> list[str]:
    """The modules of the build extra this interpreter cannot import (empty: all there).

    The dependencies are looked up first and without importing them; `build.commands` (whose
    lookup imports the `build` package) only when they are all there."""
    missing = []
    for name in BUILD_EXTRA_MODULES:
        if missing and "." in name:
            break
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a missing parent package, or an import blocker
            found = False
        if not found:
            missing.append(name)
    return missing


def register_all(subparsers: argparse._SubParsersAction) -> None:
    """Add every command: the device ones, then the build ones or their stand-ins."""
    for name in DEVICE_COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    missing = missing_build_modules()
    if not missing:
        importlib.import_module("build.commands").register_commands(subparsers)
        return
    for name in BUILD_COMMANDS:
        parser = subparsers.add_parser(
            name, help="(needs the build extra, not installed here)", add_help=False
        )
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        parser.set_defaults(func=_needs_build_extra(name, missing), accepts_extra_args=True)


def _needs_build_extra(name: str, missing: list[str]):
    def run(_args: argparse.Namespace) -> int:
        print(
            f"expert {name}: this is a build-stage command and needs the build extra, which is "
            f"not installed here (missing: {', '.join(missing)}). Install it with "
            f"{BUILD_EXTRA_INSTALL}; the device commands ({', '.join(DEVICE_COMMANDS)}) work "
            "without it.",
            file=sys.stderr,
        )
        return 2

    return run


def with_default_subcommand(parser: argparse.ArgumentParser, default: str) -> None:
    """Mark `parser` (a command with subcommands) to run `default` when none is named, so
    `expert eval --bundle ...` stays `expert eval modes --bundle ...`."""
    parser.default_subcommand = default  # type: ignore[attr-defined]
