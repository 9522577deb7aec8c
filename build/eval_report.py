"""The evaluation report: per-mode figures, a recommendation that follows from them, and the
per-question table behind both, as HTML (self-contained), JSON and Markdown.

Test: .venv/bin/pytest tests/build/test_eval_report.py

The HTML embeds its matplotlib figures as base64 PNGs and its CSS inline, so it opens on a
machine with no network. report.json holds the same numbers (summary, the data of every figure,
every answer); report.md holds the summary table, the recommendation and one line per question.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from appliance.common.fsutil import atomic_write_text
from appliance.common.stats import percentile, wilson_interval

REPORT_FORMAT_VERSION = 1
METHOD_NAMES = {"lora": "LoRA", "qlora": "QLoRA"}

# Two modes whose "handled correctly" shares differ by less than this are called a tie, and the
# cheaper or more transparent one is preferred (see `recommend`).
TIE_MARGIN = 0.05

# Rows of the summary table: (key, label, kind). kind: "pct" (0-1 shown as %), "s", "num".
# Every "pct" row is a rate with its 95% Wilson interval (`<key>_ci95`) and its counts
# (`<key>_k` of `<key>_n`) beside it in the summary.
SUMMARY_ROWS = (
    ("answer_accuracy", "Fact accuracy (all facts, no conflicting value; answerable)", "pct"),
    ("unsupported_rate", "Answers with a value found in no retrieved passage", "pct"),
    ("quoted_rate", "Quoted fallbacks (grounding check)", "pct"),
    ("false_abstention_rate", "Needless abstentions (answerable)", "pct"),
    ("abstention_accuracy", "Unanswerable abstained", "pct"),
    ("model_citation_rate", "Model citations: right document, cited by the model", "pct"),
    ("appended_citation_rate", "Appended citations: markers added by the appliance", "pct"),
    ("handled_correctly", "Handled correctly (all questions)", "pct"),
    ("citation_accuracy", "Citation correct, any marker (answerable)", "pct"),
    ("fact_recall", "Fact recall (answerable, mean)", "num"),
    ("token_f1", "Token F1 vs reference (answerable, mean)", "num"),
    ("prompt_tokens_p50", "Prompt tokens, median", "num"),
    ("ttft_p50_s", "Time to first token, median", "s"),
    ("ttft_p95_s", "Time to first token, p95", "s"),
    ("total_p50_s", "Total time per answer, median", "s"),
    ("total_mean_s", "Total time per answer, mean", "s"),
    ("tokens_mean", "Tokens generated, mean", "num"),
    ("decode_tok_s", "Decode speed (tok/s)", "num"),
)
# The compact table (modes as rows) for the README: (key, header, kind).
README_COLUMNS = (
    ("answer_accuracy", "fact accuracy", "pct"),
    ("unsupported_rate", "unsupported value", "pct"),
    ("quoted_rate", "quoted fallback", "pct"),
    ("false_abstention_rate", "needless abstention", "pct"),
    ("abstention_accuracy", "unanswerable abstained", "pct"),
    ("model_citation_rate", "model citations", "pct"),
    ("appended_citation_rate", "appended citations", "pct"),
    ("prompt_tokens_p50", "prompt tokens (median)", "num"),
    ("ttft_p50_s", "first token (median)", "s"),
    ("total_p50_s", "total (median)", "s"),
)

QUALITY_METRICS = (
    ("answer_accuracy", "Answer accuracy"),
    ("fact_recall", "Fact recall"),
    ("token_f1", "Token F1"),
    ("citation_accuracy", "Citation correct"),
    ("abstention_accuracy", "Abstention (unanswerable)"),
)

VERDICT_COLORS = {
    "correct": "#2e7d32",
    "conflicting": "#ef6c00",
    "partial": "#f9a825",
    "wrong": "#c62828",
    "abstained": "#6d4c41",
    "hallucinated": "#8e24aa",
    "error": "#424242",
}
VERDICT_SYMBOLS = {
    "correct": "✓",
    "conflicting": "≠",
    "partial": "½",
    "wrong": "✗",
    "abstained": "–",
    "hallucinated": "!",
    "error": "E",
}


# --------------------------------------------------------------------------------------------
# Numbers


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _percentile(values: Sequence[float | None], q: float) -> float | None:
    """stats.percentile (q in 0..100) of the values that are not None; None if there are none."""
    vals = [float(v) for v in values if v is not None]
    return percentile(vals, q) if vals else None


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def _rate(out: dict, key: str, flags: Sequence[bool] | None) -> None:
    """Store a rate with its counts and 95% Wilson interval (None when nothing to count)."""
    if not flags:
        out[key] = None
        out[f"{key}_ci95"] = None
        out[f"{key}_k"] = 0
        out[f"{key}_n"] = 0
        return
    k, n = sum(bool(f) for f in flags), len(flags)
    interval = wilson_interval(k, n)
    out[key] = _r(k / n)
    out[f"{key}_ci95"] = [_r(interval[0]), _r(interval[1])] if interval else None
    out[f"{key}_k"] = k
    out[f"{key}_n"] = n


def summarize_mode(records: Sequence[Mapping], questions: Mapping[str, Mapping]) -> dict:
    """Aggregate one mode's answer records (dicts of AnswerRecord) into its summary figures.

    Rates (each with `_ci95`, `_k`, `_n`):
    - answer_accuracy: answerable questions whose answer holds every expected fact, states no
      conflicting value and does not abstain (build.eval_metrics);
    - unsupported_rate: answers with a value-like token found in no retrieved passage
      (appliance.grounding; retrieval modes only, all questions);
    - quoted_rate: answers the service replaced by a marked quote (the grounding verdict);
    - false_abstention_rate / abstention_accuracy: abstained on answerable / unanswerable ones;
    - model_citation_rate: answerable questions where a marker the *model* wrote cites the
      expected document; appended_citation_rate: answerable answers whose markers the
      appliance appended itself (the model cited nothing);
    - handled_correctly, citation_accuracy (any marker, the old column)."""
    ans = [r for r in records if questions[r["question_id"]]["answerable"]]
    unans = [r for r in records if not questions[r["question_id"]]["answerable"]]
    correct = sum(r["score"]["verdict"] == "correct" for r in records)
    cite_scored = [r for r in ans if r["score"].get("citation_correct") is not None]
    model_scored = [r for r in ans if r["score"].get("citation_correct") is not None]
    answered = [r for r in ans if not r["abstained"] and not r.get("error")]
    cites = [r["score"].get("cited") for r in answered if r["score"].get("cited") is not None]
    decode_tokens = sum(
        max(r["completion_tokens"] - 1, 0) for r in records if r.get("tokens_per_s")
    )
    decode_time = sum(
        (r["completion_tokens"] - 1) / r["tokens_per_s"] for r in records if r.get("tokens_per_s")
    )
    generated = [r for r in records if r["completion_tokens"] > 0]
    measured = [r for r in records if r.get("unsupported_values") is not None]
    graded = [r for r in records if r.get("grounding") is not None]
    out: dict[str, Any] = {
        "n_questions": len(records),
        "n_answerable": len(ans),
        "n_unanswerable": len(unans),
        "n_correct": correct,
    }
    _rate(out, "handled_correctly", [r["score"]["verdict"] == "correct" for r in records])
    _rate(out, "answer_accuracy", [r["score"]["verdict"] == "correct" for r in ans])
    _rate(out, "unsupported_rate", [bool(r["unsupported_values"]) for r in measured])
    _rate(out, "quoted_rate", [r["grounding"] == "quoted" for r in graded])
    # answers that are a named entry's labelled field, quoted without the model (appliance.fields)
    _rate(out, "extracted_rate", [bool(r.get("extracted")) for r in graded])
    _rate(out, "false_abstention_rate", [r["abstained"] for r in ans])
    _rate(out, "abstention_accuracy", [r["abstained"] for r in unans])
    _rate(out, "citation_accuracy", [r["score"]["citation_correct"] for r in cite_scored])
    _rate(
        out,
        "model_citation_rate",
        [bool(r["score"].get("model_citation_correct")) for r in model_scored],
    )
    _rate(
        out,
        "appended_citation_rate",
        [bool(r.get("appended_citations")) for r in ans if r["score"].get("cited") is not None],
    )
    out.update(
        {
            "fact_recall": _r(_mean([r["score"].get("fact_recall") for r in ans])),
            "token_f1": _r(_mean([r["score"].get("token_f1") for r in ans])),
            "cited_rate": _r(_mean(cites)) if cites else None,
            "conflicting": sum(r["score"]["verdict"] == "conflicting" for r in records),
            "ttft_mean_s": _r(_mean([r.get("ttft_s") for r in records])),
            "ttft_p50_s": _r(_percentile([r.get("ttft_s") for r in records], 50)),
            "ttft_p95_s": _r(_percentile([r.get("ttft_s") for r in records], 95)),
            "total_mean_s": _r(_mean([r["total_s"] for r in records])),
            "total_p50_s": _r(_percentile([r["total_s"] for r in records], 50)),
            "total_p95_s": _r(_percentile([r["total_s"] for r in records], 95)),
            "tokens_mean": _r(_mean([r["completion_tokens"] for r in generated]), 1)
            if generated
            else 0.0,
            "prompt_tokens_mean": _r(_mean([r["prompt_tokens"] for r in generated]), 1)
            if generated
            else 0.0,
            "prompt_tokens_p50": _r(_percentile([r["prompt_tokens"] for r in generated], 50), 1)
            if generated
            else 0.0,
            "decode_tok_s": _r(decode_tokens / decode_time, 1) if decode_time > 0 else None,
            "hit_token_limit": sum(r.get("finish_reason") == "length" for r in records),
            "errors": sum(bool(r.get("error")) for r in records),
            "verdicts": {
                v: sum(r["score"]["verdict"] == v for r in records) for v in VERDICT_COLORS
            },
        }
    )
    return out


# --------------------------------------------------------------------------------------------
# Recommendation


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _secs(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} s"


def recommend(summary: Mapping[str, Mapping], modes: Sequence[Mapping]) -> dict:
    """Pick the mode to deploy for this data set, and say why, from the numbers alone.

    Ranking: share of questions handled correctly (answerable: every expected fact, no
    abstention; unanswerable: abstained), then fact recall, then time to first token. Modes
    within TIE_MARGIN of the best are a tie, settled in favour of retrieval (its answers cite
    their source and follow document changes without retraining), then of the base model (no
    training pipeline to keep up), then of the higher score. When no mode handles a single
    question, none is recommended.
    """
    by_name = {m["name"]: m for m in modes}
    names = [m["name"] for m in modes if summary.get(m["name"], {}).get("n_questions")]
    if not names:
        return {
            "mode": None,
            "label": None,
            "ranking": [],
            "text": "No answers were scored.",
            "reasons": [],
        }

    def score(n: str) -> float:
        return summary[n]["handled_correctly"] or 0.0

    def key(n: str) -> tuple:
        s = summary[n]
        return (
            -score(n),
            -(s["fact_recall"] or 0.0),
            s["ttft_mean_s"] if s["ttft_mean_s"] is not None else math.inf,
        )

    ranked = sorted(names, key=key)
    top = ranked[0]
    tied = [n for n in ranked if score(top) - score(n) < TIE_MARGIN]
    choice = min(
        tied,
        key=lambda n: (not by_name[n]["use_retrieval"], by_name[n]["finetuned"], ranked.index(n)),
    )
    if score(top) == 0:
        choice = top
    s = summary[choice]
    label = by_name[choice]["label"]
    reasons: list[str] = []
    ci = s.get("handled_correctly_ci95")
    ci_txt = f" (95% interval {_pct(ci[0])}–{_pct(ci[1])})" if ci else ""
    reasons.append(
        f"{label} handles {s['n_correct']} of {s['n_questions']} questions correctly "
        f"({_pct(s['handled_correctly'])}{ci_txt}): answer accuracy {_pct(s['answer_accuracy'])}, "
        f"fact recall {_pct(s['fact_recall'])}, abstains on {_pct(s['abstention_accuracy'])} of "
        "the unanswerable questions."
    )
    if choice != top:
        t = summary[top]
        reasons.append(
            f"{by_name[top]['label']} scores {_pct(t['handled_correctly'])}, within "
            f"{TIE_MARGIN * 100:.0f} points; {label} is preferred because "
            + (
                "it grounds its answers in the documents and cites them."
                if by_name[choice]["use_retrieval"] and not by_name[top]["use_retrieval"]
                else "it needs no fine-tuning to keep up to date."
            )
        )
    elif len(ranked) > 1:
        second = ranked[1]
        t = summary[second]
        reasons.append(
            f"Next best: {by_name[second]['label']} at {_pct(t['handled_correctly'])}"
            + (" (a tie within the margin)." if second in tied else ".")
        )

    def pair(a: str, b: str) -> tuple[Mapping, Mapping] | None:
        return (summary[a], summary[b]) if a in summary and b in summary else None

    rag_lines = []
    for without, with_, what in (
        ("base", "base+rag", "base model"),
        ("finetuned", "finetuned+rag", "fine-tuned model"),
    ):
        p = pair(without, with_)
        if p:
            rag_lines.append(
                f"{what}: fact recall {_pct(p[0]['fact_recall'])} → {_pct(p[1]['fact_recall'])}, "
                f"abstention on unanswerable {_pct(p[0]['abstention_accuracy'])} → "
                f"{_pct(p[1]['abstention_accuracy'])}, time to first token "
                f"{_secs(p[0]['ttft_mean_s'])} → {_secs(p[1]['ttft_mean_s'])}"
            )
    if rag_lines:
        reasons.append("Retrieval, " + "; ".join(rag_lines) + ".")
    ft_lines = []
    for base_mode, ft_mode, what in (
        ("base", "finetuned", "without retrieval"),
        ("base+rag", "finetuned+rag", "with retrieval"),
    ):
        p = pair(base_mode, ft_mode)
        if p:
            ft_lines.append(
                f"{what}: handled correctly {_pct(p[0]['handled_correctly'])} → "
                f"{_pct(p[1]['handled_correctly'])}, token F1 {_pct(p[0]['token_f1'])} → "
                f"{_pct(p[1]['token_f1'])}"
            )
    if ft_lines:
        reasons.append("Fine-tuning, " + "; ".join(ft_lines) + ".")
    cites = [
        (by_name[n]["label"], summary[n]["citation_accuracy"])
        for n in names
        if by_name[n]["use_retrieval"] and summary[n]["citation_accuracy"] is not None
    ]
    if cites:
        reasons.append(
            "Only the retrieval modes cite their sources; a cited passage comes from the "
            "expected document in "
            + ", ".join(f"{_pct(v)} ({lbl})" for lbl, v in cites)
            + " of the answerable questions."
        )
    if not by_name[choice]["use_retrieval"]:
        reasons.append(
            "Without retrieval, answers cannot cite a document and a change in the documents "
            "needs retraining: keep that in mind where answers must be traceable."
        )
    n = s["n_questions"]
    if n < 100:
        reasons.append(
            f"With {n} questions one question moves a share by {100 / n:.1f} points; treat "
            "differences of a few points as noise."
        )
    if score(top) == 0:
        text = (
            "No mode handles a single question correctly on this data set, so none is "
            "recommended: the model is too weak for these questions (a larger base model, or "
            "more training, is needed). " + reasons[0]
        )
        return {"mode": None, "label": None, "ranking": ranked, "text": text, "reasons": reasons}
    text = f"Recommended for this data set: {label}. " + reasons[0]
    return {"mode": choice, "label": label, "ranking": ranked, "text": text, "reasons": reasons}


# --------------------------------------------------------------------------------------------
# The report as data


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


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m build.eval_report results NAME=REPORT.json ... --out DIR` (the committed
    results folder) and `python -m build.eval_report rescore REPORT.json --out DIR` (score
    stored answers again under the current rules and write the report anew)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m build.eval_report", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    res = sub.add_parser("results", help="copy reports and write summary.md into a folder")
    res.add_argument("reports", nargs="+", metavar="NAME=REPORT.json")
    res.add_argument("--out", type=Path, required=True, metavar="DIR")
    rs = sub.add_parser("rescore", help="score a report's stored answers again")
    rs.add_argument("report", type=Path)
    rs.add_argument("--out", type=Path, required=True, metavar="DIR")
    args = ap.parse_args(argv)
    if args.cmd == "results":
        reports = {}
        for item in args.reports:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                ap.error(
                    f"{item!r}: write NAME=PATH/report.json, e.g. plant=var/eval/plant/report.json"
                )
            reports[name] = Path(path)
        try:
            paths = write_results(reports, args.out)
        except FileNotFoundError as exc:
            ap.error(str(exc))
        print(paths["summary"].read_text(encoding="utf-8"))
        return 0
    if not args.report.is_file():
        ap.error(f"{args.report}: no such report.json")
    report = rebuild_report(json.loads(args.report.read_text(encoding="utf-8")), rescore=True)
    paths = write_reports(report, args.out)
    print(paths["md"].read_text(encoding="utf-8").split("\n## Per question")[0])
    return 0


# --------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg, PNG as base64)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_figures(report: Mapping) -> dict[str, str]:
    """{name: base64 PNG} for the quality, latency and per-question outcome figures."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    modes = report["modes"]
    names = [m["name"] for m in modes]
    labels = [m["label"] for m in modes]
    figs = report["figures"]
    colors = plt.get_cmap("tab10").colors
    out: dict[str, str] = {}

    # quality: grouped bars, one group per metric, one bar per mode
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(QUALITY_METRICS) + 0.4 * len(names)), 3.8))
    width = 0.8 / max(len(names), 1)
    for i, (name, label) in enumerate(zip(names, labels, strict=True)):
        vals = [figs["quality"][k][name] for k, _ in QUALITY_METRICS]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(QUALITY_METRICS))]
        bars = ax.bar(
            xs, [100 * (v or 0.0) for v in vals], width, label=label, color=colors[i % len(colors)]
        )
        for b, v in zip(bars, vals, strict=True):
            ax.annotate(
                "n/a" if v is None else f"{100 * v:.0f}",
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(range(len(QUALITY_METRICS)), [lbl for _, lbl in QUALITY_METRICS], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 110)
    ax.set_title("Answer quality by mode")
    ax.legend(fontsize=8, ncols=min(4, len(names)), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    out["quality"] = _png(fig)

    # latency: mean time to first token and total per answer, p95 as whiskers
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names) + 2), 3.6))
    lat = figs["latency"]
    xs = range(len(names))
    for offset, (mean_key, p95_key, lbl, color) in enumerate(
        (
            ("ttft_mean_s", "ttft_p95_s", "time to first token", "#1565c0"),
            ("total_mean_s", "total_p95_s", "total per answer", "#90a4ae"),
        )
    ):
        means = [lat[mean_key][n] or 0.0 for n in names]
        p95 = [lat[p95_key][n] or 0.0 for n in names]
        pos = [x + (offset - 0.5) * 0.38 for x in xs]
        ax.bar(
            pos,
            means,
            0.38,
            label=f"{lbl} (mean; whisker p95)",
            color=color,
            yerr=[[0] * len(means), [max(p - m, 0) for p, m in zip(p95, means, strict=True)]],
            capsize=3,
        )
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title("Latency by mode")
    ax.legend(fontsize=8, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    out["latency"] = _png(fig)

    # outcomes: one row per question, one column per mode, coloured by verdict
    qids = list(figs["outcomes"])
    verdicts = list(VERDICT_COLORS)
    grid = [
        [
            verdicts.index(figs["outcomes"][q][n])
            if figs["outcomes"][q][n] in verdicts
            else verdicts.index("error")
            for n in names
        ]
        for q in qids
    ]
    height = min(max(2.5, 0.22 * len(qids) + 1.2), 40.0)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(names) + 2.5), height))
    ax.imshow(
        grid,
        aspect="auto",
        interpolation="nearest",
        vmin=0,
        vmax=len(verdicts) - 1,
        cmap=ListedColormap([VERDICT_COLORS[v] for v in verdicts]),
    )
    ax.set_xticks(range(len(names)), labels, fontsize=8)
    ax.set_yticks(range(len(qids)), qids, fontsize=6 if len(qids) > 40 else 8)
    ax.tick_params(axis="x", top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.legend(
        handles=[Patch(color=VERDICT_COLORS[v], label=v) for v in verdicts],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
    )
    ax.set_title("Outcome per question")
    out["outcomes"] = _png(fig)
    return out


# --------------------------------------------------------------------------------------------
# Writers


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "s":
        return f"{value:.2f} s"
    return f"{value:g}"


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _cell(row: Mapping, key: str, kind: str) -> str:
    """A summary value as shown: rates with their counts and 95% Wilson interval."""
    value = row.get(key)
    if kind != "pct" or value is None:
        return _fmt(value, kind)
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
        f"| {label} | " + " | ".join(_cell(summary[m["name"]], key, kind) for m in modes) + " |"
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
        + " | ".join(_cell(summary[m["name"]], key, kind) for key, _, kind in README_COLUMNS)
        + " |"
        for m in report["modes"]
        if summary.get(m["name"], {}).get("n_questions")
    ]
    return "\n".join([head, sep, *rows])


def _split_counts(report: Mapping, split: str) -> str:
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
            f"Questions: `{run.get('questions_file', '?')}`; settings: {_settings_text(run)}; "
            f"created {report.get('created')}."
        )
        if training_text(run):
            lines += ["", training_text(run)]
        splits = [s for s in ("test", "dev") if s in report.get("summary_by_split", {})]
        for split in splits or ["all"]:
            title = {"test": "Test split", "dev": "Dev split", "all": "All questions"}[split]
            lines += ["", f"### {title} ({_split_counts(report, split)})", ""]
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
        + (f" Settings: {_settings_text(run)}." if run.get("settings") else ""),
        "",
        *(
            [
                f"Summary of the **test split** ({_split_counts(report, 'test')}); never tuned on.",
                "",
            ]
            if report.get("summary_split") == "test"
            else []
        ),
        summary_markdown(report),
        "",
        *(
            [
                f"Dev split ({_split_counts(report, 'dev')}), where tuned values were chosen:",
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


def _settings_text(run: Mapping) -> str:
    s = run.get("settings") or {}
    parts = [f"{k}={s[k]}" for k in ("max_new_tokens", "k", "seed") if k in s]
    parts.append("greedy")
    if run.get("abstain_threshold") is not None:
        parts.append(f"abstain threshold {run['abstain_threshold']}")
    return ", ".join(parts)


_CSS = """
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


def _badge(verdict: str | None) -> str:
    v = verdict or "error"
    color = VERDICT_COLORS.get(v, "#424242")
    return f'<span class="v" style="background:{color}">{html.escape(v)}</span>'


def render_html(report: Mapping, figures: Mapping[str, str]) -> str:
    e = html.escape
    modes = report["modes"]
    run = report.get("run", {})
    rec = report["recommendation"]
    n = len(report["questions"])
    n_ans = sum(q["answerable"] for q in report["questions"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Evaluation: base vs RAG vs fine-tuned vs both</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Evaluation: base vs RAG vs fine-tuned vs both</h1>",
        f'<p class="meta">{n} held-out questions ({n_ans} answerable, {n - n_ans} not '
        f"answerable from the documents). Created {e(report['created'])}."
        + (f" Settings: {e(_settings_text(run))}." if run.get("settings") else "")
        + "</p>",
        "<h2>Recommendation</h2>",
        f'<div class="rec"><p><strong>{e(rec["text"])}</strong></p>',
        "<ul>" + "".join(f"<li>{e(r)}</li>" for r in rec["reasons"][1:]) + "</ul></div>",
        "<h2>Summary</h2>",
        '<p class="meta">'
        + (
            f"Test split ({e(_split_counts(report, 'test'))}), never tuned on; the dev split "
            "is in report.json (summary_by_split) and report.md."
            if report.get("summary_split") == "test"
            else "All questions (the file has no dev/test split)."
        )
        + " Rates: share (k/n; 95% Wilson interval).</p>",
        "<table><tr><th>metric</th>"
        + "".join(f"<th>{e(m['label'])}</th>" for m in modes)
        + "</tr>",
    ]
    for key, label, kind in SUMMARY_ROWS:
        parts.append(
            f"<tr><td>{e(label)}</td>"
            + "".join(
                f'<td class="num">{e(_cell(report["summary"][m["name"]], key, kind))}</td>'
                for m in modes
            )
            + "</tr>"
        )
    parts.append("</table>")
    parts.append(
        "<h2>Modes</h2><table><tr><th>mode</th><th>model</th><th>precision</th>"
        "<th>retrieval</th><th>bundle / model folder</th></tr>"
    )
    for m in modes:
        parts.append(
            f"<tr><td>{e(m['label'])}</td><td>{'fine-tuned' if m['finetuned'] else 'base'}</td>"
            f"<td>{e(m.get('precision') or '')}</td><td>{'yes' if m['use_retrieval'] else 'no'}</td>"
            f"<td><code>{e(str(m.get('bundle') or m.get('llm_dir') or ''))}</code></td></tr>"
        )
    parts.append("</table>")
    if training_text(run):
        parts.append(f'<p class="meta">{e(training_text(run))}</p>')
    parts.append("<h2>Figures</h2>")
    for name, title in (
        ("quality", "Answer quality"),
        ("latency", "Latency"),
        ("outcomes", "Outcome per question"),
    ):
        if name in figures:
            parts.append(
                f'<figure><img alt="{e(title)}" src="data:image/png;base64,{figures[name]}">'
                f"<figcaption>{e(title)}</figcaption></figure>"
            )
    # compact grid with links to the details
    parts.append(
        "<h2>Per question</h2><table><tr><th>id</th><th>answerable</th><th>question</th>"
        + "".join(f"<th>{e(m['label'])}</th>" for m in modes)
        + "</tr>"
    )
    for q in report["questions"]:
        parts.append(
            f'<tr><td><a href="#q-{e(q["id"])}">{e(q["id"])}</a></td>'
            f"<td>{'yes' if q['answerable'] else 'no'}</td><td>{e(q['question'])}</td>"
            + "".join(
                f"<td>{_badge(q['results'].get(m['name'], {}).get('score', {}).get('verdict'))}</td>"
                for m in modes
            )
            + "</tr>"
        )
    parts.append("</table>")
    for q in report["questions"]:
        parts.append(_question_html(q, modes))
    parts.append(
        '<p class="meta">Machine: ' + e(json.dumps(run.get("machine", {}))) + "</p></body></html>"
    )
    return "\n".join(parts)


def _question_html(q: Mapping, modes: Sequence[Mapping]) -> str:
    e = html.escape
    src = q.get("source")
    src_txt = ", ".join(src) if isinstance(src, list) else (src or "")
    facts = ", ".join(f"<code>{e(f)}</code>" for f in q["expected_facts"]) or "none"
    out = [
        f'<div class="q" id="q-{e(q["id"])}"><h3>{e(q["id"])}: {e(q["question"])}</h3>',
        f'<p class="meta">{"answerable" if q["answerable"] else "not answerable from the documents"}'
        + (f"; expected facts: {facts}" if q["answerable"] else "")
        + (f"; source: <code>{e(src_txt)}</code>" if src_txt else "")
        + "</p>",
    ]
    if q.get("reference_answer"):
        out.append(f'<p class="meta">Reference: {e(q["reference_answer"])}</p>')
    out.append(
        "<table><tr><th>mode</th><th>verdict</th><th>answer</th><th>facts</th><th>F1</th>"
        "<th>cited</th><th>first token</th><th>total</th><th>tokens</th></tr>"
    )
    for m in modes:
        r = q["results"].get(m["name"])
        if r is None:
            continue
        s = r["score"]
        found = "".join(
            f'<span class="found">✓ {e(f)}</span><br>' for f in s.get("facts_found") or []
        )
        missing = "".join(
            f'<span class="missing">✗ {e(f)}</span><br>' for f in s.get("facts_missing") or []
        )
        cited = "<br>".join(
            e(f"[{c['n']}] {c.get('document') or c.get('title')}") for c in r.get("cited") or []
        )
        if m["use_retrieval"] and s.get("citation_correct") is not None:
            cited += ("<br>" if cited else "") + (
                "right document"
                if s["citation_correct"]
                else "<span class='missing'>wrong document</span>"
            )
        text = r.get("text") or ""
        if r.get("error"):
            text = f"error: {r['error']}"
        if r.get("abstain_reason") in ("low_score", "no_passages", "unknown_term"):
            text += f"\n(the service abstained before generation: {r['abstain_reason']})"
        elif r.get("abstention"):
            text += f"\n(counted as abstention: {r['abstention']})"
        f1 = s.get("token_f1")
        out.append(
            f"<tr><td>{e(m['label'])}</td><td>{_badge(s.get('verdict'))}</td>"
            f'<td class="answer">{e(text)}</td><td>{found}{missing}</td>'
            f'<td class="num">{"" if f1 is None else f"{f1:.2f}"}</td><td>{cited}</td>'
            f'<td class="num">{_fmt(r.get("ttft_s"), "s")}</td>'
            f'<td class="num">{_fmt(r.get("total_s"), "s")}</td>'
            f'<td class="num">{r.get("completion_tokens", 0)}</td></tr>'
        )
    out.append("</table></div>")
    return "\n".join(out)


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


if __name__ == "__main__":
    raise SystemExit(main())
