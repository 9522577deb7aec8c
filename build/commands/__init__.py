"""The build stage's `expert` commands: one module each, registered by `register_commands`.

Tests: .venv/bin/pytest tests/appliance/test_cli.py

appliance/commands/__init__.py calls `register_commands` only where the build extra (torch,
transformers) is installed. Each module adds its subparser and calls a plain function of the
module that does the work; those modules import no command-line code.
"""

from __future__ import annotations

import argparse
import importlib

# In `expert --help` order; the command name is the module name with "-" for "_".
COMMAND_MODULES = (
    "import_model",
    "fetch_model",
    "synth",
    "train",
    "merge",
    "export",
    "export_embedder",
    "bundle",
    "eval",
    "package",
    "bench",
)


def register_commands(subparsers: argparse._SubParsersAction) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
