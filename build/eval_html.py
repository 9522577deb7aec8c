"""The evaluation report as one self-contained HTML page (figures inline, no scripts).

The page is the Jinja2 template build/templates/eval_report.html.j2 with autoescape on: every
question, answer and file name is escaped by the template engine, not by hand. This module
only shapes the report into what the template shows.

Test: .venv/bin/pytest tests/build/test_eval_report.py
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from appliance.answering import SERVICE_ABSTAIN_REASONS
from build.eval_stats import SUMMARY_ROWS, VERDICT_COLORS
from build.eval_text import cell, fmt, settings_text, split_counts, training_text

TEMPLATES = Path(__file__).parent / "templates"
FIGURE_TITLES = (
    ("quality", "Answer quality"),
    ("latency", "Latency"),
    ("outcomes", "Outcome per question"),
)
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;
max-width:1200px;padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .5rem;vertical-align:top;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.rec{background:#eef6ee;border-left:4px solid #2e7d32;padding:.6rem 1rem}
.v{color:#fff;border-radius:3px;padding:0 .35rem;font-size:.8rem;white-space:nowrap}
.q{margin:1rem 0 1.5rem}.q h3{font-size:1rem;margin:.2rem 0}
.meta{color:#555;font-size:.85rem}.answer{white-space:pre-wrap;max-width:46rem}
img{max-width:100%}code{background:#f4f4f4;padding:0 .2rem}
.missing{color:#c62828}.found{color:#2e7d32}
"""


@cache
def _template():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        keep_trailing_newline=False,
    )
    return env.get_template("eval_report.html.j2")


def _answer_row(mode: Mapping, r: Mapping) -> dict:
    s = r["score"]
    text = r.get("text") or ""
    if r.get("error"):
        text = f"error: {r['error']}"
    if r.get("abstain_reason") in SERVICE_ABSTAIN_REASONS:
        text += f"\n(the service abstained before generation: {r['abstain_reason']})"
    elif r.get("abstention"):
        text += f"\n(counted as abstention: {r['abstention']})"
    f1 = s.get("token_f1")
    return {
        "label": mode["label"],
        "verdict": s.get("verdict"),
        "text": text,
        "found": s.get("facts_found") or [],
        "missing": s.get("facts_missing") or [],
        "f1": "" if f1 is None else f"{f1:.2f}",
        "cited": [
            f"[{c['n']}] {c.get('document') or c.get('title')}" for c in r.get("cited") or []
        ],
        "citation_correct": s.get("citation_correct") if mode["use_retrieval"] else None,
        "ttft": fmt(r.get("ttft_s"), "s"),
        "total": fmt(r.get("total_s"), "s"),
        "tokens": r.get("completion_tokens", 0),
    }


def _question(q: Mapping, modes: list[Mapping]) -> dict:
    src = q.get("source")
    results = q["results"]
    return {
        "id": q["id"],
        "question": q["question"],
        "answerable": q["answerable"],
        "expected_facts": q["expected_facts"],
        "source": ", ".join(src) if isinstance(src, list) else (src or ""),
        "reference_answer": q.get("reference_answer"),
        "verdicts": {
            m["name"]: results.get(m["name"], {}).get("score", {}).get("verdict") for m in modes
        },
        "rows": [_answer_row(m, results[m["name"]]) for m in modes if m["name"] in results],
    }


def render_html(report: Mapping, figures: Mapping[str, str]) -> str:
    """The report page; `figures` maps a figure name to its PNG, base64-encoded."""
    modes = list(report["modes"])
    run = report.get("run", {})
    questions = report["questions"]
    return _template().render(
        css=CSS,
        colors=VERDICT_COLORS,
        n=len(questions),
        n_answerable=sum(q["answerable"] for q in questions),
        created=report["created"],
        settings=settings_text(run) if run.get("settings") else "",
        recommendation=report["recommendation"],
        split_counts=(
            split_counts(report, "test") if report.get("summary_split") == "test" else ""
        ),
        modes=modes,
        summary_rows=[
            (label, [cell(report["summary"][m["name"]], key, kind) for m in modes])
            for key, label, kind in SUMMARY_ROWS
        ],
        training=training_text(run),
        figure_titles=FIGURE_TITLES,
        figures=figures,
        questions=[_question(q, modes) for q in questions],
        machine=json.dumps(run.get("machine", {})),
    )
