"""The numbers of the evaluation report and the recommendation that follows from them.

Per mode: rates with their counts and 95% Wilson intervals, means and percentiles of the
timings (`summarize_mode`); across modes: which one to deploy, and why, in plain sentences
(`recommend`). The rows the report shows (SUMMARY_ROWS, README_COLUMNS) and the verdict colours
are defined here too, so every renderer shows the same rows.

Test: .venv/bin/pytest tests/build/test_eval_report.py tests/build/test_eval_strict.py
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from appliance.common.stats import percentile, wilson_interval

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


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _secs(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} s"


def _changes(
    summary: Mapping[str, Mapping],
    pairs: Sequence[tuple[str, str, str]],
    fields: Sequence[tuple[str, str, Callable[[float | None], str]]],
) -> list[str]:
    """One line per (before, after, what) pair of modes that both ran: `what: name a → b, ...`
    for each (name, summary key, format) field."""
    lines = []
    for before, after, what in pairs:
        if before in summary and after in summary:
            a, b = summary[before], summary[after]
            changes = (f"{name} {fmt(a[key])} → {fmt(b[key])}" for name, key, fmt in fields)
            lines.append(f"{what}: " + ", ".join(changes))
    return lines


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

    rag_lines = _changes(
        summary,
        (("base", "base+rag", "base model"), ("finetuned", "finetuned+rag", "fine-tuned model")),
        (
            ("fact recall", "fact_recall", _pct),
            ("abstention on unanswerable", "abstention_accuracy", _pct),
            ("time to first token", "ttft_mean_s", _secs),
        ),
    )
    if rag_lines:
        reasons.append("Retrieval, " + "; ".join(rag_lines) + ".")
    ft_lines = _changes(
        summary,
        (
            ("base", "finetuned", "without retrieval"),
            ("base+rag", "finetuned+rag", "with retrieval"),
        ),
        (("handled correctly", "handled_correctly", _pct), ("token F1", "token_f1", _pct)),
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
