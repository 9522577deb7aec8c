"""`expert serve`: serve a bundle (OpenAI-compatible API and terminal UI) under waitress.

Run: `expert serve --bundle var/bundles/bundle-plant-0.1.0 --state-dir var/state`
     `expert serve --add-key terminal-1`   (the same as `expert keys add terminal-1`)
Tests: .venv/bin/pytest tests/appliance/test_server_serve.py

Every flag has an `EXPERT_<NAME>` environment variable (appliance/server/config.py reads them);
appliance/server/serve.py does the serving.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.commands import keys as key_commands

HELP = "Serve a bundle: OpenAI-compatible API and terminal UI."

# ServeConfig fields that are set from flags of the same name.
CONFIG_FLAGS = (
    "bundle state_dir host port slots max_queue queue_timeout_s request_timeout_s "
    "max_body_bytes max_document_bytes max_tokens_limit top_k abstain_threshold abstain_message "
    "api_keys_file threads ui_language prefix_cache_tokens debug "
    "max_document_uncompressed_bytes max_document_pages max_document_chunks "
    "max_document_seconds header_timeout_s read_timeout_s max_connections cpu_slots "
    "allowed_hosts allowed_origins"
).split()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: <state-dir>/current)")
    parser.add_argument(
        "--state-dir", type=Path, help="writable state: keys, index copy (env EXPERT_STATE_DIR)"
    )
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8080)")
    parser.add_argument("--slots", type=int, help="concurrent generations (default: cores / 2)")
    parser.add_argument("--max-queue", type=int, help="requests waiting for a slot (0: 4 x slots)")
    parser.add_argument("--queue-timeout-s", type=float, help="longest wait for a slot (s)")
    parser.add_argument("--request-timeout-s", type=float, help="longest generation (s)")
    parser.add_argument("--max-body-bytes", type=int, help="largest request body (bytes)")
    parser.add_argument("--max-document-bytes", type=int, help="largest POST /v1/documents body")
    for name, what in (
        ("uncompressed-bytes", "inflated size of an uploaded DOCX"),
        ("pages", "pages of an uploaded PDF"),
        ("chunks", "chunks of one uploaded document"),
    ):
        parser.add_argument(f"--max-document-{name}", type=int, help=f"largest {what}")
    parser.add_argument(
        "--max-document-seconds", type=float, help="longest parse + embed of one upload (s)"
    )
    parser.add_argument("--header-timeout-s", type=float, help="time to send request headers")
    parser.add_argument("--read-timeout-s", type=float, help="time to send a whole request")
    parser.add_argument("--max-connections", type=int, help="open connections at most")
    parser.add_argument("--cpu-slots", type=int, help="concurrent embedding/retrieval requests")
    parser.add_argument("--allowed-hosts", help="extra Host names (comma-separated)")
    parser.add_argument("--allowed-origins", help="extra browser origins (comma-separated)")
    parser.add_argument("--max-tokens-limit", type=int, help="largest max_tokens accepted")
    parser.add_argument("--top-k", type=int, help="passages retrieved per question (default 5)")
    parser.add_argument(
        "--abstain-threshold",
        type=float,
        help="best dense score under which the documents are taken not to cover a question",
    )
    parser.add_argument("--abstain-message", help="what to answer then")
    parser.add_argument("--api-keys-file", type=Path, help="default <state-dir>/api_keys.json")
    parser.add_argument("--threads", type=int, help="onnxruntime threads per generation")
    parser.add_argument(
        "--ui-language",
        choices=("en", "es"),
        help="terminal page language (default: from the browser's Accept-Language)",
    )
    parser.add_argument(
        "--prefix-cache-tokens",
        type=int,
        help="KV tokens kept for reuse by the next request (default 2048; 0: off)",
    )
    parser.add_argument("--drain-timeout-s", type=float, default=30.0, help="SIGTERM grace (s)")
    parser.add_argument(
        "--debug", action="store_true", default=None, help="development only; refused in production"
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--add-key", metavar="NAME", help="create an API key, print it, and exit")
    keys.add_argument("--revoke-key", metavar="NAME", help="remove an API key and exit")
    keys.add_argument("--list-keys", action="store_true", help="list API key names and exit")


def run(args: argparse.Namespace) -> int:
    from appliance.server.config import ServeConfig
    from appliance.server.serve import ensure_state_dir, serve

    config = ServeConfig.load({n: getattr(args, n, None) for n in CONFIG_FLAGS})
    ensure_state_dir(config.state_dir)
    if args.add_key:
        return key_commands.add(config.keys_path, args.add_key)
    if args.revoke_key:
        return key_commands.revoke(config.keys_path, args.revoke_key)
    if args.list_keys:
        return key_commands.list_names(config.keys_path)
    return serve(config, drain_timeout_s=args.drain_timeout_s)
