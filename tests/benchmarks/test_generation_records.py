# Run: .venv/bin/pytest tests/benchmarks/test_generation_records.py
"""Comparison records rebuilt from the committed raw generation run: each time-to-first-token
record holds the medians and p95s of the runs it names, per prompt size and for the follow-up
request that reuses the shared prefix."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.generation_config import GenerationBenchConfig, Variant
from benchmarks.generation_measure import records_from
from benchmarks.records import summarize

RAW = Path(__file__).resolve().parents[2] / "benchmarks/results/raw/generation_bench.json"


def _raw() -> dict:
    """The raw run as `measure` returns it: JSON made its prompt sizes strings."""
    raw = json.loads(RAW.read_text(encoding="utf-8"))
    raw["prompts"] = {int(k): v for k, v in raw["prompts"].items()}
    raw["runs"] = {e: {int(k): v for k, v in by.items()} for e, by in raw["runs"].items()}
    return raw


def test_ttft_records_hold_the_medians_of_their_runs() -> None:
    raw = _raw()
    peer = "llama.cpp Q8_0"
    config = GenerationBenchConfig(variants=(Variant("ours", Path("unused")),), peers=(peer,))
    records = {r["metric"]: r for r in records_from(config, raw) if r.get("unit") == "s"}
    for size in raw["prompts"]:
        ours, theirs = raw["runs"]["ours"][size], raw["runs"][peer][size]
        record = next(
            r for m, r in records.items() if m.startswith(f"time to first token, ~{size}-")
        )
        assert record["ours"] == summarize([r["ttft_s"] for r in ours])["median"]
        assert record["peer"] == summarize([r["ttft_s"] for r in theirs])["median"]
        assert record["repeats"] == len(ours) and record["peer_name"] == peer
    follow = next(r for m, r in records.items() if "follow-up" in m)
    runs = raw["reuse"]["runs"]
    assert follow["ours_p95"] == summarize([r["ttft_s"] for r in runs["ours"]])["p95"]
    assert follow["params"]["shared_prefix_tokens"] == raw["reuse"]["shared_tokens"]
    assert "prefix cache" in follow["note"]
