"""The evaluation report: answers of every mode, scored, summed up and written as HTML
(self-contained), JSON and Markdown.

Test: .venv/bin/pytest tests/build/test_eval_report.py

`build_report` puts the questions, modes and answer records together with the numbers of
build/eval_stats.py (rates with Wilson intervals, the recommendation); `write_reports` writes
report.json, report.md (build/eval_text.py) and report.html (build/eval_html.py, a Jinja2
template with the figures of build/eval_figures.py inline as PNGs, so it opens on a machine
with no network). `rebuild_report` re-scores stored answers; `write_results` writes the
committed results/eval/ files.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from appliance.common.fsutil import atomic_write_text
from appliance.common.stats import wilson_interval  # noqa: F401 - part of this module's API
from build.eval_figures import render_figures
from build.eval_html import render_html
from build.eval_stats import (  # noqa: F401 - SUMMARY_ROWS: part of this module's API
    QUALITY_METRICS,
    SUMMARY_ROWS,
    recommend,
    summarize_mode,
)
from build.eval_text import combined_markdown, render_markdown

REPORT_FORMAT_VERSION = 1


def build_report(
    questions: Sequence[Any],
    modes: Sequence[Any],
    records: Sequence[Any],
    *,
    run: Mapping[str, Any] | None = None,
) -> dict:
    """The whole report as one JSON-ready dict (see the module docstring)."""
    qdicts = [q.to_dict() if hasattr(q, "to_dict") else dict(q) for q in questions]
    mdicts = [m.to_dict() if hasattr(m, "to_dict") else dict(m) for m in modes]
    rdicts = [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in records]
    by_id = {q["id"]: q for q in qdicts}
    per_mode: dict[str, list[dict]] = {m["name"]: [] for m in mdicts}
    for r in rdicts:
        if r["mode"] not in per_mode:
            raise ValueError(f"record for unknown mode {r['mode']!r}")
        if r["question_id"] not in by_id:
            raise ValueError(f"record for unknown question {r['question_id']!r}")
        per_mode[r["mode"]].append(r)
    splits = [s for s in ("dev", "test") if any(q.get("split") == s for q in qdicts)]

    def summarize(split: str | None) -> dict[str, dict]:
        return {
            name: summarize_mode(
                [r for r in recs if split is None or by_id[r["question_id"]].get("split") == split],
                by_id,
            )
            for name, recs in per_mode.items()
        }

    by_split = {"all": summarize(None), **{s: summarize(s) for s in splits}}
    # With splits, the main table is the test split (never tuned on) and the mode to deploy is
    # chosen on dev, like every other tuned value; dev is shown too, so overfitting shows.
    summary = by_split["test"] if "test" in by_split else by_split["all"]
    chosen_on = "dev" if "dev" in by_split else "all"
    recommendation = recommend(by_split[chosen_on], mdicts)
    recommendation["chosen_on"] = chosen_on
    if chosen_on == "dev":
        recommendation["reasons"].append(
            "The mode is chosen on the dev split; the summary table reports the test split, "
            "which no choice was made on."
        )
    by_question: dict[str, dict[str, dict]] = {q["id"]: {} for q in qdicts}
    for r in rdicts:
        by_question[r["question_id"]][r["mode"]] = r
    figures = {
        "quality": {
            key: {m["name"]: summary[m["name"]][key] for m in mdicts} for key, _ in QUALITY_METRICS
        },
        "latency": {
            key: {m["name"]: summary[m["name"]][key] for m in mdicts}
            for key in ("ttft_mean_s", "ttft_p95_s", "total_mean_s", "total_p95_s")
        },
        "tokens": {
            key: {m["name"]: summary[m["name"]][key] for m in mdicts}
            for key in ("tokens_mean", "prompt_tokens_mean")
        },
        "outcomes": {
            q["id"]: {
                m["name"]: by_question[q["id"]].get(m["name"], {}).get("score", {}).get("verdict")
                for m in mdicts
            }
            for q in qdicts
        },
    }
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run": dict(run or {}),
        "modes": mdicts,
        "summary": summary,
        "summary_split": "test" if "test" in by_split else "all",
        "summary_by_split": by_split,
        "recommendation": recommendation,
        "figures": figures,
        "questions": [{**q, "results": by_question[q["id"]]} for q in qdicts],
    }


def rescore_record(record: Mapping, question: Mapping, use_retrieval: bool) -> dict:
    """One stored answer scored again by build.eval_metrics (e.g. after a change to the rules),
    from what the record holds: its text, the service's flags, its cited passages and which of
    their markers the appliance appended."""
    from build import eval_metrics

    r = dict(record)
    if r.get("error"):
        return r
    service = bool(r.get("service_abstained")) or r.get("grounding") == "abstained"
    r["abstention"] = eval_metrics.abstention_kind(
        r.get("text") or "",
        service_flag=service,
        use_retrieval=use_retrieval,
        question=question.get("question", ""),
    )
    r["abstained"] = r["abstention"] is not None
    cited = r.get("cited") or []
    appended = set(r.get("appended_citations") or [])
    names = [[n for n in (c.get("document"), c.get("title")) if n] for c in cited]
    own = [
        [n for n in (c.get("document"), c.get("title")) if n]
        for c in cited
        if c.get("n") not in appended
    ]
    score = eval_metrics.score_answer(
        text=r.get("text") or "",
        answerable=bool(question["answerable"]),
        expected_facts=question.get("expected_facts") or (),
        reference_answer=question.get("reference_answer") or "",
        abstained=r["abstained"],
        use_retrieval=use_retrieval,
        cited=names,
        source=question.get("source"),
        model_cited=own if "appended_citations" in r else None,
        question=question.get("question", ""),
    )
    r["score"] = score.__dict__.copy()
    return r


def rebuild_report(data: Mapping, *, rescore: bool = False) -> dict:
    """A report.json read back and summarised again by this code (e.g. after a change to the
    summary or the recommendation), without answering anything again. `rescore` also scores
    every stored answer again with the current rules (`rescore_record`)."""
    questions = [{k: v for k, v in q.items() if k != "results"} for q in data["questions"]]
    records = [r for q in data["questions"] for r in q["results"].values()]
    if rescore:
        by_id = {q["id"]: q for q in questions}
        rag = {m["name"]: bool(m["use_retrieval"]) for m in data["modes"]}
        records = [rescore_record(r, by_id[r["question_id"]], rag[r["mode"]]) for r in records]
    return build_report(questions, data["modes"], records, run=data.get("run"))


def write_results(reports: Mapping[str, Path], out_dir: Path | str) -> dict[str, Path]:
    """The committed evidence behind the README's tables: for each corpus its report.json
    (summary by split and every answer) as `<name>.json`, and `summary.md` with the per-corpus
    test and dev tables."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded: dict[str, dict] = {}
    paths: dict[str, Path] = {}
    for name, path in reports.items():
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no report; run `expert eval modes` for {name} first")
        data = json.loads(path.read_text(encoding="utf-8"))
        loaded[name] = data
        paths[name] = out_dir / f"{name}.json"
        paths[name].write_text(
            json.dumps(data, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
        )
    paths["summary"] = out_dir / "summary.md"
    paths["summary"].write_text(combined_markdown(loaded), encoding="utf-8")
    return paths


def write_reports(report: Mapping, out_dir: Path | str) -> dict[str, Path]:
    """Write report.json, report.md and report.html into out_dir; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "md": out_dir / "report.md",
        "html": out_dir / "report.html",
    }
    figures = render_figures(report)
    # Written aside then renamed, so a reader never sees half a report.
    for kind, text in (
        ("json", json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n"),
        ("md", render_markdown(report)),
        ("html", render_html(report, figures)),
    ):
        atomic_write_text(paths[kind], text, overwrite=True)
    return paths
