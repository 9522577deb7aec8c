"""`expert device`: verify, install and switch bundles in the device's state directory.

Run: `expert device install bundle-plant-0.2.0.tar --activate`, `expert device rollback`,
     `expert device activate bundle-plant-0.1.0`, `expert device current|list`,
     `expert device verify DIR`   (install.sh runs these as root)
Tests: .venv/bin/pytest tests/appliance/test_bundle_verify.py

The operations are appliance/bundle.py's; the signature policy comes from the flags, else from
EXPERT_REQUIRE_SIGNATURE and EXPERT_BUNDLE_PUBLIC_KEY, as it does for the service.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "Verify, install and switch bundles on the device (install, activate, rollback, ...)."
DEFAULT_STATE_DIR = "/var/lib/industry-expert"


def register(subparsers: argparse._SubParsersAction) -> None:
    from appliance.bundle import ENV_PUBLIC_KEY, ENV_REQUIRE_SIGNATURE, ENV_STATE_DIR

    parser = subparsers.add_parser("device", help=HELP, description=HELP)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get(ENV_STATE_DIR, DEFAULT_STATE_DIR)),
        help=f"state directory (default: ${ENV_STATE_DIR} or {DEFAULT_STATE_DIR})",
    )
    common.add_argument(
        "--require-signature",
        action="store_true",
        default=None,
        help=f"refuse unsigned bundles (default: ${ENV_REQUIRE_SIGNATURE})",
    )
    common.add_argument(
        "--public-key", type=Path, help=f"ed25519 .pub file (default: ${ENV_PUBLIC_KEY})"
    )
    actions = parser.add_subparsers(dest="action", metavar="action", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=help_text, parents=[common])

    add("verify", "verify a bundle folder").add_argument("bundle", type=Path)
    install = add("install", "verify and install a bundle folder or tarball")
    install.add_argument("bundle", type=Path)
    install.add_argument("--activate", action="store_true", help="also make it current")
    add("activate", "make an installed bundle current").add_argument(
        "name", help="bundle folder name, e.g. bundle-plant-1.0.0"
    )
    add("rollback", "switch back to the previous bundle")
    add("current", "print the folder of the current bundle")
    add("list", "list installed bundles (* marks the current one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from appliance import bundle as bundles

    env_policy = bundles.SignaturePolicy.from_env()
    require = args.require_signature
    kw = {
        "require_signature": env_policy.require_signature if require is None else require,
        "public_key": args.public_key or env_policy.public_key,
    }
    if args.action == "verify":
        b = bundles.load_bundle(args.bundle, **kw)
        print(
            f"OK {b.root}: {b.name} {b.version}, {len(b.manifest['files'])} files verified"
            + (", signature valid" if b.signed else ", not signed")
        )
    elif args.action == "install":
        dest = bundles.install_bundle(args.bundle, args.state_dir, activate_now=args.activate, **kw)
        print(f"installed {dest}" + (" (now current)" if args.activate else ""))
    elif args.action == "activate":
        print(f"current -> {bundles.activate(args.state_dir, args.name, **kw)}")
    elif args.action == "rollback":
        print(f"current -> {bundles.rollback(args.state_dir, **kw)}")
    elif args.action == "current":
        print(bundles.resolve_current(args.state_dir))
    elif args.action == "list":
        current = bundles.current_name(args.state_dir)
        for name in bundles.list_installed(args.state_dir):
            print(("* " if name == current else "  ") + name)
    return 0
