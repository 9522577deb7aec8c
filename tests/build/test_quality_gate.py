# Run: .venv/bin/pytest tests/build/test_quality_gate.py    (SmolLM2 gate alone: -m claim)
"""The quality gate: exported model (onnxruntime-genai) against the HF checkpoint."""

from __future__ import annotations

import json

import pytest

from appliance.cli import main as expert
from appliance.errors import UserFacingError
from appliance.quality_gate import GATE_FORMAT_VERSION, digest_of, model_file_hashes
from build.export_llm import export_llm
from build.quality_gate import (
    GateSettings,
    GateThresholds,
    Reference,
    answer_f1,
    compare_with_reference,
    describe_reference,
    load_questions,
    load_texts,
    run_quality_gate,
    spread_windows,
)

# Small enough for the default test run on the tiny model (a few seconds).
FAST = GateSettings(max_tokens=384, window=128, max_questions=2, answer_tokens=8)


@pytest.fixture(scope="module")
def tiny_reference(tiny_phi3_hf, plant_dir) -> Reference:
    return Reference.compute(
        tiny_phi3_hf,
        docs_dir=plant_dir / "docs",
        questions=plant_dir / "qa" / "eval.jsonl",
        settings=FAST,
    )


def test_fp32_export_passes_with_no_loss(tiny_phi3_hf, tiny_reference, tmp_path):
    onnx = export_llm(tiny_phi3_hf, tmp_path / "fp32", precision="fp32", verify=False)
    result = compare_with_reference(tiny_reference, onnx, settings=FAST)
    assert result.passed, result.failed
    assert abs(result.perplexity_change_pct) < 0.05
    assert result.top1_agreement >= 0.99
    assert result.answer_agreement == 1.0 and result.answer_exact == 1.0
    assert result.tokens_scored == 384 - len(tiny_reference.windows)
    assert result.export["precision"] == "fp32"
    # The result names the files it measured: the model digest of this export.
    assert result.model["sha256"] == digest_of(model_file_hashes(onnx))
    assert set(result.model["files"]) == {"genai_config.json", "model.onnx", "model.onnx.data"}
    assert result.reference["description"] == "HF checkpoint from tiny-random-phi3, run in fp32"


def test_a_pruned_lm_head_is_scored_position_by_position(tiny_phi3_hf, tmp_path):
    """The default export runs the LM head on the last prompt position only; the gate still
    gets every position's logits, equal to an unpruned export's."""
    import numpy as np

    from build.quality_gate import _GenaiModel

    pruned = export_llm(tiny_phi3_hf, tmp_path / "pruned", precision="fp32", verify=False)
    full = export_llm(
        tiny_phi3_hf, tmp_path / "full", precision="fp32", verify=False, prune_lm_head=False
    )
    record = json.loads((pruned / "export.json").read_text())
    assert record["genai"]["lm_head_last_position_only"] is True
    assert (
        json.loads((full / "export.json").read_text())["genai"]["lm_head_last_position_only"]
        is False
    )
    ids = list(range(5, 45))
    a, b = _GenaiModel(pruned), _GenaiModel(full)
    gen = a._generator(len(ids) + 1)
    gen.append_tokens(ids)
    assert np.asarray(gen.get_output("logits")).shape[1] == 1  # one row per pass
    del gen
    la, lb = a.logits(ids), b.logits(ids)
    assert la.shape == lb.shape == (len(ids), lb.shape[1])
    np.testing.assert_allclose(la, lb, rtol=1e-3, atol=1e-3)


def test_int4_export_fails_strict_thresholds_with_reasons(tiny_phi3_hf, tiny_reference, tmp_path):
    onnx = export_llm(tiny_phi3_hf, tmp_path / "int4", verify=False)
    strict = GateThresholds(
        max_perplexity_increase_pct=0.0, min_top1_agreement=1.0, min_answer_agreement=1.0
    )
    result = compare_with_reference(tiny_reference, onnx, strict, settings=FAST)
    assert not result.passed
    # (int4 may even lower a random model's perplexity; top-1 agreement cannot stay at 1.0.)
    assert any("top-1" in f for f in result.failed)
    if result.perplexity_change_pct > 0:
        assert any("perplexity" in f for f in result.failed)
    d = json.loads(json.dumps(result.to_dict()))  # goes into the manifest as JSON
    assert d["format_version"] == GATE_FORMAT_VERSION
    assert d["passed"] is False and d["failed"] == result.failed
    assert d["model"]["sha256"] == digest_of(model_file_hashes(onnx))
    assert d["thresholds"]["min_top1_agreement"] == 1.0
    assert d["export"]["quantization"]["bits"] == 4
    assert len(d["answers"]) == 2 and {"question", "reference", "exported", "f1"} <= set(
        d["answers"][0]
    )
    # The same export against lenient thresholds passes: thresholds are the only difference.
    lenient = GateThresholds(
        max_perplexity_increase_pct=1e6, min_top1_agreement=0.0, min_answer_agreement=0.0
    )
    assert compare_with_reference(tiny_reference, onnx, lenient, settings=FAST).passed


def test_run_quality_gate_with_explicit_texts_and_questions(tiny_phi3_hf, tmp_path):
    onnx = export_llm(tiny_phi3_hf, tmp_path / "fp32", precision="fp32", verify=False)
    result = run_quality_gate(
        tiny_phi3_hf,
        onnx,
        texts=["Pump P-101: the seal gland nuts are torqued to 24 N·m in two stages. " * 10],
        questions=["What torque for the P-101 gland nuts?"],
        settings=GateSettings(max_tokens=128, window=64, max_questions=1, answer_tokens=4),
    )
    assert result.passed and result.questions == 1


def test_inputs_and_metrics(plant_dir, tmp_path):
    assert len(load_texts(plant_dir / "docs")) >= 5
    qs = load_questions(plant_dir / "qa" / "eval.jsonl")
    assert len(qs) >= 10 and all(isinstance(q, str) and q for q in qs)
    with pytest.raises(UserFacingError, match="does not exist"):
        load_texts(tmp_path / "nope")
    (tmp_path / "bad.jsonl").write_text('{"question": "ok"}\nnot json\n')
    with pytest.raises(UserFacingError, match="bad.jsonl:2"):
        load_questions(tmp_path / "bad.jsonl")
    assert answer_f1("Torque to 24 N·m.", "torque to 24 n·m") == 1.0
    assert answer_f1("24 N·m", "12 N·m") == pytest.approx(2 / 3)
    assert answer_f1("", "") == 1.0 and answer_f1("a", "") == 0.0
    # Windows are spread over every document before any document gets a second one.
    docs = [list(range(10)), list(range(100, 130)), list(range(200, 205))]
    wins = spread_windows(docs, window=8, max_tokens=30)
    assert [w[0] for w in wins[:3]] == [0, 100, 200]
    assert sum(len(w) for w in wins) == 30


def test_thresholds_and_settings_are_validated(tmp_path):
    with pytest.raises(ValueError, match="max_perplexity_increase_pct"):
        GateThresholds(max_perplexity_increase_pct=-1)
    with pytest.raises(ValueError, match="min_top1_agreement"):
        GateThresholds(min_top1_agreement=1.5)
    with pytest.raises(ValueError, match="window"):
        GateSettings(window=1)
    with pytest.raises(UserFacingError, match="genai_config.json"):
        run_quality_gate(tmp_path, tmp_path)


def _import_record(folder, record=None, merge=None, dtype="float32"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"torch_dtype": dtype}))
    if record is not None:
        (folder / "import.json").write_text(json.dumps(record))
    if merge is not None:
        (folder / "merge.json").write_text(json.dumps(merge))
    return folder


def test_the_reference_is_named_from_the_import_record(tmp_path):
    gguf = {"source": {"kind": "gguf", "file_type": 3, "sha256": "ab" * 32}}
    d = describe_reference(_import_record(tmp_path / "gguf", gguf))
    assert d["description"] == "dequantized source GGUF (Q4_1)" and d["gguf_type"] == "Q4_1"
    f16 = {"source": {"kind": "gguf", "file_type": 1}}
    assert describe_reference(_import_record(tmp_path / "f16", f16))["description"] == (
        "full precision (source GGUF, F16)"
    )
    hf = {"source": {"kind": "hf", "path": "/models/phi-3"}}
    assert describe_reference(_import_record(tmp_path / "hf", hf))["description"] == (
        "full precision (HF checkpoint)"
    )
    bf16 = describe_reference(_import_record(tmp_path / "bf16", hf, dtype="bfloat16"))
    assert bf16["description"] == "full precision (HF checkpoint, stored as bfloat16)"
    merged = _import_record(tmp_path / "merged", gguf, merge={"adapter": {"path": "/a"}})
    assert describe_reference(merged)["description"] == (
        "dequantized source GGUF (Q4_1) + merged LoRA adapter"
    )
    assert describe_reference(_import_record(tmp_path / "bare"))["description"].startswith(
        "HF checkpoint without an import record"
    )


def test_expert_eval_quality_gate_exits_1_on_a_failing_gate(
    tiny_phi3_hf, plant_dir, tmp_path, monkeypatch, capsys
):
    """The command a Makefile or script runs must stop it on a failed gate, file written."""
    import build.quality_gate as qg

    onnx = export_llm(tiny_phi3_hf, tmp_path / "int4", verify=False)
    strict = GateThresholds(
        max_perplexity_increase_pct=0.0, min_top1_agreement=1.0, min_answer_agreement=1.0
    )
    real = qg.run_quality_gate
    monkeypatch.setattr(  # the command's defaults, but strict marks and the FAST sizes
        qg,
        "run_quality_gate",
        lambda **kw: real(**kw, thresholds=strict, settings=FAST),
    )
    out = tmp_path / "gate.json"
    args = ["eval", "quality-gate", "--hf", str(tiny_phi3_hf), "--onnx", str(onnx)]
    args += ["--docs", str(plant_dir / "docs"), "--questions", str(plant_dir / "qa/eval.jsonl")]
    assert expert([*args, "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "quality gate FAILED" in captured.err and "--accept-quality-loss" in captured.err
    gate = json.loads(out.read_text())
    assert gate["passed"] is False and gate["model"]["sha256"] in captured.out
    lenient = GateThresholds(1e6, 0.0, 0.0)
    monkeypatch.setattr(
        qg, "run_quality_gate", lambda **kw: real(**kw, thresholds=lenient, settings=FAST)
    )
    assert expert([*args, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["passed"] is True


@pytest.mark.claim  # the README's "the embedded model passes the gate", in every make test
def test_smollm2_default_int4_passes_the_default_gate(smollm2_hf, smollm2_onnx_int4, plant_dir):
    result = run_quality_gate(
        smollm2_hf,
        smollm2_onnx_int4,
        docs_dir=plant_dir / "docs",
        questions=plant_dir / "qa" / "eval.jsonl",
    )
    assert result.passed, result.to_dict()
    assert result.tokens_scored > 2000 and result.questions == 8
    assert result.reference["description"] == "dequantized source GGUF (Q4_1)"
