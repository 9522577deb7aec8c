# Run: .venv/bin/pytest tests/build/test_eval_report.py
"""The evaluation report from hand-made answers: summary figures, the recommendation that
follows from them, and the HTML / JSON / Markdown files (self-contained, every question in)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from appliance.common.questions import EvalQuestion, load_questions
from appliance.prompting import NOT_IN_DOCUMENTS
from build.eval_metrics import detect_abstention, score_answer
from build.eval_report import (
    build_report,
    rebuild_report,
    recommend,
    wilson_interval,
    write_reports,
)
from build.evaluation import AnswerRecord, standard_modes


def approx(x: float):
    return pytest.approx(x, abs=1e-3)  # the summary rounds to 4 decimals


QUESTIONS = [
    EvalQuestion(
        "q1",
        "Final torque of the P-101 gland nuts?",
        ("24 N·m",),
        True,
        "First 12 N·m, then 24 N·m.",
        "docs/pump-maintenance-manual.md",
    ),
    EvalQuestion(
        "q2",
        "What does alarm E-47 mean?",
        ("E-47", "-0.25 bar"),
        True,
        "E-47: labeller vacuum above -0.25 bar.",
        "docs/alarm-fault-codes.md",
    ),
    EvalQuestion(
        "q3",
        "Grease for the P-101 DE bearing?",
        ("15 g",),
        True,
        "15 g of LUB-0207 every 2,000 h.",
        "docs/pump-maintenance-manual.md",
    ),
    EvalQuestion("q4", "Who is the plant manager?", (), False, "Not in the documents."),
]

# Hand-made answers per mode: (text, cited documents, service abstained).
ANSWERS = {
    "base": {
        "q1": ("Tighten them to 30 Nm.", [], False),
        "q2": ("E-47 is a motor overload alarm.", [], False),
        "q3": ("I don't know.", [], False),
        "q4": ("The plant manager is John Smith.", [], False),
    },
    "base+rag": {
        "q1": ("Final torque is 24 Nm [1].", ["pump-maintenance-manual.md"], False),
        "q2": ("E47 means the vacuum is above −0,25 bar [2].", ["alarm-fault-codes.md"], False),
        "q3": ("Use 12 g [1].", ["pump-maintenance-manual.md"], False),
        "q4": (NOT_IN_DOCUMENTS, [], True),
    },
    "finetuned": {
        "q1": ("24 N·m.", [], False),
        "q2": ("E-47: labeller vacuum fault.", [], False),
        "q3": ("15 g of LUB-0207.", [], False),
        "q4": ("The plant manager is Anna Berg.", [], False),
    },
    "finetuned+rag": {
        "q1": ("24 N m [1].", ["pump-maintenance-manual.md"], False),
        "q2": ("E-47, vacuum above -0.25 bar [1].", ["line-b-labeller-sop.md"], False),
        "q3": ("15 g [2].", ["pump-maintenance-manual.md"], False),
        "q4": (NOT_IN_DOCUMENTS, [], True),
    },
}


def _records(modes) -> list[AnswerRecord]:
    by_id = {q.id: q for q in QUESTIONS}
    out = []
    for mode in modes:
        for qid, (text, cited, flag) in ANSWERS[mode.name].items():
            q = by_id[qid]
            abstained = detect_abstention(text, service_flag=flag, use_retrieval=mode.use_retrieval)
            score = score_answer(
                text=text,
                answerable=q.answerable,
                expected_facts=q.expected_facts,
                reference_answer=q.reference_answer,
                abstained=abstained,
                use_retrieval=mode.use_retrieval,
                cited=[[c] for c in cited],
                source=q.source,
            )
            rag = mode.use_retrieval
            out.append(
                AnswerRecord(
                    question_id=qid,
                    mode=mode.name,
                    text=text,
                    abstained=abstained,
                    abstain_reason="low_score" if flag else None,
                    service_abstained=flag,
                    cited=[{"n": 1, "document": c, "title": "", "section": ""} for c in cited],
                    ttft_s=0.9 if rag else 0.2,
                    total_s=1.5 if rag else 0.8,
                    prompt_tokens=700 if rag else 60,
                    completion_tokens=20,
                    tokens_per_s=100.0,
                    score=score.__dict__,
                )
            )
    return out


@pytest.fixture(scope="module")
def report() -> dict:
    modes = standard_modes(
        Path("/models/base"),
        Path("/models/ft"),
        base_bundle="bundle-p-1",
        finetuned_bundle="bundle-p-finetuned-1",
    )
    return build_report(QUESTIONS, modes, _records(modes), run={"settings": {"max_new_tokens": 64}})


def test_summary_numbers(report: dict) -> None:
    s = report["summary"]
    assert [m["name"] for m in report["modes"]] == [
        "base",
        "base+rag",
        "finetuned",
        "finetuned+rag",
    ]
    # base: nothing right; "I don't know" on q3 counts as an abstention (no retrieval)
    assert s["base"]["n_correct"] == 0 and s["base"]["false_abstention_rate"] == approx(1 / 3)
    assert s["base"]["citation_accuracy"] is None
    # base+rag: q1, q2 (E47 / −0,25 bar normalised), q4 abstained
    assert s["base+rag"]["n_correct"] == 3
    assert s["base+rag"]["answer_accuracy"] == approx(2 / 3)
    assert s["base+rag"]["abstention_accuracy"] == 1.0
    assert s["base+rag"]["citation_accuracy"] == 1.0
    # finetuned: q1 and q3 all facts; q2 misses the pressure; q4 hallucinated
    assert s["finetuned"]["n_correct"] == 2
    assert s["finetuned"]["fact_recall"] == approx((1 + 0.5 + 1) / 3)
    assert s["finetuned"]["abstention_accuracy"] == 0.0
    # finetuned+rag: everything, but q2 cites the wrong document
    assert s["finetuned+rag"]["n_correct"] == 4
    assert s["finetuned+rag"]["citation_accuracy"] == approx(2 / 3)
    assert s["finetuned+rag"]["ttft_mean_s"] == approx(0.9)
    assert s["finetuned+rag"]["decode_tok_s"] == approx(100.0)
    lo, hi = s["finetuned+rag"]["handled_correctly_ci95"]
    assert lo < 1.0 and hi == 1.0


def test_recommendation_follows_the_numbers(report: dict) -> None:
    rec = report["recommendation"]
    assert rec["mode"] == "finetuned+rag"
    assert rec["ranking"][0] == "finetuned+rag"
    assert "Fine-tuned + RAG" in rec["text"] and "4 of 4" in rec["text"]
    joined = " ".join(rec["reasons"])
    assert "Retrieval" in joined and "Fine-tuning" in joined and "cite" in joined


def test_tie_goes_to_retrieval_then_latency() -> None:
    modes = [m.to_dict() for m in standard_modes(Path("a"), Path("b"))]
    base = {
        "n_questions": 50,
        "n_correct": 40,
        "fact_recall": 0.8,
        "answer_accuracy": 0.8,
        "abstention_accuracy": 0.5,
        "token_f1": 0.5,
        "citation_accuracy": None,
        "handled_correctly_ci95": None,
    }
    summary = {
        "base": {**base, "handled_correctly": 0.40, "ttft_mean_s": 0.2},
        "base+rag": {**base, "handled_correctly": 0.78, "ttft_mean_s": 1.0},
        "finetuned": {**base, "handled_correctly": 0.80, "fact_recall": 0.9, "ttft_mean_s": 0.2},
        "finetuned+rag": {**base, "handled_correctly": 0.79, "ttft_mean_s": 1.2},
    }
    rec = recommend(summary, modes)
    assert rec["ranking"][0] == "finetuned"
    assert rec["mode"] == "base+rag"  # within the margin, grounded, and no training to keep up
    assert "cites" in rec["reasons"][1]
    summary["base+rag"]["handled_correctly"] = 0.70
    assert recommend(summary, modes)["mode"] == "finetuned+rag"
    summary["finetuned+rag"]["handled_correctly"] = 0.70
    assert recommend(summary, modes)["mode"] == "finetuned"
    for s in summary.values():
        s["handled_correctly"] = 0.0
    nothing = recommend(summary, modes)
    assert nothing["mode"] is None and "none is recommended" in nothing["text"]


def test_reasons_compare_each_pair_of_modes_that_ran() -> None:
    modes = [m.to_dict() for m in standard_modes(Path("a"), Path("b"))]
    base = {
        "n_questions": 50,
        "n_correct": 20,
        "answer_accuracy": 0.4,
        "abstention_accuracy": 0.5,
        "citation_accuracy": None,
        "handled_correctly_ci95": None,
    }
    summary = {
        "base": {**base, "handled_correctly": 0.1, "fact_recall": 0.2, "token_f1": 0.3,
                 "ttft_mean_s": 0.25},
        "base+rag": {**base, "handled_correctly": 0.6, "fact_recall": None, "token_f1": 0.5,
                     "abstention_accuracy": 0.75, "ttft_mean_s": 1.5},
        "finetuned+rag": {**base, "handled_correctly": 0.4, "fact_recall": 0.7, "token_f1": 0.6,
                          "ttft_mean_s": 1.25},
    }  # fmt: skip
    reasons = recommend(summary, modes)["reasons"]
    # No fine-tuned mode without retrieval ran: only the pairs whose two modes ran are compared.
    assert (
        "Retrieval, base model: fact recall 20% → n/a, abstention on unanswerable 50% → 75%, "
        "time to first token 0.25 s → 1.50 s." in reasons
    )
    assert (
        "Fine-tuning, with retrieval: handled correctly 60% → 40%, token F1 50% → 60%." in reasons
    )


def test_wilson_interval() -> None:
    assert wilson_interval(0, 0) is None
    lo, hi = wilson_interval(8, 10)
    assert 0.44 < lo < 0.5 and 0.94 < hi < 0.97


def test_written_files(report: dict, tmp_path: Path) -> None:
    paths = write_reports(report, tmp_path / "eval")
    assert {p.name for p in paths.values()} == {"report.html", "report.json", "report.md"}
    html = paths["html"].read_text(encoding="utf-8")
    md = paths["md"].read_text(encoding="utf-8")
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    # self-contained: three embedded PNGs, nothing fetched from anywhere
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', html)) == 3
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)
    assert "<script" not in html and "<link" not in html
    # every question, and every mode's answer to it, is in each report
    for q in QUESTIONS:
        assert f'id="q-{q.id}"' in html and q.question in html
        assert f"| {q.id} |" in md
    assert [q["id"] for q in data["questions"]] == [q.id for q in QUESTIONS]
    for q in data["questions"]:
        assert set(q["results"]) == {"base", "base+rag", "finetuned", "finetuned+rag"}
    assert "Tighten them to 30 Nm." in html
    assert data["figures"]["outcomes"]["q4"]["base"] == "hallucinated"
    assert data["figures"]["quality"]["answer_accuracy"]["finetuned+rag"] == 1.0
    assert data["recommendation"]["mode"] == "finetuned+rag"
    assert "## Recommendation" in md and "| metric |" in md


def test_rebuild_from_json(report: dict, tmp_path: Path) -> None:
    paths = write_reports(report, tmp_path)
    again = rebuild_report(json.loads(paths["json"].read_text(encoding="utf-8")))
    assert again["summary"] == report["summary"]
    assert again["recommendation"] == report["recommendation"]
    assert [q["id"] for q in again["questions"]] == [q.id for q in QUESTIONS]


def test_load_questions_reports_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text(
        '{"id": "a", "question": "Q?", "expected_facts": ["1 bar"], "answerable": true}\n'
        "not json\n"
        '{"id": "a", "question": "", "expected_facts": "x", "answerable": "yes"}\n',
        encoding="utf-8",
    )
    from appliance.errors import UserFacingError

    with pytest.raises(UserFacingError) as exc:
        load_questions(path)
    msg = str(exc.value)
    assert ":2: not valid JSON" in msg and ":3:" in msg
    assert "used twice" in msg and "'expected_facts'" in msg and "'answerable'" in msg


def test_plant_questions_load(plant_dir: Path) -> None:
    questions = load_questions(plant_dir / "qa" / "eval.jsonl")
    assert len(questions) >= 20
    assert any(not q.answerable for q in questions)
    assert all(q.expected_facts for q in questions if q.answerable)


def test_settings_line_names_both_thresholds():
    from build.eval_text import settings_text

    run = {"settings": {"k": 5}, "abstain_threshold": 0.8693}
    assert settings_text(run) == "k=5, greedy, abstain threshold 0.8693"
    run["abstain_threshold_cross_language"] = 0.8229
    assert settings_text(run).endswith(
        "abstain threshold 0.8693, 0.8229 for questions in another language than the documents'"
    )
