"""The one record format every benchmark suite returns, and the statistics behind its numbers.

A record compares one metric of ours against one peer measured in the same run on the same
machine: `{suite, metric, unit, ours, peer, peer_name, ratio, better}` with ratio = ours / peer
and `better` saying which direction wins. Optional fields carry the spread (`ours_p95`,
`peer_p95`, `repeats`), the conditions (`params`) and a `note`. A suite that cannot measure
something returns a record with `skipped` (the reason) and no numbers, never a made-up one.

Test: .venv/bin/pytest tests/benchmarks/test_bench_schema.py
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from appliance.common.stats import percentile

SUITES = ("generation", "retrieval", "embedding", "training", "service")
BETTER = ("higher", "lower")
REQUIRED = ("suite", "metric", "unit", "ours", "peer", "peer_name", "ratio", "better")
OPTIONAL = ("ours_p95", "peer_p95", "repeats", "params", "note", "skipped", "source")
RESULTS_FORMAT_VERSION = 1

# A ratio within this band of 1.0 counts as parity: smaller differences are inside the noise of a
# shared 2-core box, even with interleaved repetitions.
PARITY_BAND = 0.03


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    s = sorted(values)
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else float((s[mid - 1] + s[mid]) / 2)


def summarize(values: Sequence[float]) -> dict:
    """median, p95, min, max and n of repeated measurements."""
    return {
        "median": median(values),
        "p95": percentile(values, 95),
        "min": float(min(values)),
        "max": float(max(values)),
        "n": len(values),
    }


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def make_record(
    suite: str,
    metric: str,
    unit: str,
    ours: float,
    peer: float,
    peer_name: str,
    better: str,
    **extra,
) -> dict:
    """A validated comparison record; ratio = ours / peer (None when the peer measured 0)."""
    ratio = (ours / peer) if _finite(ours) and _finite(peer) and peer != 0 else None
    record = {
        "suite": suite,
        "metric": metric,
        "unit": unit,
        "ours": ours,
        "peer": peer,
        "peer_name": peer_name,
        "ratio": ratio,
        "better": better,
    }
    record.update({k: v for k, v in extra.items() if v is not None})
    validate_record(record)
    return record


def skipped_record(
    suite: str,
    metric: str,
    reason: str,
    *,
    peer_name: str | None = None,
    unit: str = "",
    better: str = "higher",
    **extra,
) -> dict:
    """A record that says why a comparison was not measured; it holds no numbers."""
    record = {
        "suite": suite,
        "metric": metric,
        "unit": unit,
        "ours": None,
        "peer": None,
        "peer_name": peer_name,
        "ratio": None,
        "better": better,
        "skipped": reason,
    }
    record.update({k: v for k, v in extra.items() if v is not None})
    validate_record(record)
    return record


def validate_record(record: dict) -> None:
    """Raise ValueError naming the first field that breaks the record format."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a dict, got {type(record).__name__}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"record misses field(s) {missing}: {record!r:.200}")
    if record["suite"] not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {record['suite']!r}")
    for key in ("metric", "unit"):
        if not isinstance(record[key], str):
            raise ValueError(f"{key} must be a string, got {record[key]!r}")
    if not record["metric"]:
        raise ValueError("metric must not be empty")
    if record["better"] not in BETTER:
        raise ValueError(f"better must be one of {BETTER}, got {record['better']!r}")
    skipped = record.get("skipped")
    if skipped is not None:
        if not isinstance(skipped, str) or not skipped.strip():
            raise ValueError(f"skipped must be a non-empty reason string, got {skipped!r}")
        for key in ("ours", "peer", "ratio"):
            if record[key] is not None and not _finite(record[key]):
                raise ValueError(f"{key} of a skipped record must be a number or null")
        return
    for key in ("ours", "peer"):
        if not _finite(record[key]):
            raise ValueError(
                f"{key} must be a finite number, got {record[key]!r} ({record['metric']})"
            )
    if not isinstance(record["peer_name"], str) or not record["peer_name"]:
        raise ValueError(f"peer_name must name the peer, got {record['peer_name']!r}")
    ratio = record["ratio"]
    if ratio is None:
        if record["peer"] != 0:
            raise ValueError(f"ratio is null but peer is {record['peer']} ({record['metric']})")
    else:
        if not _finite(ratio):
            raise ValueError(f"ratio must be a finite number or null, got {ratio!r}")
        expected = record["ours"] / record["peer"]
        if not math.isclose(ratio, expected, rel_tol=1e-6, abs_tol=1e-12):
            raise ValueError(
                f"ratio must be ours / peer = {expected:.6g}, got {ratio!r} ({record['metric']})"
            )
    for key in ("ours_p95", "peer_p95"):
        if key in record and record[key] is not None and not _finite(record[key]):
            raise ValueError(f"{key} must be a finite number, got {record[key]!r}")
    if "repeats" in record and record["repeats"] is not None:
        if not isinstance(record["repeats"], int) or record["repeats"] < 1:
            raise ValueError(f"repeats must be a positive int, got {record['repeats']!r}")
    if "params" in record and not isinstance(record["params"], dict):
        raise ValueError(f"params must be a dict, got {type(record['params']).__name__}")


def verdict(record: dict) -> str:
    """'skipped', 'n/a' (no ratio), 'ahead', 'parity' or 'behind' for ours against the peer."""
    if record.get("skipped"):
        return "skipped"
    ratio = record.get("ratio")
    if ratio is None:
        return "n/a"
    gain = ratio if record["better"] == "higher" else (1 / ratio if ratio else math.inf)
    if gain > 1 + PARITY_BAND:
        return "ahead"
    if gain >= 1 - PARITY_BAND:
        return "parity"
    return "behind"


def normalize_records(records: Iterable, *, source: str, default_suite: str) -> list[dict]:
    """Check what a suite returned. A record missing `suite` gets the suite's default; an invalid
    record becomes a skipped one that says what was wrong, so nothing vanishes silently."""
    out: list[dict] = []
    for i, record in enumerate(records):
        if isinstance(record, dict) and "suite" not in record:
            record = {"suite": default_suite, **record}
        try:
            validate_record(record)
        except ValueError as exc:
            metric = record.get("metric") if isinstance(record, dict) else None
            out.append(
                skipped_record(
                    default_suite,
                    str(metric or f"record {i}"),
                    f"{source} returned an invalid record: {exc}",
                    source=source,
                )
            )
            continue
        out.append({**record, "source": record.get("source", source)})
    return out
