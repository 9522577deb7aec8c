# Run: .venv/bin/pytest tests/build/test_eval_metrics.py
"""The evaluation's metric functions on hand-made cases: normalisation, facts, F1, citations,
abstention, and the verdict of one answer."""

from __future__ import annotations

import pytest

from appliance.prompting import NOT_IN_DOCUMENTS
from build.eval_metrics import (
    abstention_kind,
    citation_correct,
    citation_precision,
    detect_abstention,
    document_key,
    fact_present,
    is_refusal,
    match_facts,
    score_answer,
    strip_citations,
    token_f1,
    tokens,
)


@pytest.mark.parametrize(
    ("fact", "answer"),
    [
        # torque units
        ("24 N·m", "Tighten the gland nuts to 24 Nm."),
        ("24 N·m", "final torque 24 N m"),
        ("24 Nm", "24 N·m, in two stages"),
        ("24 N·m", "24 N-m"),
        ("24 N·m", "24 newton metres"),
        ("24 N·m", "24Nm"),
        # alarm codes
        ("E-47", "alarm e47 means low vacuum"),
        ("E-47", "E47"),
        ("e47", "It raises E-47 [2]."),
        ("E-47", "E 47"),
        # decimal comma, thousands separators
        ("6.5 bar", "6,5 bar"),
        ("6,5 bar", "trips at 6.5 bar"),
        ("1,250 h", "every 1250 h"),
        ("1250 h", "every 1,250 h"),
        ("1,250 h", "every 1\u202f250 h"),
        ("2,000 h", "every 2000 hours"),
        ("2,000 h", "every 2,000 hrs"),
        # case, trailing zeros, ranges, signs
        ("HX-4471-B", "seal hx-4471-b"),
        ("HX-4471-B", "HX4471B"),
        ("7.0 bar", "7 bar"),
        ("0.30–0.40 mm", "new clearance 0.30 to 0.40 mm"),
        ("−3.0 °C", "freeze alarm at -3 °C leaving"),
        ("85 °C", "85 degrees Celsius"),
        ("85 °C", "85°C"),
        ("30 %", "30% propylene glycol"),
        ("1.5 % NaOH", "1.5 percent NaOH"),
        ("100 MΩ", "at least 100 megohms"),
        ("m³/h", "m3/h"),
        ("4.0 ± 0.5 mm", "4.0 +/- 0.5 mm"),
        ("5 µm", "5 μm"),  # micro sign vs Greek mu
        ("Shift Maintenance Supervisor", "the shift maintenance supervisors issue it"),
    ],
)
def test_fact_present_despite_spelling(fact: str, answer: str) -> None:
    assert fact_present(fact, answer), (tokens(fact), tokens(answer))


@pytest.mark.parametrize(
    ("fact", "answer"),
    [
        ("E-47", "E-470"),
        ("E-47", "E-4 and 7"),
        ("E-4", "E-47"),
        ("24 N·m", "12 N·m then 240 N·m"),
        ("24 N·m", "24 mm"),
        ("6.5 bar", "65 bar"),
        ("1,250 h", "1.25 h"),
        ("1,250 h", "1,250, then 2,000 h"),  # the number must be followed by its unit
        ("−3.0 °C", "+3 °C"),  # sign kept
        ("P-101", "P-1010"),
        ("0.80 mm", "0.08 mm"),
        ("24 N·m", ""),
    ],
)
def test_fact_absent(fact: str, answer: str) -> None:
    assert not fact_present(fact, answer), (tokens(fact), tokens(answer))


def test_tokens_normalisation() -> None:
    assert tokens("24 N·m") == tokens("24 Nm") == tokens("24 N m") == ["24", "nm"]
    assert tokens("E-47") == tokens("e47") == tokens("E47") == ["e", "47"]
    assert tokens("6.5 bar") == tokens("6,5 bar") == ["6.5", "bar"]
    assert tokens("1,250 h") == tokens("1250 h") == ["1250", "h"]
    assert tokens("22,000 bph") == ["22000", "bph"]
    assert tokens("1,250,000") == ["1250000"]
    assert tokens("06:00") == tokens("6:00")
    assert tokens("The Valve") == tokens("the valve") == ["valve"]


def test_match_facts_keeps_order() -> None:
    found, missing = match_facts(["24 N·m", "E-47", "12 N·m"], "12 Nm, then 24 Nm [1]")
    assert found == ["24 N·m", "12 N·m"]
    assert missing == ["E-47"]


def test_citation_markers_are_not_content() -> None:
    assert strip_citations("24 Nm [1] and [2, 3].").split() == ["24", "Nm", "and", "."]
    assert not fact_present("1 bar", "bar [1]")


def test_token_f1() -> None:
    assert token_f1("24 Nm", "24 N·m") == 1.0
    assert token_f1("", "") == 1.0
    assert token_f1("anything", "") == 0.0
    assert token_f1("torque 24 Nm [1]", "The torque is 24 N·m.") == 1.0
    # prediction {gland, torque, 24, nm} vs reference {torque, 24, nm}: P=3/4, R=1
    assert token_f1("gland torque 24 Nm", "torque 24 N·m") == pytest.approx(2 * 0.75 / 1.75)
    assert token_f1("completely different", "torque 24 N·m") == 0.0


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("docs/pump-maintenance-manual.md", "pump-maintenance-manual"),
        ("pump-maintenance-manual.md", "pump-maintenance-manual"),
        ("Pump Maintenance Manual", "pump-maintenance-manual"),
        ("docs/Pump_Maintenance_Manual.md#4.2", "pump-maintenance-manual"),
        ("/abs/path/docs/spare-parts-list.csv", "spare-parts-list"),
        ("SB-CH-07 chiller bulletin.docx", "sb-ch-07-chiller-bulletin"),
    ],
)
def test_document_key(name: str, key: str) -> None:
    assert document_key(name) == key


def test_citation_correctness() -> None:
    source = "docs/pump-maintenance-manual.md"
    right = ["pump-maintenance-manual.md", "Pump maintenance manual"]
    wrong = ["alarm-fault-codes.md", "Alarm and fault codes"]
    assert citation_correct([right], source)
    assert citation_correct([wrong, right], source)
    assert not citation_correct([wrong], source)
    assert not citation_correct([], source)
    assert citation_correct([wrong], ["docs/alarm-fault-codes.md", source])
    assert citation_precision([wrong, right], source) == 0.5
    assert citation_precision([], source) is None


def test_abstention_detection() -> None:
    assert detect_abstention(NOT_IN_DOCUMENTS, use_retrieval=True)
    assert detect_abstention(NOT_IN_DOCUMENTS.upper().replace(".", ""), use_retrieval=True)
    assert detect_abstention("anything", service_flag=True, use_retrieval=True)
    # a refusal counts only where the model had no passages (and so no sentence to say)
    refusal = "I'm sorry, but I don't have that information."
    assert is_refusal(refusal)
    assert detect_abstention(refusal, use_retrieval=False)
    assert not detect_abstention(refusal, use_retrieval=True)
    # the appliance's sentence in other words counts in every mode
    paraphrase = "The plant documents do not provide the torque for the valve cover bolts."
    assert abstention_kind(paraphrase, use_retrieval=True) == "paraphrase"
    assert abstention_kind(NOT_IN_DOCUMENTS, use_retrieval=True) == "sentence"
    assert abstention_kind("x", service_flag=True) == "service"
    assert abstention_kind(refusal, use_retrieval=False) == "refusal"
    assert abstention_kind("The torque is 24 N·m [1].", use_retrieval=True) is None
    for text in (
        "I don't know.",
        "I do not know the purchase price.",
        "I am not sure which stock location that is.",
        "I cannot answer that from what I know.",
        "There is no information about the plant manager.",
        "The provided documents do not mention the wind speed.",
        "That is not mentioned in the documents.",
        "There is no information about the roof access in the provided documents.",
    ):
        assert is_refusal(text), text
    for text in (
        "The seal is HX-4471-B [1].",
        "Tighten to 24 N·m; do not exceed it.",
        "Unknown alarms must be reported to the shift leader.",
        "No flow below 5 m³/h trips the pump.",
    ):
        assert not is_refusal(text), text
        assert not detect_abstention(text, use_retrieval=False), text


def test_spanish_abstentions_and_refusals() -> None:
    # The Spanish bundle's own sentence and its paraphrases are abstentions; Spanish answers
    # that merely contain "no" are not.
    assert abstention_kind("Los documentos no tratan esta pregunta.") == "sentence"
    assert abstention_kind("Los documentos no tratan esta pregunta", question="x") == "sentence"
    for text in (
        "Los documentos no mencionan el puerto de PostgreSQL.",
        "Los pasajes proporcionados no contienen esa información.",
        "Eso no se menciona en los documentos.",
        "No hay información sobre el precio en los documentos.",
    ):
        assert abstention_kind(text, use_retrieval=True) == "paraphrase", text
    for text in ("No lo sé.", "No tengo información sobre eso.", "No puedo responder a eso."):
        assert abstention_kind(text, use_retrieval=False) == "refusal", text
        assert abstention_kind(text, use_retrieval=True) is None, text
    for text in (
        "El puerto de pop3s es 995 [1].",
        "No se puede instalar sin la orden apt-get install [1].",
        "La orden no sé cuál: dpkg --configure -a.",
    ):
        assert abstention_kind(text, use_retrieval=True) is None, text
    # A refusal that also states a value is an answer (a hallucinated one), in Spanish too.
    assert abstention_kind("Los documentos no tratan esto, pero el puerto es 5432.") is None


def test_score_answerable() -> None:
    s = score_answer(
        text="Final torque 24 Nm [1].",
        answerable=True,
        expected_facts=["24 N·m"],
        reference_answer="Tighten first 12 N·m and then 24 N·m.",
        abstained=False,
        use_retrieval=True,
        cited=[["pump-maintenance-manual.md"]],
        source="docs/pump-maintenance-manual.md",
    )
    assert s.verdict == "correct" and s.handled_correctly
    assert s.fact_recall == 1.0 and s.all_facts
    assert s.citation_correct and s.cited and s.citation_precision == 1.0
    assert 0 < s.token_f1 < 1

    partial = score_answer(
        text="Stage one is 12 N·m.",
        answerable=True,
        expected_facts=["12 N·m", "24 N·m"],
        reference_answer="",
        abstained=False,
        use_retrieval=False,
    )
    assert partial.verdict == "partial" and partial.fact_recall == 0.5
    assert partial.citation_correct is None and partial.cited is None

    abstained = score_answer(
        text=NOT_IN_DOCUMENTS,
        answerable=True,
        expected_facts=["24 N·m"],
        reference_answer="24 N·m",
        abstained=True,
        use_retrieval=True,
        source="docs/pump-maintenance-manual.md",
    )
    assert abstained.verdict == "abstained" and abstained.fact_recall == 0.0
    assert abstained.citation_correct is False


def test_score_unanswerable() -> None:
    kw = dict(answerable=False, expected_facts=[], reference_answer="", use_retrieval=True)
    assert score_answer(text=NOT_IN_DOCUMENTS, abstained=True, **kw).verdict == "correct"
    invented = score_answer(text="The price is 120 EUR.", abstained=False, **kw)
    assert invented.verdict == "hallucinated" and not invented.handled_correctly
