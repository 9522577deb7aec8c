# Run: .venv/bin/pytest tests/benchmarks/test_bench_schema.py
"""The benchmark record/summary format on hand-made records: no engines, no timing."""

from __future__ import annotations

import json
import math

import pytest

from appliance.common.stats import percentile
from benchmarks.machine import describe_machine, parse_cpuinfo
from benchmarks.records import (
    SUITES,
    make_record,
    median,
    normalize_records,
    skipped_record,
    summarize,
    validate_record,
    verdict,
)
from benchmarks.summary import render_markdown, results_document, write_results

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx_vnni
processor\t: 1
model name\t: AMD EPYC 9B45
flags\t\t: fpu sse4_2 avx avx2
"""


def _records() -> list[dict]:
    return [
        make_record(
            "generation",
            "decode speed, ~800-token prompt",
            "tokens/s",
            90.0,
            86.0,
            "llama.cpp",
            "higher",
            ours_p95=80.0,
            peer_p95=79.0,
            repeats=5,
            params={"prompt_tokens": 800, "threads": 2},
        ),
        make_record(
            "generation",
            "time to first token, ~800-token prompt",
            "s",
            3.5,
            3.2,
            "llama.cpp",
            "lower",
            repeats=5,
            note="prompt processing dominates",
        ),
        make_record("retrieval", "recall@5", "fraction", 0.9, 0.9, "bm25", "higher"),
        skipped_record("training", "lora step time", "bitsandbytes missing", peer_name="peft"),
    ]


def test_stats_match_numpy_conventions():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert median(values) == 3.0
    assert median([1.0, 2.0, 3.0, 4.0]) == 2.5
    assert percentile(values, 95) == pytest.approx(4.8)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 5.0
    s = summarize(values)
    assert s == {"median": 3.0, "p95": pytest.approx(4.8), "min": 1.0, "max": 5.0, "n": 5}
    with pytest.raises(ValueError):
        median([])
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_record_ratio_is_ours_over_peer_and_verdict_follows_better():
    fast, slow_ttft, equal, skipped = _records()
    assert fast["ratio"] == pytest.approx(90 / 86)
    assert verdict(fast) == "ahead"
    assert slow_ttft["ratio"] == pytest.approx(3.5 / 3.2)
    assert verdict(slow_ttft) == "behind"  # lower is better and ours is higher
    assert verdict(equal) == "parity"
    assert verdict(skipped) == "skipped"
    assert skipped["ours"] is None and skipped["ratio"] is None
    zero_peer = make_record("service", "errors", "count", 0.0, 0.0, "peer", "lower")
    assert zero_peer["ratio"] is None and verdict(zero_peer) == "n/a"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"suite": "quantization"}, "suite"),
        ({"better": "bigger"}, "better"),
        ({"ours": float("nan")}, "ours"),
        ({"peer": "fast"}, "peer"),
        ({"ratio": 2.0}, "ratio"),
        ({"peer_name": ""}, "peer_name"),
        ({"repeats": 0}, "repeats"),
        ({"params": [1]}, "params"),
    ],
)
def test_invalid_records_name_the_bad_field(change, message):
    record = {**_records()[0], **change}
    with pytest.raises(ValueError, match=message):
        validate_record(record)


def test_missing_field_is_named():
    record = dict(_records()[0])
    del record["peer_name"]
    with pytest.raises(ValueError, match="peer_name"):
        validate_record(record)


def test_normalize_turns_bad_records_into_visible_skips():
    good = {k: v for k, v in _records()[2].items() if k != "suite"}  # suite filled from default
    bad = {**_records()[0], "ratio": 5.0}
    out = normalize_records(
        [good, bad, "nonsense"], source="retrieval_bench", default_suite="retrieval"
    )
    assert out[0]["suite"] == "retrieval" and out[0]["source"] == "retrieval_bench"
    assert out[1]["skipped"].startswith("retrieval_bench returned an invalid record: ratio")
    assert out[2]["skipped"] and out[2]["metric"] == "record 2"
    for record in out:
        validate_record(record)


def test_results_document_and_files(tmp_path):
    machine = {
        "host": "box/1",
        "cpu_model": "AMD EPYC",
        "cores": 2,
        "cpu_flags": ["AVX2"],
        "memory_gib": 24,
        "packages": {"onnxruntime": "1.32.0", "torch": None},
    }
    doc = results_document(machine, _records(), meta={"quick": True, "threads": 2})
    paths = write_results(tmp_path, doc, date="2026-01-02")
    assert paths["json"].name == "2026-01-02-box-1.json"
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert latest == json.loads(paths["json"].read_text())
    assert set(latest) >= {"machine", "results"}
    for record in latest["results"]:
        assert set(record) >= {
            "suite",
            "metric",
            "unit",
            "ours",
            "peer",
            "peer_name",
            "ratio",
            "better",
        }
        assert record["suite"] in SUITES
        if record["ratio"] is not None:
            assert math.isclose(record["ratio"], record["ours"] / record["peer"])
    md = (tmp_path / "latest.md").read_text()
    assert md == paths["markdown"].read_text()
    assert "## generation" in md and "## service" in md
    assert "1.05×" in md and "**behind**" in md  # every ratio, with its verdict
    assert "skipped: bitsandbytes missing" in md
    assert "No results" in md  # the embedding and service suites did not run


def test_invalid_record_cannot_reach_a_results_file():
    with pytest.raises(ValueError, match="better"):
        results_document({}, [{**_records()[0], "better": "up"}])


def test_markdown_escapes_table_cells():
    record = make_record("service", "p50 | latency", "ms", 10.0, 20.0, "flask|dev", "lower")
    md = render_markdown(results_document({"host": "h"}, [record]))
    assert "p50 \\| latency" in md and "flask\\|dev" in md


def test_cpuinfo_parsing_and_machine_description():
    info = parse_cpuinfo(CPUINFO)
    assert info["model"] == "AMD EPYC 9B45"
    assert {"AVX2", "AVX-512F", "AVX-512-VNNI", "AVX-VNNI"} <= set(info["flags"])
    machine = describe_machine()
    assert machine["cores"] >= 1 and "packages" in machine and "cpu_flags" in machine
    json.dumps(machine)  # serialisable as is


def test_generation_tuning_settings_are_validated():
    from appliance.generation.tuning import GenaiTuning

    tuning = GenaiTuning(intra_op_threads=2, allow_spinning=False)
    options = tuning.session_options()
    assert options["intra_op_num_threads"] == 2
    assert options["session.intra_op.allow_spinning"] == "0"
    assert json.loads(tuning.overlay_json())["model"]["decoder"]["session_options"] == options
    with pytest.raises(ValueError, match="intra_op_threads"):
        GenaiTuning(intra_op_threads=0)
    with pytest.raises(ValueError, match="allow_spinning"):
        GenaiTuning(allow_spinning="yes")


def test_sections_appear_under_their_suite_and_bad_ones_are_refused(tmp_path):
    section = {"suite": "generation", "title": "Peers at equal quality", "markdown": "| a |\n|---|"}
    doc = results_document({"host": "h"}, _records(), sections=[section])
    text = render_markdown(doc)
    assert "### Peers at equal quality" in text
    assert text.index("## generation") < text.index("### Peers at equal quality")
    with pytest.raises(ValueError, match="title and markdown"):
        results_document({"host": "h"}, _records(), sections=[{"markdown": "x"}])


def test_carry_over_keeps_other_modules_records_marked_with_their_date(tmp_path):
    from benchmarks.run import carry_over

    old = results_document({"host": "h"}, _records())
    for r in old["results"]:
        r["source"] = "generation_bench" if r["suite"] == "generation" else "retrieval_bench"
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    new = [
        make_record(
            "service", "ttft", "s", 1.0, 1.0, "in-process", "lower", source="service_bench"
        ),
        skipped_record("retrieval", "retrieval", "no benchmark module produced results"),
    ]
    merged = carry_over(new, path, ["service_bench"])
    carried = [r for r in merged if (r.get("params") or {}).get("carried_over_from")]
    assert carried and all(r["source"] != "service_bench" for r in carried)
    assert not any(r.get("skipped") and r["suite"] == "retrieval" for r in merged)
    assert sum(r["suite"] == "service" for r in merged) == 1


def test_carry_over_sections_keeps_what_this_run_did_not_remake():
    from benchmarks.run import carry_over_sections

    old = {
        "created": "2026-11-30T17:20:49+00:00",
        "sections": [
            {"suite": "generation", "title": "Generation: where the memory goes", "markdown": "x"},
            {"suite": "generation", "title": "Generation: scaling", "markdown": "y"},
            {"suite": "service", "source": "service_bench", "title": "Service", "markdown": "z"},
        ],
    }
    new = [{"suite": "generation", "source": "memory_bench",
            "title": "Generation: where the memory goes", "markdown": "new"}]  # fmt: skip
    kept = carry_over_sections(old, ["memory_bench", "service_bench"], new)
    assert [s["title"] for s in kept] == ["Generation: scaling (carried over from 2026-11-30)"]


def test_memory_breakdown_accounts_for_the_resident_set():
    from benchmarks.memory_bench import _status, smaps_breakdown

    parts = smaps_breakdown()
    rss = _status()["VmRSS"]
    assert parts["shared libraries"] > 0 and parts["allocations (heap + anonymous)"] > 0
    assert abs(sum(parts.values()) - rss) < 0.1 * rss
