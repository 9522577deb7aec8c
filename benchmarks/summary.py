"""Results files of a benchmark run: the JSON record of everything and a Markdown summary.

`write_results` writes `<date>-<host>.json` and a copy `latest.json` (the file other tools
read: `{machine, results: [...]}`), plus `<date>-<host>.md` and `latest.md`, a table per suite
with every ratio and a verdict, and the reason of every skipped comparison.

Test: .venv/bin/pytest tests/benchmarks/test_bench_schema.py
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path

from appliance.common.fsutil import atomic_write_text
from benchmarks.records import (
    PARITY_BAND,
    RESULTS_FORMAT_VERSION,
    SUITES,
    validate_record,
    verdict,
)

VERDICT_MARK = {
    "ahead": "ahead",
    "parity": "parity",
    "behind": "**behind**",
    "skipped": "skipped",
    "n/a": "n/a",
}


def results_document(
    machine: dict,
    records: list[dict],
    *,
    meta: dict | None = None,
    sections: list[dict] | None = None,
) -> dict:
    """The JSON document of a run; every record is validated. `sections` are Markdown blocks a
    suite adds under its table ({"suite", "title", "markdown"}: tables, figures, verdicts)."""
    for record in records:
        validate_record(record)
    document = {
        "format_version": RESULTS_FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "run": meta or {},
        "results": records,
    }
    if sections:
        for section in sections:
            if not isinstance(section, dict) or not {"title", "markdown"} <= set(section):
                raise ValueError(f"a section needs a title and markdown, got {section!r}")
        document["sections"] = list(sections)
    return document


def _safe_host(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", host or "host").strip("-.") or "host"


def write_results(out_dir: Path, document: dict, *, date: str | None = None) -> dict[str, Path]:
    """Write the run's JSON and Markdown files into `out_dir`; returns their paths by kind."""
    out_dir = Path(out_dir)
    date = date or _dt.date.today().isoformat()
    stem = f"{date}-{_safe_host(document.get('machine', {}).get('host', ''))}"
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    markdown = render_markdown(document)
    paths = {
        "json": out_dir / f"{stem}.json",
        "latest_json": out_dir / "latest.json",
        "markdown": out_dir / f"{stem}.md",
        "latest_markdown": out_dir / "latest.md",
    }
    for kind, path in paths.items():
        atomic_write_text(path, markdown if kind.endswith("markdown") else text, overwrite=True)
    return paths


def _num(x, unit: str = "") -> str:
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 1000:
        s = f"{x:,.0f}"
    elif a >= 100:
        s = f"{x:.0f}"
    elif a >= 10:
        s = f"{x:.1f}"
    elif a >= 1:
        s = f"{x:.2f}"
    else:
        s = f"{x:.3g}"
    return s


def _spread(value, p95) -> str:
    if p95 is None or value is None:
        return _num(value)
    return f"{_num(value)} (p95 {_num(p95)})"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _params(record: dict) -> str:
    params = record.get("params") or {}
    return ", ".join(f"{k}={v}" for k, v in params.items())


def render_markdown(document: dict) -> str:
    """A human summary: machine, then one table per suite, then skipped comparisons."""
    machine = document.get("machine", {})
    records = document.get("results", [])
    lines = ["# Benchmark results", ""]
    created = document.get("created", "")
    lines.append(
        f"Run {created} on **{machine.get('host', '?')}**: {machine.get('cpu_model') or '?'}, "
        f"{machine.get('cores', '?')} usable cores, {machine.get('memory_gib', '?')} GiB, "
        f"flags {', '.join(machine.get('cpu_flags') or []) or 'unknown'}."
    )
    packages = machine.get("packages") or {}
    if packages:
        shown = ", ".join(f"{k} {v}" for k, v in packages.items() if v)
        lines.append(f"Packages: {shown}.")
    if machine.get("load_average") or machine.get("load_average_after"):
        lines.append(
            f"Load average (1, 5, 15 min) at the start: {machine.get('load_average')}, at the end: "
            f"{machine.get('load_average_after')} on {machine.get('cores', '?')} usable cores "
            "(other people's jobs share this box; records measured under contention say so)."
        )
    run = document.get("run") or {}
    if run:
        lines.append(
            "Run settings: "
            + ", ".join(f"{k}={v}" for k, v in run.items() if not isinstance(v, (dict, list)))
            + "."
        )
    lines += [
        "",
        "Every figure is a ratio against a peer measured in the same run on the same machine,",
        "interleaved with ours: ratio = ours / peer; `better` says which direction wins. Values are",
        f"medians (p95 in brackets) of the repetitions; within ±{PARITY_BAND:.0%} counts as parity.",
        "",
    ]
    counts = {"ahead": 0, "parity": 0, "behind": 0, "skipped": 0, "n/a": 0}
    for r in records:
        counts[verdict(r)] += 1
    lines.append("Overall: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ".")
    lines.append("")
    suites = list(SUITES) + sorted({r["suite"] for r in records} - set(SUITES))
    for suite in suites:
        rows = [r for r in records if r["suite"] == suite and not r.get("skipped")]
        skipped = [r for r in records if r["suite"] == suite and r.get("skipped")]
        lines.append(f"## {suite}")
        lines.append("")
        if not rows and not skipped:
            lines += ["No results: the suite did not run.", ""]
            continue
        if rows:
            lines.append(
                "| metric | unit | ours | peer | peer name | ratio | better | verdict | conditions |"
            )
            lines.append("|---|---|---:|---:|---|---:|---|---|---|")
            for r in rows:
                ratio = "–" if r.get("ratio") is None else f"{r['ratio']:.2f}×"
                lines.append(
                    "| "
                    + " | ".join(
                        _cell(x)
                        for x in (
                            r["metric"],
                            r["unit"],
                            _spread(r["ours"], r.get("ours_p95")),
                            _spread(r["peer"], r.get("peer_p95")),
                            r["peer_name"],
                            ratio,
                            r["better"],
                            VERDICT_MARK[verdict(r)],
                            _params(r),
                        )
                    )
                    + " |"
                )
            notes = list(dict.fromkeys((r["metric"], r["note"]) for r in rows if r.get("note")))
            if notes:
                lines.append("")
                lines += [f"- {_cell(m)}: {_cell(n)}" for m, n in notes]
            lines.append("")
        if skipped:
            lines.append("Not measured:")
            lines.append("")
            for r in skipped:
                peer = f" (vs {r['peer_name']})" if r.get("peer_name") else ""
                lines.append(f"- {_cell(r['metric'])}{peer}: skipped: {_cell(r['skipped'])}")
            lines.append("")
        for section in document.get("sections") or []:
            if section.get("suite", suite) == suite:
                lines += [f"### {section['title']}", "", section["markdown"].rstrip(), ""]
    return "\n".join(lines).rstrip() + "\n"
