# Run: .venv/bin/pytest tests/build/test_bundle_build.py
"""`expert bundle` writes the manifest of design.md, atomically, and never clobbers a bundle."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from appliance.bundle import load_bundle, sha256_file
from appliance.cli import main as expert
from appliance.errors import UserFacingError
from build.bundle import build_bundle, generate_signing_key
from tests.appliance.test_bundle_verify import make_parts


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
    gate = {"passed": True, "perplexity_change": 0.14, "top1_agreement": 0.78}
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
    assert m["quality_gate"] == gate and m["adapters"]["runtime"] == {"maint": {}}
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


def test_refuses_an_index_built_with_another_embedder(tmp_path: Path):
    parts = make_parts(tmp_path)
    parts["index_dir"] = tmp_path / "versioned-index"
    make_versioned_index(parts["index_dir"], embedder_id="other-embedder")
    with pytest.raises(UserFacingError, match="index was built with embedder model_id="):
        build_bundle(tmp_path / "out", name="plant", version="1", **parts)


def test_refuses_a_corrupt_index(tmp_path: Path):
    parts = make_parts(tmp_path)
    parts["index_dir"] = tmp_path / "versioned-index"
    make_versioned_index(parts["index_dir"])
    (parts["index_dir"] / "versions/v000002/vectors.hnsw").write_bytes(b"short")
    with pytest.raises(UserFacingError, match=r"vectors\.hnsw is 5 bytes, expected 700"):
        build_bundle(tmp_path / "out", name="plant", version="1", **parts)


def test_refuses_to_overwrite(tmp_path: Path):
    parts = make_parts(tmp_path)
    build_bundle(tmp_path / "out", name="plant", version="1", **parts)
    with pytest.raises(UserFacingError, match="bundle-plant-1: exists; bundles are immutable"):
        build_bundle(tmp_path / "out", name="plant", version="1", **parts)


def test_failure_leaves_no_partial_bundle(tmp_path: Path):
    parts = make_parts(tmp_path)
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
    ],
)
def test_bad_input_names_the_field(tmp_path: Path, change: dict, message: str):
    kw = {"name": "plant", "version": "1", **make_parts(tmp_path), **change}
    with pytest.raises(UserFacingError, match=message):
        build_bundle(tmp_path / "out", **kw)


def test_failed_quality_gate_stops_the_bundle_unless_accepted(tmp_path: Path):
    parts = make_parts(tmp_path)
    gate = {"passed": False, "failed": ["perplexity_change 0.37 > 0.20"]}
    with pytest.raises(UserFacingError, match=r"quality gate failed.*--accept-quality-loss"):
        build_bundle(tmp_path / "out", name="plant", version="1", quality_gate=gate, **parts)
    path = build_bundle(
        tmp_path / "out",
        name="plant",
        version="1",
        quality_gate=gate,
        accept_quality_loss=True,
        **parts,
    )
    m = json.loads((path / "manifest.json").read_text())
    assert m["quality_gate"]["passed"] is False and m["quality_gate"]["accepted_quality_loss"]


def test_signing_key_files(tmp_path: Path):
    private, public = generate_signing_key(tmp_path / "keys" / "signing.key")
    assert public == tmp_path / "keys" / "signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(UserFacingError, match="exists; refusing to overwrite"):
        generate_signing_key(private)
    with pytest.raises(UserFacingError, match="not an unencrypted PEM private key"):
        build_bundle(
            tmp_path / "out", name="p", version="1", signing_key=public, **make_parts(tmp_path)
        )


def test_cli(tmp_path: Path, capsys):
    parts = make_parts(tmp_path)
    key = tmp_path / "k" / "signing.key"
    assert expert(["bundle", "--generate-key", str(key)]) == 0
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps({"passed": False}))
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
    assert expert([*args, "--accept-quality-loss"]) == 0
    assert "signed" in capsys.readouterr().out
    bundle = load_bundle(
        tmp_path / "out" / "bundle-plant-3",
        require_signature=True,
        public_key=key.with_suffix(".pub"),
    )
    assert bundle.signed
    assert expert(["bundle", "--name", "x"]) == 2
    assert "missing --llm, --embedder, --index, --version, --out" in capsys.readouterr().err
