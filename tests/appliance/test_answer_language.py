# Run: .venv/bin/pytest tests/appliance/test_answer_language.py
"""The answer follows the language of the question, whatever the documents' language: the
prompt's instructions, the passages' framing and the abstention sentence are Spanish for a
Spanish question and English for an English one, in-process and through the HTTP API."""

from __future__ import annotations

import pytest
import requests

from appliance.answering import AnswerPolicy, answer
from appliance.generation.base import GenerationParams
from appliance.generation.fake import FakeGenerator
from appliance.prompting import (
    NOT_IN_DOCUMENTS,
    PLANT_WORDING,
    wording,
    wording_from_manifest,
)
from tests.passages import FixedRetriever, passage

PARAMS = GenerationParams(max_new_tokens=48)
ES_ABSTAIN = "Los documentos no tratan esta pregunta."


PUMP = passage(
    "The P-101 impeller nut is tightened to 120 N·m.",
    0.7,
    "pump#3",
    doc_id="pump",
    path="pump-maintenance-manual.md",
    title="Pump manual",
    section="4. Impeller",
)


def test_wording_in_spanish_and_back() -> None:
    es = PLANT_WORDING.in_language("es")
    assert es.language == "es" and es.abstain == ES_ABSTAIN
    assert "Responde en español" in es.system and ES_ABSTAIN in es.system
    assert es.domain == "los documentos de la planta"
    assert es.in_language("en") == PLANT_WORDING
    assert PLANT_WORDING.in_language("fr") is PLANT_WORDING  # no templates: unchanged
    apache = wording("the Apache HTTP Server manual")
    assert apache.in_language("es").domain == "the Apache HTTP Server manual"
    assert wording_from_manifest({"prompting": {"language": "es"}}).abstain == ES_ABSTAIN


def test_spanish_question_gets_the_spanish_prompt() -> None:
    gen = FakeGenerator()
    ans = answer(
        "¿A qué par se aprieta la tuerca del rodete de la P-101?",
        generator=gen,
        retriever=FixedRetriever([PUMP]),
        params=PARAMS,
    )
    prompt = gen.prompts[-1]
    assert "Responde en español" in prompt and "Pregunta: ¿A qué par" in prompt
    assert "Pasajes de los documentos de la planta" in prompt
    assert "Answer from" not in prompt and "Question:" not in prompt
    assert not ans.abstained and "120 N·m" in ans.text


def test_english_question_keeps_the_english_prompt() -> None:
    gen = FakeGenerator()
    answer(
        "What torque does the P-101 impeller nut get?",
        generator=gen,
        retriever=FixedRetriever([PUMP]),
        params=PARAMS,
    )
    assert "Question: What torque" in gen.prompts[-1]
    assert "español" not in gen.prompts[-1]


def test_abstention_is_in_the_language_of_the_question() -> None:
    low = FixedRetriever([passage("Shift handover uses form QF-12.", 0.1)])
    es = answer("¿Quién ganó el partido de ayer?", generator=FakeGenerator(), retriever=low, params=PARAMS)  # fmt: skip
    assert es.abstained and es.text == ES_ABSTAIN
    en = answer("Who won the match yesterday?", generator=FakeGenerator(), retriever=low, params=PARAMS)  # fmt: skip
    assert en.abstained and en.text == NOT_IN_DOCUMENTS
    # The model saying the Spanish sentence is an abstention too.
    said = FakeGenerator(reply=ES_ABSTAIN)
    ans = answer(
        "¿Cuál es el par?", generator=said, retriever=FixedRetriever([PUMP]), params=PARAMS
    )
    assert ans.abstained and ans.abstain_reason == "model"
    # An operator's own abstention message is kept in every language.
    fixed = AnswerPolicy(abstain_message="Ask the shift leader.")
    ans = answer("¿Quién ganó?", generator=FakeGenerator(), retriever=low, params=PARAMS, policy=fixed)  # fmt: skip
    assert ans.text == "Ask the shift leader."


@pytest.mark.parametrize(
    "question,marker",
    [
        ("¿Qué significa la alarma E-47?", "Pregunta: ¿Qué significa"),
        ("Explain alarm E-47.", "Question: Explain alarm"),  # no field label: the model answers
    ],
)
def test_http_answers_follow_the_question(serve, retriever, embedder, question, marker) -> None:
    gen = FakeGenerator()
    # Every question reaches the model (all-MiniLM-L6-v2 scores Spanish questions low).
    server = serve(generator=gen, retriever=retriever, embedder=embedder, abstain_threshold=-1.0)
    r = requests.post(
        f"{server.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}]},
        timeout=30,
    )
    assert r.status_code == 200
    assert marker in gen.prompts[-1]
    assert ("Responde en español" in gen.prompts[-1]) == question.startswith("¿")
    default = serve(generator=gen, retriever=retriever, embedder=embedder)
    off = requests.post(
        f"{default.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "¿Quién ganó el partido de fútbol ayer?"}]},
        timeout=30,
    ).json()
    assert off["abstained"] is True
    assert off["choices"][0]["message"]["content"] == ES_ABSTAIN
