# Run: .venv/bin/pytest tests/appliance/test_answering.py
"""retrieve -> abstain or fit the budget -> generate -> cite, with the fake generator and a
tiny in-memory retriever (the real index is covered by the server and calibration tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from appliance.answering import (
    DEFAULT_ABSTAIN_THRESHOLD,
    AnswerPolicy,
    AnswerStream,
    ContextOverflowError,
    Source,
    answer,
    answer_stream,
    attribute_citations,
    calibrate_abstain_threshold,
    cited_numbers,
    prepare,
)
from appliance.generation.base import GenerationParams
from appliance.generation.fake import FakeGenerator
from appliance.prompting import NOT_IN_DOCUMENTS, PromptPassage

PARAMS = GenerationParams(max_new_tokens=64)


@dataclass
class StubPassage:
    text: str
    dense_score: float
    chunk_id: str = "doc#0"
    doc_id: str = "doc"
    path: str = "manual.md"
    title: str = "Manual"
    section: str = "1. Data"
    page: int | None = None
    score: float = 0.5
    keyword_score: float | None = None
    metadata: dict = field(default_factory=dict)

    def to_prompt(self) -> PromptPassage:
        return PromptPassage(self.text, self.title, self.section, self.page)


class StubRetriever:
    def __init__(self, passages):
        self.passages = passages
        self.calls = []

    def search(self, query, k=5, filters=None, mode="hybrid"):
        self.calls.append((query, k, filters))
        return self.passages[:k]


PUMP = StubPassage(
    "The P-101 impeller nut is tightened to 120 N·m. Use a calibrated wrench.", 0.7, "pump#3"
)
OIL = StubPassage(
    "C-301 takes 32 L of LUB-0311 oil, changed every 4,000 h.", 0.5, "comp#1", path="comp.md"
)


def test_grounded_answer_cites_the_passage():
    gen = FakeGenerator()
    retr = StubRetriever([PUMP, OIL])
    a = answer("Impeller nut torque?", generator=gen, retriever=retr, params=PARAMS, k=2)
    assert (
        a.text == "According to the documents, The P-101 impeller nut is tightened to 120 N·m [1]."
    )
    assert not a.abstained and a.finish_reason == "stop"
    assert [s.n for s in a.sources] == [1, 2] and a.cited == [1]
    assert a.sources[0].chunk_id == "pump#3" and a.sources[0].document == "manual.md"
    assert a.best_score == 0.7 and a.prompt_tokens > 0 and a.completion_tokens > 0
    assert retr.calls == [("Impeller nut torque?", 2, None)]


def test_low_best_score_abstains_without_calling_the_model():
    gen = FakeGenerator()
    weak = StubPassage("Unrelated text.", DEFAULT_ABSTAIN_THRESHOLD - 0.01)
    a = answer("Who won the match?", generator=gen, retriever=StubRetriever([weak]), params=PARAMS)
    assert a.abstained and a.abstain_reason == "low_score" and a.text == NOT_IN_DOCUMENTS
    assert a.sources == [] and gen.started == 0
    a = answer("x?", generator=gen, retriever=StubRetriever([]), params=PARAMS)
    assert a.abstained and a.abstain_reason == "no_passages"
    policy = AnswerPolicy(abstain_threshold=None, abstain_message="Not in the manuals.")
    a = answer("x?", generator=gen, retriever=StubRetriever([weak]), params=PARAMS, policy=policy)
    assert not a.abstained
    a = answer("x?", generator=gen, retriever=StubRetriever([]), params=PARAMS, policy=policy)
    assert a.text == "Not in the manuals."


def test_model_abstention_is_flagged():
    gen = FakeGenerator(reply=NOT_IN_DOCUMENTS)
    a = answer("x?", generator=gen, retriever=StubRetriever([PUMP]), params=PARAMS)
    assert a.abstained and a.abstain_reason == "model" and a.cited == []


def test_markers_are_added_by_overlap_when_the_model_gives_none():
    gen = FakeGenerator(reply="C-301 takes 32 L of LUB-0311 oil.")
    a = answer("Oil?", generator=gen, retriever=StubRetriever([PUMP, OIL]), params=PARAMS)
    assert a.text.endswith(" [2]") and a.cited == [2]
    gen = FakeGenerator(reply="I cannot say anything useful here.")
    a = answer("Oil?", generator=gen, retriever=StubRetriever([PUMP, OIL]), params=PARAMS)
    assert "[" not in a.text and a.cited == []
    no_fallback = AnswerPolicy(cite_fallback=False)
    gen = FakeGenerator(reply="C-301 takes 32 L of LUB-0311 oil.")
    a = answer(
        "Oil?", generator=gen, retriever=StubRetriever([OIL]), params=PARAMS, policy=no_fallback
    )
    assert a.text == "C-301 takes 32 L of LUB-0311 oil."


def test_cited_numbers_ignore_markers_without_a_passage():
    assert cited_numbers("See [2] and [1, 3] and [9].", 3) == [2, 1, 3]
    src = [Source(1, "a", "a", "a", "", "", None, 0.1, 0.1, None, "pump seal gland torque")]
    assert attribute_citations("the gland torque of the pump seal", src) == [1]


def test_plain_mode_and_client_system_prompt():
    gen = FakeGenerator()
    retr = StubRetriever([PUMP])
    a = answer(
        "Hi",
        generator=gen,
        retriever=retr,
        params=PARAMS,
        use_retrieval=False,
        system_prompt="Answer in French.",
    )
    assert a.sources == [] and retr.calls == []
    assert "Answer in French." in gen.prompts[-1] and "<passage" not in gen.prompts[-1]
    answer("Hi", generator=gen, retriever=retr, params=PARAMS, system_prompt="Answer in French.")
    prompt = gen.prompts[-1]
    assert prompt.index("numbered passages") < prompt.index("Answer in French.")


def test_budget_trims_history_then_passages_then_refuses():
    gen = FakeGenerator(context_length=400)
    history = [
        {"role": "user", "content": "first " * 60},
        {"role": "assistant", "content": "reply one"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "reply two"},
    ]
    p = prepare(
        "Torque?", history, generator=gen, retriever=StubRetriever([PUMP, OIL]), params=PARAMS
    )
    assert p.dropped_history == 2 and p.dropped_passages == 0
    assert "second question" in p.prompt and "first first" not in p.prompt
    assert p.prompt_tokens + PARAMS.max_new_tokens <= 400
    long_passages = [StubPassage("word " * 60, 0.8, f"d#{i}") for i in range(4)]
    p = prepare("Torque?", generator=gen, retriever=StubRetriever(long_passages), params=PARAMS)
    assert p.dropped_passages >= 1 and len(p.sources) >= 1
    assert p.prompt_tokens + PARAMS.max_new_tokens <= 400
    with pytest.raises(ContextOverflowError) as err:
        prepare("word " * 400, generator=gen, retriever=StubRetriever([PUMP]), params=PARAMS)
    assert err.value.context_length == 400 and gen.started == 0


def test_stream_variant_yields_the_same_answer_and_honours_the_deadline():
    gen = FakeGenerator()
    retr = StubRetriever([PUMP, OIL])
    whole = answer("Torque?", generator=gen, retriever=retr, params=PARAMS)
    stream = answer_stream("Torque?", generator=gen, retriever=retr, params=PARAMS)
    assert isinstance(stream, AnswerStream) and stream.prepared.sources
    assert "".join(stream) == whole.text and stream.result.cited == whole.cited
    slow = FakeGenerator(reply="a b c d e f g h i j", token_delay_s=0.05)
    import time

    timed = answer(
        "x",
        generator=slow,
        retriever=None,
        params=PARAMS,
        use_retrieval=False,
        deadline=time.monotonic() + 0.12,
    )
    assert timed.timed_out and timed.finish_reason == "length" and slow.active == 0


def test_calibration_picks_the_highest_threshold_keeping_answerable_recall():
    answerable = [0.42, 0.46, 0.5, 0.6, 0.7, 0.8, 0.8, 0.9, 0.9, 0.9]
    unanswerable = [0.3, 0.4, 0.45, 0.55, 0.65]
    cal = calibrate_abstain_threshold(answerable, unanswerable, min_answerable_recall=0.9)
    assert cal.threshold == pytest.approx(0.455)  # 0.42 is given up, 0.46 is kept
    assert cal.answerable_recall == 0.9 and cal.unanswerable_recall == 0.6
    assert calibrate_abstain_threshold(answerable, unanswerable, 1.0).threshold < 0.42
    with pytest.raises(ValueError):
        calibrate_abstain_threshold([], [0.1])
