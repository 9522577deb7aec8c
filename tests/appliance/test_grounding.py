# Run: .venv/bin/pytest tests/appliance/test_grounding.py
"""The grounding check: value-like tokens, supported / unsupported answers, evidence spans,
the focus entry, and the sentence to quote."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.grounding import (
    Evidence,
    best_sentence,
    check,
    is_repetitive,
    is_unfinished,
    list_item_of,
    occurs,
    restates,
    sentence_spans,
    value_spans,
    with_next_value,
)
from tests.passages import ALIGNMENT, ALIGNMENT_HEADS

KEEPALIVE = (
    "Description: Amount of time the server will wait for subsequent requests\n"
    "Syntax: KeepAliveTimeout num[ms]\n"
    "Default: KeepAliveTimeout 5\n"
    "Context: server config, virtual host\n"
    "The number of seconds Apache httpd will wait for a subsequent request before closing "
    "the connection."
)
TIMEOUT = (
    "Description: Amount of time the server will wait for certain events\n"
    "Default: Timeout 60\n"
    "The number of seconds before receives and sends time out."
)
PUMP = "Tighten the P-101 gland nuts to 24 N·m. Seal kit HX-4471-B; 0.80 mm clearance."


def _kinds(text):
    return [(v.text, v.kind, v.unit) for v in value_spans(text)]


def test_value_spans_find_numbers_units_codes_identifiers_and_quotes():
    assert _kinds("Tighten to 24 N·m, then 0.80 mm; E-47 and HX-4471-B [2].") == [
        ("24", "number", "N·m"),
        ("0.80", "number", "mm"),
        ("E-47", "code", ""),
        ("HX-4471-B", "code", ""),
    ]
    assert _kinds('Set "Max Rate" in /etc/apache2/apache2.conf with mod_ssl') == [
        ("Max Rate", "quoted", ""),
        ("/etc/apache2/apache2.conf", "identifier", ""),
        ("mod_ssl", "identifier", ""),
    ]
    # CamelCase names are identifiers; plain and capitalised words are not; list numbers and
    # citation markers are not values.
    assert _kinds("1. Set KeepAliveTimeout to 5 seconds [1]\n2. Restart Apache") == [
        ("KeepAliveTimeout", "identifier", ""),
        ("5", "number", ""),
    ]
    assert _kinds("Los valores: 2,5 bar y −5 °C, 85 %") == [
        ("2,5", "number", "bar"),
        ("−5", "number", "°C"),
        ("85", "number", "%"),
    ]


def test_occurs_matches_whole_tokens_only():
    assert occurs("4 MB", "the cache holds 64 MB") is None
    assert occurs("4 MB", "the cache holds 4 MB") is not None
    assert occurs("E-47", "code E-47-B") is None
    assert occurs("E-47", "Alarm E-47.") is not None
    assert occurs("2000", "every 2,000 h") is not None
    assert occurs("0,5", "a gap of 0.5 mm") is not None
    assert occurs("5 ms", "KeepAliveTimeout 5 (seconds)") is None  # the unit is not there
    assert occurs('"max rate"', 'Set the "Max  Rate" field') is not None


def test_command_line_options_are_found_where_they_were_taken_from():
    # A value the answer copied from a passage must be found in that passage (Spanish dev e019
    # quoted "dmesg -n3" and was counted unsupported): an option keeps its hyphen.
    assert [v.text for v in value_spans("# dmesg -n3")] == ["-n3"]
    assert occurs("-n3", "# dmesg -n3") is not None
    assert occurs("--force", "dpkg --force -i") is not None
    assert occurs("-DUseCache", "httpd -DReverseProxy -DUseCache") is not None
    assert occurs("4471-B", "tag HX-4471-B") is None  # a code's tail is not the code
    assert value_spans("En-/Disable forwarding") == []
    # The value without its hyphen is another value: "all -SSLv3" excludes SSLv3.
    passage = "Default: SSLProtocol all -SSLv3 (up to 2.4.16: all)"
    assert occurs("SSLv3", passage) is None
    assert not check("The default SSLProtocol is SSLv3 [1].", [passage]).supported
    assert ("-SSLv3", "code") in [(v.text, v.kind) for v in value_spans(passage)]
    from appliance.grounding import contradicts

    assert contradicts("The default SSLProtocol is SSLv3.", passage)


@pytest.mark.parametrize("corpus", ["plant", "apache", "debian-es"])
def test_every_value_of_a_document_occurs_in_it(corpus: str):
    """The extraction and the search agree: each value-like token taken from a text is found in
    that same text (over the example corpora's files as stored: Markdown, HTML, CSV)."""
    docs = Path(__file__).resolve().parents[2] / "examples" / corpus / "docs"
    files = [p for p in sorted(docs.iterdir()) if p.suffix in {".md", ".html", ".csv", ".txt"}]
    assert files
    for path in files:
        for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
            missing = [v.text for v in value_spans(text) if occurs(v, text) is None]
            assert missing == [], f"{path.name}: {missing[:10]} in {text[:200]!r}"


def test_supported_answer_carries_evidence_span_and_sentence():
    v = check("The default is 5 seconds [1].", [KEEPALIVE, TIMEOUT])
    assert v.supported and v.unsupported == ()
    (ev,) = v.evidence
    assert ev.passage == 1 and ev.sentence == "Default: KeepAliveTimeout 5"
    assert KEEPALIVE[ev.start : ev.end] == ev.sentence


def test_value_absent_from_the_passages_is_unsupported():
    v = check("KeepAliveTimeout defaults to 15 seconds [1].", [KEEPALIVE, TIMEOUT])
    assert not v.supported and v.unsupported == ("15",)
    v = check("The seal kit is HX-4471-C.", [PUMP])
    assert v.unsupported == ("HX-4471-C",)


def test_value_of_an_uncited_distant_passage_is_unsupported():
    # 60 stands in passage 2 but the sentence cites passage 1 only and is closest to it.
    v = check(
        "KeepAliveTimeout waits 60 seconds for a subsequent request [1].", [KEEPALIVE, TIMEOUT]
    )
    assert v.unsupported == ("60",)
    # Cited, it is supported (the citation says where it came from).
    assert check("The default is 60 [2].", [KEEPALIVE, TIMEOUT]).supported


def test_focus_limits_the_passages_a_value_may_come_from():
    # The neighbouring entry's value, cited: the question asked about passage 1 only.
    v = check("The default is 60 [2].", [KEEPALIVE, TIMEOUT], focus=[1])
    assert not v.supported and v.unsupported == ("60",)
    assert check("The default is 5.", [KEEPALIVE, TIMEOUT], focus=[1]).supported


def test_answer_without_values_is_supported_with_the_closest_sentence():
    v = check("It closes the connection after waiting for a subsequent request.", [KEEPALIVE])
    assert v.supported and v.values == ()
    assert v.evidence and "subsequent request" in v.evidence[0].sentence


def test_best_sentence_to_quote_and_no_quote_when_nothing_is_close():
    q = "What is the default value of KeepAliveTimeout?"
    ev = best_sentence(q, [TIMEOUT, KEEPALIVE], min_share=0.3)
    assert ev is not None and ev.passage == 2 and ev.sentence == "Default: KeepAliveTimeout 5"
    assert best_sentence("What does the HX-4471-B seal kit cost in euros?", [PUMP]).passage == 1
    assert best_sentence("Which colour are danger tags?", [KEEPALIVE], min_share=0.3) is None
    assert best_sentence("anything", []) is None


def test_a_quantity_word_is_matched_by_a_value_in_its_unit():
    """ "How many litres" is answered by a value in L, "qué temperatura" by one in °C: the
    sentence that states it matches that word of the question."""
    glycol = (
        "Concentration is kept at 30 % propylene glycol, giving freeze protection to about "
        "-12 °C. The circuit holds about 3,200 L. The glycol circuit is checked every month."
    )
    ev = best_sentence("How many litres of glycol does the circuit hold?", [glycol])
    assert ev is not None and ev.sentence == "The circuit holds about 3,200 L."
    ev = best_sentence("¿A qué temperatura protege el glicol del circuito?", [glycol])
    assert ev is not None and "-12 °C" in ev.sentence
    # The word alone, with no value in its unit, matches nothing more.
    plain = "The circuit holds glycol. The glycol circuit is checked every month."
    assert best_sentence("How many litres does it hold?", [plain], min_share=0.5) is None


def test_best_sentence_leaves_out_the_words_and_values_it_is_told_to():
    row = "part_number: HX-4471-B; description: Mechanical seal, single cartridge"
    q = "What is the purchase price of the HX-4471-B mechanical seal?"
    assert best_sentence(q, [row], min_share=0.5) is not None
    # Beyond the entry's name and code, the row has nothing of what is asked.
    entry = "HX-4471-B\nSpare parts > HX-4471-B mechanical seal"
    assert best_sentence(q, [row], leave_out=entry) is None


def test_a_quote_is_widened_to_the_sentence_that_answers_a_second_ask():
    from appliance.grounding import with_second_ask

    drier = (
        "The new filter drier core for the NFA-180 is part HX-6610-D, which replaces the "
        "earlier core type.\n\nReplace the filter drier when the pressure drop across it "
        "exceeds 0.5 bar.\n\nA sight glass showing a yellow moisture indicator also requires "
        "a filter drier change."
    )
    q = "Which filter drier core is now used on the chiller, and when is it replaced?"
    first = best_sentence(q, [drier])
    assert first is not None and "HX-6610-D" in first.sentence
    both = with_second_ask(first, [drier], q, ignore=lambda w: w.lower() in {"when", "is", "it"})
    assert "HX-6610-D" in both.sentence and both.sentence.endswith("exceeds 0.5 bar.")
    assert both.start == first.start and drier[both.start : both.end] == both.sentence
    # One ask: the quote stays as it was.
    one = "Which filter drier core is now used on the chiller?"
    assert with_second_ask(first, [drier], one) == first


@pytest.mark.parametrize(
    "text,expected",
    [
        ("One. Two! Three?", ["One.", "Two!", "Three?"]),
        ("Tag: P-101; Duty: feed\nNext line", ["Tag: P-101", "Duty: feed", "Next line"]),
        ("Version 2.4.1 is current.", ["Version 2.4.1 is current."]),
        # An abbreviation's period ends no sentence.
        (
            "Debian utiliza grupos unificados (a.k.a. cgroups-v2). Ejemplos:",
            ["Debian utiliza grupos unificados (a.k.a. cgroups-v2).", "Ejemplos:"],
        ),
        (
            "Haga que el usuario, p. ej. foo, entre. Fin.",
            ["Haga que el usuario, p. ej. foo, entre.", "Fin."],
        ),
        ("Use a tool, e.g. ip, or cf. arp. Next.", ["Use a tool, e.g. ip, or cf. arp.", "Next."]),
        ("It ends at A. Then B.", ["It ends at A.", "Then B."]),
    ],
)
def test_sentence_spans(text, expected):
    assert [text[s:e] for s, e in sentence_spans(text)] == expected


def test_contradiction_new_values_and_value_bearing_sentences():
    from appliance.grounding import bears_value, contradicts, new_values

    assert contradicts("ThreadLimit is 1 [1].", "Default: ThreadLimit 64")
    assert not contradicts("ThreadLimit is 64.", "Default: ThreadLimit 64")
    assert not contradicts("It is set per child.", "Default: ThreadLimit 64")  # no number
    q = "What is the default ThreadLimit?"
    assert [v.text for v in new_values("The default ThreadLimit is 64.", q)] == ["64"]
    assert new_values("ThreadLimit sets the limit.", q) == []
    assert bears_value("Default: AllowOverride None", "What is the default of AllowOverride?")
    assert not bears_value("The limit applies per child process.", q)


def test_a_small_number_must_stand_near_the_answers_words():
    """0, 1, 10, 60 stand in almost every passage: found anywhere in it, they prove nothing."""
    passage = (
        "Default: KeepAliveTimeout 5\n"
        "The number of seconds the server will wait for a subsequent request.\n"
        "A cache holds up to 10 entries."
    )
    # "10" is in the passage, but in a sentence that shares nothing with the answer's.
    v = check("The default KeepAliveTimeout is 10.", [passage])
    assert not v.supported and v.unsupported == ("10",)
    # The right value stands in the sentence that names the same things.
    v = check("The default KeepAliveTimeout is 5.", [passage])
    assert v.supported and v.evidence[0].sentence == "Default: KeepAliveTimeout 5"
    # A small number in a sentence that names what the answer names is supported.
    assert check("The cache holds 10 entries.", [passage]).supported
    # Large numbers are still found anywhere in the allowed passage.
    assert check(
        "The default is 8190 bytes.", ["Default: LimitRequestFieldSize 8190 bytes"]
    ).supported


def test_best_sentence_require_filters_candidates():
    text = "Default: See usage for details\nThe default value is 256; raise ServerLimit too."
    ev = best_sentence(
        "What is the default MaxRequestWorkers?", [text], require=lambda s: "256" in s
    )
    assert ev is not None and ev.sentence.startswith("The default value is 256")


def test_a_long_answer_made_of_its_own_words_is_repetitive():
    loop = "Para la versión de la versión de la versión de la versión " * 4
    assert is_repetitive(loop)
    assert not is_repetitive("de la versión " * 5)  # too short to judge
    steps = (
        "Stop the pump and lock out the motor. Close the suction and discharge valves. "
        "Drain the casing into a tray, then remove the eight cover bolts and lift the cover. "
        "Check the impeller for wear and replace the O-ring before closing the casing again [1]."
    )
    assert not is_repetitive(steps)


def test_a_quote_that_states_nothing_new_takes_the_next_sentence_with_a_value():
    text = (
        "El mensaje que se muestra en la consola depende de su nivel de umbral.\n\n"
        "# dmesg -n3\n\nTabla 3.4. Niveles"
    )
    q = "¿Qué orden fija el nivel de umbral de la consola a 3?"
    ev = best_sentence(q, [text])
    assert ev is not None and "dmesg" not in ev.sentence
    wide = with_next_value(ev, [text], q)
    assert wide.sentence == text[wide.start : wide.end]
    assert wide.sentence.endswith("# dmesg -n3") and wide.start == ev.start
    # A sentence that already states a value is quoted as it is.
    valued = best_sentence("¿Qué orden fija el umbral?", ["La orden es dmesg -n3. Otra: 5 s."])
    assert with_next_value(valued, ["La orden es dmesg -n3. Otra: 5 s."], "¿umbral?") == valued
    # A list's enumerator is passed over; nothing with a value after it: unchanged.
    items = "Check the alarms of the shift.\n4. Open permits: which locks, by whom.\n5. Done"
    first = best_sentence("What is checked for alarms at the shift?", [items])
    wide = with_next_value(first, [items], "What is checked for alarms at the shift?")
    assert wide.sentence.endswith("Open permits: which locks, by whom.")
    plain = "Check the alarms of the shift."
    ev = best_sentence("alarms of the shift", [plain])
    assert with_next_value(ev, [plain], "alarms of the shift") == ev


def test_best_sentence_may_leave_the_questions_function_words_out_of_the_share():
    from appliance.i18n import is_function_word

    q = "What is the maximum parallel offset allowed when aligning a pump to its motor?"
    kw = {"min_share": 0.4, "headings": ALIGNMENT_HEADS}
    assert best_sentence(q, ALIGNMENT, **kw) is None  # "what", "when" count: 0.399
    ev = best_sentence(q, ALIGNMENT, ignore=is_function_word, **kw)
    assert ev is not None and ev.passage == 1 and "0.05 mm" in ev.sentence
    # Whole words are judged: "cuáles" is a function word, its prefix "cuále" is not.
    assert best_sentence("¿cuáles?", ["Cuáles son."], ignore=is_function_word) is None


def test_an_answer_that_only_restates_its_question_is_told_apart():
    from appliance.i18n import is_function_word

    q = "Which LogFormat code logs the number of keepalive requests handled on the connection?"
    echo = "The logs contain the number of keepalives requests handled on the connection."
    assert restates(echo, q, ignore=is_function_word)
    assert not restates("The %k code logs it: 5 requests [1].", q, ignore=is_function_word)
    assert not restates("Apache writes these requests to a separate keepalive journal file.", q)
    assert not restates("", q) and not restates("The.", q)


def test_the_record_line_bonus_can_be_left_out():
    row = ["Product; Line A: still water, 0.5 L PET; Line B: sparkling water"]
    q = "Which supplier makes the PET preforms for Line A?"
    with_bonus = best_sentence(q, row, min_share=0.6)
    assert with_bonus is not None and with_bonus.passage == 1
    assert best_sentence(q, row, min_share=0.6, record_bonus=False) is None


def test_a_record_key_the_question_names_as_written_counts_even_when_short():
    status = (
        "D: Worker is disabled and will not accept any requests. S: Worker is stopped. "
        "E: Worker is in an error state. N: Worker is in drain mode and will only accept "
        "existing sticky sessions. Thus, a setting of 'S-E' sets this worker to Stopped and "
        "clears the in-error flag."
    )
    ev = best_sentence("What does the worker status flag N mean in mod_proxy?", [status])
    assert ev is not None and ev.sentence.startswith("N: Worker is in drain mode")
    # Another letter is not named: "D" does not match the question's "N".
    ev = best_sentence("What does the worker status flag D mean?", [status])
    assert ev is not None and ev.sentence.startswith("D: Worker is disabled")


def _whole(text: str) -> Evidence:
    return Evidence(1, 0, len(text), text)


def test_a_quoted_list_is_cut_to_the_item_the_question_asks_about():
    from appliance.i18n import is_function_word

    kits = (
        "Spill kits: SK-1 at the CIP skid, SK-2 in the chemical bund, SK-3 in the compressor "
        "house (oil spill kit)."
    )
    q = "Which spill kit is kept in the compressor house?"
    ev = list_item_of(_whole(kits), [kits], q, ignore=is_function_word)
    assert ev.sentence == "SK-3 in the compressor house (oil spill kit)."
    assert kits[ev.start : ev.end] == ev.sentence
    # The heading before the colon is not part of the first item.
    q = "Which spill kit stands at the CIP skid?"
    assert list_item_of(_whole(kits), [kits], q).sentence == "SK-1 at the CIP skid"
    # A question every item answers as well as another: the whole list.
    q = "Which spill kits are there?"
    assert list_item_of(_whole(kits), [kits], q) == _whole(kits)


def test_a_table_row_or_a_short_sentence_is_not_cut():
    row = (
        "part_number: HX-4490-E; description: Coupling elastomer element; equipment_tag: "
        "P-101; stock_location: MS-A2-06"
    )
    q = "What coupling element does P-101 use?"
    assert list_item_of(_whole(row), [row], q) == _whole(row)
    two = "The default is 5 seconds, or 10 on a busy server."
    assert list_item_of(_whole(two), [two], "What is the default?") == _whole(two)
    prose = "Check the seal, the bearings and the coupling before the start."
    assert list_item_of(_whole(prose), [prose], "What is checked on the coupling?") == _whole(prose)


def test_a_quote_that_announces_what_follows_takes_the_next_sentence_too():
    # "... parámetros:" states a value (800Kib/sec) but announces the setting the question
    # asks for, which is the next line.
    text = (
        "Para limitar el ancho de banda a 800Kib/sec, debe configurar APT con los siguientes "
        'parámetros:\n\nAPT::Acquire::http::Dl-Limit "800";\n\nOtra sección.'
    )
    q = "¿Qué parámetro de APT limita el ancho de banda de las descargas?"
    ev = best_sentence(q, [text])
    assert ev is not None and ev.sentence.endswith("parámetros:")
    wide = with_next_value(ev, [text], q)
    assert wide.sentence.endswith('APT::Acquire::http::Dl-Limit "800"')
    assert wide.sentence == text[wide.start : wide.end] and wide.start == ev.start


def test_commas_inside_brackets_or_quotes_part_no_list_item():
    # Two cross-references hold the only commas: the sentence is no list, and it is quoted
    # whole (cut at them, a quote began with "“Cómo apagar el sistema”) de ...").
    sent = (
        "Se necesita proteger el proceso que ejecuta «shutdown -h now» (consulte Sección\xa01.1.8, "
        "“Cómo apagar el sistema”) de la finalización de ssh utilizando la orden at(1) "
        "(consulte Sección\xa09.4.13, “Planificación una vez de las tareas”) como se muestra."
    )
    q = "¿Cómo se apaga un sistema remoto por SSH?"
    assert list_item_of(_whole(sent), [sent], q) == _whole(sent)
    # Commas outside the brackets still part the items.
    kits = "Spill kits: SK-1 (at the CIP skid, east), SK-2 in the chemical bund, SK-3 in the house."
    ev = list_item_of(_whole(kits), [kits], "Which spill kit is at the CIP skid?")
    assert ev.sentence == "SK-1 (at the CIP skid, east)"


def test_a_quote_is_cut_to_the_alternative_the_question_names():
    from appliance.grounding import alternative_of

    ports = (
        "Por consideraciones prácticas, use SMTP con STARTTLS en el puerto 587 o SMTPS SSL "
        "(SMTPS) en el puerto 465, en lugar de SMTP simple en el puerto 25."
    )
    q = "¿En qué puerto se recomienda usar SMTPS en lugar de SMTP simple?"
    ev = alternative_of(_whole(ports), [ports], q, ["SMTPS", "SMTP"])
    assert (
        ev.sentence == "SMTPS SSL (SMTPS) en el puerto 465"
        and ports[ev.start : ev.end] == ev.sentence
    )
    mtu = "MTU is the packet size plus 28 bytes for the IPv4 and plus 48 bytes for the IPv6."
    q = "How many bytes are added for IPv6?"
    assert alternative_of(_whole(mtu), [mtu], q, ["IPv6"]).sentence == "plus 48 bytes for the IPv6."
    # No name of the question tells the alternatives apart, or two pieces hold it: as it is.
    two = "The default is 5 seconds, or 10 on a busy server."
    assert alternative_of(_whole(two), [two], "What is the default?", []) == _whole(two)
    both = "IPv4 takes 28 bytes and IPv4 with options takes 60 bytes."
    assert alternative_of(_whole(both), [both], "How many bytes for IPv4?", ["IPv4"]) == _whole(
        both
    )
    # One value only: nothing to choose between.
    one = "Use SMTPS on port 465, as the provider asks."
    assert alternative_of(_whole(one), [one], "Which port for SMTPS?", ["SMTPS"]) == _whole(one)


def test_a_cross_reference_states_no_value():
    ref = (
        "El área main proporciona el sistema Debian (consulte Sección\xa02.1.5, “Debian es 100% "
        "software libre”)."
    )
    assert value_spans(ref) == []
    assert _kinds("See Section 4.2 and Table 3 before raising it to 25 bar.") == [
        ("25", "number", "bar")
    ]
    assert _kinds('Véase el capítulo 9, "Consejos del sistema", y use el puerto 587.') == [
        ("587", "number", "")
    ]
    # What a reference is not: a section of a record, a number after the word alone.
    assert _kinds("La sección tiene 12 filas.") == [("12", "number", "filas")]


def test_an_answer_that_stops_after_announcing_it_is_unfinished():
    q = "¿Qué longitud mínima fija pam_cracklib?"
    assert is_unfinished("La respuesta es:  ", q)
    assert is_unfinished("The answer is: [1]", "What is the minimum length?")
    assert not is_unfinished("La respuesta es: minlen=8.", q)
    assert not is_unfinished("Use these settings: minlen=8 retry=3:", q)  # a value is stated
