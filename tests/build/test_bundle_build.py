# Run: .venv/bin/pytest tests/build/test_bundle_build.py
"""`expert bundle` writes the manifest of design.md, atomically, and never clobbers a bundle."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest

from appliance.bundle import load_bundle, sha256_file
from appliance.cli import main as expert
from appliance.errors import UserFacingError
from appliance.quality_gate import gate_summary
from build.bundle import build_bundle, generate_signing_key
from build.quality_gate import GATE_FORMAT_VERSION, GateThresholds, describe_model
from tests.appliance.test_bundle_verify import make_parts


def gate_for(llm_dir: Path, *, passed: bool = True, **figures) -> dict:
    """A gate file for the model in `llm_dir`, as `expert eval quality-gate` writes it (the
    figures are set here: these tests are about the bundle's rules, not the measurement)."""
    values = {"perplexity_change_pct": 9.5, "top1_agreement": 0.81, "answer_agreement": 0.62}
    if not passed:
        values = {"perplexity_change_pct": 37.0, "top1_agreement": 0.65, "answer_agreement": 0.47}
    values |= figures
    return {
        "format_version": GATE_FORMAT_VERSION,
        "passed": passed,
        **values,
        "thresholds": dataclasses.asdict(GateThresholds()),
        "failed": [] if passed else ["perplexity rose 37.0% (allowed 20.0%)"],
        "reference": {"description": "dequantized source GGUF (Q4_1)"},
        "model": describe_model(llm_dir),
    }


def make_versioned_index(index_dir: Path, embedder_id: str = "minilm") -> None:
    """The layout of appliance.retrieval.versions: CURRENT -> versions/<v>/ (+ an old one)."""
    for version in ("v000001", "v000002"):
        vdir = index_dir / "versions" / version
        vdir.mkdir(parents=True)
        files = {}
        for name in ("store.sqlite", "vectors.hnsw"):
            (vdir / name).write_bytes(version.encode() * 100)
            files[name] = {"sha256": sha256_file(vdir / name), "size": 700}
        info = {
            "format_version": 1,
            "version": version,
            "files": files,
            "chunking": {"max_tokens": 160, "overlap_tokens": 32},
            "embedder": {"model_id": embedder_id, "dim": 384},
            "chunks": 3,
        }
        (vdir / "manifest.json").write_text(json.dumps(info))
    (index_dir / "CURRENT").write_text(json.dumps({"format_version": 1, "version": "v000002"}))


def test_manifest_has_the_design_fields(tmp_path: Path):
    parts = make_parts(tmp_path, adapters=True)
    parts["index_dir"] = tmp_path / "versioned-index"
    make_versioned_index(parts["index_dir"])
    gate = gate_for(parts["llm_dir"])
    path = build_bundle(
        tmp_path / "out",
        name="plant",
        version="2.0.1",
        quality_gate=gate,
        extra={"notes": "pilot line"},
        **parts,
    )
    assert path == tmp_path / "out" / "bundle-plant-2.0.1"
    m = json.loads((path / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["name"] == "plant" and m["bundle_version"] == "2.0.1"
    assert m["created"].endswith("Z")
    assert m["base_model"]["id"] == "SmolLM2" and m["base_model"]["source_kind"] == "gguf"
    assert m["base_model"]["architecture"] == "LlamaForCausalLM"
    assert m["export"]["precision"] == "int4" and "files" not in m["export"]
    assert m["embedder"]["id"] == "minilm"
    assert m["chunking"] == {"max_tokens": 160, "overlap_tokens": 32}
    assert m["index"]["version"] == "v000002" and m["index"]["chunks"] == 3
    # Only the current index version ships.
    assert "index/versions/v000002/store.sqlite" in m["files"] and "index/CURRENT" in m["files"]
    assert not [f for f in m["files"] if "v000001" in f]
    assert m["quality_gate"] == gate and m["quality_loss_accepted"] is None
    assert m["adapters"]["runtime"] == {"maint": {}}
    assert m["packages"]["numpy"] and m["notes"] == "pilot line"
    on_disk = sorted(
        p.relative_to(path).as_posix()
        for p in path.rglob("*")
        if p.is_file() and p != path / "manifest.json"
    )
    assert sorted(m["files"]) == on_disk
    assert "adapters/maint.onnx_adapter" in m["files"]
    entry = m["files"]["llm/model.onnx.data"]
    assert entry == {"sha256": sha256_file(path / "llm/model.onnx.data"), "size": 4096}
    assert not stat.S_IMODE((path / "llm/model.onnx").stat().st_mode) & 0o222  # read-only
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["bundle-plant-2.0.1"]  # no temp
    load_bundle(path)


def make_gated_parts(root: Path, **kw) -> dict:
    parts = make_parts(root, **kw)
    return parts | {"quality_gate": gate_for(parts["llm_dir"])}


def test_refuses_an_index_built_with_another_embedder(tmp_path: Path):
    parts = make_gated_parts(tmp_path)
    parts["index_dir"] = tmp_path / "versioned-index"
    make_versioned_index(parts["index_dir"], embedder_id="other-embedder")
    with pytest.raises(UserFacingError, match="index was built with embedder model_id="):
        build_bundle(tmp_path / "out", name="plant", version="1", **parts)


def test_refuses_a_corrupt_index(tmp_path: Path):
    parts = make_gated_parts(tmp_path)
    parts["index_dir"] = tmp_path / "versioned-index"
    make_versioned_index(parts["index_dir"])
    (parts["index_dir"] / "versions/v000002/vectors.hnsw").write_bytes(b"short")
    with pytest.raises(UserFacingError, match=r"vectors\.hnsw is 5 bytes, expected 700"):
        build_bundle(tmp_path / "out", name="plant", version="1", **parts)


def test_refuses_to_overwrite(tmp_path: Path):
    parts = make_gated_parts(tmp_path)
    build_bundle(tmp_path / "out", name="plant", version="1", **parts)
    with pytest.raises(UserFacingError, match="bundle-plant-1: exists; bundles are immutable"):
        build_bundle(tmp_path / "out", name="plant", version="1", **parts)


def test_failure_leaves_no_partial_bundle(tmp_path: Path):
    parts = make_gated_parts(tmp_path)
    (parts["index_dir"] / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserFacingError, match="dangling: cannot copy into the bundle"):
        build_bundle(tmp_path / "out", name="plant", version="1", **parts)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "plant/../x"}, "bundle name 'plant/../x' is invalid"),
        ({"version": ""}, "bundle version '' is invalid"),
        ({"llm_dir": Path("/nonexistent")}, r"llm_dir \(--llm\) /nonexistent: not a folder"),
        ({"extra": {"files": {}}}, r"extra: keys \['files'\] are set by the builder"),
        (
            {"extra": {"quality_gate": {"passed": True}}},
            r"extra: keys \['quality_gate'\] are set by the builder",
        ),
        (
            {"quality_loss_reason": "pilot"},
            "--quality-loss-reason only goes with --accept-quality-loss",
        ),
    ],
)
def test_bad_input_names_the_field(tmp_path: Path, change: dict, message: str):
    kw = {"name": "plant", "version": "1", **make_gated_parts(tmp_path), **change}
    with pytest.raises(UserFacingError, match=message):
        build_bundle(tmp_path / "out", **kw)


# --- the gate binds: missing, malformed, failed and foreign gates --------------------------------


def _build(tmp_path: Path, parts: dict, version: str = "1", **kw) -> Path:
    return build_bundle(tmp_path / "out", name="plant", version=version, **parts, **kw)


def _nothing_written(tmp_path: Path) -> bool:
    out = tmp_path / "out"
    return not out.exists() or list(out.iterdir()) == []


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _accepted(tmp_path: Path, parts: dict, gate, problem: str) -> dict:
    """The same input with --accept-quality-loss goes through, and the manifest says so."""
    path = _build(
        tmp_path,
        parts,
        version="accepted",
        quality_gate=gate,
        accept_quality_loss=True,
        quality_loss_reason="pilot line, engineer sign-off 42",
    )
    m = _manifest(path)
    acc = m["quality_loss_accepted"]
    assert acc["flag"] == "--accept-quality-loss" and acc["problem"] == problem
    assert acc["reason"] == "pilot line, engineer sign-off 42" and "@" in acc["by"]
    assert "--accept-quality-loss" in acc["detail"]
    assert gate_summary(m)["status"].endswith("(accepted with --accept-quality-loss)")
    return m


def test_a_passing_gate_of_this_model_is_bound_to_it(tmp_path: Path):
    parts = make_parts(tmp_path)
    path = _build(tmp_path, parts, quality_gate=gate_for(parts["llm_dir"]))
    summary = gate_summary(_manifest(path))
    assert summary["status"] == "passed" and summary["model_matches"] is True
    assert summary["reference"] == "dequantized source GGUF (Q4_1)"
    assert summary["top1_agreement"] == 0.81


def test_missing_gate_is_refused_unless_accepted(tmp_path: Path):
    parts = make_parts(tmp_path)
    with pytest.raises(UserFacingError, match=r"no quality gate for .*--accept-quality-loss"):
        _build(tmp_path, parts)
    assert _nothing_written(tmp_path)
    m = _accepted(tmp_path, parts, None, "missing")
    assert m["quality_gate"] is None and m["quality_loss_accepted"]["gate_figures"] is None
    assert gate_summary(m)["status"] == "not gated (accepted with --accept-quality-loss)"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda g: g.pop("passed"), "has no `passed` field"),
        (lambda g: g.update(passed="yes"), r"`passed` is 'yes', not true/false"),
        (lambda g: g.pop("model"), r"records no model digest \(`model.sha256`\)"),
        (lambda g: g.pop("thresholds"), "records no thresholds"),
        (lambda g: g.pop("top1_agreement"), "lacks the figure.* top1_agreement"),
        # A failed gate edited to say passed: its figures still miss its thresholds.
        (lambda g: g.update(top1_agreement=0.5), "says passed, but its figures miss"),
    ],
    ids=["no-passed", "passed-not-bool", "no-digest", "no-thresholds", "no-figure", "edited"],
)
def test_malformed_gate_is_refused_unless_accepted(tmp_path: Path, damage, message):
    parts = make_parts(tmp_path)
    gate = gate_for(parts["llm_dir"])
    damage(gate)
    with pytest.raises(UserFacingError, match=message) as err:
        _build(tmp_path, parts, quality_gate=gate)
    assert "expert eval quality-gate" in str(err.value)  # the fix
    assert _nothing_written(tmp_path)
    m = _accepted(tmp_path, parts, gate, "malformed")
    assert m["quality_gate"] is None  # its figures are not shown as this model's


def test_gate_of_another_model_is_refused_unless_accepted(tmp_path: Path):
    parts = make_parts(tmp_path)
    gate = gate_for(parts["llm_dir"])
    (parts["llm_dir"] / "model.onnx.data").write_bytes(b"re-exported weights")
    with pytest.raises(
        UserFacingError,
        match=r"measured another model: its model digest .*files that differ: model\.onnx\.data",
    ):
        _build(tmp_path, parts, quality_gate=gate)
    assert _nothing_written(tmp_path)  # refused after copying: nothing left
    m = _accepted(tmp_path, parts, gate, "foreign")
    assert m["quality_gate"] is None
    figures = m["quality_loss_accepted"]["gate_figures"]
    assert figures["model_sha256"] == gate["model"]["sha256"] and figures["passed"] is True


def test_a_failed_gate_of_another_model_is_foreign_not_this_models_failure(tmp_path: Path):
    parts = make_parts(tmp_path)
    gate = gate_for(parts["llm_dir"], passed=False)
    (parts["llm_dir"] / "model.onnx").write_bytes(b"another graph")
    m = _accepted(tmp_path, parts, gate, "foreign")
    assert m["quality_gate"] is None  # its figures are not this model's


def test_tokenizer_files_are_not_part_of_the_model_digest(tmp_path: Path):
    parts = make_parts(tmp_path)
    gate = gate_for(parts["llm_dir"])
    (parts["llm_dir"] / "tokenizer.json").write_text("{}")  # the gate feeds both models ids
    assert _manifest(_build(tmp_path, parts, quality_gate=gate))["quality_gate"] == gate


def test_failed_gate_is_refused_unless_accepted(tmp_path: Path):
    parts = make_parts(tmp_path)
    gate = gate_for(parts["llm_dir"], passed=False)
    with pytest.raises(
        UserFacingError,
        match=r"quality gate failed \(perplexity rose 37.0%.*dequantized source GGUF \(Q4_1\)"
        r".*--accept-quality-loss",
    ):
        _build(tmp_path, parts, quality_gate=gate)
    m = _accepted(tmp_path, parts, gate, "failed")
    # The figures are this model's: they stay in quality_gate, and the service shows them.
    assert m["quality_gate"] == gate
    summary = gate_summary(m)
    assert summary["status"] == "failed (accepted with --accept-quality-loss)"
    assert summary["passed"] is False and summary["perplexity_change_pct"] == 37.0


def test_flag_with_a_passing_gate_overrides_nothing(tmp_path: Path):
    parts = make_parts(tmp_path)
    gate = gate_for(parts["llm_dir"])
    m = _manifest(_build(tmp_path, parts, quality_gate=gate, accept_quality_loss=True))
    assert m["quality_gate"] == gate and m["quality_loss_accepted"]["problem"] is None
    assert gate_summary(m)["status"] == "passed"


def test_signing_key_files(tmp_path: Path):
    private, public = generate_signing_key(tmp_path / "keys" / "signing.key")
    assert public == tmp_path / "keys" / "signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(UserFacingError, match="exists; refusing to overwrite"):
        generate_signing_key(private)
    with pytest.raises(UserFacingError, match="not an unencrypted PEM private key"):
        build_bundle(
            tmp_path / "out",
            name="p",
            version="1",
            signing_key=public,
            **make_gated_parts(tmp_path),
        )


def test_cli(tmp_path: Path, capsys):
    parts = make_parts(tmp_path)
    key = tmp_path / "k" / "signing.key"
    assert expert(["bundle", "--generate-key", str(key)]) == 0
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps(gate_for(parts["llm_dir"], passed=False)))
    args = [
        "bundle",
        "--llm",
        str(parts["llm_dir"]),
        "--embedder",
        str(parts["embedder_dir"]),
        "--index",
        str(parts["index_dir"]),
        "--name",
        "plant",
        "--version",
        "3",
        "--out",
        str(tmp_path / "out"),
        "--quality-gate",
        str(gate),
        "--sign-key",
        str(key),
    ]
    assert expert(args) == 2
    assert "quality gate failed" in capsys.readouterr().err
    without_gate = args[: args.index("--quality-gate")] + args[args.index("--sign-key") :]
    assert expert(without_gate) == 2
    assert "no quality gate for" in capsys.readouterr().err
    assert expert([*without_gate, "--quality-gate", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: no such file; write it with `expert eval quality-gate" in (
        capsys.readouterr().err
    )
    assert expert([*args, "--accept-quality-loss", "--quality-loss-reason", "trial"]) == 0
    out = capsys.readouterr().out
    assert "signed" in out
    assert "quality gate failed (accepted with --accept-quality-loss)" in out
    bundle = load_bundle(
        tmp_path / "out" / "bundle-plant-3",
        require_signature=True,
        public_key=key.with_suffix(".pub"),
    )
    assert bundle.signed
    assert expert(["bundle", "--name", "x"]) == 2
    assert "missing --llm, --embedder, --index, --version, --out" in capsys.readouterr().err
