"""Scoring one answer against one held-out question: facts, token F1, citations, abstention.

Test: .venv/bin/pytest tests/build/test_eval_metrics.py

A plant answer is right when it carries the right values, codes and units, whatever way the
model happens to write them. `24 N·m`, `24 Nm` and `24 N m` are one torque; `E-47`, `e47` and
`E47` one alarm code; `6,5 bar` and `6.5 bar` one pressure; `1,250 h` and `1250 h` one interval.
So both the expected fact and the answer go through the same normalisation and are compared
as token sequences:

1. Unicode NFKC (`m³` -> `m3`, `µ` -> `μ`, `℃` -> `°C`), lower case, every dash and the minus
   sign as `-`, curly quotes straight, citation markers such as `[1]` or `[2, 3]` removed.
2. Numbers: thousands separators dropped (`1,250`, `1 250` with a thin space), a decimal comma
   read as a point (`6,5`), trailing zeros and leading zeros dropped (`7.0` -> `7`, `06` -> `6`).
   A `-` directly before a digit is a sign only where no letter or digit precedes it, so
   `−3.0 °C` keeps its sign while `E-47` and `0.30–0.40` do not get one.
3. Tokens are numbers, runs of letters (letters and digits split: `e47` -> `e 47`) and the two
   symbols that change a value's meaning, `%` and `±`. Other punctuation is dropped, which is
   what makes `N·m`, `N-m` and `N m` the same.
4. Units and words with several spellings map to one: hours/hrs/hr -> `h`, `n m` after a
   number -> `nm`, degrees C/celsius -> `c`, litres -> `l`, percent -> `%`, megohm/MΩ -> `mohm`.
   A plural `s` is dropped from words longer than three letters; a few function words
   (`the`, `to`, `per`, ...) are ignored, so `0.30 to 0.40 mm` matches `0.30–0.40 mm`.

A fact is present when its tokens occur, contiguously and in order, in the answer's tokens, so a
fact matches on whole tokens only ("4 MB" is not in "64 MB", "E-4" not in "E-47").

Strict rules (issue "honest numbers"):

- **Conflicting value of the same kind.** An answer that states the expected value *and* another
  value of the same kind is wrong: "locks are blue; danger tags are red" does not answer "what
  colour are the locks?" with "red". The values of a text (`values`) are numbers with their
  unit (`24 N·m` is quantity:nm), bare numbers, codes (`E-47` is code:e, `HX-4471-B` code:hx)
  and words of a closed kind (`VALUE_WORDS`: colours, log levels). A bare expected number also
  takes the unit it carries in the answer ("5" answered as "5 seconds"). An answer value
  conflicts when its kind is one of the expected values' kinds and its value is neither
  expected, nor in the question, nor in the reference answer (which names the context values
  an answer may legitimately repeat, such as the 12 N·m first stage before the 24 N·m final
  torque). Version numbers (`2.4.53`, `HTTP/1.1`), identifiers glued to letters (`H2`,
  `SSLv3`) and manual page sections (`namespaces(7)`) are not numbers.
- **An abstention asserts nothing else.** A "not in the documents" sentence or paraphrase counts
  only when the answer states no value that is not already in the question: "The documents do
  not mention the price, but the seal costs 450 EUR." is an answer (a hallucinated one), not an
  abstention.

Abstention counts the service's flag (retrieval scored under the threshold), the appliance's own
sentence (`appliance.prompting.NOT_IN_DOCUMENTS`, or any language's generic one such as "Los
documentos no tratan esta pregunta.") and paraphrases of it in English and Spanish ("the
documents do not mention ...", `NOT_IN_DOCUMENTS_PATTERNS`). A model asked without retrieval has
no passages and no sentence to say, so for those modes clear "I don't know"-style refusals count
too (`REFUSAL_PATTERNS`, "no lo sé" included). `abstention_kind` says which of these applied.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from appliance.grounding import CITATION_MARKER_RE
from appliance.prompting import NOT_IN_DOCUMENTS, abstain_sentences

# --------------------------------------------------------------------------------------------
# Normalisation

# One definition of a citation marker for the service's check and the scorer.
_CITATION = CITATION_MARKER_RE
_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"), "-")
_QUOTES = {ord("\u2018"): "'", ord("\u2019"): "'", ord("\u201c"): '"', ord("\u201d"): '"'}
# Thin and narrow no-break spaces used as thousands separators (NFKC would make them spaces).
_THIN_THOUSANDS = re.compile(r"(?<=\d)[\u2009\u202f\u00a0](?=\d{3}(?!\d))")
_COMMA_THOUSANDS = re.compile(r"(?<!\d)(\d{1,3})((?:,\d{3})+)(?!\d|,\d)")
_DECIMAL_COMMA = re.compile(r"(?<=\d),(?=\d)")
_PLUS_MINUS = re.compile(r"\+\s*/\s*-|\bplus or minus\b")
_MINUS_WORD = re.compile(r"\bminus\s+(?=\d)")
_TOKEN = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?|\d+(?:\.\d+)?|[^\W\d_]+|[%±]")

# Ignored when matching facts and computing F1: they carry no value, and answers vary in them.
STOPWORDS = frozenset(
    "a an the of to and or is are was were be been it its this that these those at per in on "
    "for by with from as into than then".split()
)

# One spelling per unit or word (after lower case and plural stripping).
UNIT_ALIASES = {
    "hour": "h",
    "hr": "h",
    "hrs": "h",
    "minute": "min",
    "mins": "min",
    "second": "s",
    "sec": "s",
    "secs": "s",
    "litre": "l",
    "liter": "l",
    "percent": "%",
    "celsius": "c",
    "mω": "mohm",
    "megohm": "mohm",
    "megaohm": "mohm",
    "newton": "n",
    "metre": "m",
    "meter": "m",
    "millimetre": "mm",
    "millimeter": "mm",
    "kilowatt": "kw",
}
_DEGREE_WORDS = frozenset({"degree", "deg"})


def strip_citations(text: str) -> str:
    """Remove [n] / [n, m] markers (they are scored separately, not as content)."""
    return _CITATION.sub(" ", text)


def _canonical_number(raw: str) -> str:
    sign = "-" if raw.startswith("-") else ""
    body = raw.lstrip("-")
    whole, _, frac = body.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    number = f"{whole}.{frac}" if frac else whole
    return number if number == "0" else sign + number


def normalize_text(text: str) -> str:
    """Steps 1-2 of the module docstring: the text, normalised, before tokenisation."""
    text = _THIN_THOUSANDS.sub("", text)
    text = unicodedata.normalize("NFKC", text).translate(_DASHES).translate(_QUOTES).lower()
    text = strip_citations(text)
    text = _PLUS_MINUS.sub(" ± ", text)
    text = _MINUS_WORD.sub("-", text)
    text = _COMMA_THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), text)
    text = _DECIMAL_COMMA.sub(".", text)
    return text


def _is_number(token: str) -> bool:
    return token[:1].isdigit() or (token[:1] == "-" and token[1:2].isdigit())


def _word(token: str) -> str:
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        token = token[:-1]
    return UNIT_ALIASES.get(token, token)


def tokens(text: str) -> list[str]:
    """Normalised content tokens (steps 1-4): what facts and F1 are computed on."""
    out: list[str] = []
    for raw in _TOKEN.findall(normalize_text(text)):
        if _is_number(raw):
            out.append(_canonical_number(raw))
            continue
        tok = _word(raw)
        if tok in STOPWORDS:
            continue
        # "24 N m", "24 N·m", "24 newton metres" -> "24 nm"
        if tok == "m" and out and out[-1] == "n" and len(out) >= 2 and _is_number(out[-2]):
            out[-1] = "nm"
            continue
        # "85 degrees C", "85 deg. celsius" -> "85 c"
        if tok == "c" and out and out[-1] in _DEGREE_WORDS:
            out[-1] = "c"
            continue
        out.append(tok)
    return out


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    if n == 0:
        return False
    first = needle[0]
    return any(
        haystack[i] == first and list(haystack[i : i + n]) == list(needle)
        for i in range(len(haystack) - n + 1)
    )


def fact_present(fact: str, answer: str) -> bool:
    """True when the fact's normalised tokens occur in order, contiguously, in the answer."""
    return _contains(tokens(answer), tokens(fact))


def match_facts(facts: Iterable[str], answer: str) -> tuple[list[str], list[str]]:
    """(found, missing) expected facts, each list in the given order."""
    answer_tokens = tokens(answer)
    found, missing = [], []
    for fact in facts:
        (found if _contains(answer_tokens, tokens(fact)) else missing).append(fact)
    return found, missing


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 on normalised content tokens (bag of tokens)."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------------------------
# Values: what an answer asserts (for the conflicting-value and abstention rules)

# Units after normalisation (`tokens`): a number followed by one of these is a quantity.
UNITS = frozenset(
    "mm cm m km nm μm um in ft g kg t mg l ml bar mbar kpa pa mpa psi c f k % h min s ms μs us "
    "hz khz mhz rpm w kw mw v kv a ma va kva mohm ohm kb mb gb tb kib mib gib byte kbyte mbyte "
    "bit day week month year m3 m3h lmin".split()
)
# Closed kinds of words: two different members of one kind are two different values.
VALUE_WORDS: dict[str, frozenset[str]] = {
    "colour": frozenset(
        "red blue green yellow orange black white grey gray brown purple violet pink".split()
    ),
    "log level": frozenset(
        "emerg alert crit error warn notice info debug trace1 trace2 trace3 trace4 trace5 "
        "trace6 trace7 trace8".split()
    ),
}
_WORD_KIND = {w: kind for kind, words in VALUE_WORDS.items() for w in words}
_RAW_TOKEN = re.compile(r"-?\d+(?:\.\d+)?|[^\W\d_]+|[%±]")


@dataclass(frozen=True)
class Value:
    """One value a text states: `kind` ("quantity:<unit>", "number", "code:<prefix>",
    "word:<kind>") and its canonical `value`."""

    kind: str
    value: str


def values(text: str) -> list[Value]:
    """The values a text states, in order (see the module docstring)."""
    norm = normalize_text(text)
    raw = [(m.group(), m.start(), m.end()) for m in _RAW_TOKEN.finditer(norm)]
    out: list[Value] = []
    words = [_word(t) if not _is_number(t) else t for t, _, _ in raw]
    for i, (tok, start, end) in enumerate(raw):
        before = norm[start - 1] if start else " "
        after = norm[end : end + 2]
        if _is_number(tok):
            number = tok
            # the sign of "-1" is kept only after a space or an opening mark (tokens() rules)
            if number.startswith("-") and before.isalnum():
                number = number[1:]
                before = "-"
            glued = i > 0 and raw[i - 1][2] == start and not _is_number(raw[i - 1][0])
            dashed = (
                before == "-"
                and i > 0
                and raw[i - 1][2] == start - 1
                and not _is_number(raw[i - 1][0])
                and len(raw[i - 1][0]) <= 4
            )
            if glued or dashed:  # E-47, HX-4471, H2, SSLv3: an identifier, a code
                prefix = raw[i - 1][0]
                out.append(Value(f"code:{prefix}", f"{prefix}{_canonical_number(number)}"))
                continue
            if before in "./" or (after[:1] == "." and after[1:2].isdigit()):
                continue  # 2.4.53, HTTP/1.1: a version or a path, not a value
            if (
                before == "("
                and after[:1] == ")"
                and len(number) == 1
                and start >= 2
                and norm[start - 2].isalpha()
            ):
                continue  # namespaces(7), depmod(8): a manual page's section, not a value
            unit = None
            j = i + 1
            k = j + 1 if j < len(raw) and raw[j][0] == "to" else j
            if k < len(raw) and _is_number(raw[k][0]):
                gap = norm[end : raw[k][1]].strip()
                if k > j or gap == "-" or (not gap and raw[k][0].startswith("-")):
                    j = k + 1  # a range: 0.30-0.40 mm, 0.30 to 0.40 mm; both ends take the unit
            if j < len(raw) and not _is_number(raw[j][0]):
                w = words[j]
                if w == "n" and j + 1 < len(raw) and words[j + 1] == "m":
                    w = "nm"
                if w in _DEGREE_WORDS and j + 1 < len(raw) and words[j + 1] == "c":
                    w = "c"
                if w in UNITS:
                    unit = w
            canon = _canonical_number(number)
            out.append(Value(f"quantity:{unit}" if unit else "number", canon))
        else:
            kind = _WORD_KIND.get(tok)
            if kind is not None:
                out.append(Value(f"word:{kind}", tok))
    return out


def conflicting_values(
    answer: str, expected_facts: Iterable[str], *, question: str = "", reference: str = ""
) -> list[str]:
    """Values the answer states that conflict with the expected ones: same kind, a different
    value, and not named by the question or the reference answer. Empty when there are none."""
    expected = [v for f in expected_facts for v in values(f)]
    if not expected:
        return []
    stated = values(answer)
    allowed = {v.value for v in expected} | {v.value for v in values(question)}
    allowed |= {v.value for v in values(reference)}
    kinds = {v.kind for v in expected}
    # a bare expected number takes the unit it carries in the answer ("5" -> "5 seconds")
    bare = {v.value for v in expected if v.kind == "number"}
    kinds |= {v.kind for v in stated if v.value in bare}
    conflicts: list[str] = []
    for v in stated:
        if v.kind in kinds and v.value not in allowed and v.value not in conflicts:
            conflicts.append(v.value)
    return conflicts


def asserted_values(text: str, question: str = "") -> list[str]:
    """The values a text states that the question did not already name."""
    asked = {v.value for v in values(question)}
    seen: list[str] = []
    for v in values(text):
        if v.value not in asked and v.value not in seen:
            seen.append(v.value)
    return seen


# --------------------------------------------------------------------------------------------
# Abstention

# Paraphrases of the appliance's sentence: the model says the documents do not have the answer,
# in its own words ("The plant documents do not provide the torque ..."). Counted in every mode:
# that is the "not in the documents" the evaluation asks for, worded differently.
NOT_IN_DOCUMENTS_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"\b(?:the )?(?:plant |provided |given |available |these |above )?(?:documents?|passages?|"
        r"context|manuals?|sources?) (?:do|does|did) not (?:cover|contain|mention|include|specify|"
        r"say|state|provide|give|list|have|answer)",
        r"\b(?:is|are|was|were) not (?:mentioned|covered|found|given|specified|stated|available|"
        r"included|listed|provided) in the (?:plant |provided |given |available )?(?:documents?|"
        r"passages?|context|manuals?|sources?)",
        r"\bno (?:information|data|details|mention) (?:about|on|of|regarding)? ?.{0,80}?in the "
        r"(?:plant |provided |given )?(?:documents?|passages?|context|manuals?)",
        # Spanish: "los documentos no tratan / no mencionan ...", "no se menciona en los pasajes"
        r"\b(?:documentos?|pasajes?|manual(?:es)?|textos?|fuentes?|contexto) (?:de la planta |"
        r"proporcionados? |dados? )?no (?:tratan?|contienen?|mencionan?|incluyen?|indican?|dicen?|"
        r"especifican?|cubren?|responden?|dan?|recogen?)\b",
        r"\bno (?:se )?(?:menciona|trata|indica|especifica|encuentra|aparece|recoge)n? en (?:los |"
        r"el |las )?(?:documentos?|pasajes?|manual|textos?|fuentes?)",
        r"\bno hay (?:informaci[oó]n|datos|menci[oó]n) .{0,80}?en (?:los |el |las )?(?:documentos?|"
        r"pasajes?|manual|textos?|fuentes?)",
    )
)

# The appliance's own abstention sentences: the plant's and each language's generic one ("Los
# documentos no tratan esta pregunta."), so a Spanish answer that says it counts as one.
ABSTAIN_SENTENCES: tuple[str, ...] = (NOT_IN_DOCUMENTS, *abstain_sentences())

# Clear first-person refusals ("I don't know"-style). A model asked without retrieval has no
# passages and so no sentence of its own to say: for those modes these count as abstentions.
# Each needs a first-person or "no information" statement, so an answer that merely mentions
# something "unknown" does not count.
REFUSAL_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"\bi (?:do not|don't|did not|didn't) (?:know|have (?:that|this|the|any|enough|access|"
        r"information|specific|details|data))",
        r"\bi(?: am|'m) (?:not sure|unsure|not certain|not able to|unable to)",
        r"\bi (?:cannot|can't|can not|could not|couldn't|am unable to) "
        r"(?:answer|find|provide|say|tell|determine|help with|confirm)",
        r"\b(?:i have|there is|there's) no (?:information|data|record|details|knowledge|mention)",
        r"\bno (?:information|data|details) (?:is |are )?(?:available|provided|given)",
        r"\b(?:unknown|not known) to me\b",
        # Spanish: "no lo sé", "no tengo información", "no puedo responder"
        r"\bno (?:lo )?sé\b",
        r"\bno (?:tengo|dispongo de|hay) (?:informaci[oó]n|datos)\b",
        r"\bno (?:puedo|podr[ií]a) (?:responder|saber|decir|determinar|confirmar|encontrar)\b",
    )
)

ABSTENTION_KINDS = ("service", "sentence", "paraphrase", "refusal")


def _plain(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).translate(_QUOTES).lower().split())


def says_not_in_documents(text: str, message: str | None = None) -> bool:
    """The appliance's abstention sentence is in the text (case and spacing aside): `message`,
    or else any of the appliance's own sentences (`ABSTAIN_SENTENCES`, every language)."""
    plain = _plain(text)
    messages = ABSTAIN_SENTENCES if message is None else (message,)
    return any(_plain(m).rstrip(".") in plain for m in messages)


def paraphrases_not_in_documents(text: str) -> bool:
    """The text says, in other words, that the documents do not hold the answer."""
    plain = _plain(text)
    return any(p.search(plain) for p in NOT_IN_DOCUMENTS_PATTERNS)


def is_refusal(text: str) -> bool:
    """A clear "I don't know"-style refusal (REFUSAL_PATTERNS or NOT_IN_DOCUMENTS_PATTERNS)."""
    plain = _plain(text)
    return any(p.search(plain) for p in REFUSAL_PATTERNS) or paraphrases_not_in_documents(text)


def abstention_kind(
    text: str, *, service_flag: bool = False, use_retrieval: bool = True, question: str = ""
) -> str | None:
    """How an answer declined, or None when it did not:
    "service"    the service abstained (retrieval scored under the threshold, no passages);
    "sentence"   the model said one of the appliance's sentences (ABSTAIN_SENTENCES, any language);
    "paraphrase" the model said the documents do not hold the answer, in other words;
    "refusal"    (modes without retrieval only) a clear "I don't know"-style refusal.
    A model's sentence, paraphrase or refusal counts only when the answer asserts nothing else:
    a value the question did not name (`asserted_values`) makes it an answer."""
    if service_flag:
        return "service"
    if says_not_in_documents(text):
        kind = "sentence"
    elif paraphrases_not_in_documents(text):
        kind = "paraphrase"
    elif not use_retrieval and is_refusal(text):
        kind = "refusal"
    else:
        return None
    return None if asserted_values(text, question) else kind


def detect_abstention(
    text: str, *, service_flag: bool = False, use_retrieval: bool = True, question: str = ""
) -> bool:
    """Did the answer decline (and assert nothing else)? See `abstention_kind`."""
    kind = abstention_kind(
        text, service_flag=service_flag, use_retrieval=use_retrieval, question=question
    )
    return kind is not None


# --------------------------------------------------------------------------------------------
# Citations

_SLUG = re.compile(r"[^a-z0-9]+")


def document_key(name: str) -> str:
    """A document's comparable name: `docs/Pump-Maintenance_Manual.md#4.2` and the title
    `Pump maintenance manual` both give `pump-maintenance-manual`."""
    name = str(name).split("#", 1)[0].split(" > ", 1)[0].strip().replace("\\", "/")
    base = PurePosixPath(name).name if "/" in name else name
    stem, dot, ext = base.rpartition(".")
    if dot and stem and 1 <= len(ext) <= 5 and ext.isalnum() and not ext.isdigit():
        base = stem
    return _SLUG.sub("-", base.lower()).strip("-")


def expected_sources(source: str | Sequence[str] | None) -> list[str]:
    """The expected documents of a question (`source` may be one name, a list, or empty)."""
    if source is None:
        return []
    items = [source] if isinstance(source, str) else list(source)
    return [k for k in (document_key(s) for s in items if s) if k]


def citation_correct(cited: Sequence[Sequence[str]], source: str | Sequence[str] | None) -> bool:
    """True when at least one cited passage comes from an expected document. Each element of
    `cited` lists the names one cited passage is known by (its path and its title)."""
    wanted = set(expected_sources(source))
    return any(wanted & {document_key(n) for n in names if n} for names in cited)


def citation_precision(
    cited: Sequence[Sequence[str]], source: str | Sequence[str] | None
) -> float | None:
    """Share of cited passages from an expected document (None when nothing was cited)."""
    if not cited:
        return None
    wanted = set(expected_sources(source))
    hits = sum(bool(wanted & {document_key(n) for n in names if n}) for names in cited)
    return hits / len(cited)


# --------------------------------------------------------------------------------------------
# One answer, scored

# correct: all facts and no conflicting value (answerable) or abstained (unanswerable);
# conflicting: all facts, but also another value of the same kind (counts as wrong);
# partial: some facts; wrong: none; abstained: declined an answerable question;
# hallucinated: answered an unanswerable one; error: no answer at all (e.g. the prompt did
# not fit the context).
VERDICTS = ("correct", "conflicting", "partial", "wrong", "abstained", "hallucinated", "error")


@dataclass
class AnswerScore:
    """The metrics of one answer to one question (None: does not apply)."""

    answerable: bool
    abstained: bool
    facts_found: list[str] = field(default_factory=list)
    facts_missing: list[str] = field(default_factory=list)
    fact_recall: float | None = None
    all_facts: bool | None = None
    token_f1: float | None = None
    conflicting: list[str] = field(default_factory=list)
    cited: bool | None = None
    citation_correct: bool | None = None
    citation_precision: float | None = None
    # the same, counting only the markers the model wrote itself (None: nothing to judge)
    model_citation_correct: bool | None = None
    appended_citation: bool | None = None  # the appliance appended the markers
    verdict: str = "wrong"

    @property
    def handled_correctly(self) -> bool:
        """Answerable: every fact present, no abstention. Unanswerable: abstained."""
        return self.verdict == "correct"


# Answerable questions without expected facts fall back to token F1 against the reference.
F1_CORRECT_WITHOUT_FACTS = 0.5


def score_answer(
    *,
    text: str,
    answerable: bool,
    expected_facts: Sequence[str],
    reference_answer: str,
    abstained: bool,
    use_retrieval: bool,
    cited: Sequence[Sequence[str]] = (),
    source: str | Sequence[str] | None = None,
    model_cited: Sequence[Sequence[str]] | None = None,
    question: str = "",
) -> AnswerScore:
    """Score one answer. `abstained` is the result of `detect_abstention` for it. `cited` are
    all cited passages; `model_cited` those whose markers the model wrote itself (None: not
    known, then every citation counts as the model's)."""
    score = AnswerScore(answerable=answerable, abstained=abstained)
    if not answerable:
        score.verdict = "correct" if abstained else "hallucinated"
        return score
    found, missing = (
        match_facts(expected_facts, text) if not abstained else ([], list(expected_facts))
    )
    score.facts_found, score.facts_missing = found, missing
    if not abstained and not missing:
        score.conflicting = conflicting_values(
            text, expected_facts, question=question, reference=reference_answer
        )
    if expected_facts:
        score.fact_recall = len(found) / len(expected_facts)
        score.all_facts = not missing
    score.token_f1 = (
        0.0 if abstained else token_f1(text, reference_answer or " ".join(expected_facts))
    )
    if use_retrieval:
        score.cited = bool(cited)
        score.citation_correct = (
            citation_correct(cited, source) if expected_sources(source) else None
        )
        score.citation_precision = (
            citation_precision(cited, source) if expected_sources(source) else None
        )
        if not abstained and expected_sources(source):
            own = list(cited) if model_cited is None else list(model_cited)
            score.model_citation_correct = citation_correct(own, source)
            score.appended_citation = bool(cited) and model_cited is not None and not own
    if abstained:
        score.verdict = "abstained"
    elif expected_facts:
        if missing:
            score.verdict = "partial" if found else "wrong"
        else:
            score.verdict = "conflicting" if score.conflicting else "correct"
    else:
        score.verdict = "correct" if score.token_f1 >= F1_CORRECT_WITHOUT_FACTS else "wrong"
    return score
