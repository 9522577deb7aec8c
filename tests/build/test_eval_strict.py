# Run: .venv/bin/pytest tests/build/test_eval_strict.py
"""The strict scoring rules, each pinned by the counter-example that showed the lenient rule
wrong (issue "honest numbers"): a hedge plus a value is not an abstention; a fact does not
match another value of the same kind stated beside it; facts match on whole tokens after
citation markers are removed; markers the appliance appends are not the model's citations.
Then: every rate carries its Wilson interval, and the report is split into test and dev."""

from __future__ import annotations

import pytest

from appliance.answering import answer
from appliance.common.questions import EvalQuestion, load_questions
from appliance.generation.base import GenerationParams
from appliance.generation.fake import FakeGenerator
from appliance.prompting import NOT_IN_DOCUMENTS
from build.eval_metrics import (
    abstention_kind,
    conflicting_values,
    detect_abstention,
    fact_present,
    score_answer,
    values,
)
from build.eval_report import SUMMARY_ROWS, build_report, summarize_mode, wilson_interval
from build.evaluation import AnswerRecord, standard_modes
from tests.passages import FixedRetriever, passage

PRICE_Q = "What is the purchase price of the HX-4471-B mechanical seal?"


def _score(text: str, facts=(), *, question="", reference="", answerable=True, **kw):
    abstained = detect_abstention(text, use_retrieval=True, question=question)
    return score_answer(
        text=text,
        answerable=answerable,
        expected_facts=facts,
        reference_answer=reference,
        abstained=abstained,
        use_retrieval=True,
        question=question,
        **kw,
    )


# ---- counter-example 1: "The documents do not mention the price, but the seal costs 450 EUR."


def test_a_hedge_followed_by_a_value_is_an_answer_not_an_abstention():
    hedged = "The documents do not mention the price, but the seal costs 450 EUR."
    assert abstention_kind(hedged, question=PRICE_Q) is None
    assert _score(hedged, question=PRICE_Q, answerable=False).verdict == "hallucinated"
    # the same hedge alone, or naming only what the question named, still abstains
    plain = "The documents do not mention the price of the HX-4471-B seal."
    assert abstention_kind(plain, question=PRICE_Q) == "paraphrase"
    assert _score(plain, question=PRICE_Q, answerable=False).verdict == "correct"
    assert _score(NOT_IN_DOCUMENTS, question=PRICE_Q, answerable=False).verdict == "correct"
    # and a model refusal with a value, in a mode without retrieval, is no refusal either
    assert not detect_abstention("I don't know, maybe 450 EUR.", use_retrieval=False)


# ---- counter-example 2: "red" in "locks are blue; danger tags are red"


def test_a_conflicting_value_of_the_same_kind_makes_the_answer_wrong():
    q = "What colour are the personal safety padlocks?"
    both = "Locks are blue; danger tags are red."
    assert fact_present("red", both)  # the token is there ...
    s = _score(both, ["red"], question=q, reference="Personal padlocks are red.")
    assert s.verdict == "conflicting" and s.conflicting == ["blue"]  # ... but it is not an answer
    assert not s.handled_correctly
    ok = _score("Personal padlocks are red [1].", ["red"], question=q, reference="They are red.")
    assert ok.verdict == "correct"


def test_two_numbers_with_the_same_unit_conflict_unless_question_or_reference_name_them():
    q = "What final torque do the P-101 gland nuts get?"
    ref = "Crosswise in two stages, first 12 N·m and then the final torque of 24 N·m."
    assert _score("24 N·m or 30 N·m.", ["24 N·m"], question=q, reference=ref).verdict == (
        "conflicting"
    )
    # the first stage is context the reference names: not a conflict
    assert _score(
        "First 12 N m, then 24 Nm [1].", ["24 N·m"], question=q, reference=ref
    ).verdict == ("correct")
    # another unit is another kind: 24 N·m and 2 mm do not conflict
    assert _score("24 N·m, gap 2 mm.", ["24 N·m"], question=q).verdict == "correct"
    # a bare expected number takes the unit it is given in the answer
    assert conflicting_values("5 seconds, not 15 seconds", ["5"]) == ["15"]
    assert conflicting_values("KeepAliveTimeout 5, MaxKeepAliveRequests 100", ["5"]) == ["100"]
    # versions, protocols and identifiers are not numbers
    assert conflicting_values("In httpd 2.4.53 over HTTP/1.1 and H2 it is 5 [1].", ["5"]) == []
    # nor are manual page sections; a number in brackets after a space still is one
    said = "Desde el kernel 5.6, hay 8 tipos (ver namespaces(7), unshare(1), nsenter(1))."
    assert conflicting_values(said, ["8 tipos"], question="Desde el kernel 5.6, ¿cuántos?") == []
    assert conflicting_values("printer (515), ipp (631)", ["515"]) == ["631"]


def test_values_of_a_text():
    kinds = [(v.kind, v.value) for v in values("E-47 at −0.25 bar, 0.30–0.40 mm, blue, 7")]
    assert kinds == [
        ("code:e", "e47"),
        ("quantity:bar", "-0.25"),
        ("quantity:mm", "0.3"),
        ("quantity:mm", "0.4"),
        ("word:colour", "blue"),
        ("number", "7"),
    ]


# ---- counter-example 3: "4 MB" inside "64 MB"; citation markers are not content


@pytest.mark.parametrize(
    ("fact", "text", "present"),
    [
        ("4 MB", "The buffer is 64 MB.", False),
        ("4 MB", "The buffer is 4 MB [2].", True),
        ("4 MB", "The buffer is [4] MB.", False),  # a marker is removed, not read as a value
        ("5", "KeepAliveTimeout 15 [5]", False),
        ("E-4", "alarm E-47", False),
    ],
)
def test_facts_match_whole_tokens_after_citation_markers_are_removed(fact, text, present):
    assert fact_present(fact, text) is present


# ---- counter-example 4: [n] markers the appliance appends are not the model's citations


PUMP = passage(
    "The P-101 impeller nut is tightened to 120 N·m.",
    0.9,
    "pump#1",
    doc_id="pump",
    path="docs/pump-maintenance-manual.md",
    title="Pump maintenance manual",
    section="Impeller",
    score=0.9,
)


def _answer(reply: str):
    return answer(
        "Impeller nut torque on P-101?",
        generator=FakeGenerator(reply=reply),
        retriever=FixedRetriever([PUMP]),
        params=GenerationParams(max_new_tokens=64),
        k=1,
    )


def test_appended_citations_are_reported_apart_from_the_models():
    appended = _answer("The impeller nut is tightened to 120 N·m.")
    assert appended.cited == [1] and appended.appended_citations == [1]
    assert appended.text.endswith("[1]")  # the appliance added the marker
    names = [["docs/pump-maintenance-manual.md"]]
    src = "docs/pump-maintenance-manual.md"
    s = _score(appended.text, ["120 N·m"], cited=names, model_cited=[], source=src)
    assert s.citation_correct is True  # the old column counted this
    assert s.model_citation_correct is False and s.appended_citation is True

    own = _answer("The impeller nut is tightened to 120 N·m [1].")
    assert own.cited == [1] and own.appended_citations == []
    s = _score(own.text, ["120 N·m"], cited=names, model_cited=names, source=src)
    assert s.model_citation_correct is True and s.appended_citation is False


# ---- intervals and splits in the report


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_interval(0, 0) is None


QS = [
    EvalQuestion("d1", "Torque?", ("24 N·m",), True, "24 N·m.", "docs/a.md", split="dev"),
    EvalQuestion("d2", "Price?", (), False, "", None, split="dev"),
    EvalQuestion("t1", "Torque?", ("24 N·m",), True, "24 N·m.", "docs/a.md", split="test"),
    EvalQuestion("t2", "Price?", (), False, "", None, split="test"),
]


def _record(q: EvalQuestion, mode: str, text: str, appended=()):
    abstained = detect_abstention(text, question=q.question)
    cited = [["docs/a.md"]] if "[1]" in text else []
    own = cited if not appended else []
    s = score_answer(
        text=text,
        answerable=q.answerable,
        expected_facts=q.expected_facts,
        reference_answer=q.reference_answer,
        abstained=abstained,
        use_retrieval=True,
        cited=cited,
        model_cited=own,
        source=q.source,
        question=q.question,
    )
    return AnswerRecord(
        question_id=q.id,
        mode=mode,
        text=text,
        abstained=abstained,
        abstain_reason=None,
        service_abstained=False,
        cited=[{"n": 1, "document": "docs/a.md", "title": "", "section": ""}] if cited else [],
        appended_citations=list(appended),
        unsupported_values=[] if abstained or "24" in text else ["450"],
        ttft_s=0.5,
        total_s=1.0,
        prompt_tokens=300,
        completion_tokens=10,
        score=s.__dict__,
    )


def test_report_main_table_is_the_test_split_and_every_rate_has_its_interval():
    modes = standard_modes("base-llm", None, only=["base+rag"])
    answers = {
        "d1": ("24 N·m [1].", ()),
        "d2": (NOT_IN_DOCUMENTS, ()),
        "t1": ("24 N·m or 30 N·m [1].", (1,)),
        "t2": ("It costs 450 EUR.", ()),
    }
    records = [_record(q, "base+rag", *answers[q.id]) for q in QS]
    report = build_report(QS, modes, records)
    test, dev = report["summary"]["base+rag"], report["summary_by_split"]["dev"]["base+rag"]
    assert report["summary_split"] == "test" and test["n_questions"] == 2
    assert test["answer_accuracy"] == 0.0 and dev["answer_accuracy"] == 1.0  # overfit shows
    assert test["unsupported_rate"] == 0.5 and test["appended_citation_rate"] == 1.0
    assert test["model_citation_rate"] == 0.0 and dev["model_citation_rate"] == 1.0
    assert report["recommendation"]["chosen_on"] == "dev"
    for key, _, kind in SUMMARY_ROWS:
        if kind == "pct" and test[key] is not None:
            assert test[f"{key}_ci95"] is not None, key
            assert test[f"{key}_n"] >= 1, key


def test_summary_of_no_answers_has_no_rates():
    s = summarize_mode([], {})
    assert s["answer_accuracy"] is None and s["answer_accuracy_ci95"] is None


@pytest.mark.parametrize("corpus", ["plant", "apache"])
def test_every_reference_answer_scores_correct_under_the_strict_rules(corpus):
    """The rules are strict, not wrong: each answerable question's own reference answer holds
    its facts without a conflicting value."""
    bad = []
    for q in load_questions(f"examples/{corpus}/qa/eval.jsonl"):
        if not q.answerable:
            continue
        s = _score(
            q.reference_answer,
            q.expected_facts,
            question=q.question,
            reference=q.reference_answer,
        )
        if s.verdict != "correct":
            bad.append((q.id, s.verdict, s.facts_missing, s.conflicting))
    assert not bad, bad


def test_results_folder_and_rescoring_stored_answers(tmp_path):
    import json

    from appliance.cli import main as expert
    from build.eval_report import rebuild_report, write_results

    modes = standard_modes("base-llm", None, only=["base+rag"])
    answers = {
        "d1": ("24 N·m [1].", ()),
        "d2": (NOT_IN_DOCUMENTS, ()),
        "t1": ("24 N·m [1].", ()),
        "t2": ("The documents do not give the price, but it is 450 EUR.", ()),
    }
    records = [_record(q, "base+rag", *answers[q.id]) for q in QS]
    # a stored score from lenient rules: t2's hedge was once counted as an abstention
    records[3].abstained = True
    records[3].score = {**records[3].score, "verdict": "correct"}
    report = build_report(QS, modes, records)
    assert report["summary"]["base+rag"]["abstention_accuracy"] == 1.0
    path = tmp_path / "plant" / "report.json"
    path.parent.mkdir()
    path.write_text(json.dumps(report), encoding="utf-8")

    again = rebuild_report(json.loads(path.read_text(encoding="utf-8")), rescore=True)
    t2 = next(q for q in again["questions"] if q["id"] == "t2")["results"]["base+rag"]
    assert t2["score"]["verdict"] == "hallucinated" and not t2["abstained"]
    assert again["summary"]["base+rag"]["abstention_accuracy"] == 0.0

    paths = write_results({"plant": path}, tmp_path / "results")
    summary = paths["summary"].read_text(encoding="utf-8")
    assert "## plant" in summary and "### Test split (2 questions" in summary
    assert "### Dev split (2 questions" in summary and "| Base + RAG |" in summary
    assert json.loads(paths["plant"].read_text(encoding="utf-8"))["questions"][0]["results"]
    # NAME=PATH required
    assert expert(["eval", "results", "plant", "--out", str(tmp_path / "r2")]) == 2
    assert expert(["eval", "rescore", str(path), "--out", str(tmp_path / "re")]) == 0
    assert (tmp_path / "re" / "report.json").is_file()
