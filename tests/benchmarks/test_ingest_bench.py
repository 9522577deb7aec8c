"""The ingest scaling suite's budget and report (benchmarks/ingest_bench.py); no ingest runs."""

import pytest

from benchmarks import ingest_bench


def test_budget_defaults_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv(ingest_bench.BUDGET_ENV, raising=False)
    assert ingest_bench.budget_from_env() == ingest_bench.DEFAULT_BUDGET_S
    monkeypatch.setenv(ingest_bench.BUDGET_ENV, "7200")
    assert ingest_bench.budget_from_env() == 7200.0


@pytest.mark.parametrize("raw", ["two hours", "0", "-5"])
def test_a_bad_budget_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv(ingest_bench.BUDGET_ENV, raw)
    with pytest.raises(ValueError, match=ingest_bench.BUDGET_ENV):
        ingest_bench.budget_from_env()


def test_section_states_the_budget_and_skipped_sizes():
    result = {
        "embedder": "m",
        "budget_s": 1500.0,
        "rows": [
            {"target_chunks": 1000, "chunks": 1014, "documents": 41, "seconds": 24.8,
             "chunks_per_s": 40.9, "index_mb": 4.9, "load_average_1min_before": 0.6},
            {"target_chunks": 100000, "skipped": "estimated 2445 s at the 41 chunks/s"},
        ],
    }  # fmt: skip
    text = ingest_bench.section(result, None)["markdown"]
    assert "1500 s budget" in text and ingest_bench.BUDGET_ENV in text
    assert "| 1,014 | 41 | 24.8 | 40.9 | 4.9 | 0.6 |" in text
    assert "| ~100,000 | – | skipped: estimated 2445 s" in text
