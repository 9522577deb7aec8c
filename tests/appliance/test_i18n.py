# Run: .venv/bin/pytest tests/appliance/test_i18n.py
"""Language of a question, the UI message catalogue and the language the page is served in."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

from appliance.errors import UserFacingError
from appliance.i18n import LANGUAGES, MESSAGES, detect_language, negotiate, ui_messages
from appliance.server import ServeConfig

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "appliance" / "server" / "static"
QUESTION_SETS = {
    "examples/debian-es/qa/eval.jsonl": "es",
    "examples/plant/qa/eval-es.jsonl": "es",
    "examples/debian-es/qa/mixed-en.jsonl": "en",
    "examples/plant/qa/eval.jsonl": "en",
}


@pytest.mark.parametrize("path,language", sorted(QUESTION_SETS.items()))
def test_every_question_of_the_sets_is_detected(path: str, language: str) -> None:
    questions = [json.loads(x)["question"] for x in (REPO / path).read_text().splitlines() if x]
    wrong = [q for q in questions if detect_language(q) != language]
    assert not wrong, wrong


def test_detection_of_short_and_mixed_text() -> None:
    assert detect_language("¿E-47?") == "es"
    assert detect_language("puerto de CUPS") == "es"
    assert detect_language("E-47") == "en"
    assert detect_language("E-47", default="es") == "es"
    assert detect_language("") == "en"
    assert detect_language("What does «año» mean?") == "en"  # the sentence, not one word
    with pytest.raises(ValueError, match="default"):
        detect_language("hola", default="fr")


def test_accept_language_negotiation() -> None:
    assert negotiate("es-ES,es;q=0.9,en;q=0.8") == "es"
    assert negotiate("en-GB,en;q=0.9,es;q=0.8") == "en"
    assert negotiate("fr-FR,fr;q=0.9,es;q=0.5") == "es"
    assert negotiate("fr-FR") == "en"
    assert negotiate("es;q=0, en") == "en"
    assert negotiate("es;q=bogus, en;q=0.1") == "en"
    assert negotiate(None, default="es") == "es"
    assert negotiate("*") == "en"


def test_catalogue_is_complete_and_used() -> None:
    assert set(MESSAGES) == set(LANGUAGES)
    keys = set(MESSAGES["en"])
    for lang in LANGUAGES:
        assert set(MESSAGES[lang]) == keys, lang
        for key, text in MESSAGES[lang].items():
            assert text.strip(), (lang, key)
            assert re.findall(r"\{\w+\}", text) == re.findall(r"\{\w+\}", MESSAGES["en"][key])
    used = set(re.findall(r"\bt\(\"(\w+)\"", (STATIC / "app.js").read_text()))
    used |= set(re.findall(r"\{\{ m\.(\w+) \}\}", (STATIC / "index.html").read_text()))
    assert used - keys == set(), "keys used by the page but missing from the catalogue"
    assert keys - used == set(), "catalogue keys nothing uses"
    with pytest.raises(ValueError, match="no UI messages"):
        ui_messages("fr")


def page(server, **headers) -> requests.Response:
    r = requests.get(f"{server.url}/", headers=headers, timeout=10)
    assert r.status_code == 200
    return r


def test_page_language_follows_accept_language_the_setting_and_lang(serve) -> None:
    server = serve()
    es = page(server, **{"Accept-Language": "es-ES,es;q=0.9"})
    assert '<html lang="es">' in es.text and "Su pregunta" in es.text
    assert es.headers["Content-Language"] == "es" and "Accept-Language" in es.headers["Vary"]
    data = re.search(r'<script id="messages" type="application/json">(.*?)</script>', es.text, re.S)
    assert json.loads(data.group(1))["ready"] == "Listo"
    en = page(server, **{"Accept-Language": "en-US"})
    assert '<html lang="en">' in en.text and "Your question" in en.text
    assert "{{" not in en.text and "{%" not in en.text
    assert '<html lang="en">' in requests.get(f"{server.url}/?lang=en", headers={"Accept-Language": "es"}).text  # fmt: skip
    # The raw template is never served.
    assert "{{" not in requests.get(f"{server.url}/ui/index.html").text

    fixed = serve(ui_language="es")
    assert '<html lang="es">' in page(fixed, **{"Accept-Language": "en-US"}).text


def test_bad_ui_language_setting_is_named(tmp_path) -> None:
    with pytest.raises(UserFacingError, match="ui_language"):
        ServeConfig(state_dir=tmp_path, ui_language="fr")
    with pytest.raises(UserFacingError, match="EXPERT_UI_LANGUAGE"):
        ServeConfig.load(env={"EXPERT_UI_LANGUAGE": "de"})
