"""Labelled fields of a reference entry, and the field a question asks for.

Reference manuals state an entry's facts as labelled fields: a directive's fact sheet
("Default: KeepAliveTimeout 5", "Context: server config"), a table row read with its header
("Code: E-47; Threshold: weaker than −0.25 bar"), a fact list ("Meaning: ...",
"Valor predeterminado: ..."). When a question names the entry and asks for one of its labels
("What is the default KeepAliveTimeout?"), the answer is that field, quoted from the passage:
nothing to generate, nothing a small model can copy from the neighbouring entry.

`asked_field` returns that field as `Evidence` (passage, span, text) or None, and the reader
(appliance.answering) lets the model answer whenever it is None. How the rules were chosen
(Apache dev split only, `benchmarks/reader_variants.py`): a field is taken only

- from a passage whose section path (not the document title) names a code or identifier of
  the question: the entry asked about. Without a named entry, the retriever's first passage
  answers questions about an unnamed parameter ("how many seconds ... by default?") but a
  neighbouring entry's field is the very mistake this exists to stop, so that case is left to
  the model;
- when every word of the label stands in the question (a shared prefix of 5 letters, or of 4
  for a 4-letter word: "mean" finds "Meaning", "defaults" finds "Default"), and the label is
  not the entry name's own label (a table row's first cell);
- when the value states something: a value the question does not name, or at most
  MAX_PLAIN_WORDS words ("warn", "None"). "Default: See usage for details" points elsewhere and
  is left to the model and the evidence sentence.

Nothing here depends on a language: labels are matched as words, not from a list.

Test: .venv/bin/pytest tests/appliance/test_fields.py
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.grounding import Evidence, best_sentence, new_values, occurs, value_spans

__all__ = ["Field", "asked_field", "label_matches", "record_fields"]

# A label: up to four words, starting with a letter, no digits, at most 40 characters.
_LABEL = r"[^\W\d_][^\W\d]*(?:[ \-][^\W\d]+){0,3}"
_LINE_FIELD_RE = re.compile(
    rf"^[ \t]*(?:[-*•]\s+)?(?P<label>{_LABEL}):[ \t]+(?P<value>\S.*)$", re.M
)
_ROW_PART_RE = re.compile(rf"^(?P<label>{_LABEL}):\s+(?P<value>\S.*)$", re.S)
_WORD_RE = re.compile(r"[^\W\d_]+")
# A value of this many words or fewer is a value even without a number or a name ("warn").
MAX_PLAIN_WORDS = 3


@dataclass(frozen=True)
class Field:
    """One "Label: value" of a passage; start/end span the whole field in the passage."""

    label: str
    value: str
    start: int
    end: int


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def record_fields(text: str) -> list[Field]:
    """The labelled fields of `text`: "Label: value" lines (a value may wrap onto following
    lines until a blank line or the next field) and the "; "-separated fields of a table row
    read with its header ("Code: E-47; Class: T; ...", one line, every part labelled)."""
    fields: list[Field] = []
    lines = text.split("\n")
    offsets = []
    pos = 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    i = 0
    while i < len(lines):
        line = lines[i]
        parts = line.split("; ")
        if len(parts) >= 2:
            matched = [_ROW_PART_RE.match(p.strip()) for p in parts]
            if all(matched):
                at = 0  # where the next part may start, within the line
                for p, m in zip(parts, matched, strict=True):
                    s = line.index(p, at)
                    lead = len(p) - len(p.lstrip())
                    body = p.strip()
                    start = offsets[i] + s + lead
                    fields.append(
                        Field(m.group("label"), m.group("value").strip(), start, start + len(body))
                    )
                    at = s + len(p)
                i += 1
                continue
        m = _LINE_FIELD_RE.match(line)
        if m is None:
            i += 1
            continue
        start = offsets[i] + m.start("label")
        end = offsets[i] + len(line.rstrip())
        value = [m.group("value").strip()]
        j = i + 1
        while j < len(lines) and lines[j].strip() and not _LINE_FIELD_RE.match(lines[j]):
            value.append(lines[j].strip())
            end = offsets[j] + len(lines[j].rstrip())
            j += 1
        fields.append(Field(m.group("label"), " ".join(value), start, end))
        i = j
    return fields


def _label_words(text: str) -> list[str]:
    return [w for w in (_fold(x) for x in _WORD_RE.findall(text)) if len(w) >= 4]


def _same_word(a: str, b: str) -> bool:
    """A shared prefix of 5 letters, or the whole of a 4-letter word."""
    n = min(len(a), len(b), 5)
    return n >= 4 and a[:n] == b[:n]


def label_matches(label: str, question: str) -> bool:
    """Every (4-letter or longer) word of `label` stands in `question`."""
    want = _label_words(label)
    have = _label_words(question)
    return bool(want) and all(any(_same_word(w, h) for h in have) for w in want)


def _states_something(value: str, question: str) -> bool:
    """A value the question does not name, or a short plain value ("warn") with a word the
    question does not have ("Parameter: retry" under "the ProxyPass retry parameter" is
    the entry's name, not its value)."""
    if any(occurs(v, question) is None for v in value_spans(value)):
        return True
    words = value.split()
    if not 0 < len(words) <= MAX_PLAIN_WORDS:
        return False
    asked = {_fold(w) for w in _WORD_RE.findall(question)}
    return any(_fold(w) not in asked for w in _WORD_RE.findall(value))


def asked_field(
    question: str,
    passages: Sequence[str],
    sections: Sequence[str],
    *,
    within: Sequence[int] | None = None,
) -> Evidence | None:
    """The field of the entry the question names that the question asks for, or None.

    `passages` are the shown passages' texts ([1] first), `sections` their section paths
    ("KeepAliveTimeout Directive", "Alarm code table > E-47"). `within` limits the passages
    (1-based). The first passage (in order) whose section names a code or identifier of the
    question and holds a field whose label the question names wins; among its fields, the one
    whose label covers the most question words. Where that field points elsewhere ("Default:
    See usage for details"), the answer is the entry's sentence that names the label and
    states a value ("The default value is 256; ..."), if there is one.
    """
    terms = [v for v in value_spans(question) if v.kind in ("code", "identifier")]
    if not terms:
        return None
    named = [
        i
        for i, section in enumerate(sections, start=1)
        if i <= len(passages)
        and (not within or i in within)
        and any(occurs(t, section) is not None for t in terms)
    ]
    pointer: str | None = None  # the asked label, where its field points elsewhere
    for i in named:
        text = passages[i - 1]
        best: tuple[int, Field] | None = None
        for f in record_fields(text):
            if not label_matches(f.label, question):
                continue
            # The value less the entry's own name ("Default: KeepAliveTimeout 5" -> "5";
            # a row's "Code: E-47" -> "", the name, not a fact about it).
            rest = _strip_terms(f.value, terms)
            if not _states_something(rest, question):
                if rest and pointer is None:
                    pointer = f.label
                continue
            weight = len(_label_words(f.label))
            if best is None or weight > best[0]:
                best = (weight, f)
        if best is not None:
            f = best[1]
            return Evidence(i, f.start, f.end, text[f.start : f.end])
    if pointer is not None:
        # "Default: See usage for details": the entry's sentence that names the label and
        # states a value ("The default value is 256; ..."), the one closest to the question.
        label = pointer
        return best_sentence(
            question,
            list(passages),
            within=named,
            headings=list(sections),
            require=lambda s: label_matches(label, s) and bool(new_values(s, question)),
        )
    return None


def _strip_terms(value: str, terms) -> str:
    out = value
    for t in terms:
        span = occurs(t, out)
        if span is not None:
            out = (out[: span[0]] + out[span[1] :]).strip()
    return out
