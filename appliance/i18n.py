"""Languages of the appliance: which language a question is in, and the terminal's texts.

Plants work in Spanish as often as in English, so the answer follows the language of the
question (whatever the documents' language), and the terminal page takes its texts from a
small message catalogue chosen from a setting or the browser's Accept-Language.

`detect_language(text)` is deliberately cheap (no model, no dependency): it counts marks that
only Spanish has (¿ ¡ ñ and accented vowels) and function words of each language. A question
with no evidence either way ("E-47?") gets the caller's default. Numbers and dates are never
touched here: answers keep values exactly as the documents write them.

Test: .venv/bin/pytest tests/appliance/test_i18n.py
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

LANGUAGES = ("en", "es")
DEFAULT_LANGUAGE = "en"

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
# Function words frequent in questions; none of them is a word of the other language.
_FUNCTION_WORDS = {
    "es": frozenset(
        """el la los las del que qué cuál cuáles cuánto cuánta cuántos cuántas cómo dónde cuándo
        quién por para con una uno unos unas es son está están hay se su sus al lo le como pero
        más sin sobre entre hasta desde hace debe tiene qué cada este esta estos estas ese esa
        y o según de en un""".split()
    ),
    "en": frozenset(
        """the is are was were what which who whom whose how where when why does do did of to
        and or for with from this that these those there their it its can should must have has
        be by an at on into about""".split()
    ),
}
_SPANISH_MARKS = frozenset("¿¡ñÑáéíóúÁÉÍÓÚü")


def detect_language(text: str, default: str = DEFAULT_LANGUAGE) -> str:
    """ "es" or "en" for `text`; `default` when the text gives no evidence either way."""
    if default not in LANGUAGES:
        raise ValueError(f"default must be one of {LANGUAGES}, got {default!r}")
    if not text:
        return default
    words = [w.lower() for w in _WORD.findall(text)]
    scores = {lang: sum(w in vocab for w in words) for lang, vocab in _FUNCTION_WORDS.items()}
    # A Spanish-only mark weighs like two function words: "¿E-47?" is Spanish.
    scores["es"] += 2 * sum(ch in _SPANISH_MARKS for ch in text)
    if scores["es"] == scores["en"]:
        return default
    return "es" if scores["es"] > scores["en"] else "en"


def is_function_word(word: str) -> bool:
    """`word` (any case) is a question's function word in one of the appliance's languages."""
    w = word.lower()
    return any(w in vocab for vocab in _FUNCTION_WORDS.values())


def strip_accents(text: str) -> str:
    """'qué' -> 'que': how FTS5's `remove_diacritics 2` sees a word."""
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


# --------------------------------------------------------------------------------------------
# The terminal page's message catalogue. Keys are used by appliance/server/static/i18n.js and
# app.js; every language has every key (a test checks it).

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "title": "Plant expert",
        "connecting": "Connecting…",
        "ready": "Ready",
        "new_conversation_status": "New conversation",
        "need_key": "An API key is needed.",
        "key_rejected": "The API key was not accepted.",
        "not_ready": "Service not ready ({status}). Retrying…",
        "unreachable": "Cannot reach the service. Retrying…",
        "question_label": "Your question",
        "question_placeholder": "e.g. What is the torque for the P-101 impeller nut?",
        "ask": "Ask",
        "stop": "Stop",
        "new": "New conversation",
        "key_label": "This terminal needs an API key. Type it and press Enter.",
        "conversation": "Conversation",
        "you": "You",
        "expert": "Expert",
        "sources": "Sources",
        "cited": "cited",
        "page": "page",
        "passage": "passage",
        "document": "document",
        "chunk": "chunk",
        "score": "score",
        "stopped": "[stopped]",
        "could_not_answer": "Could not answer: {message}",
        "cut_off": "the answer was cut off",
        "error_status": "Error {status}",
        "keys": "Keys:",
        "key_ask": "ask",
        "key_newline": "new line",
        "key_stop": "stop",
        "key_sources": "sources of the last answer",
        "key_question": "back to the question",
        "key_new": "new conversation",
        "key_moves": "moves,",
        "key_open": "opens a source.",
        "check_sources": "Answers come from the plant documents; always check the cited source "
        "before acting.",
    },
    "es": {
        "title": "Experto de planta",
        "connecting": "Conectando…",
        "ready": "Listo",
        "new_conversation_status": "Conversación nueva",
        "need_key": "Hace falta una clave de API.",
        "key_rejected": "La clave de API no ha sido aceptada.",
        "not_ready": "El servicio no está listo ({status}). Reintentando…",
        "unreachable": "No se puede conectar con el servicio. Reintentando…",
        "question_label": "Su pregunta",
        "question_placeholder": "p. ej. ¿Qué par de apriete lleva la tuerca del rodete de la P-101?",
        "ask": "Preguntar",
        "stop": "Parar",
        "new": "Conversación nueva",
        "key_label": "Este terminal necesita una clave de API. Escríbala y pulse Intro.",
        "conversation": "Conversación",
        "you": "Usted",
        "expert": "Experto",
        "sources": "Fuentes",
        "cited": "citada",
        "page": "página",
        "passage": "pasaje",
        "document": "documento",
        "chunk": "fragmento",
        "score": "puntuación",
        "stopped": "[detenido]",
        "could_not_answer": "No se pudo responder: {message}",
        "cut_off": "la respuesta se cortó",
        "error_status": "Error {status}",
        "keys": "Teclas:",
        "key_ask": "preguntar",
        "key_newline": "línea nueva",
        "key_stop": "parar",
        "key_sources": "fuentes de la última respuesta",
        "key_question": "volver a la pregunta",
        "key_new": "conversación nueva",
        "key_moves": "se mueve,",
        "key_open": "abre una fuente.",
        "check_sources": "Las respuestas salen de los documentos de la planta; compruebe siempre "
        "la fuente citada antes de actuar.",
    },
}


def negotiate(accept_language: str | None, default: str = DEFAULT_LANGUAGE) -> str:
    """The catalogue language for an Accept-Language header ("es-ES,es;q=0.9,en;q=0.8")."""
    if default not in LANGUAGES:
        raise ValueError(f"default must be one of {LANGUAGES}, got {default!r}")
    best, best_q = None, -1.0
    for part in (accept_language or "").split(","):
        fields = [f.strip() for f in part.split(";")]
        tag = fields[0].lower()
        if not tag:
            continue
        q = 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        lang = tag.split("-")[0]
        if lang == "*":
            lang = default
        # Earlier entries win ties (the header's order is the user's preference order).
        if lang in LANGUAGES and q > 0 and q > best_q:
            best, best_q = lang, q
    return best or default


def ui_messages(language: str) -> Mapping[str, str]:
    if language not in MESSAGES:
        raise ValueError(f"no UI messages for {language!r}; available: {', '.join(LANGUAGES)}")
    return MESSAGES[language]
