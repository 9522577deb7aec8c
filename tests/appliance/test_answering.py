# Run: .venv/bin/pytest tests/appliance/test_answering.py
"""retrieve -> abstain or fit the budget -> generate -> cite, with the fake generator and a
tiny in-memory retriever (the real index is covered by the server and calibration tests)."""

from __future__ import annotations

import pytest

from appliance.answering import (
    DEFAULT_ABSTAIN_THRESHOLD,
    AnswerPolicy,
    AnswerStream,
    ContextOverflowError,
    Outcome,
    Source,
    abstention_score,
    answer,
    answer_stream,
    attribute_citations,
    calibrate_abstain_threshold,
    calibrate_by_outcomes,
    cited_numbers,
    excluded_names,
    prepare,
)
from appliance.errors import UserFacingError
from appliance.generation.base import GenerationParams
from appliance.generation.fake import FakeGenerator
from appliance.prompting import NOT_IN_DOCUMENTS
from tests.passages import ALIGNMENT, ALIGNMENT_HEADS
from tests.passages import FixedRetriever as StubRetriever
from tests.passages import passage as StubPassage

PARAMS = GenerationParams(max_new_tokens=64)


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
    a = answer("Oil?", generator=gen, retriever=StubRetriever([PUMP, OIL]), params=PARAMS,
               policy=AnswerPolicy(question_check=False))  # fmt: skip
    assert "[" not in a.text and a.cited == []
    no_fallback = AnswerPolicy(cite_fallback=False, abstain_threshold=0.4)
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


def test_calibration_by_outcomes_takes_the_middle_of_the_best_thresholds():
    # score, right when answered, right when refused (an unanswerable question refused)
    outcomes = [
        Outcome(0.30, False, True),  # unanswerable, the reader would answer it
        Outcome(0.40, True, True),  # unanswerable, the reader refuses it by itself
        Outcome(0.50, False, False),  # answerable, the reader gets it wrong
        Outcome(0.60, True, False),  # answerable, right
        Outcome(0.70, True, False),
    ]
    cal = calibrate_by_outcomes(outcomes)
    # 0.35, 0.45 and 0.55 all give 4/5 right; the middle one wins (not 0.55, which refuses an
    # answerable question for nothing, nor 0.35, which lets every unanswerable one through).
    assert cal.right == 4 and cal.total == 5
    assert cal.threshold == pytest.approx(0.45)
    assert cal.tied == pytest.approx((0.35, 0.55))
    # An even count of ties: the lower middle one.
    two = calibrate_by_outcomes([Outcome(0.2, False, True), Outcome(0.8, True, False)])
    assert two.right == 2 and two.threshold == pytest.approx(0.5)
    assert calibrate_by_outcomes([Outcome(0.5, True, False)]).threshold < 0.5
    with pytest.raises(ValueError):
        calibrate_by_outcomes([])


class _WordEmbedder:
    """Unit vectors by word: a text is the normalised sum of its known words' axes."""

    AXES = ("impeller", "torque", "oil", "wrench")

    def embed(self, texts, kind="passage"):
        import numpy as np

        out = np.zeros((len(texts), len(self.AXES)), dtype=np.float32)
        for i, text in enumerate(texts):
            for j, word in enumerate(self.AXES):
                out[i, j] = text.lower().count(word)
            out[i] /= max(float(np.linalg.norm(out[i])), 1e-9)
        return out


def test_abstention_score_is_the_mean_of_the_passage_and_its_best_sentence():
    class Index:
        embedder = _WordEmbedder()

    passage = StubPassage("The impeller nut is tight. The torque is 120 N·m with a wrench.", 0.6)
    question = "What torque?"
    assert abstention_score(question, [passage], Index(), "passage") == pytest.approx(0.6)
    # The second sentence holds "torque" and "wrench": cosine 1/sqrt(2) with "torque".
    mixed = abstention_score(question, [passage], Index(), "passage+sentence")
    assert mixed == pytest.approx((0.6 + 2**-0.5) / 2)
    # No embedder (a retriever without one): the passage score alone.
    assert abstention_score(question, [passage], object(), "passage+sentence") == 0.6
    assert abstention_score(question, [], Index(), "passage+sentence") is None


def test_the_bundle_names_the_score_its_threshold_was_calibrated_on():
    from appliance.server.config import ServeConfig
    from appliance.server.runtime import answer_policy

    assert AnswerPolicy.from_manifest({"retrieval": {}}).abstain_signal == "passage"
    manifest = {"retrieval": {"abstain_threshold": 0.87, "abstain_signal": "passage+sentence"}}
    assert AnswerPolicy.from_manifest(manifest).abstain_signal == "passage+sentence"
    assert answer_policy(ServeConfig(), manifest).abstain_signal == "passage+sentence"
    # The default threshold was calibrated on the passage score, whatever the bundle says.
    lone = {"retrieval": {"abstain_signal": "passage+sentence"}}
    policy = answer_policy(ServeConfig(), lone)
    assert (policy.abstain_threshold, policy.abstain_signal) == (
        DEFAULT_ABSTAIN_THRESHOLD,
        "passage",
    )
    with pytest.raises(UserFacingError, match="abstain_signal 'chunk'.*rebuild the bundle"):
        AnswerPolicy.from_manifest({"retrieval": {"abstain_signal": "chunk"}})
    with pytest.raises(ValueError, match="abstain_signal must be one of"):
        AnswerPolicy(abstain_signal="chunk")


# --- the grounding check on every answer --------------------------------------------------

Q_TORQUE = "What torque does the P-101 impeller nut get?"


def _deltas(reply, question=Q_TORQUE, passages=(PUMP, OIL), params=PARAMS, **policy):
    gen = FakeGenerator(reply=reply)
    stream = answer_stream(
        question,
        generator=gen,
        retriever=StubRetriever(list(passages)),
        params=params,
        policy=AnswerPolicy(**policy),
    )
    return list(stream), stream.result


def test_supported_answer_streams_and_carries_evidence():
    deltas, a = _deltas("The nut is tightened to 120 N·m [1].")
    assert a.grounding == "supported" and a.text == a.model_text == "".join(deltas)
    assert len(deltas) > 1  # streamed, not buffered to the end
    (ev,) = a.evidence
    assert ev.passage == 1 and ev.sentence == "The P-101 impeller nut is tightened to 120 N·m."
    assert PUMP.text[ev.start : ev.end] == ev.sentence


def test_unsupported_value_is_never_passed_on_and_the_evidence_is_quoted():
    deltas, a = _deltas("The nut is tightened to 150 N·m [1].")
    assert a.grounding == "quoted" and a.unsupported == ["150"]
    assert "150" not in "".join(deltas) and "150" not in a.text
    assert a.text == 'The manual says: "The P-101 impeller nut is tightened to 120 N·m." [1]'
    assert a.cited == [1] and a.evidence[0].passage == 1 and not a.abstained
    assert a.model_text == "The nut is tightened to 150 N·m [1]."


def test_unsupported_value_without_a_close_sentence_abstains():
    deltas, a = _deltas(
        "Danger tags are painted colour 7035.", question="Which colour are danger tags?"
    )
    assert a.grounding == "abstained" and a.abstained and a.text == NOT_IN_DOCUMENTS
    assert "7035" not in "".join(deltas)


def test_a_generation_loop_is_not_passed_off_as_a_supported_answer():
    loop = "The nut is tightened to 120 N·m [1]. " + "The nut of the nut of the pump. " * 8
    deltas, a = _deltas(loop, params=GenerationParams(max_new_tokens=400))
    assert a.grounding == "quoted" and a.model_text == loop
    assert a.text == 'The manual says: "The P-101 impeller nut is tightened to 120 N·m." [1]'
    assert "".join(deltas).endswith(a.text)  # the stream ends with what the answer is


def test_an_answer_that_stops_after_announcing_itself_is_replaced_by_the_quote():
    deltas, a = _deltas("The answer is:")
    assert a.grounding == "quoted" and a.model_text == "The answer is:"
    assert a.text == 'The manual says: "The P-101 impeller nut is tightened to 120 N·m." [1]'


def test_a_which_file_answer_that_names_no_file_is_replaced_by_the_quote():
    smarthost = StubPassage(
        "Para el equipo inteligente, cree las entradas de contraseñas editando "
        "«/etc/exim4/passwd.client». Después reinicie exim4.",
        0.9,
        "mail#1",
    )
    q = "¿En qué archivo se escriben las contraseñas del equipo inteligente de exim4?"
    deltas, a = _deltas("Se debe reiniciar exim4 [1].", question=q, passages=(smarthost,))
    assert a.grounding == "quoted" and "/etc/exim4/passwd.client" in a.text
    # with no sentence that names a file, the answer is the abstention
    plain = StubPassage("Después reinicie exim4 con systemctl.", 0.9, "mail#2")
    deltas, a = _deltas("Se debe reiniciar exim4 [1].", question=q, passages=(plain,))
    assert a.abstained and a.grounding == "abstained"


def test_the_entry_named_in_the_question_goes_first_and_holds_the_value():
    pump = StubPassage("Nut torque 120 N·m.", 0.5, "pump#1", section="P-101 impeller")
    comp = StubPassage("Nut torque 95 N·m.", 0.7, "comp#1", section="C-301 impeller")
    # C-301 ranks first, but the question names P-101: its entry is shown first.
    deltas, a = _deltas("The torque is 95 N·m [1].", passages=(comp, pump))
    assert [s.chunk_id for s in a.sources] == ["pump#1", "comp#1"]
    assert a.grounding == "quoted" and "120 N·m" in a.text and "95" not in "".join(deltas)


def test_max_passages_trims_the_prompt():
    gen = FakeGenerator()
    retr = StubRetriever([PUMP, OIL, PUMP, OIL])
    short = prepare(Q_TORQUE, generator=gen, retriever=retr, params=PARAMS,
                    policy=AnswerPolicy(max_passages=1))  # fmt: skip
    full = prepare(Q_TORQUE, generator=gen, retriever=retr, params=PARAMS,
                   policy=AnswerPolicy(max_passages=None))  # fmt: skip
    assert len(short.sources) == 1 and len(full.sources) == 4
    assert short.prompt_tokens < full.prompt_tokens


def test_bundle_wording_replaces_the_plant_sentences():
    from appliance.prompting import wording

    words = wording("the Apache HTTP Server manual")
    gen = FakeGenerator(reply=words.abstain)
    a = answer("What is the default of the foo setting?", generator=gen,
               retriever=StubRetriever([PUMP]), params=PARAMS,
               policy=AnswerPolicy(wording=words))  # fmt: skip
    assert "plant" not in gen.prompts[-1].lower()
    assert "the Apache HTTP Server manual" in gen.prompts[-1]
    assert a.abstained and a.grounding == "abstained" and a.text == words.abstain
    low = answer("x?", generator=gen, retriever=StubRetriever([StubPassage("y", 0.1)]),
                 params=PARAMS, policy=AnswerPolicy(wording=words))  # fmt: skip
    assert low.text == words.abstain and low.abstain_reason == "low_score"


def test_policy_from_manifest_reads_wording_and_threshold():
    m = {"retrieval": {"abstain_threshold": 0.3},
         "prompting": {"domain": "the Apache HTTP Server manual", "language": "en"}}  # fmt: skip
    p = AnswerPolicy.from_manifest(m)
    assert p.abstain_threshold == 0.3 and "Apache" in p.wording.system
    assert AnswerPolicy.from_manifest(None).wording.abstain == NOT_IN_DOCUMENTS
    with pytest.raises(ValueError, match="language"):
        AnswerPolicy.from_manifest({"prompting": {"domain": "x", "language": "xx"}})


def test_a_question_in_another_language_takes_the_cross_language_threshold():
    """Spanish documents: a Spanish question keeps the bundle's threshold, an English one takes
    the cross-language value (and English wording); without that value nothing changes but the
    wording; the manifest carries it; a value out of range is refused by name."""
    m = {"retrieval": {"abstain_threshold": 0.8693, "abstain_threshold_cross_language": 0.8228},
         "prompting": {"domain": "la Referencia de Debian", "language": "es"}}  # fmt: skip
    p = AnswerPolicy.from_manifest(m)
    assert p.abstain_threshold_cross_language == 0.8228
    same = p.for_question("¿Qué MTU se usa en un enlace Ethernet?")
    assert same is p and same.abstain_threshold == 0.8693
    other = p.for_question("Which MTU is used on an Ethernet link?")
    assert other.abstain_threshold == 0.8228 and other.wording.language == "en"
    assert other.for_question("Which MTU is used on an Ethernet link?") is other
    plain = AnswerPolicy.from_manifest({"prompting": m["prompting"]})
    assert plain.for_question("Which MTU is used on an Ethernet link?").abstain_threshold == (
        plain.abstain_threshold
    )
    low = answer("Which MTU is used on an Ethernet link?", generator=FakeGenerator(),
                 retriever=StubRetriever([StubPassage("La MTU de Ethernet es 1500.", 0.84)]),
                 params=PARAMS, policy=p)  # fmt: skip
    assert low.abstain_reason != "low_score"
    assert answer("¿Qué MTU se usa en un enlace Ethernet?", generator=FakeGenerator(),
                  retriever=StubRetriever([StubPassage("La MTU de Ethernet es 1500.", 0.84)]),
                  params=PARAMS, policy=p).abstain_reason == "low_score"  # fmt: skip
    with pytest.raises(ValueError, match="abstain_threshold_cross_language"):
        AnswerPolicy(abstain_threshold_cross_language=2.0)


def test_a_named_entry_under_the_threshold_is_quoted_on_what_is_asked_not_on_its_name():
    """Under the score threshold, the entry the question names (a code heading a shown
    passage) is quoted, without the model, when one of its sentences states what the
    question asks; a match on the entry's name alone is the abstention."""
    low = DEFAULT_ABSTAIN_THRESHOLD - 0.05
    overhaul = StubPassage(
        "Crankshaft end float must be 0.10-0.25 mm. Big-end bearing running clearance must "
        "not exceed 0.08 mm.",
        low,
        "comp#4",
        section="C-302 reciprocating compressor > Overhaul",
    )
    gen = FakeGenerator()
    q = "What is the limit for the big-end bearing running clearance on C-302?"
    a = answer(q, generator=gen, retriever=StubRetriever([overhaul]), params=PARAMS)
    assert not a.abstained and gen.started == 0
    assert a.grounding == "quoted" and a.cited == [1]
    assert a.evidence[0].sentence == ("Big-end bearing running clearance must not exceed 0.08 mm.")
    assert "0.08 mm" in a.text
    # Only the entry's name and code match: the documents do not say.
    price = "What is the purchase price of the C-302 reciprocating compressor?"
    a = answer(price, generator=gen, retriever=StubRetriever([overhaul]), params=PARAMS)
    assert a.abstained and a.abstain_reason == "low_score" and gen.started == 0
    # No entry named, and no sentence matches nearly every word: the threshold decides.
    unnamed = "What is the limit for the big-end bearing running clearance?"
    a = answer(unnamed, generator=gen, retriever=StubRetriever([overhaul]), params=PARAMS)
    assert a.abstained and a.abstain_reason == "low_score"
    # Off with the quote over a refusal.
    off = AnswerPolicy(quote_over_abstention=None)
    a = answer(q, generator=gen, retriever=StubRetriever([overhaul]), params=PARAMS, policy=off)
    assert a.abstained and a.abstain_reason == "low_score"


def test_a_code_held_by_a_passage_text_under_the_threshold_is_quoted_on_what_is_asked():
    """A code the question names that a shown passage's text holds, where no heading names it,
    counts as a named entry under the threshold: the sentence that states what is asked."""
    low = DEFAULT_ABSTAIN_THRESHOLD - 0.05
    security = StubPassage(
        "Desde el kernel 5.6, hay 8 tipos de espacios de nombres. A partir de Debian 11 "
        "Bullseye (2021), Debian utiliza jerarquía de grupos unificados (a.k.a. cgroups-v2).",
        low,
        "sec#4",
        section="4.7. Otros controles de acceso > 4.7.4. Características de seguridad de Linux",
    )
    gen = FakeGenerator()
    q = "¿Desde qué versión usa Debian la jerarquía de grupos unificados cgroups-v2?"
    a = answer(q, generator=gen, retriever=StubRetriever([security]), params=PARAMS)
    assert not a.abstained and gen.started == 0 and a.grounding == "quoted"
    assert "Debian 11" in a.text and "kernel 5.6" not in a.text
    # The code alone matches: the documents do not say.
    q2 = "¿Qué controlador de memoria de cgroups-v2 usa Debian por defecto?"
    a = answer(q2, generator=gen, retriever=StubRetriever([security]), params=PARAMS)
    assert a.abstained and a.abstain_reason == "low_score"


def test_the_names_a_question_sets_aside():
    q = "Aparte de «openssl passwd», ¿qué orden (del paquete whois) sirve?"
    assert excluded_names(q) == "openssl passwd"
    assert excluded_names("Other than P-101, which pump has a mechanical seal?") == "P-101"
    assert excluded_names("Besides the C-301 and C-302, which compressor?") == "C-301"
    # Only a name right after the phrase: a plain word is not one.
    assert excluded_names("¿En qué puerto se usa SMTPS en lugar de SMTP simple?") == ""
    assert excluded_names("What is the P-101 torque, except when new?") == ""
    assert excluded_names("What is the torque?") == ""


def test_a_quote_does_not_match_through_the_name_the_question_sets_aside():
    openssl = StubPassage(
        "paquete: openssl; orden: openssl passwd; función: resúmenes de las contraseñas",
        0.9,
        "pw#1",
        section="4.4. Creando una contraseña cifrada > openssl",
    )
    whois = StubPassage(
        "paquete: whois; orden: mkpasswd; función: interfaz con la biblioteca crypt",
        0.88,
        "pw#2",
        section="4.4. Creando una contraseña cifrada > whois",
    )
    q = "Aparte de «openssl passwd», ¿qué orden (del paquete whois) genera contraseñas?"
    deltas, a = _deltas("No puedes ser más cifratos.", question=q, passages=(openssl, whois))
    assert a.grounding == "quoted" and "mkpasswd" in a.text and a.cited == [2]
    # Without the setting-aside phrase the name counts, and the openssl row matches best.
    q2 = "¿Qué orden «openssl passwd» (del paquete whois) genera contraseñas?"
    deltas, a = _deltas("No puedes ser más cifratos.", question=q2, passages=(openssl, whois))
    assert a.grounding == "quoted" and "openssl passwd" in a.text and a.cited == [1]


def test_a_looping_answer_is_quoted_from_the_sentence_in_the_other_language_that_holds_its_value():
    """A translated manual keeps some sentences in English. Word overlap cannot match a Spanish
    question to them, so the closest Spanish sentence is a neighbour's (993). When the model
    loops around a value the passages hold (587), the sentence in the other language that holds
    it and names the question's codes and capitalised names (SMTP, ISP) is the quote."""
    mail = StubPassage(
        "It sends the message to the ISP's smarthost SMTP server listening to the message "
        "submission port (587).\n"
        "Recibe el mensaje almacenado en el servidor del ISP desde el puerto TLS/IMAP4 (993).",
        0.9,
        "mail#1",
        section="6.2. El sistema de correo > 6.2.1. Fundamentos de correo",
    )
    q = "¿En qué puerto escucha el servidor SMTP del ISP para el envío de mensajes?"
    loop = "El servidor recibe a través del puerto 587.\n\n" * 4
    deltas, a = _deltas(loop, question=q, passages=(mail,))
    assert a.grounding == "quoted" and "(587)" in a.text and "993" not in a.text
    # A value the passages do not hold guides nothing: the closest sentence is quoted.
    deltas, a = _deltas(loop.replace("587", "2525"), question=q, passages=(mail,))
    assert a.grounding == "quoted" and "(993)" in a.text
    # Nor does a sentence that lacks one of the question's names (here "POP3").
    deltas, a = _deltas(loop, question=q.replace("ISP", "ISP POP3"), passages=(mail,))
    assert "(587)" not in a.text


def test_a_named_entry_sentence_of_two_alternatives_is_cut_to_the_one_with_the_given_value():
    tunnel = StubPassage(
        "Para crear una tubería que conecte al puerto 25 del servidor remoto desde el puerto "
        "4025 del equipo local y al puerto 110 de servidor remoto desde el puerto 4110 del "
        "equipo local a través de ssh, ejecute en el equipo local lo que sigue.",
        0.94,
        "ssh#7",
        section="6.3. SSH > 6.3.7. Puerto de reenvio para túnel SMTP/POP3",
    )
    row = StubPassage(
        "Nombre del servicio inseguro: pop3; puerto: 110; "
        "nombre del servicio seguro: pop3s; puerto: 995",
        0.86,
        "sec#1",
        section="4.6. Contraseñas seguras en Internet > pop3",
    )
    q = (
        "En el ejemplo de túnel SMTP/POP3 por SSH, ¿desde qué puerto local se reenvía el "
        "puerto POP3 (110) del servidor remoto?"
    )
    gen = FakeGenerator()
    a = answer(q, generator=gen, retriever=StubRetriever([tunnel, row]), params=PARAMS)
    assert gen.started == 0 and a.cited == [1]
    assert "4110" in a.text and "4025" not in a.text and "995" not in a.text


def test_a_question_worded_as_a_shown_sentence_is_quoted_under_the_threshold():
    """Under the score threshold, a sentence of the shown passages that covers nearly every
    content word of the question (DEFAULT_LOW_SCORE_QUOTE) is quoted, without the model."""
    low = DEFAULT_ABSTAIN_THRESHOLD - 0.05
    group = StubPassage(
        "El usuario de escritorio se añade al grupo «netdev» para que configure la red. "
        "El grupo «sudo» administra el sistema.",
        low,
        "net#2",
    )
    gen = FakeGenerator()
    q = "¿A qué grupo se añade el usuario de escritorio para que configure la red?"
    a = answer(q, generator=gen, retriever=StubRetriever([group]), params=PARAMS)
    assert not a.abstained and gen.started == 0 and a.grounding == "quoted"
    assert "«netdev»" in a.text and a.cited == [1]
    # Fewer of its words in any sentence: the abstention.
    q2 = "¿Qué grupo administra las impresoras del escritorio?"
    a = answer(q2, generator=gen, retriever=StubRetriever([group]), params=PARAMS)
    assert a.abstained and a.abstain_reason == "low_score"
    # Off: the abstention too.
    off = AnswerPolicy(low_score_quote=None)
    a = answer(q, generator=gen, retriever=StubRetriever([group]), params=PARAMS, policy=off)
    assert a.abstained and a.abstain_reason == "low_score"
    # A question that names an entry (a code, an identifier) is left to the named entry's
    # quote, which matches on what is asked beyond the name: here, the abstention.
    q3 = "¿A qué grupo se añade el usuario de escritorio para que configure la red en NixOS?"
    loose = AnswerPolicy(low_score_quote=0.5, require_named_terms=False)
    a = answer(q3, generator=gen, retriever=StubRetriever([group]), params=PARAMS, policy=loose)
    assert a.abstained and a.abstain_reason == "low_score" and gen.started == 0
    q4 = "¿A qué grupo se añade el usuario de escritorio para que configure la red en Debian?"
    a = answer(q4, generator=gen, retriever=StubRetriever([group]), params=PARAMS, policy=loose)
    assert not a.abstained and a.grounding == "quoted"


def test_a_named_code_found_in_no_passage_is_abstained_on_without_the_model():
    gen = FakeGenerator()
    retr = StubRetriever([PUMP, OIL])
    a = answer("What does alarm E-99 on P-101 mean?", generator=gen, retriever=retr,
               params=PARAMS)  # fmt: skip
    assert a.abstained and a.abstain_reason == "unknown_term" and a.grounding == "abstained"
    assert gen.prompts == []
    # Names that do stand in a passage (text or heading) are fine.
    b = answer("How often is the LUB-0311 oil of C-301 changed?", generator=gen, retriever=retr,
               params=PARAMS)  # fmt: skip
    assert not b.abstained


def test_release_gate_holds_an_unfinished_number_and_its_unit():
    from appliance.answering import _ReleaseGate

    gate = _ReleaseGate(["The nut takes 120 N·m."], [])
    assert gate.safe_prefix("The nut takes 12") == len("The nut takes ")
    assert gate.safe_prefix("The nut takes 120 ") == len("The nut takes ")  # unit may follow
    assert gate.safe_prefix("The nut takes 120 N·m and ") == len("The nut takes 120 N·m and ")
    assert gate.safe_prefix('It says "tighten') == len("It says ")
    gate = _ReleaseGate(["The nut takes 120 N·m."], [])
    assert gate.safe_prefix("It takes 150 N·m, then ") == len("It takes ")
    assert gate.safe_prefix("It takes 150 N·m, then 120 N·m. ") == len("It takes ")  # held


def test_an_answer_without_the_value_its_best_sentence_holds_is_quoted_over():
    q = "How much LUB-0311 oil does C-301 take?"
    _, a = _deltas("C-301 takes oil.", question=q)  # states no value
    assert a.grounding == "quoted" and "32 L" in a.text
    _, b = _deltas("C-301 takes 120 N·m [1].", question=q)  # another passage's value
    assert b.grounding == "quoted" and "120" not in b.text and "32 L" in b.text
    _, c = _deltas("C-301 takes 32 L of LUB-0311 oil [2].", question=q)
    assert c.grounding == "supported" and c.text == c.model_text


def test_a_refusal_is_quoted_over_only_when_a_sentence_matches_closely():
    q = "What torque is the P-101 impeller nut tightened to?"
    _, a = _deltas(NOT_IN_DOCUMENTS, question=q)
    assert a.grounding == "quoted" and not a.abstained and "120 N·m" in a.text
    _, b = _deltas(NOT_IN_DOCUMENTS, question="Which colour are the danger tags?")
    assert b.grounding == "abstained" and b.abstained and b.text == NOT_IN_DOCUMENTS
    _, c = _deltas(NOT_IN_DOCUMENTS, question=q, quote_over_abstention=None)
    assert c.grounding == "abstained" and c.text == NOT_IN_DOCUMENTS


def test_a_name_the_documents_only_list_is_not_answered_with_the_list():
    """ "What is the default CacheMaxFileSize?" where the passages only list the name among
    related directives: the model's invented value is not replaced by a quote of the list."""
    listing = StubPassage(
        "Related Modules: mod_cache_disk; Related Directives: CacheRoot CacheMaxFileSize",
        0.7,
        section="Related Modules and Directives",
    )
    gen = FakeGenerator(reply="The default CacheMaxFileSize is 8192.")
    a = answer("What is the default CacheMaxFileSize?", generator=gen,
               retriever=StubRetriever([listing]), params=PARAMS)  # fmt: skip
    assert a.grounding == "abstained" and a.abstained and "8192" not in a.text
    # The same listing under the directive's own entry is quoted as before.
    own = StubPassage(listing.text, 0.7, section="CacheMaxFileSize Directive")
    b = answer("What is the default CacheMaxFileSize?", generator=gen,
               retriever=StubRetriever([own]), params=PARAMS)  # fmt: skip
    assert b.grounding == "quoted" and "8192" not in b.text


class MentionsRetriever(StubRetriever):
    """A retriever that also answers `mentions` from the words of every passage it holds, as
    the real index does (tests/appliance/test_retrieval.py covers the real one)."""

    def mentions(self, phrase):
        return any(phrase.casefold() in p.text.casefold() for p in self.passages)


def test_a_name_no_document_mentions_is_abstained_on_without_the_model():
    gen = FakeGenerator(reply="Nginx reads 120 N·m [1].")
    retr = MentionsRetriever([PUMP, OIL])
    a = answer("Which file configures the Nginx server on P-101?", generator=gen,
               retriever=retr, params=PARAMS)  # fmt: skip
    assert a.abstained and a.abstain_reason == "unknown_term" and gen.prompts == []
    # A capitalised word that opens the question is no name; a mentioned name is fine.
    b = answer("Which oil does C-301 take, LUB-0311?", generator=FakeGenerator(reply="LUB-0311 [1]."),
               retriever=retr, params=PARAMS)  # fmt: skip
    assert not b.abstained
    # A retriever without `mentions` (no index to ask) never abstains on a name.
    c = answer("Which file configures the Nginx server on P-101?", generator=gen,
               retriever=StubRetriever([PUMP, OIL]), params=PARAMS)  # fmt: skip
    assert c.abstain_reason != "unknown_term"


def test_a_quantity_question_is_not_answered_without_a_number():
    sheet = StubPassage(
        "Description: Memory limit\nDefault: Unset; uses operating system defaults\n"
        "Context: server config",
        0.7,
        "core#9",
        section="RLimitMEM Directive",
    )
    gen = FakeGenerator(reply="It is unset [1].")
    retr = StubRetriever([sheet, OIL])
    # The named entry's own field states no number: the documents do not give one.
    a = answer("What is the default RLimitMEM, in bytes?", generator=gen, retriever=retr,
               params=PARAMS)  # fmt: skip
    assert a.abstained and a.abstain_reason == "no_value" and gen.prompts == []
    # Asked without a quantity, the same field is the answer.
    b = answer("What is the default RLimitMEM?", generator=gen, retriever=retr, params=PARAMS)
    assert b.extracted and "Unset" in b.text
    # A model answer with no number, for a question asking how much: the quote that states
    # one, or the abstention.
    deltas, c = _deltas("The oil is changed regularly [1].",
                        question="How many litres of oil does C-301 take?")  # fmt: skip
    assert c.grounding == "quoted" and "32 L" in c.text
    deltas, d = _deltas("It is tightened firmly [1].",
                        question="How many turns does the P-101 nut get?", passages=(PUMP,))  # fmt: skip
    assert d.abstained and d.abstain_reason == "no_value" and d.text == NOT_IN_DOCUMENTS


def test_an_acronym_of_the_question_makes_a_sentence_more_than_a_listing_of_its_name():
    """IPv6 heads no passage, so a quote must share another word of the question: the
    acronyms MSS and MTU count (Spanish dev e041 was abstained on for want of them)."""
    formula = StubPassage(
        "The relation between the two sizes is as follows:\n\n"
        "MSS = MTU - 40 for IPv4\n\nMSS = MTU - 60 for IPv6",
        0.9,
        section="5.5. Network optimisation",
    )
    gen = FakeGenerator(reply="The MSS is 1500 [1].")  # a value the passage does not hold
    a = answer("How is the MSS computed from the MTU for IPv6?", generator=gen,
               retriever=StubRetriever([formula]), params=PARAMS)  # fmt: skip
    assert a.grounding == "quoted" and "MSS = MTU - 60 for IPv6" in a.text
    assert "1500" not in a.text


def test_a_quote_that_restates_the_question_goes_on_to_the_command_line_after_it():
    text = (
        "This command sets the console log level for the kernel messages.\n\n"
        "# dmesg -n3\n\nTable 3.4. Kernel error levels"
    )
    gen = FakeGenerator(reply="The console log level is set by the kernel 7 [1].")
    a = answer("Which command sets the console log level to 3?", generator=gen,
               retriever=StubRetriever([StubPassage(text, 0.9)]), params=PARAMS)  # fmt: skip
    assert a.grounding == "quoted" and a.text.endswith('# dmesg -n3" [1]')
    assert a.evidence[0].sentence.startswith("This command sets")


def test_the_quote_over_a_checked_answer_counts_only_the_questions_content_words():
    shown = [
        StubPassage(t, 0.7, chunk_id=f"doc#{i}", section=h)
        for i, (t, h) in enumerate(zip(ALIGNMENT, ALIGNMENT_HEADS, strict=True))
    ]
    gen = FakeGenerator(reply="The maximum parallel offset is 4,000 rpm.")  # 4,000 h, not rpm
    a = answer("What is the maximum parallel offset allowed when aligning a pump to its motor?",
               generator=gen, retriever=StubRetriever(shown), params=PARAMS)  # fmt: skip
    assert a.grounding == "quoted" and "≤ 0.05 mm" in a.text and a.cited == [1]


def test_an_answer_that_restates_the_question_is_quoted_over():
    row = StubPassage(
        "%k | Number of keepalive requests handled on this connection.",
        0.8,
        section="LogFormat Directive > Custom Log Formats > %k",
    )
    q = "Which LogFormat code logs the number of keepalive requests handled on the connection?"
    gen = FakeGenerator(reply="The logs contain the number of keepalive requests handled.")
    a = answer(q, generator=gen, retriever=StubRetriever([row]), params=PARAMS)
    assert a.grounding == "quoted" and "%k" in a.text
    gen = FakeGenerator(reply="It uses the %k format string from the Custom Log Formats table.")
    b = answer(q, generator=gen, retriever=StubRetriever([row]), params=PARAMS)
    assert b.grounding == "supported" and b.text.startswith(b.model_text)


def test_a_refusal_is_quoted_over_by_matching_words_not_by_a_record_key():
    # The sentence's own words match the question: the refusal gives way to it.
    watch = StubPassage(
        "A trained fire watcher stays at the work area during the hot work.\n"
        "The fire watch continues for 60 minutes after the hot work has finished.\n"
        "The area is checked again 2 hours after the work ends.",
        0.76,
        section="2. Hot Work Permit > 2.3 Fire watch",
    )
    gen = FakeGenerator(reply=NOT_IN_DOCUMENTS)
    a = answer("After hot work is finished, how long must the fire watch stay?", generator=gen,
               retriever=StubRetriever([watch]), params=PARAMS)  # fmt: skip
    assert a.grounding == "quoted" and "60 minutes" in a.text and not a.abstained
    # A row whose key ("Product; Line A") shares a word with an unanswerable question is not
    # close enough to override the refusal (at 0.6 the key's bonus alone would carry it).
    row = StubPassage(
        "Product; Line A: still water, 0.5 L PET (also 0.33 L format); Line B: sparkling water",
        0.6,
        section="1. Lines",
    )
    b = answer("Which supplier makes the PET preforms for Line A?", generator=gen,
               retriever=StubRetriever([row]), params=PARAMS,
               policy=AnswerPolicy(quote_over_abstention=0.6))  # fmt: skip
    assert b.grounding == "abstained" and b.abstained and b.text == NOT_IN_DOCUMENTS


GLB_1 = StubPassage(
    "- GLB-1 — maintenance workshop, used for all production line and utility jobs except "
    "the compressor house.",
    0.587,
    chunk_id="doc#1",
    section="4.3 Group lockout boxes > GLB-1",
)
GLB_STEP = StubPassage(
    "8. Group box. Isolation keys go into the group lockout box (GLB-1 or GLB-2).",
    0.537,
    chunk_id="doc#2",
    section="6.1 Step by step > Group box.",
)
GLB_2 = StubPassage(
    "- GLB-2 — compressor house, used for C-301, C-302, R-304 and D-303 work.",
    0.638,
    chunk_id="doc#3",
    section="4.3 Group lockout boxes > GLB-2",
)
GLB_QUESTION = "Which group lockout box is used for jobs on the air compressors?"


def test_the_passage_closest_in_meaning_takes_the_last_slot_when_no_entry_is_named():
    gen = FakeGenerator(reply="GLB-2.")
    pa = prepare(GLB_QUESTION, generator=gen, retriever=StubRetriever([GLB_1, GLB_STEP, GLB_2]),
                 params=PARAMS, policy=AnswerPolicy(max_passages=2))  # fmt: skip
    assert [s.chunk_id for s in pa.sources] == ["doc#1", "doc#3"]
    # Already shown: nothing moves.
    pb = prepare(GLB_QUESTION, generator=gen, retriever=StubRetriever([GLB_2, GLB_1, GLB_STEP]),
                 params=PARAMS, policy=AnswerPolicy(max_passages=2))  # fmt: skip
    assert [s.chunk_id for s in pb.sources] == ["doc#3", "doc#1"]


def test_an_answer_whose_code_a_matching_sentence_holds_is_not_taken_for_a_neighbours():
    """The best sentence for the question is GLB-1's line ("... except the compressor
    house"); GLB-2's line also matches the question and holds the answer's code."""
    gen = FakeGenerator(reply="The group lockout box used for jobs on air compressors is GLB-2.")
    a = answer(GLB_QUESTION, generator=gen, retriever=StubRetriever([GLB_1, GLB_2]),
               params=PARAMS)  # fmt: skip
    assert a.grounding == "supported" and a.text.startswith(a.model_text)
    # Where no other matching sentence holds it, the code is taken for the neighbour's.
    b = answer(GLB_QUESTION, generator=gen, retriever=StubRetriever([GLB_1, GLB_STEP]),
               params=PARAMS)  # fmt: skip
    assert b.grounding == "quoted" and "GLB-1 — maintenance workshop" in b.text
