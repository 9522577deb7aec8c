"""Abbreviations a document defines, so that a chunk that uses one form is found by the other.

Manuals define an abbreviation once ("Variable Frequency Drive (VFD)", "NetworkManager (NM)")
and then use only the short form, while an operator asks with whichever form they know. A
chunk that says "Restart NM by the following" shares no word with "How do I restart
NetworkManager?", and its vector is little closer. So each chunk that holds one form of an
abbreviation its document defines, and not the other, gets a glossary line after its header
("NM: NetworkManager") in what is embedded and keyword-indexed; the chunk's text, what a reader
quotes, is unchanged.

Definitions are found as in Schwartz & Hearst (2003), "A simple algorithm for identifying
abbreviation definitions in biomedical text": a short form in brackets after its long form, or
a long form in brackets after its short form. The long form is the shortest run of words just
before the brackets whose letters hold the short form's letters in order, the first at the
start of a word. A document's definitions apply to its own chunks only.

Test: .venv/bin/pytest tests/appliance/test_abbreviations.py
"""

from __future__ import annotations

import re

# A short form: 2-10 characters, a letter first, at least two capitals (NM, MTU, VFD, PLCs).
_SHORT = r"[A-Za-z][A-Za-z0-9\-]{1,9}"
_BRACKETED = re.compile(r"\(([^()\n]{1,80})\)")
_WORD = re.compile(r"[^\s()\[\]{}«»\"“”]+")
# Where a long form cannot reach back across: . ; : ! ? before a space, or a blank line.
_STOP = re.compile(r"[.;:!?](?:\s|$)|\n\s*\n")
MAX_GLOSSARY_LINES = 4  # per chunk; a glossary line is a few tokens, the chunk's budget is 160


def _is_short_form(s: str) -> bool:
    return re.fullmatch(_SHORT, s) is not None and sum(c.isupper() for c in s) >= 2


# Small words a long form may hold without a letter in the short form ("Sistema de Nombres de
# Dominio"), and may not begin with.
_SMALL = frozenset("a an and at by de del el en for in la las los of on or the to y".split())


def _word_starts(text: str) -> set[int]:
    """Positions where a word or a part of one begins: after a space, a hyphen, an underscore
    or a slash, and a capital after a small letter (authorityInfoAccess)."""
    return {
        i
        for i, c in enumerate(text)
        if c.isalnum()
        and (i == 0 or not text[i - 1].isalnum() or (c.isupper() and text[i - 1].islower()))
    }


def _by_initials(letters: list[str], words: list[str]) -> str | None:
    """The shortest tail of `words` whose words' initials, small words aside, are `letters`."""
    for n in range(1, min(len(words), len(letters) + 3) + 1):
        tail = words[-n:]
        if tail[0].lower() in _SMALL:
            continue
        initials = [w[0].lower() for w in tail if w.lower() not in _SMALL and w[0].isalnum()]
        if initials == letters:
            return " ".join(tail)
    return None


def _long_form(short: str, words: list[str], *, all_starts: bool = False) -> str | None:
    """The long form of `short` at the end of `words`, or None.

    First the words' initials (Secure Sockets Layer); then Schwartz & Hearst's backward match:
    the shortest tail holding the letters of `short` in order, the first at the start of a word
    (NetworkManager). The match must put at least half of the letters (`all_starts`: all) at
    the start of a word or a part of one, which keeps out "environments, deadlock errors" for
    EDEADLK."""
    letters = [c.lower() for c in short if c.isalnum()]
    long = _by_initials(letters, words)
    if long is None:
        text = " ".join(words)
        starts = _word_starts(text)
        s, t, at_start = len(letters) - 1, len(text) - 1, 0
        while s >= 0:
            c = letters[s]
            while t >= 0 and (text[t].lower() != c or (s == 0 and t not in starts)):
                t -= 1
            if t < 0:
                return None
            at_start += t in starts
            s -= 1
            t -= 1
        if at_start < (len(letters) if all_starts else (len(letters) + 1) // 2):
            return None
        long = text[text.rfind(" ", 0, t + 2) + 1 :]
    long = long.strip(" ,-")
    words_of_long = long.split()
    if (
        not words_of_long
        or len(words_of_long) > len(letters) + 3
        or words_of_long[0].lower() in _SMALL
    ):
        return None
    if re.search(rf"(?<!\w){re.escape(short)}(?!\w)", long) or long.lower() == short.lower():
        return None
    return long


def _words_before(text: str, end: int, limit: int) -> list[str]:
    """Up to `limit` words of `text` before `end`, not reaching back across a sentence end."""
    start = max(0, end - 200)
    window = text[start:end]
    stops = list(_STOP.finditer(window))
    if stops:
        window = window[stops[-1].end() :]
    return _WORD.findall(window)[-limit:]


def definitions(text: str) -> dict[str, str]:
    """Short form -> long form for the abbreviations `text` defines (the first definition of
    each short form wins)."""
    out: dict[str, str] = {}
    for m in _BRACKETED.finditer(text):
        inner = m.group(1).strip()
        if _is_short_form(inner):  # "long form (SHORT)"
            words = _words_before(text, m.start(), 2 * len(inner) + 5)
            long = _long_form(inner, words) if words else None
            if long:
                out.setdefault(inner, " ".join(long.split()))
            continue
        # "SHORT (long form)"
        before = _WORD.findall(text[max(0, m.start() - 12) : m.start()])
        if before and _is_short_form(short := before[-1].strip(",;:")):
            words = _WORD.findall(inner)
            long = _long_form(short, words, all_starts=True) if words else None
            if long and long.split()[0].lower() == words[0].lower():
                out.setdefault(short, " ".join(long.split()))
    return out


def _find(text: str, phrase: str, *, case: bool) -> re.Match | None:
    """`phrase` in `text` as whole words, any run of white space between its words."""
    words = r"\s+".join(re.escape(w) for w in phrase.split())
    return re.search(rf"(?<!\w){words}(?!\w)", text, 0 if case else re.IGNORECASE)


def glossary(text: str, defined: dict[str, str]) -> list[str]:
    """The glossary lines of a chunk: "SHORT: long form" for each abbreviation of `defined` of
    which `text` holds one form and not the other (at most MAX_GLOSSARY_LINES, in order of
    first occurrence)."""
    found = []
    for short, long in defined.items():
        at_short = _find(text, short, case=True)
        at_long = _find(text, long, case=False)
        if (at_short is None) == (at_long is None):
            continue
        found.append(((at_short or at_long).start(), f"{short}: {long}"))
    return [line for _, line in sorted(found)[:MAX_GLOSSARY_LINES]]
