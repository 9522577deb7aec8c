"""Keyword side of hybrid search: plant codes and the FTS5 query.

FTS5's unicode61 tokenizer splits `E-47` into `e` and `47`, and `HX-4471-B` into three
tokens, so a query for `e47` (or `E47`) would never meet `E-47`. Every code-like token
(letters and digits, optionally joined by `-`, `_` or `.`) is therefore also indexed in a
second FTS column in a joined form (`e47`, `hx4471`, `hx4471b`), and the same joining is
applied to the query. `E-47`, `e-47`, `E47` and `e47` all find the same chunk; the body column
still serves ordinary words with BM25.

Test: .venv/bin/pytest tests/appliance/test_retrieval_keywords.py
"""

from __future__ import annotations

import re
import unicodedata

# A code: alphanumeric parts joined by - _ . with at least one letter and one digit overall,
# or a single mixed token such as E47 or 6310C3. Not part of a longer word.
_CODE_RE = re.compile(r"(?<![\w])[A-Za-z0-9]+(?:[-_.][A-Za-z0-9]+)*(?![\w])")
_PART_SPLIT = re.compile(r"[-_.]")
_WORD_RE = re.compile(r"\w+", re.UNICODE)

STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have how i if
    in into is it its me my no not of on or our should so than that the their them then there
    these they this to was we were what when where which who whom why will with would you your
    about after before during tell give show explain please there's what's""".split()
)
# Spanish question words and function words, written without accents: the FTS5 tokenizer
# (unicode61 remove_diacritics 2) folds "qué" to "que", and so does `fold` below.
STOPWORDS_ES = frozenset(
    """a al ante con como cual cuales cuando cuanto cuanta cuantos cuantas de del desde donde
    el ella ellos en entre es esta estas este estos esa ese hay la las le les lo los mas me mi
    muy no nos o para pero por que quien se segun ser si sin sobre son su sus tiene un una unas
    uno unos y ya hace debe puede decir dime explica explique indique""".split()
)


def fold(word: str) -> str:
    """'Qué' -> 'que', 'año' -> 'ano': the folding of FTS5's remove_diacritics 2."""
    return "".join(c for c in unicodedata.normalize("NFD", word) if not unicodedata.combining(c))


def _is_code(token: str) -> bool:
    return any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


def code_terms(text: str, prefixes: bool = True) -> list[str]:
    """Joined, lower-cased forms of the codes in `text`, in order, without duplicates.

    `HX-4471-B` gives `hx4471b` and (with `prefixes`) `hx4471`; `E-47` gives `e47`.
    """
    out: dict[str, None] = {}
    for m in _CODE_RE.finditer(text):
        token = m.group(0)
        if not _is_code(token):
            continue
        parts = [p.lower() for p in _PART_SPLIT.split(token) if p]
        for end in range(2 if prefixes else len(parts), len(parts) + 1):
            joined = "".join(parts[:end])
            if _is_code(joined):
                out[joined] = None
        if len(parts) == 1:
            out[parts[0]] = None
    return list(out)


# A term the question quotes: «_», "x", “en pruebas”, ‘q’, `ip neigh`; up to 40 characters.
# (Not '...': an apostrophe is not a quote.)
_QUOTED_RE = re.compile(
    r'«([^»\n]{1,40})»|“([^”\n]{1,40})”|‘([^’\n]{1,40})’|"([^"\n]{1,40})"|`([^`\n]{1,40})`'
)


def quoted_terms(text: str) -> set[str]:
    """The terms a question puts in quotes, folded and lower-cased ('«Intro»' -> 'intro')."""
    out = set()
    for m in _QUOTED_RE.finditer(text):
        term = " ".join(next(g for g in m.groups() if g is not None).split())
        if term:
            out.add(fold(term.lower()))
    return out


def codes_column(text: str) -> str:
    """The text of the FTS `codes` column for a chunk."""
    return " ".join(code_terms(text))


# Spanish light stemming (plural and gender endings, after Savoy's light stemmer for
# Spanish): "paquetes" and "paquete" meet at "paquet", "instalados" and "instalada" at "instalad",
# "archivos" and "archivo" at "archiv". FTS5 has no Spanish stemmer, so the stem is searched as a
# prefix ("paquet"*), which also finds derived forms (configura -> configur* -> configurar,
# configuración). Applied only to a question detected as Spanish (appliance.i18n), so English
# questions keep exactly the terms they had. MIN_STEM: a stem shorter than 4 letters would
# match too much ("red"* would find "redes" and "redirección"), so short words stay whole.
MIN_STEM = 4


def spanish_stem(word: str) -> str:
    """'paquetes' -> 'paquet', 'configuración' -> 'configuracion', 'red' -> 'red' (folded)."""
    w = fold(word.lower())
    if len(w) <= MIN_STEM or not w.isalpha():
        return w
    if w.endswith("iones") and len(w) - 5 >= MIN_STEM:  # configuraciones -> configuracion
        w = w[:-2]
    elif w.endswith("es") and len(w) - 2 >= MIN_STEM and w[-3] not in "aeiou":  # redes, leyes
        w = w[:-2]
    elif w.endswith("s") and len(w) - 1 >= MIN_STEM:
        w = w[:-1]
    if w[-1] in "aoe" and len(w) - 1 >= MIN_STEM:
        w = w[:-1]
    return w


def fts_query(text: str, max_terms: int = 32, language: str = "en") -> str | None:
    """An FTS5 MATCH expression for a free-text question, or None if nothing is searchable.

    Terms are quoted (so FTS5 operators in user text are inert) and OR-ed; BM25 ranks chunks
    that hold more and rarer terms higher. English and Spanish stop words are dropped (Spanish
    compared without accents, as FTS5 folds them). With `language="es"` every other word is
    searched by its light stem as a prefix (`spanish_stem`); codes and numbers stay exact.
    """
    terms: dict[str, None] = {}
    for code in code_terms(text):
        terms['"' + code + '"'] = None
    for word in _WORD_RE.findall(text.lower()):
        if word in STOPWORDS or fold(word) in STOPWORDS_ES:
            continue
        if len(word) < 2 and not word.isdigit():
            continue
        quoted = '"' + word.replace('"', '""') + '"'
        if language == "es" and word.isalpha():
            stem = spanish_stem(word)
            if stem != fold(word):
                quoted = '"' + stem + '"*'
        terms[quoted] = None
    if not terms:
        return None
    return " OR ".join(list(terms)[:max_terms])
