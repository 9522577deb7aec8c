"""Which base model an adapter belongs to: a cheap fingerprint of a checkpoint folder.

An adapter trained on one base and merged into another gives a broken model without any error
(same shapes are common across fine-tunes of one architecture). Training records the
fingerprint of its base; merge compares it with the base it is given.
The fingerprint hashes the architecture fields of config.json, each weight file's size and
header, and three 64 KiB samples of its data: seconds even for a multi-GB checkpoint, and any
change to the weights a fine-tune makes shows up in the samples with near certainty.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
SAMPLE = 64 * 1024
ARCH_FIELDS = (
    "model_type",
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)


def base_identity(base: Path | str) -> dict[str, Any]:
    """{"path", "model_type", "architecture", "fingerprint"} for a checkpoint folder."""
    base = Path(base)
    cfg = json.loads((base / "config.json").read_text(encoding="utf-8"))
    arch = {k: cfg.get(k) for k in ARCH_FIELDS}
    h = hashlib.sha256(json.dumps(arch, sort_keys=True).encode())
    files = sorted(p for p in base.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with path.open("rb") as fh:
            for offset in (0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)):
                fh.seek(offset)
                h.update(fh.read(SAMPLE))
    return {
        "path": str(base.resolve()),
        "model_type": arch["model_type"],
        "architecture": (arch["architectures"] or ["?"])[0],
        "fingerprint": h.hexdigest(),
    }


def describe(identity: dict[str, Any]) -> str:
    return f"{identity.get('path', '?')} ({identity.get('architecture', '?')}, fingerprint {str(identity.get('fingerprint', '?'))[:12]})"
