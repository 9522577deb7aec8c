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

from appliance.grounding import (
    Evidence,
    ValueSpan,
    best_sentence,
    new_values,
    occurs,
    value_spans,
)

__all__ = [
    "Field",
    "asked_field",
    "asks_for_number",
    "label_matches",
    "points_elsewhere",
    "record_fields",
    "shared_words",
    "states_number",
]

# A label: up to four words, starting with a letter, no digits, at most 40 characters.
_LABEL = r"[^\W\d_][^\W\d]*(?:[ \-][^\W\d]+){0,3}"
_LINE_FIELD_RE = re.compile(
    rf"^[ \t]*(?:[-*•]\s+)?(?P<label>{_LABEL}):[ \t]+(?P<value>\S.*)$", re.M
)
_ROW_PART_RE = re.compile(rf"^(?P<label>{_LABEL}):\s+(?P<value>\S.*)$", re.S)
_WORD_RE = re.compile(r"[^\W\d_]+")
# A value of this many words or fewer is a value even without a number or a name ("warn").
MAX_PLAIN_WORDS = 3
# A longer plain value with one of these words sends the reader elsewhere ("See usage for
# details", "Véase el uso"): the value is then looked for in the entry's body. The one word
# list here, in the appliance's two languages (appliance.i18n); a missing word only means a
# pointer is quoted as the answer, which names no value.
POINTER_WORDS = frozenset("see véase vea ver consulte consultar".split())


# A question that asks for a quantity: "how many/much", "what number", a price or cost, a unit
# to give it in ("in bytes", "en segundos"). Its answer must state a number: "Default: Unset;
# uses operating system defaults" does not answer "What is the default RLimitMEM, in bytes?".
# The one such word list, in the appliance's two languages (appliance.i18n). Chosen on the dev
# splits: Apache u008 ("What number is the default DeflateCompressionLevel?") was answered
# with "Default: Zlib's default", u005 ("How much memory does each thread ... use?") with a
# quote that states none, Spanish e065 ("¿Cuál es el precio de una suscripción ...?") with a
# sentence about the social contract. A missing cue only means such a question is answered as
# any other.
_QUANTITY_RE = re.compile(
    r"\b(?:how (?:many|much)|what number|cu[aá]nt[oa]s?|qu[eé] n[uú]mero|price|cost|precio|"
    r"coste|costo|"
    r"(?:in|en) (?:bytes|kilobytes|megabytes|kb|mb|gb|seconds|milliseconds|microseconds|minutes|"
    r"hours|days|percent|segundos|milisegundos|microsegundos|minutos|horas|d[ií]as|"
    r"por ?ciento))\b",
    re.I,
)


# What a quantity cue asks for, in the words a data sheet labels it with: "How much grease goes
# into the DE bearing?" asks for the "DE quantity" field, not the "DE bearing" one. The words
# are put into the question right after the cue, where the asked thing stands. The one such
# list, in the appliance's two languages. Chosen on the plant dev split (q003 was answered with
# "DE bearing: 6310 C3"); "number" is left out ("how many" is not a "Part number"). "What
# happened?", "what is wrong?", "what does it indicate?" ask for an entry's meaning: chosen on
# plant dev, where q023 ("The compressor house screen shows E-31. What happened?") got the
# model's "The machine must cool for at least 30 minutes" and now gets the entry's Meaning
# (base + RAG 35 -> 36/46, fine-tuned + RAG 31 -> 32/46; Apache, Spanish, mixed dev unchanged).
CUE_LABELS = (
    (re.compile(r"\bhow much\b|\bcu[aá]nt[oa]\b", re.I), "quantity amount cantidad"),
    (re.compile(r"\bhow many\b|\bcu[aá]nt[oa]s\b", re.I), "quantity count cantidad"),
    (re.compile(r"\bhow often\b|\bcada cu[aá]nto\b|\bcon qu[eé] frecuencia\b", re.I),
     "interval frequency intervalo frecuencia"),
    (re.compile(r"\bhow long\b", re.I), "time duration"),
    (re.compile(r"\bwhat(?:'s| is| has)? (?:happened|wrong|gone wrong)\b|\bindicat(?:es?|ing)\b|"
                r"\bqu[eé] (?:ha )?(?:pasado|pasa|ocurre|indica)\b", re.I),
     "meaning significado"),
)  # fmt: skip


def with_cue_labels(question: str) -> str:
    """`question` with the label words of its quantity cue after the cue (`CUE_LABELS`)."""
    for cue, words in CUE_LABELS:
        question = cue.sub(lambda m, w=words: f"{m.group(0)} {w}", question, count=1)
    return question


def asks_for_number(question: str) -> bool:
    """The question asks for a quantity (`_QUANTITY_RE`), so only a number answers it."""
    return _QUANTITY_RE.search(question) is not None


# A question that asks which file ("¿Qué archivo guarda ...?", "¿En qué archivo se ...?", "Which
# file holds ...?"): its answer names a file. In English a noun after "file" makes it a question
# about something else ("What file attributes does FileETag use?").
_FILE_QUESTION_RE = re.compile(
    r"\b(?:qu[eé] (?:archivo|fichero)|(?:which|what) file(?!\s+(?:attributes?|names?|"
    r"systems?|sizes?|types?|permissions?|modes?|owners?|extensions?|formats?|handles?)\b))"
    r"(?!\w)",
    re.I,
)
# A file's name in an answer: a path ("/etc/mailname", "conf/httpd.conf"), a dotted name
# ("sources.list", ".htaccess") or a name with an underscore ("sshd_config").
_FILE_NAME_RE = re.compile(
    r"(?:\w|^|(?<=[\s«\"'`(]))[\w.-]*(?:/[\w.-]+)+|(?<![\w.])\.?\w+[._]\w+|(?<![\w.])\.\w+"
)


def asks_for_file(question: str) -> bool:
    """The question asks which file (`_FILE_QUESTION_RE`), so only a file's name answers it."""
    return _FILE_QUESTION_RE.search(question) is not None


def states_file(text: str, question: str) -> bool:
    """`text` names a file (a path, a dotted or underscored name) the question does not."""
    folded = question.casefold()
    return any(
        m.group(0).strip("./").casefold() not in folded
        for m in _FILE_NAME_RE.finditer(text)
        if any(c.isalpha() for c in m.group(0))
    )


def states_number(text: str, question: str) -> bool:
    """`text` states a number the question does not already give."""
    return any(v.kind == "number" for v in new_values(text, question))


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
            if matched[0] and sum(m is not None for m in matched) >= 2:
                # A row: an unlabelled part belongs to the field before it (a cell that held
                # "; " itself: "Task: Check belt condition; check interstage pressure").
                row: list[list] = []  # [label, value, start, end]
                at = 0  # where the next part may start, within the line
                for p, m in zip(parts, matched, strict=True):
                    s = line.index(p, at)
                    lead = len(p) - len(p.lstrip())
                    start = offsets[i] + s + lead
                    end = start + len(p.strip())
                    if m is not None:
                        row.append([m.group("label"), m.group("value").strip(), start, end])
                    else:
                        row[-1][1] += "; " + p.strip()
                        row[-1][3] = end
                    at = s + len(p)
                fields.extend(Field(*f) for f in row)
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
    """One word begins the other ("mean"/"meaning", "default"/"defaults"), or they share
    their first 6 letters ("predeterminado"/"predeterminada"); "interval" is not
    "interstage"."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n >= 4 and (n == min(len(a), len(b)) or n >= 6)


def label_matches(label: str, question: str, half: bool = False) -> bool:
    """Every (4-letter or longer) word of `label` stands in `question` (`half`: at least half
    of them, and two)."""
    want = _label_words(label)
    have = _label_words(question)
    found = sum(any(_same_word(w, h) for h in have) for w in want)
    if half:
        return found >= 2 and 2 * found >= len(want)
    return bool(want) and found == len(want)


def _content_words(text: str) -> list[str]:
    """The words `shared_words` compares: 4 letters or longer, and words in capitals of 2 or
    3 letters (MSS, MTU, CIP: an acronym names a thing as much as a long word does)."""
    return [
        _fold(x) for x in _WORD_RE.findall(text) if len(x) >= 4 or (len(x) >= 2 and x.isupper())
    ]


def shared_words(a: str, b: str, leave_out: str = "") -> list[str]:
    """The words of `a` (`_content_words`), less those of `leave_out`, that `b` has too, a
    word matching another that begins it or shares its first 6 letters ("take"/"takes"); an
    acronym matches only itself.

    (Acronyms were added on the Spanish dev split: e041, "¿Cómo se calcula el MSS a partir de
    la MTU en IPv6?", names only IPv6 as an identifier, and the sentence that answers it,
    "MSS = MTU - 60 en el caso de IPv6", shares only MSS and MTU with the question, so it was
    taken for a mere listing of IPv6 and the answer became the abstention.)"""
    skip = _content_words(leave_out)
    have = _content_words(b)

    def same(w: str, x: str) -> bool:
        return w == x if min(len(w), len(x)) < 4 else _same_word(w, x)

    return [
        w
        for w in _content_words(a)
        if not any(same(w, x) for x in skip) and any(same(w, h) for h in have)
    ]


@dataclass(frozen=True)
class _Pair(Field):
    """A two-cell row ("Item: Normal interstage pressure; Value: 2.2–2.8 bar") read as one
    field: its first cell names the thing, its second is the value."""


def _is_pair(f: Field) -> bool:
    return isinstance(f, _Pair)


def _candidates(text: str, question: str) -> list[Field]:
    """The fields of `text`; a one-line row of exactly two fields is also a name/value pair
    (the table of a data sheet: "Item | Value"), matched by its first cell's words."""
    fields = record_fields(text)
    if len(fields) == 2 and "\n" not in text.strip():
        a, b = fields
        fields = [*fields, _Pair(a.value, b.value, a.start, b.end)]
    return fields


def _states_something(value: str, question: str) -> bool:
    """A value the question does not name; or plain words, with one the question does not
    have ("Parameter: retry" under "the ProxyPass retry parameter" is the entry's name, not
    its value), that do not send the reader elsewhere ("See usage for details")."""
    if any(occurs(v, question) is None for v in value_spans(value)):
        return True
    words = [_fold(w) for w in _WORD_RE.findall(value)]
    if not words:
        return False
    asked = {_fold(w) for w in _WORD_RE.findall(question)}
    if all(w in asked for w in words):
        return False
    return len(words) <= MAX_PLAIN_WORDS or not (POINTER_WORDS & set(words))


def _is_row(text: str) -> bool:
    """`text` is one table row read with its header: one line, two or more labelled cells."""
    return "\n" not in text.strip() and len(record_fields(text)) >= 2


def _entry_name(section: str, text: str) -> str:
    """What names the entry a passage is: its section path, and for a table row also its cells
    (a spare-parts row headed by its part number names the valve it is for in its
    description: "Safety valve, set 11.0 bar (SV-302B final stage)").

    Chosen on the plant dev split: q062 ("What is the part number of the spare safety valve
    for SV-302B?") was answered with the valve's set pressure from the data sheet, since the
    spare-parts row that answers it names SV-302B only in a cell."""
    return f"{section}\n{text}" if _is_row(text) else section


def asked_field(
    question: str,
    passages: Sequence[str],
    sections: Sequence[str],
    *,
    within: Sequence[int] | None = None,
    unnamed_min_share: float | None = None,
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
        if unnamed_min_share is None or not passages or not sections or not sections[0]:
            return None
        # No name given: the first passage is taken as the entry asked about when a sentence
        # of it (its heading counted) covers `unnamed_min_share` of the question's words.
        # (The asked field's own line does not count: "Default: ..." matches every question
        # about a default.)
        close = best_sentence(
            question,
            [passages[0]],
            headings=[sections[0]],
            min_share=unnamed_min_share,
            require=lambda s: not any(label_matches(f.label, question) for f in record_fields(s)),
        )
        if close is None:
            return None
        terms = [ValueSpan(sections[0], 0, len(sections[0]), "quoted")]
        sections = [sections[0]]
        passages = [passages[0]]
    entries = [
        _entry_name(section, text) for section, text in zip(sections, passages, strict=False)
    ]
    named = [
        i
        for i, entry in enumerate(entries, start=1)
        if (not within or i in within) and any(occurs(t, entry) is not None for t in terms)
    ]
    pointer: str | None = None  # the asked label, where its field points elsewhere
    best: tuple[tuple, int, Field] | None = None
    matching: dict[int, list[Field]] = {}  # per passage, every field the question asks for
    labelled = with_cue_labels(question)  # the question as a data sheet labels it
    for i in named:
        # The entry the question names first is the one asked about ("el puerto de pop3s,
        # la versión segura de pop3" asks for pop3s).
        names = [t for t in terms if occurs(t, entries[i - 1]) is not None]
        named_at = min((t.start for t in names), default=0)
        # Where the passage's text names what the question names first: a row that holds two
        # entries ("pop3; puerto: 110; ... pop3s; puerto: 995") gives the field after it.
        spans = [(t.start, occurs(t, passages[i - 1])) for t in terms]
        spans = sorted((at, span) for at, span in spans if span is not None)
        text_at = spans[0][1][0] if spans else 0
        after: set[str] = set()  # labels of the named entry's own fields, from `text_at` on
        for f in sorted(_candidates(passages[i - 1], question), key=lambda f: f.start):
            if not label_matches(f.label, labelled, half=_is_pair(f)):
                continue
            if _is_pair(f) and not _pair_answers(f, question):
                continue
            label = _fold(f.label)
            if not _is_pair(f) and f.start >= text_at:
                if label in after:
                    # The second field of that label after the name is the row's next
                    # entry's: "pop3; puerto: 110; ... pop3s; puerto: 995" gives pop3 no
                    # port when the question already states 110. Chosen on the Spanish dev
                    # split (e109, "... ¿desde qué puerto local se reenvía el puerto POP3
                    # (110) ...?", answered 995), with the cut in appliance.answering.prepare.
                    continue
                after.add(label)
            # The value less the entry's own name ("Default: KeepAliveTimeout 5" -> "5";
            # a row's "Code: E-47" -> "", the name, not a fact about it).
            rest = _strip_terms(f.value, terms)
            if not _states_something(rest, question):
                if rest and pointer is None:
                    pointer = f.label
                continue
            if not _is_pair(f):
                matching.setdefault(i, []).append(f)
            # A label before a two-cell row's name; then the label of most words; between
            # equals, the one the question names first (the asked thing comes in the
            # question's opening: "How much grease goes into the DE bearing" asks for "DE
            # grease", not "DE bearing"); then the entry named first; then the earlier passage.
            weight = (
                not _is_pair(f),
                len(_label_words(f.label)),
                -_first_position(f.label, labelled),
                -named_at,
                -i,
                -(f.start - text_at) if f.start >= text_at else -len(passages[i - 1]) - f.start,
            )
            if best is None or weight > best[0]:
                best = (weight, i, f)
    if best is not None:
        _, i, f = best
        start, end = _quoted_span(f, matching.get(i, []), labelled)
        return Evidence(i, start, end, passages[i - 1][start:end])
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


# A span quoted for two or more asked fields is at most this long (characters): the fields of
# one fact sheet or table row, not a page.
MAX_JOINED_SPAN = 400


def _quoted_span(f: Field, asked: Sequence[Field], question: str) -> tuple[int, int]:
    """What is quoted for the asked field `f`: `f`, widened to the other fields the question
    asks for with other words of it ("What concentration and temperature ...": both lines),
    when they stand close and the question joins the two ("and", "y", a comma between them:
    "How much grease goes into the DE bearing?" names "bearing" but asks for the quantity).

    (Tried on the dev splits and not kept: quoting a table row whole. Under strict scoring
    it lost more than it gained: the row states the neighbouring cells' values too, "DE
    quantity: 15 g; NDE quantity: 12 g", ProxyPass retry's description with its "0".)"""
    start, end = f.start, f.end
    used = {_first_position(f.label, question)}
    for g in asked:
        at = _first_position(g.label, question)
        if g is f or at in used or not _coordinated(question, min(used), at):
            continue
        s, e = min(start, g.start), max(end, g.end)
        if e - s <= MAX_JOINED_SPAN:
            start, end = s, e
            used.add(at)
    return start, end


def _pair_answers(f: Field, question: str) -> bool:
    """A two-cell row ("Item: Final stage safety valve SV-302B; Value: set pressure 11.0 bar")
    answers the question only when its name names no code or identifier the question does
    not: "What is the set pressure of the safety valve SV-302A?" is not answered by the row of
    SV-302B, however many words the two share.

    (Tried on the plant dev split and not kept: also requiring every content word of the
    question to stand in the row or its heading when the question names half the item. It
    fixed q062, a part-number question answered with the named valve's set pressure, and lost
    q018 and q030, answered right by their rows: "What glycol supply temperature does CH-401
    hold during production?")"""
    return not any(
        v.kind in ("code", "identifier") and occurs(v, question) is None
        for v in value_spans(f.label)
    )


def points_elsewhere(question: str, text: str, section: str) -> bool:
    """The entry `section` names a code or identifier of the question, and its field that the
    question asks for states nothing ("Default: See usage for details"): the value is in the
    entry's body, maybe in a later piece of it."""
    terms = [v for v in value_spans(question) if v.kind in ("code", "identifier")]
    if not any(occurs(t, section) is not None for t in terms):
        return False
    for f in record_fields(text):
        if label_matches(f.label, question):
            rest = _strip_terms(f.value, terms)
            if rest and not _states_something(rest, question):
                return True
    return False


_AND_RE = re.compile(r"\b(?:and|y|e)\b|[,;]", re.I)


def _coordinated(question: str, a: int, b: int) -> bool:
    """The question's `a`-th and `b`-th (4-letter or longer) words are joined by a coordinator
    between them: "concentration and temperature", "¿cada cuánto ... y qué ...?"."""
    spans = [m.span() for m in _WORD_RE.finditer(question) if len(m.group(0)) >= 4]
    if max(a, b) >= len(spans):
        return False
    lo, hi = sorted((a, b))
    return _AND_RE.search(question, spans[lo][1], spans[hi][0]) is not None


def _first_position(label: str, question: str) -> int:
    """Index of the first question word that one of the label's words matches."""
    words = _label_words(question)
    want = _label_words(label)
    return next((i for i, h in enumerate(words) if any(_same_word(w, h) for w in want)), 0)


def _strip_terms(value: str, terms) -> str:
    out = value
    for t in terms:
        span = occurs(t, out)
        if span is not None:
            out = (out[: span[0]] + out[span[1] :]).strip()
    return out
