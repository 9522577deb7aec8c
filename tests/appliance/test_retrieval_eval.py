# Run: .venv/bin/pytest tests/appliance/test_retrieval_eval.py
"""Retrieval quality on the example plant's labelled questions (examples/plant/qa/eval.jsonl).

Hybrid must be at least as good as the best single method, and code lookups (E-47) must be
found. The plant index is built once and cached under var/test-cache/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.common.questions import load_questions
from appliance.retrieval.evaluation import evaluate_retrieval, format_report


@pytest.fixture(scope="module")
def plant_eval(plant_retriever, plant_dir: Path) -> dict:
    result = evaluate_retrieval(plant_retriever, plant_dir / "qa" / "eval.jsonl")
    print("\n" + format_report(result))
    return result


def test_hybrid_is_at_least_as_good_as_the_best_single_method(plant_eval: dict) -> None:
    modes = plant_eval["modes"]
    assert plant_eval["graded"] >= 20
    for metric in ("ndcg@10", "mrr@10", "recall@5", "recall@10"):
        best_single = max(modes["dense"][metric], modes["keyword"][metric])
        assert modes["hybrid"][metric] >= best_single, (metric, modes)
    assert modes["hybrid"]["recall@10"] >= 0.9
    assert modes["hybrid"]["code_recall@5"] >= modes["dense"]["code_recall@5"]


def test_code_lookups_are_found(plant_retriever, plant_dir: Path) -> None:
    questions = {q.id: q for q in load_questions(plant_dir / "qa" / "eval.jsonl")}
    code_questions = [q for q in questions.values() if "E-47" in q.question]
    assert code_questions
    for q in code_questions:
        top = plant_retriever.search(q.question, k=3)
        assert any("E-47" in p.text for p in top[:1]), [p.text[:80] for p in top]
    for spelling in ("E-47", "e47", "E47"):
        assert "E-47" in plant_retriever.search(spelling, k=1)[0].text


def test_scoped_questions_stay_on_their_line(plant_retriever, plant_dir: Path) -> None:
    for q in load_questions(plant_dir / "qa" / "eval.jsonl"):
        if q.filters:
            line = q.filters["line"]
            for p in plant_retriever.search(q.question, k=10, filters=q.filters):
                assert p.metadata.get("line") in (line, "all"), (q.id, p.path)


def test_evaluation_on_handmade_questions(plant_retriever) -> None:
    questions = [
        {"id": "a", "question": "What does alarm E-47 mean?", "expected_facts": ["E-47"],
         "source": "docs/alarm-fault-codes.md", "answerable": True},
        {"id": "b", "question": "What is the canteen menu on Friday?", "expected_facts": [],
         "source": None, "answerable": False},
    ]  # fmt: skip
    result = evaluate_retrieval(plant_retriever, questions, modes=("hybrid", "keyword"))
    assert result["graded"] == 1 and result["unanswerable"] == 1
    assert result["modes"]["hybrid"]["recall@1"] == 1.0
    assert result["per_question"]["a"]["keyword"] == 1
    assert "suggested_threshold" in result["no_answer"]
