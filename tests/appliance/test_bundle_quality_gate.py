# Run: .venv/bin/pytest tests/appliance/test_bundle_quality_gate.py
"""The device reads a bundle's quality gate: the model digest, the summary, /v1/models, /readyz."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from appliance.bundle import load_bundle
from appliance.generation.fake import FakeGenerator
from appliance.quality_gate import (
    digest_of,
    gate_summary,
    is_model_file,
    manifest_model_hashes,
    model_file_hashes,
)
from appliance.server import create_app
from appliance.server.runtime import Runtime, answer_policy
from build.bundle import build_bundle
from tests.appliance.server_harness import test_config
from tests.appliance.test_bundle_verify import make_parts
from tests.build.test_bundle_build import gate_for


def test_model_files_and_digest(tmp_path: Path):
    assert is_model_file("model.onnx") and is_model_file("model.onnx.data")
    assert is_model_file("genai_config.json") and is_model_file("decoder.data")
    assert not is_model_file("tokenizer.json") and not is_model_file("export.json")
    assert not is_model_file("sub/model.onnx")
    llm = make_parts(tmp_path)["llm_dir"]
    hashes = model_file_hashes(llm)
    assert sorted(hashes) == ["genai_config.json", "model.onnx", "model.onnx.data"]
    # The digest is order-free, and changes with any file's hash.
    assert digest_of(dict(reversed(hashes.items()))) == digest_of(hashes)
    assert digest_of(hashes | {"model.onnx": "0" * 64}) != digest_of(hashes)


def _bundle(tmp_path: Path, **kw):
    parts = make_parts(tmp_path / "src")
    gate = kw.pop("quality_gate", gate_for(parts["llm_dir"]))
    path = build_bundle(
        tmp_path / "out", name="plant", version="1", quality_gate=gate, **parts, **kw
    )
    return load_bundle(path)


def test_summary_recomputes_the_digest_from_the_manifest(tmp_path: Path):
    bundle = _bundle(tmp_path)
    m = bundle.manifest
    hashes = manifest_model_hashes(m["files"])
    assert hashes == model_file_hashes(bundle.llm_dir)
    summary = gate_summary(m)
    assert summary["status"] == "passed" and summary["model_matches"] is True
    assert summary["reference"] == "dequantized source GGUF (Q4_1)"
    # A manifest whose gate names another model (e.g. edited) is shown as such.
    other = json.loads(json.dumps(m))
    other["quality_gate"]["model"]["sha256"] = "f" * 64
    summary = gate_summary(other)
    assert summary["model_matches"] is False and summary["status"] == "unverified"
    assert gate_summary({"files": m["files"]})["status"] == "not recorded"


def _app(tmp_path: Path, bundle):
    def loader(config):
        gen = FakeGenerator(model_id=bundle.id)
        return Runtime(gen, None, None, bundle.id, answer_policy(config, None), bundle=bundle)

    return create_app(test_config(tmp_path), loader=loader)


def test_service_logs_and_serves_the_gate(tmp_path: Path, caplog):
    bundle = _bundle(tmp_path)
    with caplog.at_level(logging.INFO, logger="appliance.server"):
        client = _app(tmp_path, bundle).test_client()
    assert any(
        "quality gate passed; measured against dequantized source GGUF (Q4_1)" in r.message
        and "top1_agreement 0.81" in r.message
        for r in caplog.records
    )
    models = client.get("/v1/models").get_json()["data"]
    gate = models[0]["quality_gate"]
    assert gate["status"] == "passed" and gate["perplexity_change_pct"] == 9.5
    assert gate["thresholds"]["min_top1_agreement"] == 0.75
    ready = client.get("/readyz").get_json()
    assert ready["quality_gate"] == gate


@pytest.mark.parametrize(
    ("problem", "status"),
    [
        ("missing", "not gated (accepted with --accept-quality-loss)"),
        ("failed", "failed (accepted with --accept-quality-loss)"),
    ],
)
def test_service_warns_about_an_accepted_quality_loss(tmp_path: Path, caplog, problem, status):
    parts = make_parts(tmp_path / "src")
    gate = gate_for(parts["llm_dir"], passed=False) if problem == "failed" else None
    path = build_bundle(
        tmp_path / "out",
        name="plant",
        version="1",
        quality_gate=gate,
        accept_quality_loss=True,
        quality_loss_reason="trial",
        **parts,
    )
    bundle = load_bundle(path)
    with caplog.at_level(logging.INFO, logger="appliance.server"):
        client = _app(tmp_path, bundle).test_client()
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warned and status in warned[0].message and "accepted by " in warned[0].message
    ready = client.get("/readyz").get_json()["quality_gate"]
    assert ready["status"] == status and ready["passed"] is (False if gate else None)
    assert ready["accepted_quality_loss"]["reason"] == "trial"
    assert ready["accepted_quality_loss"]["problem"] == problem
