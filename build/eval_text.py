"""The evaluation report as Markdown (report.md, results/eval/summary.md, README tables), and
the formatting of a table cell that the HTML page shares.

Test: .venv/bin/pytest tests/build/test_eval_report.py
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from build.eval_stats import METHOD_NAMES, README_COLUMNS, SUMMARY_ROWS, VERDICT_SYMBOLS


def fmt(value: Any, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "s":
        return f"{value:.2f} s"
    return f"{value:g}"


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def cell(row: Mapping, key: str, kind: str) -> str:
    """A summary value as shown: rates with their counts and 95% Wilson interval."""
    value = row.get(key)
    if kind != "pct" or value is None:
        return fmt(value, kind)
    ci = row.get(f"{key}_ci95")
    counts = f"{row.get(f'{key}_k')}/{row.get(f'{key}_n')}"
    if not ci:
        return f"{100 * value:.0f}% ({counts})"
    return f"{100 * value:.0f}% ({counts}; {100 * ci[0]:.0f}–{100 * ci[1]:.0f})"


def summary_markdown(report: Mapping, split: str | None = None) -> str:
    """The summary table (metrics as rows, modes as columns) in Markdown; `split` picks a
    split's summary (default: the report's main one, the test split where there is one)."""
    modes = report["modes"]
    summary = report["summary"] if split is None else report["summary_by_split"][split]
    head = "| metric | " + " | ".join(m["label"] for m in modes) + " |"
    sep = "|---|" + "---:|" * len(modes)
    rows = [
        f"| {label} | " + " | ".join(cell(summary[m["name"]], key, kind) for m in modes) + " |"
        for key, label, kind in SUMMARY_ROWS
    ]
    return "\n".join([head, sep, *rows])


def modes_table_markdown(report: Mapping, split: str | None = None) -> str:
    """The compact table for the README: one row per mode, README_COLUMNS as columns; rates
    as "share (k/n; Wilson 95% interval)"."""
    summary = report["summary"] if split is None else report["summary_by_split"][split]
    head = "| mode | " + " | ".join(h for _, h, _ in README_COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(README_COLUMNS)
    rows = [
        f"| {m['label']} | "
        + " | ".join(cell(summary[m["name"]], key, kind) for key, _, kind in README_COLUMNS)
        + " |"
        for m in report["modes"]
        if summary.get(m["name"], {}).get("n_questions")
    ]
    return "\n".join([head, sep, *rows])


def split_counts(report: Mapping, split: str) -> str:
    qs = [q for q in report["questions"] if split == "all" or q.get("split") == split]
    n_ans = sum(bool(q["answerable"]) for q in qs)
    return f"{len(qs)} questions: {n_ans} answerable, {len(qs) - n_ans} unanswerable"


def combined_markdown(reports: Mapping[str, Mapping]) -> str:
    """Several corpora's reports in one Markdown page: per corpus the test table, then dev."""
    lines = ["# Evaluation: base vs RAG vs fine-tuned vs both, per corpus", ""]
    lines.append(
        "Rates are shown as share (k/n; 95% Wilson interval, in %). The test split is never "
        "tuned on; dev is where every tuned value was chosen, shown so that overfitting is "
        "visible. Scoring: build/eval_metrics.py (strict rules)."
    )
    for name, report in reports.items():
        run = report.get("run", {})
        lines += ["", f"## {name}", ""]
        lines.append(
            f"Questions: `{run.get('questions_file', '?')}`; settings: {settings_text(run)}; "
            f"created {report.get('created')}."
        )
        if training_text(run):
            lines += ["", training_text(run)]
        splits = [s for s in ("test", "dev") if s in report.get("summary_by_split", {})]
        for split in splits or ["all"]:
            title = {"test": "Test split", "dev": "Dev split", "all": "All questions"}[split]
            lines += ["", f"### {title} ({split_counts(report, split)})", ""]
            lines.append(modes_table_markdown(report, None if split == "all" else split))
        rec = report.get("recommendation") or {}
        if rec.get("text"):
            lines += [
                "",
                f"Recommendation (chosen on {rec.get('chosen_on', 'all')}): {rec['text']}",
            ]
    lines.append("")
    return "\n".join(lines)


def render_markdown(report: Mapping) -> str:
    modes = report["modes"]
    run = report.get("run", {})
    rec = report["recommendation"]
    n = len(report["questions"])
    n_ans = sum(q["answerable"] for q in report["questions"])
    lines = [
        "# Evaluation: base vs RAG vs fine-tuned vs both",
        "",
        f"{n} held-out questions ({n_ans} answerable, {n - n_ans} not answerable from the "
        f"documents); created {report['created']}."
        + (f" Settings: {settings_text(run)}." if run.get("settings") else ""),
        "",
        *(
            [
                f"Summary of the **test split** ({split_counts(report, 'test')}); never tuned on.",
                "",
            ]
            if report.get("summary_split") == "test"
            else []
        ),
        summary_markdown(report),
        "",
        *(
            [
                f"Dev split ({split_counts(report, 'dev')}), where tuned values were chosen:",
                "",
                modes_table_markdown(report, "dev"),
                "",
            ]
            if "dev" in report.get("summary_by_split", {})
            else []
        ),
        *([training_text(run), ""] if training_text(run) else []),
        "## Recommendation",
        "",
        rec["text"],
        "",
        *[f"- {r}" for r in rec["reasons"][1:]],
        "",
        "## Per question",
        "",
        "Verdicts: " + ", ".join(f"{VERDICT_SYMBOLS[v]} {v}" for v in VERDICT_SYMBOLS) + ".",
        "",
        "| id | answerable | question | " + " | ".join(m["label"] for m in modes) + " |",
        "|---|---|---|" + "---|" * len(modes),
    ]
    for q in report["questions"]:
        cells = []
        for m in modes:
            r = q["results"].get(m["name"])
            if r is None:
                cells.append("")
                continue
            v = r["score"]["verdict"]
            found = r["score"].get("facts_found") or []
            total = len(q["expected_facts"])
            facts = f" {len(found)}/{total}" if q["answerable"] and total else ""
            cells.append(f"{VERDICT_SYMBOLS.get(v, '?')} {v}{facts}")
        lines.append(
            f"| {_md_cell(q['id'])} | {'yes' if q['answerable'] else 'no'} | "
            f"{_md_cell(q['question'])} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    return "\n".join(lines)


def training_text(run: Mapping) -> str | None:
    """One sentence on how the fine-tuned model was made (None when it was given as a bundle)."""
    ft = (run.get("build") or {}).get("finetune")
    if not ft:
        return None
    opt = ft.get("options") or {}
    tr = ft.get("training") or {}
    steps = tr.get("global_step")
    examples = steps * opt.get("batch_size", 0) if steps and opt.get("batch_size") else None
    parts = [
        f"{METHOD_NAMES.get(opt.get('method'), 'LoRA')} on {ft.get('base_hf', 'the base checkpoint')}",
        "RAG-aware (each question with the passages the index retrieves for it, "
        f"k={opt.get('retrieval_k')}, {opt.get('distractors')} distractor)"
        if opt.get("with_retrieval")
        else "plain question/answer pairs",
    ]
    if steps:
        parts.append(
            f"{steps} steps"
            + (f" ({examples} examples)" if examples else "")
            + (f", learning rate {opt['learning_rate']}" if opt.get("learning_rate") else "")
        )
    if tr.get("eval_loss_before") is not None and tr.get("eval_loss") is not None:
        parts.append(f"eval loss {tr['eval_loss_before']:.3f} → {tr['eval_loss']:.3f}")
    parts.append("merged and exported to int4 with the base bundle's settings")
    took = ft.get("seconds") or {}
    reused = [k for k, v in (ft.get("reused") or {}).items() if v]
    if took:
        parts.append(
            "build "
            + ", ".join(f"{k} {v:.0f} s" for k, v in took.items())
            + (f" (reused: {', '.join(reused)})" if reused else "")
        )
    return "Fine-tuned model: " + "; ".join(parts) + "."


def settings_text(run: Mapping) -> str:
    s = run.get("settings") or {}
    parts = [f"{k}={s[k]}" for k in ("max_new_tokens", "k", "seed") if k in s]
    parts.append("greedy")
    if run.get("abstain_threshold") is not None:
        parts.append(f"abstain threshold {run['abstain_threshold']}")
    if run.get("abstain_threshold_cross_language") is not None:
        parts.append(
            f"{run['abstain_threshold_cross_language']} for questions in another language "
            "than the documents'"
        )
    return ", ".join(parts)
