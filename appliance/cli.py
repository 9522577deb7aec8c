"""The `expert` command: one argparse tree, one small module per command.

Run: `expert --help`, `expert <command> --help`.
Tests: .venv/bin/pytest tests/appliance/test_cli.py

The commands register themselves (appliance/commands/__init__.py lists them): the device ones
always, the build-stage ones only where the build extra is installed, so `expert serve` on the
device never imports torch.

Exit status, for every command: 0 success; 1 a check that ran and failed (a failing quality
gate, an evaluation threshold not met); 2 bad usage or bad input, with a message that names the
problem and the fix; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys

from appliance import commands
from appliance.errors import UserFacingError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="expert",
        description="Offline industry expert: build, bundle and serve a small domain model.",
        epilog="exit status: 0 success, 1 a failed check, 2 bad usage or input",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="command", title="commands")
    commands.register_all(sub)
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _insert_default_subcommand(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`expert eval --bundle ...` -> `expert eval modes --bundle ...` (see with_default_subcommand)."""
    i = 0
    while i < len(argv) and argv[i] in ("-v", "--verbose"):
        i += 1
    if i >= len(argv):
        return argv
    command = _subcommands(parser).get(argv[i])
    default = getattr(command, "default_subcommand", None)
    if default is None:
        return argv
    rest = argv[i + 1 :]
    if rest and (rest[0] in _subcommands(command) or rest[0] in ("-h", "--help")):
        return argv
    return [*argv[: i + 1], default, *rest]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    argv = _insert_default_subcommand(parser, argv)
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error argparse has printed (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    name = args.command
    if extra and not getattr(args, "accepts_extra_args", False):
        explain = getattr(args, "explain_extra_args", None)
        message = explain(args, extra) if explain else None
        print(
            f"expert {name}: error: {message or 'unrecognized arguments: ' + ' '.join(extra)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except UserFacingError as exc:
        print(f"expert {name}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"expert {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
