"""Which retrieval signal separates answerable from unanswerable questions? (dev splits only)

The service abstains when the best passage's dense score is under a threshold calibrated on a
dev split. With multilingual-e5-small the scores are compressed (Spanish dev: answerable
0.868-0.931, unanswerable 0.848-0.906) and six answerable Spanish test questions fall under the
dev-calibrated threshold. This measures, on the dev splits of the four evaluation sets, how well
the best score and three relative signals rank answerable above unanswerable questions (ROC AUC
over the 50 nearest chunks of each question): the best score; best minus the mean of the 50;
best minus the 10th; and the best's z-score among the 50. The test splits are never read.

Then the signals the service can use (`appliance.answering.ABSTAIN_SIGNALS`, the same code), over
the top 5 passages of the hybrid search it answers from: the best passage's dense score (what
every bundle used before), the best dense score of one of their sentences embedded on its own,
and the mean of the two (`passage+sentence`), with how many unanswerable dev questions each
refuses at the score rule's threshold (the highest that answers 95% of the answerable ones).
What the sentence score costs: the median time of the top-5 search and of the passage+sentence
score after it (every sentence of the 5 passages embedded; the question's vector is the
search's), and their ratio, in the same run.

Run: `python -m benchmarks.abstention_signals` (the bundles of `make eval`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SETS = (
    ("plant", "bundle-plant-0.1.0", "examples/plant/qa/eval.jsonl"),
    ("apache", "bundle-apache-0.1.0", "examples/apache/qa/eval.jsonl"),
    ("spanish", "bundle-debian-es-0.1.0", "examples/debian-es/qa/eval.jsonl"),
    ("mixed-en", "bundle-debian-es-0.1.0", "examples/debian-es/qa/mixed-en.jsonl"),
)
NEIGHBOURS = 50


def auc(positive, negative) -> float:
    """Probability that a random positive outranks a random negative (ties count half)."""
    if not len(positive) or not len(negative):
        raise ValueError("AUC needs at least one answerable and one unanswerable question")
    p = np.asarray(positive, dtype=float)[:, None]
    n = np.asarray(negative, dtype=float)[None, :]
    return float(np.mean((p > n) + 0.5 * (p == n)))


def signals(scores) -> dict[str, float]:
    """The signals of one question from its nearest chunks' dense scores."""
    d = np.sort(np.asarray(scores, dtype=float))[::-1]
    if len(d) < 10:
        raise ValueError(f"need at least 10 neighbour scores, got {len(d)}")
    return {
        "best": float(d[0]),
        "best - mean": float(d[0] - d.mean()),
        "best - 10th": float(d[0] - d[9]),
        "z-score": float((d[0] - d.mean()) / (d.std() + 1e-9)),
    }


def refused_at_score_rule(answerable, unanswerable) -> str:
    """Unanswerable questions under the score rule's threshold, "k/n"."""
    from appliance.answering import calibrate_abstain_threshold

    cal = calibrate_abstain_threshold(answerable, unanswerable)
    return f"{sum(s < cal.threshold for s in unanswerable)}/{len(unanswerable)}"


def measure(bundles: Path) -> list[dict]:
    from appliance.answering import abstention_score, best_sentence_score
    from appliance.bundle import load_bundle
    from appliance.common.questions import load_questions
    from build.bundle_evaluation import open_retriever

    rows = []
    for name, bundle_name, questions in SETS:
        bundle = load_bundle(bundles / bundle_name)
        dev = [q for q in load_questions(REPO / questions) if q.split == "dev"]
        split: dict[str, tuple[list, list]] = {}
        timings: list[tuple[float, float]] = []  # the search, then the sentence score after it
        with open_retriever(bundle) as retriever:
            for q in dev:
                # Timed first, as the service runs them: the search (the question's embedding
                # included), then the passage+sentence score (which reuses that embedding).
                t0 = time.perf_counter()
                top = retriever.search(q.question, k=5, filters=q.filters)
                t1 = time.perf_counter()
                mixed = abstention_score(q.question, top, retriever, "passage+sentence")
                timings.append((t1 - t0, time.perf_counter() - t1))
                nearest = retriever.search(q.question, k=NEIGHBOURS, mode="dense")
                got = signals([p.dense_score for p in nearest])
                got["top-5 passage+sentence"] = mixed
                got["top-5 passage"] = abstention_score(q.question, top, retriever, "passage")
                got["top-5 sentence"] = best_sentence_score(q.question, top, retriever)
                for key, value in got.items():
                    split.setdefault(key, ([], []))[0 if q.answerable else 1].append(value)
        row = {"set": name, "questions": len(dev)}
        row.update({k: round(auc(*v), 3) for k, v in split.items()})
        row.update({f"refused: {k}": refused_at_score_rule(*v) for k, v in split.items()
                    if k.startswith("top-5")})  # fmt: skip
        search, sentence = (float(np.median(t)) for t in zip(*timings, strict=True))
        row["search ms"] = round(1000 * search, 1)
        row["sentence score ms"] = round(1000 * sentence, 1)
        row["sentence / search"] = round(sentence / search, 2)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", type=Path, default=REPO / "var" / "bundles")
    args = parser.parse_args(argv)
    rows = measure(args.bundles)
    keys = [k for k in rows[0] if k not in ("set", "questions")]
    print(
        "| dev set | questions | "
        + " | ".join(k if ":" in k or " ms" in k or "/" in k else f"AUC: {k}" for k in keys)
        + " |"
    )
    print("|---|---:|" + "---:|" * len(keys))
    for r in rows:
        print(f"| {r['set']} | {r['questions']} | " + " | ".join(str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
