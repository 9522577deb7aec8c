"""The quality gate's record as the device reads it: which model it measured, and what it found.

Tests: `.venv/bin/pytest tests/appliance/test_bundle_quality_gate.py tests/build/test_bundle_build.py`

The build's gate (build/quality_gate.py) measures one exported model folder and records that
folder's *model digest*; `expert bundle` refuses a gate whose digest is not the digest of the
model it bundles. The service reads the gate back from the manifest, recomputes the digest from
the manifest's own file hashes (no re-hashing), logs the figures at load and shows them in
`/v1/models` and `/readyz`.

Model digest: sha256 over the lines `<file name>\\t<sha256 of the file>\\n`, sorted by name, of
the files that decide the model's outputs: `genai_config.json`, every `*.onnx` and every ONNX
external-data file (`*.onnx.data`, `*.data`) at the top of the exported folder. Tokenizer files
and `export.json` are left out: the gate feeds both models the same token ids, so it does not
measure them. This module imports nothing heavy: it runs on the device and in the build.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.common.fsutil import sha256_file

DIGEST_ALGORITHM = (
    "sha256 of the sorted lines '<name>\\t<sha256>\\n' over genai_config.json, *.onnx, "
    "*.onnx.data and *.data of the exported model folder"
)
# The gate result's own format. 2: model digest, reference and `passed` are required.
GATE_FORMAT_VERSION = 2
FIGURES = ("perplexity_change_pct", "top1_agreement", "answer_agreement")


def is_model_file(name: str) -> bool:
    """Does this file (a name at the top of an exported folder) decide the model's outputs?"""
    return "/" not in name and (
        name == "genai_config.json" or name.endswith(".onnx") or name.endswith(".data")
    )


def digest_of(hashes: Mapping[str, str]) -> str:
    """The model digest from {file name: sha256} of the model files."""
    h = hashlib.sha256()
    for name in sorted(hashes):
        h.update(f"{name}\t{hashes[name]}\n".encode())
    return h.hexdigest()


def model_file_hashes(model_dir: Path) -> dict[str, str]:
    """{name: sha256} of the model files of an exported folder (the files are read)."""
    model_dir = Path(model_dir)
    out = {}
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and is_model_file(path.name):
            out[path.name] = sha256_file(path)
    return out


def manifest_model_hashes(files: Mapping[str, Mapping[str, Any]], part: str = "llm") -> dict:
    """{name: sha256} of the model files under `part/` from a manifest's `files` (no reading)."""
    prefix = part.rstrip("/") + "/"
    return {
        rel[len(prefix) :]: str(entry.get("sha256"))
        for rel, entry in files.items()
        if rel.startswith(prefix) and is_model_file(rel[len(prefix) :])
    }


def gate_summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What the service shows about a bundle's quality gate (`/v1/models`, `/readyz`, the log).

    `status`: "passed"; "failed (accepted with --accept-quality-loss)"; "not gated (accepted
    with --accept-quality-loss)"; or "not recorded" for a bundle built before gates bound.
    `model_matches`: the gate's model digest equals the digest of the bundle's own llm/ files
    (None when the gate records no digest).
    """
    gate = manifest.get("quality_gate")
    gate = gate if isinstance(gate, Mapping) else None
    accepted = manifest.get("quality_loss_accepted")
    accepted = accepted if isinstance(accepted, Mapping) else None
    out: dict[str, Any] = {
        "status": "not recorded",
        "passed": None,
        "reference": None,
        **dict.fromkeys(FIGURES),
        "thresholds": None,
        "model_sha256": None,
        "model_matches": None,
        "accepted_quality_loss": None,
    }
    if gate is not None:
        ref = gate.get("reference")
        out["passed"] = gate.get("passed") if isinstance(gate.get("passed"), bool) else None
        out["reference"] = ref.get("description") if isinstance(ref, Mapping) else ref
        for key in FIGURES:
            out[key] = gate.get(key)
        out["thresholds"] = gate.get("thresholds")
        model = gate.get("model") if isinstance(gate.get("model"), Mapping) else {}
        out["model_sha256"] = model.get("sha256")
        if out["model_sha256"]:
            mine = digest_of(manifest_model_hashes(manifest.get("files") or {}))
            out["model_matches"] = out["model_sha256"] == mine
    if accepted is not None:
        out["accepted_quality_loss"] = {
            k: accepted.get(k) for k in ("problem", "detail", "by", "reason")
        }
    if out["passed"] is True and out["model_matches"] is not False:
        out["status"] = "passed"
    elif accepted is not None:
        what = "failed" if out["passed"] is False else "not gated"
        out["status"] = f"{what} (accepted with --accept-quality-loss)"
    elif gate is not None:
        out["status"] = "failed" if out["passed"] is False else "unverified"
    return out


def describe(summary: Mapping[str, Any]) -> str:
    """One log line from gate_summary()."""
    figures = ", ".join(
        f"{k} {summary[k]}" for k in FIGURES if isinstance(summary.get(k), int | float)
    )
    parts = [f"quality gate {summary.get('status')}"]
    if summary.get("reference"):
        parts.append(f"measured against {summary['reference']}")
    if figures:
        parts.append(figures)
    if summary.get("model_matches") is False:
        parts.append("the gate measured ANOTHER model than this bundle's")
    accepted = summary.get("accepted_quality_loss")
    if accepted:
        parts.append(f"accepted by {accepted.get('by')}: {accepted.get('problem')}")
    return "; ".join(parts)
