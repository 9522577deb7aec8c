# Run: .venv/bin/pytest tests/appliance/test_fields.py
"""The extractive path: the labelled field of the entry a question names (fact sheets, table
rows read with their header, fact lists; English and Spanish labels), and when it is not used."""

from __future__ import annotations

from appliance.fields import (
    asked_field,
    asks_for_file,
    asks_for_number,
    label_matches,
    record_fields,
    shared_words,
    states_file,
    states_number,
)

KEEPALIVE = (
    "Description: Amount of time the server will wait for subsequent\n"
    "requests on a persistent connection\n"
    "Syntax: KeepAliveTimeout num [ms]\n"
    "Default: KeepAliveTimeout 5\n"
    "Context: server config, virtual host\n"
    "Module: core\n"
    "\n"
    "The number of seconds Apache httpd will wait for a subsequent request before closing the "
    "connection. A value of 10 is common."
)
THREADLIMIT = (
    "Description: Sets the upper limit on the configurable number of threads\n"
    "Syntax: ThreadLimit number\n"
    "Default: See usage for details\n"
    "Module: event , worker , mpm_winnt\n"
)
ALARM_ROW = (
    "Code: E-47; Class: T; Equipment: LB-2; Condition: Vacuum drum vacuum low; "
    "Threshold: weaker than −0.25 bar; Escalation: L1"
)
PROXY_ROW = "Parameter: retry; Default: 60; Description: Connection pool worker retry timeout."
# Spanish: a fact list (a Markdown entry's bold labels, as the loader writes them) and an
# alarm table row read with its header.
APT_ES = (
    "Descripción: Tiempo de espera de las descargas de apt\n"
    "Valor predeterminado: 120 segundos\n"
    "Archivo: /etc/apt/apt.conf.d/99timeout\n"
)
ALARMA_ES = (
    "Código: E-47; Clase: T; Condición: Vacío del tambor bajo; Umbral: más débil que −0,25 bar"
)


def test_record_fields_of_a_fact_sheet_and_a_table_row():
    f = {x.label: x.value for x in record_fields(KEEPALIVE)}
    assert f["Default"] == "KeepAliveTimeout 5" and f["Module"] == "core"
    # A value that wraps onto the next line is one field.
    assert f["Description"].endswith("subsequent requests on a persistent connection")
    row = record_fields(ALARM_ROW)
    assert [x.label for x in row] == [
        "Code", "Class", "Equipment", "Condition", "Threshold", "Escalation",
    ]  # fmt: skip
    t = next(x for x in row if x.label == "Threshold")
    assert ALARM_ROW[t.start : t.end] == "Threshold: weaker than −0.25 bar"


def test_label_matches_whole_label_words_by_prefix():
    assert label_matches("Default", "What is the default TimeOut?")
    assert label_matches("Default", "Which file does httpd read, by defaults?")
    assert label_matches("Meaning", "What does alarm E-47 mean?")
    assert label_matches("Valor predeterminado", "¿Cuál es el valor predeterminado de X?")
    assert not label_matches("Valor predeterminado", "¿Cuál es el valor de X?")
    assert not label_matches("Context", "What is the default TimeOut?")


def test_the_named_entrys_default_is_quoted_from_its_fact_sheet():
    ev = asked_field(
        "What is the default KeepAliveTimeout?",
        [THREADLIMIT, KEEPALIVE],
        ["ThreadLimit Directive", "KeepAliveTimeout Directive"],
    )
    assert ev is not None and ev.passage == 2 and ev.sentence == "Default: KeepAliveTimeout 5"
    assert KEEPALIVE[ev.start : ev.end] == ev.sentence
    ev = asked_field(
        "Which module provides KeepAliveTimeout?", [KEEPALIVE], ["KeepAliveTimeout Directive"]
    )
    assert ev is not None and ev.sentence == "Module: core"


def test_a_table_row_field_and_not_the_rows_own_name():
    sections = ["Alarm code table > E-47"]
    ev = asked_field("What is the threshold of alarm E-47?", [ALARM_ROW], sections)
    assert ev is not None and ev.sentence == "Threshold: weaker than −0.25 bar"
    # "Code: E-47" only repeats the name the question gave: no answer from it.
    assert asked_field("What does code E-47 stand for?", [ALARM_ROW], sections) is None
    # "Parameter: retry" is the row's name; its "Default: 60" is what is asked.
    ev = asked_field(
        "What is the default of the ProxyPass retry parameter?",
        [PROXY_ROW],
        ["ProxyPass Directive > retry"],
    )
    assert ev is not None and ev.sentence == "Default: 60"


def test_what_happened_and_what_is_wrong_ask_for_the_meaning():
    """An operator reads a code off a screen and asks what happened: the entry's Meaning."""
    entry = (
        "Meaning: C-301 has tripped at 110 °C discharge temperature.\n"
        "Operator action: Confirm C-302 has started. Do not reset C-301."
    )
    sections = ["Compressed air codes > E-31 — C-301 discharge temperature trip"]
    for q in (
        "The compressor house screen shows E-31. What happened?",
        "E-31 just came up on the HMI. What is wrong?",
        "What does code E-31 indicate?",
        "La pantalla muestra E-31. ¿Qué ha pasado?",
    ):
        ev = asked_field(q, [entry], sections)
        assert ev is not None and ev.sentence.startswith("Meaning: C-301 has tripped"), q
    assert asked_field("What should the operator do about E-31?", [entry], sections) is None


def test_spanish_labels():
    ev = asked_field(
        "¿Cuál es el valor predeterminado de MaxDownloadTime?",
        [APT_ES],
        ["Configuración de APT > MaxDownloadTime"],
    )
    assert ev is not None and ev.sentence == "Valor predeterminado: 120 segundos"
    ev = asked_field("¿Cuál es el umbral de la alarma E-47?", [ALARMA_ES], ["Alarmas > E-47"])
    assert ev is not None and ev.sentence == "Umbral: más débil que −0,25 bar"


def test_no_field_when_the_value_points_elsewhere_or_no_entry_is_named():
    # "See usage for details" states nothing: the model and the evidence sentence answer.
    assert (
        asked_field("What is the default ThreadLimit?", [THREADLIMIT], ["ThreadLimit Directive"])
        is None
    )
    # The question names no entry: the first passage may be a neighbour's.
    assert (
        asked_field(
            "How long does the server wait by default?", [KEEPALIVE], ["KeepAliveTimeout Directive"]
        )
        is None
    )
    # The entry named only in the text, not as the passage's section: not its fact sheet.
    assert (
        asked_field(
            "What is the default MaxKeepAliveRequests?",
            [KEEPALIVE + " See MaxKeepAliveRequests."],
            ["KeepAliveTimeout Directive"],
        )  # fmt: skip
        is None
    )
    # A label the question does not name.
    assert (
        asked_field("Is KeepAliveTimeout in seconds?", [KEEPALIVE], ["KeepAliveTimeout Directive"])
        is None
    )


def test_a_pointer_field_gives_way_to_the_entrys_sentence_that_states_the_default():
    prefork = (
        "Syntax: MaxRequestWorkers number\n"
        "Default: See usage for details\n"
        "\n"
        "For non-threaded servers (i.e., prefork), MaxRequestWorkers translates into the "
        "maximum number of child processes. The default value is 256; to increase it, you "
        "must also raise ServerLimit."
    )
    ev = asked_field(
        "For the prefork MPM, what is the default MaxRequestWorkers?",
        [prefork],
        ["MaxRequestWorkers Directive"],
    )
    assert ev is not None and ev.sentence.startswith("The default value is 256")
    assert prefork[ev.start : ev.end] == ev.sentence
    # No sentence of the entry names the label with a value: nothing is extracted.
    assert (
        asked_field("What is the default ThreadLimit?", [THREADLIMIT], ["ThreadLimit Directive"])
        is None
    )


def test_an_unnamed_entry_is_the_first_passage_only_when_it_matches_the_question():
    q = "How many seconds does httpd wait for the next request before closing the connection, by default?"
    ev = asked_field(q, [KEEPALIVE], ["KeepAliveTimeout Directive"], unnamed_min_share=0.4)
    assert ev is not None and ev.sentence == "Default: KeepAliveTimeout 5"
    # A question the first passage hardly speaks of: no field is taken from it.
    far = "What is the default log file of the server?"
    assert (
        asked_field(far, [KEEPALIVE], ["KeepAliveTimeout Directive"], unnamed_min_share=0.4) is None
    )


def test_two_asked_fields_are_quoted_together():
    sheet = "Step: Caustic wash\nConcentration: 1.5 %\nTemperature: 75 °C\nTime: 20 min"
    ev = asked_field(
        "What concentration and temperature does the K-500 caustic wash run at?",
        [sheet],
        ["K-500 CIP > Caustic step"],
    )
    assert ev is not None and ev.sentence == "Concentration: 1.5 %\nTemperature: 75 °C"


def test_a_two_cell_row_answers_only_about_its_own_item():
    rows = ["Item: Final stage safety valve SV-302B; Value: set pressure 11.0 bar"]
    sections = ["C-302 compressor > Technical data > Final stage safety valve SV-302B"]
    # The row names another valve than the one asked about.
    q = "What is the set pressure of the safety valve SV-302A on C-302?"
    assert asked_field(q, rows[:1], sections[:1]) is None
    q = "What is the set pressure of the final stage safety valve SV-302B?"
    ev = asked_field(q, rows[:1], sections[:1])
    assert ev is not None and ev.sentence == rows[0]


def test_a_table_row_that_names_the_entry_in_a_cell_is_that_entrys_row():
    sheet = "Item: Final stage safety valve SV-302B; Value: set pressure 11.0 bar"
    part = (
        "part_number: HX-5241-SV; description: Safety valve, set 11.0 bar (SV-302B final "
        "stage); equipment_tag: C-302; stock_location: MS-C3-02"
    )
    sections = ["C-302 > Technical data > Final stage safety valve SV-302B", "HX-5241-SV / C-302"]
    q = "What is the part number of the spare safety valve for SV-302B?"
    ev = asked_field(q, [sheet, part], sections)
    assert ev is not None and ev.passage == 2 and ev.sentence == "part_number: HX-5241-SV"
    # A passage of prose that mentions the valve is not its entry: only a row's cells count.
    prose = "Part number: HX-5241-SV is kept in stock.\nSV-302B is lift-tested every year."
    assert asked_field(q, [prose], ["Stores > Compressor spares"]) is None


def test_the_entry_named_first_is_the_one_asked_about():
    rows = ["Service: pop3; Port: 110", "Service: pop3s; Port: 995"]
    q = "What is the port of pop3s, the secure version of pop3?"
    ev = asked_field(q, rows, ["Ports > pop3", "Ports > pop3s"])
    assert ev is not None and ev.passage == 2 and ev.sentence == "Port: 995"
    # One row that holds both: the field after the name asked about.
    row = "Plain service: pop3; port: 110; secure service: pop3s; port: 995"
    ev = asked_field(q, [row], ["Ports > pop3"])
    assert ev is not None and ev.sentence == "port: 995"
    # The question names pop3 and gives its port (110): the row's next port is pop3s's, not
    # an answer; the sentence of a named passage that states a port is.
    prose = (
        "To forward port 25 of the remote server from local port 4025 and port 110 of the "
        "remote server from local port 4110, run the following."
    )
    given = "In the SSH tunnel example, from which local port is the pop3 port (110) forwarded?"
    ev = asked_field(given, [row, prose], ["Ports > pop3", "SSH > Forwarding SMTP/pop3"])
    assert ev is not None and ev.passage == 2 and "4110" in ev.sentence


def test_a_which_file_question_is_answered_by_a_file_name():
    assert asks_for_file("¿En qué archivo se escriben las contraseñas del smarthost?")
    assert asks_for_file("Which file holds the host name set at boot?")
    assert not asks_for_file("What file attributes does FileETag use by default?")
    assert not asks_for_file("¿Qué orden instala un paquete?")
    q = "¿En qué archivo se escriben las contraseñas del smarthost?"
    assert states_file("Edite «/etc/exim4/passwd.client».", q)
    assert states_file("Default: AccessFileName .htaccess", "Which file?")
    assert states_file("the file sources.list", "Which file?")
    assert not states_file("Use exim4 y exim4-config con sudo.", q)
    assert not states_file("The end. Next one.", "Which file?")
    # a file the question itself names is not the answer
    assert not states_file("Edit /etc/exim4 now", "¿Qué archivo de /etc/exim4 guarda ...?")


def test_asks_for_number():
    assert asks_for_number("What is the default RLimitMEM, in bytes?")
    assert asks_for_number("How many litres of oil does C-301 take?")
    assert asks_for_number("¿Cuántos paquetes tiene el área main?")
    assert not asks_for_number("What is the default ServerTokens?")
    assert states_number("Default: 600", "What is the default H2MaxWorkerIdleSeconds?")
    assert not states_number("Default: Unset", "What is the default RLimitMEM?")


def test_a_quantity_cue_asks_for_the_quantity_field_and_only_joined_fields_are_joined():
    row = "Pump: P-101; DE bearing: 6310 C3; DE quantity: 15 g; NDE bearing: 6309 C3"
    q = "How much grease goes into the drive-end bearing of P-101 at each regrease?"
    ev = asked_field(q, [row], ["Grease and quantities > P-101"])
    # "bearing" is named, but "how much" asks for the quantity, and only for it.
    assert ev is not None and ev.sentence == "DE quantity: 15 g"
    sheet = "Part number: HX-7120-L\nInterval: 9,000 h\nSupplier: Korvand"
    q = "How often is the UV-120 lamp replaced, and what is its part number?"
    ev = asked_field(q, [sheet], ["UV-120 lamp"])
    assert ev is not None and ev.sentence == "Part number: HX-7120-L\nInterval: 9,000 h"


def test_shared_words_counts_acronyms_but_only_whole():
    assert shared_words("How is the MSS computed from the MTU for IPv6?",
                        "MSS = MTU - 60 for IPv6", leave_out="IPv6") == ["mss", "mtu"]  # fmt: skip
    assert shared_words("Which MTU applies?", "The MTUs are listed below.") == []
    assert shared_words("the default takes", "It take defaults") == ["default", "takes"]
