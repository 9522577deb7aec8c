# Run: .venv/bin/pytest tests/benchmarks/test_reader_variants.py
"""The reader-variant benchmark's index cache: one index per embedder, reused only for it."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.embedding import EMBEDDER_CONFIG, OnnxEmbedder
from benchmarks.reader_variants import INDEX_CODE, build_index
from tests.conftest import PLANT_INDEX_CODE

DOC = "# Pump P-101\n\nThe P-101 impeller nut is tightened to 120 N·m.\n"


def _corpus(root: Path) -> Path:
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "pump.md").write_text(DOC, encoding="utf-8")
    return root


def _same_model_other_prefix(embedder: Path, out: Path) -> Path:
    """The same ONNX model and tokenizer, with an E5-style passage prefix in embedder.json:
    another embedder as far as the vectors go, though its model_id and dim are the same."""
    out.mkdir()
    for f in embedder.iterdir():
        if f.name != EMBEDDER_CONFIG:
            (out / f.name).symlink_to(f.resolve())
    config = json.loads((embedder / EMBEDDER_CONFIG).read_text(encoding="utf-8"))
    config["passage_prefix"] = "passage: "
    (out / EMBEDDER_CONFIG).write_text(json.dumps(config), encoding="utf-8")
    return out


def test_two_embedders_never_share_a_cached_index(embedder_onnx: Path, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path / "corpus")
    work = tmp_path / "work"
    first = OnnxEmbedder(embedder_onnx)
    second = OnnxEmbedder(_same_model_other_prefix(embedder_onnx, tmp_path / "embedder-b"))
    assert (first.model_id, first.dim) == (second.model_id, second.dim)

    index_a = build_index(corpus, first, work)
    index_b = build_index(corpus, second, work)
    assert index_a != index_b
    assert (index_a.parent / ".complete").is_file() and (index_b.parent / ".complete").is_file()

    # The same embedder again finds its own index and does not ingest again.
    done = (index_a.parent / ".complete").stat().st_mtime_ns
    assert build_index(corpus, first, work) == index_a
    assert (index_a.parent / ".complete").stat().st_mtime_ns == done
    assert sorted(p.name for p in work.iterdir()) == sorted(
        {index_a.parent.name, index_b.parent.name}
    )


def test_the_index_key_covers_the_code_an_index_is_built_by() -> None:
    """Every appliance module the test suite's own index cache is keyed by (tests/conftest.py)
    is in the benchmark's key too, so a change to ingest or the store rebuilds its index."""
    appliance_code = {rel for rel in PLANT_INDEX_CODE if rel.startswith("appliance/")}
    assert appliance_code <= set(INDEX_CODE)
