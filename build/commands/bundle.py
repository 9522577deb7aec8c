"""`expert bundle`: assemble a versioned, checksummed bundle.

Run: `expert bundle --name plant --version 0.2.0 --out var/bundles --llm DIR --embedder DIR --index DIR --quality-gate gate.json`
     `expert bundle --generate-key keys/bundle-signing.key`   (an ed25519 pair for --sign-key)
Tests: .venv/bin/pytest tests/build/test_bundle_build.py tests/build/test_bundle_prompting.py

The work is done by build/bundle.py; this module is its command line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from appliance.errors import UserFacingError
from appliance.quality_gate import describe as describe_gate
from appliance.quality_gate import gate_summary
from build.bundle import MANIFEST_NAME, _read_json, build_bundle, generate_signing_key

HELP = "Assemble a versioned, checksummed bundle."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bundle", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llm", type=Path, help="onnxruntime-genai model folder (expert export)")
    parser.add_argument(
        "--embedder", type=Path, help="ONNX embedder folder (expert export-embedder)"
    )
    parser.add_argument("--index", type=Path, help="retrieval index folder (expert ingest)")
    parser.add_argument("--adapters", type=Path, help="optional runtime LoRA adapters folder")
    parser.add_argument("--name", help="bundle name, e.g. plant")
    parser.add_argument("--version", help="bundle version, e.g. 1.0.0")
    parser.add_argument("--out", type=Path, help="folder to write bundle-<name>-<version>/ into")
    parser.add_argument(
        "--quality-gate",
        type=Path,
        metavar="FILE.json",
        help="the gate result of --llm (expert eval quality-gate --out); required unless "
        "--accept-quality-loss",
    )
    parser.add_argument(
        "--accept-quality-loss",
        action="store_true",
        help="bundle a model whose gate is missing, malformed, failed or of another model; "
        "the manifest records it (problem, who, gate figures)",
    )
    parser.add_argument(
        "--quality-loss-reason",
        metavar="TEXT",
        help="why --accept-quality-loss (recorded in the manifest)",
    )
    parser.add_argument("--sign-key", type=Path, metavar="FILE", help="ed25519 private key (PEM)")
    parser.add_argument(
        "--extra", type=Path, metavar="FILE.json", help="extra manifest fields (JSON object)"
    )
    parser.add_argument(
        "--domain",
        help='what the documents are, for the bundle\'s prompts: "the Apache HTTP Server manual" '
        "(default: the example plant's wording)",
    )
    parser.add_argument("--language", default="en", help="prompt language (default: en)")
    parser.add_argument(
        "--abstain-message", help="the sentence said when the documents do not cover a question"
    )
    parser.add_argument(
        "--generate-key",
        type=Path,
        metavar="FILE",
        help="only write a new ed25519 signing key FILE (0600) and FILE's .pub, then exit",
    )


def _prompting(args: argparse.Namespace) -> dict:
    """The manifest's `prompting` section (appliance.prompting.wording_from_manifest reads it)."""
    from appliance.prompting import wording

    domain = getattr(args, "domain", None)
    language = getattr(args, "language", None) or "en"
    message = getattr(args, "abstain_message", None)
    if domain is None and language == "en" and not message:
        return {}
    try:
        words = wording(domain, language)
    except ValueError as exc:
        raise UserFacingError(f"--domain/--language: {exc}") from None
    if message is not None and not message.strip():
        raise UserFacingError("--abstain-message must not be empty")
    return {
        "domain": domain and words.domain,
        "language": language,
        "abstain_message": message or None,
    }


def run(args: argparse.Namespace) -> int:
    if args.generate_key is not None:
        private, public = generate_signing_key(args.generate_key)
        print(f"private key: {private} (keep it on the build machine)")
        print(f"public key:  {public} (copy it to the device: install.sh --public-key {public})")
        return 0
    required = {"--llm": args.llm, "--embedder": args.embedder, "--index": args.index}
    required |= {"--name": args.name, "--version": args.version, "--out": args.out}
    missing = [flag for flag, value in required.items() if value is None]
    if missing:
        raise UserFacingError(f"missing {', '.join(missing)}; see `expert bundle --help`")
    gate = None
    if args.quality_gate is not None:
        if not args.quality_gate.is_file():
            raise UserFacingError(
                f"--quality-gate {args.quality_gate}: no such file; write it with "
                f"`expert eval quality-gate --onnx {args.llm} ... --out {args.quality_gate}`"
            )
        gate = _read_json(args.quality_gate)
    extra = None
    if args.extra is not None:
        if not args.extra.is_file():
            raise UserFacingError(f"--extra {args.extra}: no such file")
        extra = _read_json(args.extra)
    prompting = _prompting(args)
    if prompting:
        extra = {**(extra or {}), "prompting": prompting}
    path = build_bundle(
        args.out,
        name=args.name,
        version=args.version,
        llm_dir=args.llm,
        embedder_dir=args.embedder,
        index_dir=args.index,
        adapters_dir=args.adapters,
        quality_gate=gate,
        extra=extra,
        signing_key=args.sign_key,
        accept_quality_loss=args.accept_quality_loss,
        quality_loss_reason=args.quality_loss_reason,
    )
    manifest = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    size = sum(f["size"] for f in manifest["files"].values())
    print(
        f"wrote {path} ({len(manifest['files'])} files, {size / 1e6:.1f} MB"
        + (", signed" if args.sign_key else "")
        + ")"
    )
    print(describe_gate(gate_summary(manifest)))
    return 0
