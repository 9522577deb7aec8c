"""`expert keys add|revoke|list`: the service's API keys (sha256-hashed in a 0600 file).

Run: `expert keys add terminal-1 --state-dir /var/lib/industry-expert/service`
     `expert keys list`, `expert keys revoke terminal-1`
Tests: .venv/bin/pytest tests/appliance/test_server_security.py tests/appliance/test_cli.py

A new key is printed once; only its hash is stored. A running service takes changes on SIGHUP
(`systemctl reload industry-expert`). `expert serve --add-key/--revoke-key/--list-keys` do the
same.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Add, revoke or list the service's API keys."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keys", help=HELP, description=HELP)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, help="the service's state (env EXPERT_STATE_DIR)")
    common.add_argument("--api-keys-file", type=Path, help="default <state-dir>/api_keys.json")
    actions = parser.add_subparsers(dest="keys_action", metavar="action", required=True)
    add = actions.add_parser("add", parents=[common], help="create a key, print it once")
    add.add_argument("name", help="who the key is for, e.g. terminal-1")
    revoke = actions.add_parser("revoke", parents=[common], help="remove a key")
    revoke.add_argument("name")
    actions.add_parser("list", parents=[common], help="list key names and creation times")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from appliance.server.config import ServeConfig
    from appliance.server.serve import ensure_state_dir

    config = ServeConfig.load({"state_dir": args.state_dir, "api_keys_file": args.api_keys_file})
    ensure_state_dir(config.state_dir)
    if args.keys_action == "add":
        return add(config.keys_path, args.name)
    if args.keys_action == "revoke":
        return revoke(config.keys_path, args.name)
    return list_names(config.keys_path)


def add(path: Path, name: str) -> int:
    from appliance.server.auth import add_key

    key = add_key(path, name)
    print(f"API key {name!r} (shown only now; its hash is stored in {path}):")
    print(key)
    print("Send it as `Authorization: Bearer <key>`; reload a running service (SIGHUP).")
    return 0


def revoke(path: Path, name: str) -> int:
    from appliance.server.auth import revoke_key

    revoke_key(path, name)
    print(f"revoked {name!r}; reload a running service (SIGHUP) to apply")
    return 0


def list_names(path: Path) -> int:
    from appliance.server.auth import KeyStore

    for k in KeyStore.load(path).keys:
        print(f"{k.name}\t{k.created}")
    return 0
