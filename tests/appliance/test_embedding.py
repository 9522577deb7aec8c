# Run: .venv/bin/pytest tests/appliance/test_embedding.py
"""The ONNX embedder: shapes, normalisation, batching invariance, token counts, bad folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.embedding import OnnxEmbedder
from appliance.errors import UserFacingError

TEXTS = [
    "Alarm E-47 means the vacuum drum vacuum is low on labeller LB-2.",
    "Torque the P-101 impeller nut to 120 N·m.",
    "short",
    "The quick brown fox jumps over the lazy dog. " * 40,  # longer than max_length
]


@pytest.fixture(scope="module")
def embedder(embedder_onnx: Path) -> OnnxEmbedder:
    return OnnxEmbedder(embedder_onnx, threads=1)


def test_properties_and_shape(embedder: OnnxEmbedder) -> None:
    assert embedder.dim == 384
    assert embedder.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.max_length == 256
    vecs = embedder.embed(TEXTS)
    assert vecs.shape == (4, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_batching_and_order_do_not_change_vectors(embedder: OnnxEmbedder) -> None:
    together = embedder.embed(TEXTS, batch_size=3)
    alone = np.vstack([embedder.embed([t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    reversed_ = embedder.embed(TEXTS[::-1], batch_size=2)[::-1]
    np.testing.assert_allclose(together, reversed_, atol=1e-5)


def test_worker_threads_sleep_between_operators(embedder_onnx: Path) -> None:
    two = OnnxEmbedder(embedder_onnx, threads=2)
    options = two._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2
    # The setting changes scheduling only: the vectors are the ones a one-thread session gives.
    np.testing.assert_allclose(
        two.embed(TEXTS[:2]), OnnxEmbedder(embedder_onnx, threads=1).embed(TEXTS[:2]), atol=1e-5
    )


def test_similarity_is_meaningful(embedder: OnnxEmbedder) -> None:
    q, near, far = embedder.embed(
        ["How tight is the impeller nut?", TEXTS[1], "Shift handover uses form QF-12."]
    )
    assert q @ near > q @ far + 0.1


def test_count_tokens_is_untruncated(embedder: OnnxEmbedder) -> None:
    assert embedder.count_tokens("hello world") == 2
    assert embedder.count_tokens(TEXTS[3]) > embedder.max_length
    assert embedder.tokenizer.encode("E-47").tokens  # a tokenizers.Tokenizer


def test_bad_inputs_and_folders(
    embedder: OnnxEmbedder, embedder_onnx: Path, tmp_path: Path
) -> None:
    with pytest.raises(TypeError):
        embedder.embed("not a list")
    with pytest.raises(UserFacingError, match="no model.onnx"):
        OnnxEmbedder(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(embedder_onnx, bad)
    cfg = json.loads((bad / "embedder.json").read_text())
    (bad / "embedder.json").write_text(json.dumps(cfg | {"format_version": 99}))
    with pytest.raises(UserFacingError, match="format_version 99"):
        OnnxEmbedder(bad)
    (bad / "embedder.json").write_text(json.dumps(cfg))
    (bad / "model.onnx").write_bytes(b"truncated")
    with pytest.raises(UserFacingError, match="cannot load embedder model"):
        OnnxEmbedder(bad)


def test_device_modules_do_not_import_torch() -> None:
    code = (
        "import sys; import appliance.embedding, appliance.retrieval, appliance.documents; "
        "import appliance.retrieval.evaluation, appliance.commands.ingest; "
        "bad = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
