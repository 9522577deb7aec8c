"""Retrieval quality on labelled questions: recall@k, MRR and nDCG@10 per search mode.

Used by `expert eval retrieval` (the CLI lives in build/evaluation.py) and by the tests.
A question is a JSON object: id, question, expected_facts (strings the answer needs),
source (document path, e.g. "docs/pump-maintenance-manual.md"), answerable, optional page and
filters. A retrieved passage is relevant when it comes from the source document (and page,
when given) and contains at least one expected fact; with no facts listed, any passage of the
source document counts.

recall@k here is the share of answerable questions with a relevant passage in the top k
(success@k, what a RAG prompt needs); MRR and nDCG are cut at 10. Questions marked
unanswerable measure the "documents do not cover this" threshold on the best dense score.

Test: .venv/bin/pytest tests/appliance/test_retrieval_eval.py
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

from appliance.common.questions import load_questions
from appliance.common.stats import percentile
from appliance.errors import UserFacingError
from appliance.retrieval.hybrid import MODES
from appliance.retrieval.keywords import code_terms

KS = (1, 3, 5, 10)
_SPACES = re.compile(r"[\s\u00a0\u2009\u202f]+")


def _norm(text: str) -> str:
    return _SPACES.sub(" ", text).strip().lower()


def _same_path(passage_path: str, source: str) -> bool:
    a, b = passage_path.strip("/"), source.strip("/")
    return a == b or b.endswith("/" + a) or a.endswith("/" + b)


def _relevant(passage, q: dict) -> bool:
    source = q.get("source")
    if not source or not _same_path(passage.path, source):
        return False
    if q.get("page") is not None and passage.page is not None and passage.page != q["page"]:
        return False
    facts = [_norm(f) for f in q.get("expected_facts") or [] if str(f).strip()]
    if not facts:
        return True
    text = _norm(passage.text)
    return any(f in text for f in facts)


def _ndcg(rels: list[bool], n_relevant: int, k: int = 10) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, r in enumerate(rels[:k]) if r)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(max(n_relevant, 1), k)))
    return dcg / ideal


def _count_relevant(retriever, q: dict, cache: dict) -> int:
    """Relevant chunks in the whole index, for nDCG's ideal ranking."""
    source = q.get("source") or ""
    if source not in cache:
        cache[source] = [p for p in retriever.passages_of_path(source)]
    return sum(1 for p in cache[source] if _relevant(p, q))


def _threshold(pos: list[float], neg: list[float]) -> dict:
    """The best-dense-score cut that best separates answerable from unanswerable questions."""
    if not pos or not neg:
        return {}
    best = (0.0, 0.0)
    for t in sorted(set(pos + neg)):
        tpr = sum(1 for v in pos if v >= t) / len(pos)
        tnr = sum(1 for v in neg if v < t) / len(neg)
        if (tpr + tnr) / 2 > best[0]:
            best = ((tpr + tnr) / 2, t)
    return {
        "suggested_threshold": round(best[1], 4),
        "balanced_accuracy": round(best[0], 4),
        "answerable_median": round(percentile(pos, 50), 4),
        "unanswerable_median": round(percentile(neg, 50), 4),
    }


def evaluate_retrieval(
    retriever,
    questions: Sequence[dict] | Path | str,
    *,
    modes: Sequence[str] = MODES,
    ks: Sequence[int] = KS,
) -> dict:
    """Metrics per mode on the labelled questions (a list of dicts or a JSONL path)."""
    if isinstance(questions, str | Path):
        questions = [q.to_dict() for q in load_questions(questions)]
    for m in modes:
        if m not in MODES:
            raise UserFacingError(f"unknown mode {m!r}; choose from {MODES}")
    depth = max(max(ks), 10)
    graded = [q for q in questions if q.get("answerable", True) and q.get("source")]
    unanswerable = [q for q in questions if q.get("answerable") is False]
    cache: dict = {}
    n_relevant = {id(q): _count_relevant(retriever, q, cache) for q in graded}
    result: dict = {
        "questions": len(questions),
        "graded": len(graded),
        "unanswerable": len(unanswerable),
        "ks": list(ks),
        "modes": {},
        "per_question": {},
    }
    for mode in modes:
        hits = {k: 0 for k in ks}
        code_hits, code_total = 0, 0
        rr, ndcg, fact_cover, latencies = 0.0, 0.0, 0.0, []
        for q in graded:
            t0 = time.perf_counter()
            passages = retriever.search(q["question"], k=depth, filters=q.get("filters"), mode=mode)
            latencies.append((time.perf_counter() - t0) * 1000)
            rels = [_relevant(p, q) for p in passages]
            first = next((i for i, r in enumerate(rels) if r), None)
            for k in ks:
                hits[k] += first is not None and first < k
            rr += 1.0 / (first + 1) if first is not None and first < 10 else 0.0
            ndcg += _ndcg(rels, n_relevant[id(q)])
            facts = [_norm(f) for f in q.get("expected_facts") or []]
            if facts:
                top5 = " ".join(_norm(p.text) for p in passages[:5])
                fact_cover += sum(f in top5 for f in facts) / len(facts)
            else:
                fact_cover += 1.0 if first is not None and first < 5 else 0.0
            if code_terms(q["question"]):
                code_total += 1
                code_hits += first is not None and first < 5
            result["per_question"].setdefault(q.get("id", q["question"]), {})[mode] = (
                None if first is None else first + 1
            )
        n = max(len(graded), 1)
        metrics = {f"recall@{k}": round(hits[k] / n, 4) for k in ks}
        metrics.update(
            {
                "mrr@10": round(rr / n, 4),
                "ndcg@10": round(ndcg / n, 4),
                "fact_recall@5": round(fact_cover / n, 4),
                "code_questions": code_total,
                "code_recall@5": round(code_hits / code_total, 4) if code_total else None,
                "latency_ms_p50": round(percentile(latencies, 50), 2) if latencies else 0.0,
                "latency_ms_p99": round(percentile(latencies, 99), 2) if latencies else 0.0,
            }
        )
        result["modes"][mode] = metrics
    if "hybrid" in modes:
        pos, neg = [], []
        for q in questions:
            if q.get("answerable", True) and not q.get("source"):
                continue
            top = retriever.search(q["question"], k=1, filters=q.get("filters"))
            best = top[0].dense_score if top else 0.0
            (neg if q.get("answerable") is False else pos).append(best)
        result["no_answer"] = _threshold(pos, neg)
        singles = [result["modes"][m]["ndcg@10"] for m in ("dense", "keyword") if m in modes]
        if singles:
            result["hybrid_minus_best_single_ndcg@10"] = round(
                result["modes"]["hybrid"]["ndcg@10"] - max(singles), 4
            )
    return result


def format_report(result: dict) -> str:
    """A small table for the terminal."""
    cols = [f"recall@{k}" for k in result["ks"]] + ["mrr@10", "ndcg@10", "fact_recall@5", "code_recall@5"]  # fmt: skip
    lines = [f"{'mode':<8}" + "".join(f"{c:>15}" for c in cols)]
    for mode, m in result["modes"].items():
        vals = ["-" if m.get(c) is None else f"{m[c]:.3f}" for c in cols]
        lines.append(f"{mode:<8}" + "".join(f"{v:>15}" for v in vals))
    lines.append(
        f"{result['graded']} graded questions, {result['unanswerable']} unanswerable; "
        f"no-answer threshold: {result.get('no_answer', {})}"
    )
    return "\n".join(lines)
