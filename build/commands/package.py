"""`expert package`: one tarball for an air-gapped box: bundle, wheelhouse, systemd unit, install.sh.

Run: `expert package --bundle var/bundles/bundle-plant-0.1.0 --out dist [--public-key K.pub] [--sign-key K]`
Tests: .venv/bin/pytest tests/build/test_package.py

The work is done by build/package.py; this module is its command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from build.package import REPO, make_package

HELP = "One tarball for an air-gapped box: bundle, wheelhouse, systemd unit, install.sh."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("package", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder to ship")
    parser.add_argument("--out", type=Path, default=Path("dist"), help="output folder")
    parser.add_argument(
        "--public-key", type=Path, help="bundle public key (.pub): the device will require it"
    )
    parser.add_argument(
        "--sign-key", type=Path, help="ed25519 private key: signs the package's SHA256SUMS"
    )
    parser.add_argument(
        "--wheel-cache",
        type=Path,
        default=REPO / "var" / "wheel-cache",
        help="keeps wheels compiled from source between runs (default var/wheel-cache)",
    )


def run(args: argparse.Namespace) -> int:
    path = make_package(
        args.bundle,
        args.out,
        wheel_cache=args.wheel_cache,
        public_key=args.public_key,
        signing_key=args.sign_key,
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
