"""Should a question in another language than the documents' be quoted by meaning? (dev only)

The reader chooses a quote by the words a passage sentence shares with the question
(`appliance.grounding.best_sentence`). Across two languages few words match, so a
cross-language question that the model refuses is abstained on: no sentence shares enough of it
to be quoted over the refusal (`quote_over_abstention`). The alternative measured here: the
shown passages' quotable sentence with the best dense score (the bundle's own embedder, each
sentence embedded alone, as the abstention score does), quoted when that score reaches the
bundle's cross-language threshold.

For every dev question of the two cross-language sets whose recorded answer (base + RAG) is the
model's refusal: that sentence as a quote would show it (`quote_span`), whether it holds the
expected facts with no conflicting value (build.eval_metrics, strict), its dense score, and the
threshold. The counts say what the rule would do: refusals of answerable questions turned into
right quotes and into wrong ones, and unanswerable questions quoted.

Run after `make eval` and `make plant-e5-bundle` plus its evaluation (README, "Languages"):
    python -m benchmarks.cross_language_quotes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SETS = (
    (
        "English over Spanish",
        "bundle-debian-es-0.1.0",
        "examples/debian-es/qa/mixed-en.jsonl",
        "var/eval/debian-es-mixed-en/report.json",
    ),
    (
        "Spanish over the plant (e5)",
        "bundle-plant-e5-0.1.0",
        "examples/plant/qa/eval-es.jsonl",
        "var/eval/plant-es-e5/report.json",
    ),
)


def measure(bundles: Path) -> list[dict]:
    from appliance.answering import (
        _MIN_SENTENCE_CHARS,  # shorter pieces are not statements
        AnswerPolicy,
        prepare,
        quotable_filter,
        quote_span,
    )
    from appliance.bundle import load_bundle
    from appliance.common.questions import load_questions
    from appliance.generation.base import GenerationParams
    from appliance.generation.fake import FakeGenerator
    from appliance.grounding import Evidence, sentence_spans
    from build.bundle_evaluation import bundle_policy, open_retriever
    from build.eval_metrics import score_answer

    rows = []
    for name, bundle_name, questions, report in SETS:
        recorded = {
            q["id"]: q["results"]["base+rag"]
            for q in json.loads((REPO / report).read_text(encoding="utf-8"))["questions"]
        }
        bundle = load_bundle(bundles / bundle_name)
        policy = bundle_policy(bundle.manifest)
        threshold = policy.abstain_threshold_cross_language
        # The shown passages whatever the score: only questions past the threshold reach the
        # model, and these did.
        open_policy = AnswerPolicy(
            **{
                **policy.__dict__,
                "abstain_threshold": None,
                "abstain_threshold_cross_language": None,
            }
        )
        dev = [q for q in load_questions(REPO / questions) if q.split == "dev"]
        with open_retriever(bundle) as retriever:
            for q in dev:
                r = recorded.get(q.id)
                if r is None or r.get("abstain_reason") != "model":
                    continue
                p = prepare(
                    q.question,
                    generator=FakeGenerator(context_length=8192),
                    retriever=retriever,
                    params=GenerationParams(max_new_tokens=160),
                    policy=open_policy,
                )
                texts = [s.text for s in p.sources]
                quotable = quotable_filter(
                    q.question, [s.section for s in p.sources], p.wants_number, p.wants_file
                )
                spans = [
                    (i, s, e, t[s:e])
                    for i, t in enumerate(texts, start=1)
                    for s, e in sentence_spans(t, fields=False)
                    if len(t[s:e].strip()) >= _MIN_SENTENCE_CHARS and quotable(t[s:e])
                ]
                row = {"set": name, "id": q.id, "answerable": q.answerable, "threshold": threshold}
                if spans:
                    vectors = retriever.embedder.embed([x[3] for x in spans], kind="passage")
                    scores = vectors @ retriever.embed_query(q.question)
                    best = int(np.argmax(scores))
                    quote = quote_span(Evidence(*spans[best]), texts, q.question).sentence
                    holds = (
                        q.answerable
                        and score_answer(
                            text=quote,
                            answerable=True,
                            expected_facts=q.expected_facts,
                            reference_answer=q.reference_answer,
                            abstained=False,
                            use_retrieval=False,
                            question=q.question,
                        ).verdict
                        == "correct"
                    )
                    row.update(score=round(float(scores[best]), 4), right=holds, quote=quote)
                rows.append(row)
    return rows


def tally(rows: list[dict], name: str) -> dict[str, int]:
    """What quoting by meaning at the threshold would do to one set's model refusals."""
    mine = [r for r in rows if r["set"] == name]
    quoted = [r for r in mine if r.get("score") is not None and r["score"] >= r["threshold"]]
    right = sum(bool(r.get("right")) for r in quoted)
    unanswerable = sum(not r["answerable"] for r in quoted)
    return {
        "refusals": len(mine),
        "quoted": len(quoted),
        "right": right,
        "wrong": len(quoted) - right - unanswerable,
        "unanswerable": unanswerable,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundles", type=Path, default=REPO / "var" / "bundles")
    args = parser.parse_args(argv)
    rows = measure(args.bundles)
    print(
        "| set | question | answerable | dense score | threshold | quote holds the facts | quote |"
    )
    print("|---|---|---|---:|---:|---|---|")
    for r in rows:
        quote = " ".join(r.get("quote", "(no quotable sentence)").split())[:90]
        print(
            f"| {r['set']} | {r['id']} | {'yes' if r['answerable'] else 'no'} | "
            f"{r.get('score', '')} | {r['threshold']} | {'yes' if r.get('right') else 'no'} | "
            f"{quote} |"
        )
    print()
    for name, *_ in SETS:
        t = tally(rows, name)
        print(
            f"{name}: of {t['refusals']} model refusals on dev, {t['quoted']} would be quoted at "
            f"the threshold: {t['right']} right, {t['wrong']} wrong, "
            f"{t['unanswerable']} unanswerable"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
