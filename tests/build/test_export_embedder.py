# Run: .venv/bin/pytest tests/build/test_export_embedder.py
"""The ONNX export of all-MiniLM-L6-v2 matches sentence-transformers; int8 stays close."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.embedding import OnnxEmbedder
from appliance.errors import UserFacingError
from build.export_embedder import export_embedder, packaged_model_dir

TEXTS = [
    "Alarm E-47: vacuum drum vacuum low on LB-2. Check the vacuum pump and filter.",
    "How do I replace the HX-4471-B mechanical seal on pump P-101?",
    "Lockout/tagout: isolate at MCC-1, apply personal lock, verify zero energy.",
    "ok",
    "Compressor C-301 service interval is 4,000 h or 12 months. " * 30,
]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(packaged_model_dir()), device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True)


def _model_bytes(folder: Path) -> int:
    return sum((folder / name).stat().st_size for name in ("model.onnx", "model.onnx.data"))


def test_fp32_export_matches_sentence_transformers(embedder_onnx: Path, reference) -> None:
    meta = json.loads((embedder_onnx / "embedder.json").read_text())
    assert meta["pooling"] == "mean" and meta["normalize"] is True
    assert meta["dim"] == 384 and meta["max_length"] == 256
    assert meta["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    tok = json.loads((embedder_onnx / "tokenizer.json").read_text())
    assert tok["truncation"] is None and tok["padding"] is None
    vecs = OnnxEmbedder(embedder_onnx).embed(TEXTS)
    cosine = (vecs * reference).sum(axis=1)
    assert cosine.min() >= 0.999, cosine
    # The weights sit beside the graph, readable by the service's user.
    assert (embedder_onnx / "model.onnx").stat().st_size < 1_000_000
    assert (embedder_onnx / "model.onnx.data").stat().st_size > 80_000_000
    assert (embedder_onnx / "model.onnx.data").stat().st_mode & 0o444 == 0o444


def test_int8_export_is_close_and_smaller(tmp_path: Path, embedder_onnx: Path, reference) -> None:
    out = export_embedder(tmp_path / "int8", int8=True)
    assert json.loads((out / "embedder.json").read_text())["quantization"] == "int8-dynamic"
    assert _model_bytes(out) < 0.7 * _model_bytes(embedder_onnx)
    cosine = (OnnxEmbedder(out).embed(TEXTS) * reference).sum(axis=1)
    assert cosine.min() >= 0.97, cosine
    with pytest.raises(UserFacingError, match="--overwrite"):
        export_embedder(out)


def test_cli_arguments() -> None:
    import argparse

    from build.commands import export_embedder as mod

    parser = argparse.ArgumentParser()
    mod.add_arguments(parser)
    args = parser.parse_args(["--out", "x", "--int8"])
    assert args.out == Path("x") and args.int8 and not args.no_optimize


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(UserFacingError, match="not an embedder folder"):
        export_embedder(tmp_path)
