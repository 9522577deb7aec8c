"""benchmarks.prefix_cache_ab on the shared int4 SmolLM2 export: one short pair."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.prefix_cache_ab import main, measure

REPO = Path(__file__).resolve().parents[2]


def test_one_pair_measures_both_generators(smollm2_onnx_int4: Path):
    result = measure(smollm2_onnx_int4, REPO / "examples" / "plant", pairs=2, tokens=4, threads=2)
    assert set(result["runs"]) == {"cache on", "cache off"}
    assert all(len(runs) == 2 for runs in result["runs"].values())
    assert result["ratio"] > 0
    assert result["cache"]["misses"] >= 1


def test_refuses_a_folder_without_an_export(tmp_path: Path):
    with pytest.raises(SystemExit):
        main(["--llm", str(tmp_path)])
