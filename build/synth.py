"""`expert synth`: verified question/answer pairs from an ingested index, for RAG-aware training.

Run: expert synth --index DIR [--embedder DIR] --out DIR [--bundle DIR] [--teacher LLM_DIR]
                  [--generative N] [--holdout EVAL.jsonl ...] [--unanswerable 0.1]
Test: .venv/bin/pytest tests/build/test_synth.py

A new corpus has no hand-written training pairs. This command makes them from the documents:

- structured pairs: chunks that name a thing and give its values -- "Key: value" lines (the
  Syntax / Default / Context box of a directive, the Meaning / Escalation lines of an alarm),
  table rows ("Code: E-25; Class: A; Setpoint: < 65 %", "Item: Duty point; Value: 40 m3/h"),
  definition entries ("Off: A request will only be accepted ...") and two-column rows
  ("%{name}n | Request note name"). Each becomes template questions in several phrasings (in
  Spanish and English where the document is Spanish), the exact value as the answer and the
  chunk as evidence;
- generative pairs: a teacher model (`--teacher`, an exported ONNX model folder; by default the
  bundle's own model) reads one chunk and writes {"question", "answer", "evidence"} as JSON;
  output that is not valid JSON of that shape is retried (`--retries`) with sampling;
- unanswerable pairs: a share (`--unanswerable`) of questions about entities that do not exist
  in the corpus -- a code or tag one number off (E-47 -> E-48), a name with one part swapped
  (KeepAliveTimeout -> KeepAliveLimit) -- answered with the bundle's abstention sentence.

Every pair is verified before it is kept, in this order, and the first failed check is the
reason it is dropped:
1. grounding: every value of the answer occurs in the evidence chunk (appliance.grounding,
   the service's own check), and a generative pair's evidence is copied from the chunk;
2. holdout: the question is not a near-duplicate of an evaluation question of any split
   (word overlap >= HOLDOUT_JACCARD), and it does not ask for the same fact (it names the
   same code or identifier, or its evidence chunk is one the eval question retrieves, and its
   answer holds the eval question's expected value);
3. near-duplicates: a question whose words overlap an already kept one by >= NEAR_DUP_JACCARD
   and names the same values is dropped;
4. round trip: the question, asked to the index, retrieves its evidence chunk in the top k.

Outputs in --out: pairs.jsonl (kept; chat format that `expert train --data` reads, with
"source" and a "synth" record per line), dropped.jsonl (with "reason"), report.json and
report.md (summary table, the holdout overlap, and samples of kept and dropped pairs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.common.fsutil import atomic_file, atomic_write_text
from appliance.errors import UserFacingError
from appliance.grounding import check, occurs, value_spans

log = logging.getLogger(__name__)

# Thresholds. Chosen by reading the pairs of the plant and the Apache manual (no eval question
# was used): at 0.9 within the set, only re-phrasings of one template about one entity collide;
# against eval questions 0.6 catches paraphrases with one or two words changed.
NEAR_DUP_JACCARD = 0.9
HOLDOUT_JACCARD = 0.6
ROUND_TRIP_K = 5  # the evaluation's and the service's default number of passages
MAX_VALUE_CHARS = 160  # a longer value is a paragraph, not an entry's value
MAX_KEY_WORDS = 3
PHRASINGS_PER_ENTRY = 2
EMBED_BATCH = 32

KINDS = ("structured", "generative", "unanswerable")

# --- templates -------------------------------------------------------------------------------

QUESTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "field": (
            "What is the {field} of {entity}?",
            "What {field} does {entity} have?",
            "{entity}: what is its {field}?",
            "Which {field} is given for {entity}?",
            "Tell me the {field} of {entity}.",
        ),
        "meaning": (
            "What does {term} mean for {entity}?",
            "What is {term} in {entity}?",
            "In {entity}, what does {term} do?",
        ),
    },
    "es": {
        "field": (
            "¿Cuál es el valor de {field} de {entity}?",
            "¿Qué {field} tiene {entity}?",
            "{entity}: ¿cuál es su {field}?",
            "Indique {field} de {entity}.",
        ),
        "meaning": (
            "¿Qué significa {term} en {entity}?",
            "¿Qué es {term} en {entity}?",
        ),
    },
}
ANSWERS: dict[str, dict[str, str]] = {
    "en": {"field": "The {field} of {entity} is {value}.", "meaning": "{entity} {term}: {value}"},
    "es": {"field": "{field} de {entity}: {value}.", "meaning": "{entity} {term}: {value}"},
}

_STOP = {
    "es": {"de", "la", "el", "los", "las", "que", "para", "con", "por", "una", "del", "se", "en"},
    "en": {"the", "of", "and", "to", "is", "for", "with", "a", "in", "be", "this", "are"},
}

_SENTENCE_WORDS = set().union(*_STOP.values()) | {"this", "these", "that", "it", "you", "if"}
# Words that make a heading a clause rather than a name (see `sentence_like`): verbs,
# negations and pronouns, English and Spanish.
_CLAUSE_WORDS = {
    *("is", "are", "was", "be", "do", "does", "not", "will", "can", "should", "must"),
    *("you", "your", "we", "it", "this", "these", "that", "if"),
    *("es", "son", "no", "debe", "puede", "usted", "hay"),
}

TEACHER_SYSTEM = (
    "You write one exam question about a passage. Reply with JSON only, on one line: "
    '{"question": "...", "answer": "...", "evidence": "..."}. The question asks for one value '
    "stated in the passage (a number, a name, a setting). The answer is one short sentence with "
    "that value. The evidence is one sentence copied exactly from the passage."
)


# --- data ------------------------------------------------------------------------------------


@dataclass
class Chunk:
    chunk_id: str
    path: str
    title: str
    section: str
    text: str


@dataclass
class Entry:
    """A named thing with one value, read from one line of a chunk."""

    entity: str
    field: str  # "Default", "Setpoint"; for kind "meaning": the term being defined
    value: str
    kind: str  # "field" | "meaning"
    line: str  # the line of the chunk that holds it (the evidence)


@dataclass
class Pair:
    id: str
    kind: str  # structured | generative | unanswerable
    question: str
    answer: str
    lang: str
    chunk_id: str | None
    path: str | None
    evidence: str | None
    entity: str | None = None
    field: str | None = None
    value: str | None = None
    template: str | None = None
    status: str = "candidate"
    reason: str | None = None
    round_trip_rank: int | None = None
    detail: dict = dataclasses.field(default_factory=dict)

    def chat(self) -> dict:
        record: dict[str, Any] = {
            "messages": [
                {"role": "user", "content": self.question},
                {"role": "assistant", "content": self.answer},
            ],
            "synth": {
                k: v
                for k, v in asdict(self).items()
                if k not in ("question", "answer", "status", "reason", "path") and v is not None
            },
        }
        if self.path and self.kind != "unanswerable":
            record["source"] = self.path
        if self.reason:
            record["reason"] = self.reason
        return record


# --- reading chunks --------------------------------------------------------------------------


def read_chunks(retriever) -> list[Chunk]:
    out = []
    for doc in retriever.documents():
        for p in retriever.passages_of_path(doc["path"]):
            out.append(Chunk(p.chunk_id, p.path, p.title, p.section, p.text))
    return out


def document_language(texts: Iterable[str]) -> str:
    """'es' when Spanish function words outnumber English ones, else 'en'."""
    counts = Counter()
    for text in texts:
        for w in re.findall(r"[^\W\d_]+", text.lower()):
            for lang, words in _STOP.items():
                if w in words:
                    counts[lang] += 1
    return "es" if counts["es"] > counts["en"] else "en"


_DIRECTIVE_SUFFIX = re.compile(r"\s+(directive|directiva|section|sección)$", re.IGNORECASE)
_KEY_LINE = re.compile(r"^\s*([^\W\d_][^:;|\n]{0,40}?)\s*:\s+(\S.*?)\s*$")
_CODE_HEAD = re.compile(r"^\s*([A-Z]{1,5}-\d{1,5}(?:-[A-Z0-9]+)?)\b")


_LABELLED_SENTENCE = re.compile(r"^\S{1,20}:\s+(?:\S+\s+){3,}\S")


def sentence_like(name: str) -> bool:
    """A heading or row name that is a sentence, not the name of a thing: "E: Worker is in an
    error state.", "Do not combine key and certificate in one file". Asked about as an entity
    ("What is the parameter of E: Worker is in an error state.?") it makes a question nobody
    asks. Signs: it ends like a sentence, it is a label followed by four or more words, or it
    has three or more words one of which is a verb, pronoun or negation (`_CLAUSE_WORDS`).
    Noun phrases stay names: "Start-up of the cooling water pump", "Configuración de la red",
    "ServerTokens Full (or not specified)", "HTTP/0.9, HTTP/1.0, and HTTP/1.1"."""
    name = name.strip()
    if name.endswith((".", "!", "?")) or _LABELLED_SENTENCE.match(name):
        return True
    # a parenthetical is a remark on the name: "ServerTokens Full (or not specified)"
    words = [w.lower().strip(",;:") for w in re.sub(r"\([^)]*\)", " ", name).split()]
    return len(words) >= 3 and any(w in _CLAUSE_WORDS for w in words)


def entity_of(section: str, title: str) -> str | None:
    """The thing a chunk is about: its last heading, shortened to a code or a name. A last
    heading that is a sentence (`sentence_like`) names no entity: None."""
    parts = [p.strip() for p in section.split(" > ") if p.strip()]
    if not parts:
        return None
    for part in reversed(parts):
        m = _CODE_HEAD.match(part)
        if m:
            return m.group(1)
        name = _DIRECTIVE_SUFFIX.sub("", part.split(" — ")[0].strip())
        name = re.sub(r"^\d+(?:\.\d+)*\.?\s+", "", name)  # "2.2 P-102 Line A ..." numbering
        m = _CODE_HEAD.match(name)
        if m:
            return m.group(1)
        if name and sentence_like(name):
            return None
        if name and len(name) <= 60 and name.lower() not in ("see also", "summary", "examples"):
            return name
    return None


def _parent_entity(section: str) -> str | None:
    parts = [p.strip() for p in section.split(" > ") if p.strip()]
    return entity_of(" > ".join(parts[:-1]), "") if len(parts) > 1 else None


def _is_key(key: str) -> bool:
    words = key.split()
    return (
        0 < len(words) <= MAX_KEY_WORDS
        and key[:1].isupper()  # a label ("Default", "Setpoint"), not a sentence's "there:"
        and not any(w.lower() in _SENTENCE_WORDS for w in words)  # "This directive controls:"
        and not key.endswith((".", ","))
        and not re.search(r"https?$|[()\[\]{}\"'=<>]", key)
    )


def _logical_lines(text: str) -> list[str]:
    """Lines with wrapped continuations joined: a line that is not itself "Key: value", a
    record or a table row continues the line before it, within one paragraph."""
    out: list[str] = []
    joinable = False
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if not line:
            joinable = False
            continue
        starts_entry = bool(_KEY_LINE.match(line)) or " | " in line
        if out and joinable and not starts_entry:
            out[-1] = f"{out[-1]} {line}"
        else:
            out.append(line)
            joinable = bool(_KEY_LINE.match(line)) and " | " not in line
    return out


def entries_of(chunk: Chunk) -> list[Entry]:
    """Name/value entries of one chunk (see the module docstring for the shapes read)."""
    entity = entity_of(chunk.section, chunk.title)
    last = chunk.section.split(" > ")[-1].strip() if chunk.section else ""
    out: list[Entry] = []
    for line in _logical_lines(chunk.text):
        # Table row as a record: "K1: v1; K2: v2; ..."
        parts = [p.strip() for p in line.split("; ")]
        pairs = [_KEY_LINE.match(p) for p in parts]
        if len(parts) >= 2 and all(pairs):
            kv = [(m.group(1).strip(), m.group(2).strip()) for m in pairs]  # type: ignore[union-attr]
            if not all(_is_key(k) for k, _ in kv):
                continue
            keys = [k.lower() for k, _ in kv]
            if len(kv) == 2 and keys[1] in ("value", "valor", "setting", "ajuste") and entity:
                out.append(Entry(entity, kv[0][1], kv[1][1], "field", line))
                continue
            row_name = kv[0][1]
            m = _CODE_HEAD.match(row_name)
            row_entity = m.group(1) if m else row_name
            if len(row_entity) > 60 or sentence_like(row_entity):
                continue
            for k, v in kv[1:]:
                out.append(Entry(row_entity, k, v, "field", line))
            continue
        # Two-column row without a header: "name | description"
        if " | " in line:
            cells = [c.strip() for c in line.split(" | ")]
            term_ok = len(cells[0]) <= 25 and len(cells[0].split()) <= 3 and ":" not in cells[0]
            if len(cells) == 2 and all(cells) and term_ok and entity:
                owner = _parent_entity(chunk.section) or entity
                out.append(Entry(owner, cells[0], cells[1], "meaning", line))
            continue
        # "Key: value" line
        m = _KEY_LINE.match(line)
        if m and _is_key(m.group(1)) and entity:
            key, value = m.group(1).strip(), m.group(2).strip()
            if key == last and _parent_entity(chunk.section):
                # a definition entry: the heading is the term, its parent the owner
                out.append(Entry(_parent_entity(chunk.section), key, value, "meaning", line))  # type: ignore[arg-type]
            else:
                out.append(Entry(entity, key, value, "field", line))
    return [e for e in out if e.value and len(e.value) <= MAX_VALUE_CHARS and e.entity]


def _field_words(field_name: str) -> str:
    """'Default' -> 'default'; keep 'VFD speed', 'MaxClients' as written."""
    if any(c.isupper() for c in field_name[1:]) or any(c.isdigit() for c in field_name):
        return field_name
    return field_name[:1].lower() + field_name[1:]


def structured_pairs(chunks: Sequence[Chunk], langs_of: dict[str, list[str]], rng) -> list[Pair]:
    pairs: list[Pair] = []
    for chunk in chunks:
        for entry in entries_of(chunk):
            for lang in langs_of.get(chunk.path, ["en"]):
                templates = QUESTIONS[lang][entry.kind]
                chosen = rng.sample(range(len(templates)), min(PHRASINGS_PER_ENTRY, len(templates)))
                fw = _field_words(entry.field)
                answer = ANSWERS[lang][entry.kind].format(
                    field=fw, entity=entry.entity, term=entry.field, value=entry.value
                )
                if entry.kind == "field" and entry.value.endswith("."):
                    answer = answer[:-1]  # the value ends the sentence itself ("... NTU.", "...")
                if entry.kind == "field":
                    answer = answer[:1].upper() + answer[1:]
                for t in chosen:
                    q = templates[t].format(field=fw, entity=entry.entity, term=entry.field)
                    pairs.append(
                        Pair(
                            id="",
                            kind="structured",
                            question=q[:1].upper() + q[1:],
                            answer=answer,
                            lang=lang,
                            chunk_id=chunk.chunk_id,
                            path=chunk.path,
                            evidence=entry.line,
                            entity=entry.entity,
                            field=entry.field,
                            value=entry.value,
                            template=f"{lang}:{entry.kind}:{t}",
                        )
                    )
    return pairs


# --- generative pairs ------------------------------------------------------------------------


def parse_teacher_json(text: str) -> dict[str, str]:
    """The teacher's {"question", "answer", "evidence"}; raises ValueError naming the problem."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the output")
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"bad JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError("the JSON is not an object")
    out = {}
    for key in ("question", "answer", "evidence"):
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"missing or empty {key!r}")
        if len(value) > 400:
            raise ValueError(f"{key!r} is longer than 400 characters")
        out[key] = " ".join(value.split())
    if len(out["question"]) < 8:
        raise ValueError("the question is too short")
    return out


def _fold(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def generative_pairs(
    chunks: Sequence[Chunk],
    generator,
    n: int,
    retries: int,
    rng,
    progress,
) -> tuple[list[Pair], dict]:
    """Up to `n` chunks with values, one teacher call each (plus retries on invalid JSON)."""
    from appliance.generation import GenerationParams

    eligible = [c for c in chunks if any(v.kind != "quoted" for v in value_spans(c.text))]
    picked = rng.sample(eligible, min(n, len(eligible)))
    stats = {"chunks": len(picked), "calls": 0, "invalid_json": 0, "seconds": 0.0}
    pairs: list[Pair] = []
    started = time.perf_counter()
    for chunk in progress(picked, desc="teacher", unit="chunk"):
        head = " > ".join(x for x in (chunk.title, chunk.section) if x)
        messages = [
            {"role": "system", "content": TEACHER_SYSTEM},
            {"role": "user", "content": f"Passage ({head}):\n{chunk.text}\n\nJSON:"},
        ]
        prompt = generator.chat_prompt(messages)
        problem = "no attempt"
        for attempt in range(retries + 1):
            params = GenerationParams(
                max_new_tokens=160,
                temperature=0.0 if attempt == 0 else 0.7,
                top_p=0.95,
                seed=rng.randrange(1 << 30),
            )
            stats["calls"] += 1
            text = "".join(generator.generate(prompt, params))
            try:
                data = parse_teacher_json(text)
            except ValueError as exc:
                problem = str(exc)
                stats["invalid_json"] += 1
                continue
            pairs.append(
                Pair(
                    id="",
                    kind="generative",
                    question=data["question"],
                    answer=data["answer"],
                    lang="en",
                    chunk_id=chunk.chunk_id,
                    path=chunk.path,
                    evidence=data["evidence"],
                    template=f"teacher:attempt{attempt + 1}",
                )
            )
            break
        else:
            pairs.append(
                Pair(
                    id="",
                    kind="generative",
                    question="",
                    answer="",
                    lang="en",
                    chunk_id=chunk.chunk_id,
                    path=chunk.path,
                    evidence=None,
                    status="dropped",
                    reason=f"teacher: no valid JSON in {retries + 1} attempts ({problem})",
                    detail={"last_output": text[:300]},
                )
            )
    stats["seconds"] = round(time.perf_counter() - started, 1)
    return pairs, stats


# --- unanswerable pairs ----------------------------------------------------------------------


def _exists(name: str, corpus_folded: str) -> bool:
    return (
        re.search(r"(?<![\w-])" + re.escape(_fold(name)) + r"(?![\w]|-\w)", corpus_folded)
        is not None
    )


def fake_entity(entity: str, others: Sequence[str], corpus_folded: str, rng) -> str | None:
    """A name like `entity` that the corpus does not contain: a number one off, or one part
    of a CamelCase name swapped for a part of another name."""
    numbers = list(re.finditer(r"\d+", entity))
    if numbers:
        m = numbers[-1]
        for delta in rng.sample([1, -1, 2, -2], 4):
            n = int(m.group(0)) + delta
            if n < 0:
                continue
            cand = entity[: m.start()] + str(n).zfill(len(m.group(0))) + entity[m.end() :]
            if not _exists(cand, corpus_folded):
                return cand
        return None
    parts = re.findall(r"[A-Z][a-z0-9]+|[A-Z]+(?![a-z])", entity)
    if len(parts) < 2 or "".join(parts) != entity:
        return None
    pool = sorted({p for o in others for p in re.findall(r"[A-Z][a-z0-9]+", o) if len(p) > 2})
    for _ in range(12):
        i = rng.randrange(len(parts))
        repl = rng.choice(pool) if pool else None
        if not repl or repl == parts[i]:
            continue
        cand = "".join(parts[:i] + [repl] + parts[i + 1 :])
        if not _exists(cand, corpus_folded):
            return cand
    return None


def unanswerable_pairs(
    answerable: Sequence[Pair], share: float, abstain: str, corpus_folded: str, rng
) -> list[Pair]:
    if share <= 0 or not answerable:
        return []
    want = max(1, round(share * len(answerable)))
    by_entity: dict[str, Pair] = {}
    for p in answerable:
        if p.kind == "structured" and p.entity and p.entity not in by_entity:
            by_entity[p.entity] = p
    names = sorted(by_entity)
    rng.shuffle(names)
    out: list[Pair] = []
    used: set[str] = set()
    for name in names:
        if len(out) >= want:
            break
        fake = fake_entity(name, names, corpus_folded, rng)
        if fake is None or fake in used:
            continue
        used.add(fake)
        src = by_entity[name]
        q = src.question.replace(name, fake)
        if fake not in q:
            continue
        out.append(
            Pair(
                id="",
                kind="unanswerable",
                question=q,
                answer=abstain,
                lang=src.lang,
                chunk_id=None,
                path=None,
                evidence=None,
                entity=fake,
                field=src.field,
                template=src.template,
                detail={"made_from": name},
            )
        )
    return out


# --- verification ----------------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\w+", _fold(text)))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def _names(text: str) -> frozenset[str]:
    return frozenset(_fold(v.text) for v in value_spans(text) if v.kind in ("code", "identifier"))


def verify_grounding(pair: Pair, chunk_text: str) -> str | None:
    """None if the answer's values are in the evidence chunk; else the reason."""
    if pair.kind == "generative":
        if pair.evidence is None or _fold(pair.evidence) not in _fold(chunk_text):
            return "grounding: the evidence is not copied from the chunk"
        values = [v for v in value_spans(pair.answer) if v.kind != "quoted"]
        if not values:
            return "grounding: the answer states no value to check"
        if pair.question.strip().rstrip("?").lower() in pair.answer.lower():
            return "grounding: the answer repeats the question"
    if pair.kind == "structured" and pair.value is not None:
        if _fold(pair.value) not in _fold(chunk_text):
            return "grounding: the value is not in the chunk"
    verdict = check(pair.answer, [chunk_text], focus=[1])
    if not verdict.supported:
        return "grounding: not in the chunk: " + ", ".join(verdict.unsupported)
    return None


@dataclass
class Holdout:
    """Evaluation questions that no training pair may copy."""

    id: str
    split: str
    question: str
    facts: tuple[str, ...]
    answerable: bool
    words: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    chunks: frozenset[str] = frozenset()  # chunks the question retrieves (top k)


def load_holdout(paths: Sequence[Path]) -> list[Holdout]:
    out = []
    for path in paths:
        if not Path(path).is_file():
            raise UserFacingError(f"--holdout {path}: no such file; give an eval JSONL")
        for lineno, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not raw.strip():
                continue
            try:
                r = json.loads(raw)
                q = str(r["question"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UserFacingError(
                    f"--holdout {path}:{lineno}: not an eval question with a 'question' ({exc})"
                ) from None
            out.append(
                Holdout(
                    id=str(r.get("id") or f"{Path(path).name}:{lineno}"),
                    split=str(r.get("split") or "unsplit"),
                    question=q,
                    facts=tuple(str(f) for f in r.get("expected_facts") or ()),
                    answerable=bool(r.get("answerable", True)),
                    words=_words(q),
                    names=_names(q),
                )
            )
    return out


def holdout_reason(pair: Pair, holdout: Sequence[Holdout]) -> tuple[str, Holdout] | None:
    words, names = _words(pair.question), _names(pair.question)
    for h in holdout:
        if _jaccard(words, h.words) >= HOLDOUT_JACCARD:
            return "near-duplicate", h
        if pair.kind == "unanswerable":
            if not h.answerable and names & h.names:
                return "same unanswerable entity", h
            continue
        same_topic = bool(names & h.names) or (
            pair.chunk_id is not None and pair.chunk_id in h.chunks
        )
        if same_topic and h.facts and any(occurs(f, pair.answer) for f in h.facts):
            return "same fact", h
    return None


class RoundTrip:
    """Asks the index each question, in embedding batches; the rank of the evidence chunk."""

    def __init__(self, retriever, k: int) -> None:
        self.retriever = retriever
        self.k = k

    def top(self, questions: Sequence[str]) -> list[list[str]]:
        r = self.retriever
        vecs = r.embedder.embed(list(questions))
        snap = r._snap  # one index version for the whole batch (as Retriever.search does)
        return [
            [p.chunk_id for p in r._search(snap, q, v, self.k, None, "hybrid")]
            for q, v in zip(questions, vecs, strict=True)
        ]


# --- the run ---------------------------------------------------------------------------------


@dataclass
class SynthResult:
    kept: list[Pair]
    dropped: list[Pair]
    report: dict


def synthesize(
    *,
    retriever,
    abstain: str,
    holdout: Sequence[Holdout] = (),
    generator=None,
    generative: int = 0,
    retries: int = 2,
    unanswerable: float = 0.1,
    k: int = ROUND_TRIP_K,
    seed: int = 42,
    languages: str = "auto",
    max_pairs: int | None = None,
    progress=None,
) -> SynthResult:
    if progress is None:
        from tqdm import tqdm as progress  # noqa: N813
    rng = random.Random(seed)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    chunks = read_chunks(retriever)
    if not chunks:
        raise UserFacingError("the index holds no chunks; ingest documents first (expert ingest)")
    by_id = {c.chunk_id: c for c in chunks}
    by_doc: dict[str, list[str]] = {}
    for c in chunks:
        by_doc.setdefault(c.path, []).append(c.text)
    if languages == "auto":
        langs_of = {}
        for path, texts in by_doc.items():
            langs_of[path] = ["es", "en"] if document_language(texts) == "es" else ["en"]
    else:
        wanted = [x.strip() for x in languages.split(",") if x.strip()]
        bad = [x for x in wanted if x not in QUESTIONS]
        if bad or not wanted:
            raise UserFacingError(f"--languages: use auto or a list of {sorted(QUESTIONS)}")
        langs_of = {path: wanted for path in by_doc}
    corpus_folded = _fold("\n".join(c.text + "\n" + c.section for c in chunks))

    candidates = structured_pairs(chunks, langs_of, rng)
    rng.shuffle(candidates)  # no file order bias in the cap or in which phrasing survives
    if max_pairs is not None and len(candidates) > max_pairs:
        candidates = candidates[:max_pairs]
    timings["structured_s"] = round(time.perf_counter() - t0, 1)
    teacher_stats = None
    if generative > 0:
        if generator is None:
            raise UserFacingError("--generative needs a teacher model: pass --teacher or --bundle")
        gen, teacher_stats = generative_pairs(chunks, generator, generative, retries, rng, progress)
        candidates += gen
        timings["generative_s"] = teacher_stats["seconds"]

    # Holdout questions: the chunks each retrieves, for the "same fact" check.
    rt = RoundTrip(retriever, k)
    if holdout:
        tops = rt.top([h.question for h in holdout])
        for h, top in zip(holdout, tops, strict=True):
            h.chunks = frozenset(top[:3])

    kept: list[Pair] = []
    dropped: list[Pair] = []
    overlap: list[dict] = []

    def drop(p: Pair, reason: str) -> None:
        p.status, p.reason = "dropped", reason
        dropped.append(p)

    def held_out(p: Pair) -> bool:
        """Drop `p` if it overlaps an eval question, and record the overlap."""
        hit = holdout_reason(p, holdout)
        if hit:
            why, h = hit
            drop(p, f"holdout: {why} as eval question {h.id} ({h.split})")
            overlap.append({"pair": p.question, "eval_id": h.id, "split": h.split, "why": why})
        return hit is not None

    t1 = time.perf_counter()
    survivors: list[Pair] = []
    seen: dict[frozenset[str], list[tuple[frozenset[str], Pair]]] = {}
    for p in progress(candidates, desc="verify", unit="pair"):
        if p.status == "dropped":
            dropped.append(p)
            continue
        chunk = by_id.get(p.chunk_id or "")
        # The prompt shows each passage with its source line (title > section), so a name
        # that stands only in the heading is in what the model reads.
        seen_text = f"{chunk.title} > {chunk.section}\n{chunk.text}" if chunk else ""
        reason = verify_grounding(p, seen_text)
        if reason:
            drop(p, reason)
            continue
        if held_out(p):
            continue
        words, names = _words(p.question), _names(p.question)
        twin = next(
            (q for w, q in seen.get(names, []) if _jaccard(words, w) >= NEAR_DUP_JACCARD), None
        )
        if twin is not None:
            drop(p, f"near-duplicate of: {twin.question}")
            continue
        seen.setdefault(names, []).append((words, p))
        survivors.append(p)
    timings["verify_s"] = round(time.perf_counter() - t1, 1)

    t2 = time.perf_counter()
    answerable = []
    batches = [survivors[i : i + EMBED_BATCH] for i in range(0, len(survivors), EMBED_BATCH)]
    bar = progress(total=len(survivors), desc="round trip", unit="pair")
    for batch in batches:
        for p, top in zip(batch, rt.top([p.question for p in batch]), strict=True):
            if p.chunk_id in top:
                p.round_trip_rank = top.index(p.chunk_id) + 1
                p.status = "kept"
                answerable.append(p)
            else:
                drop(p, f"round trip: the evidence chunk is not in the top {k}")
        bar.update(len(batch))
    bar.close()
    timings["round_trip_s"] = round(time.perf_counter() - t2, 1)

    # Unanswerable pairs, from entities of the kept pairs; they pass the holdout check too.
    unans = unanswerable_pairs(answerable, unanswerable, abstain, corpus_folded, rng)
    kept_unans = []
    for p in unans:
        if held_out(p):
            continue
        p.status = "kept"
        kept_unans.append(p)
    kept = answerable + kept_unans
    for i, p in enumerate(kept + dropped, 1):
        p.id = f"s{i:05d}"
    total_s = time.perf_counter() - t0
    timings["total_s"] = round(total_s, 1)

    report = summarize(kept, dropped, overlap, holdout, timings, teacher_stats, len(chunks), k)
    return SynthResult(kept, dropped, report)


def _reason_group(reason: str) -> str:
    return reason.split(":")[0] if not reason.startswith("holdout") else reason.split(" as ")[0]


def summarize(kept, dropped, overlap, holdout, timings, teacher_stats, n_chunks, k) -> dict:
    rows = []
    for kind in KINDS:
        kk = sum(1 for p in kept if p.kind == kind)
        dd = [p for p in dropped if p.kind == kind]
        reasons = Counter(_reason_group(p.reason or "") for p in dd)
        rows.append(
            {
                "kind": kind,
                "candidates": kk + len(dd),
                "kept": kk,
                "dropped": len(dd),
                "kept_share": round(kk / (kk + len(dd)), 3) if kk + len(dd) else None,
                "dropped_by_reason": dict(reasons.most_common()),
            }
        )
    minutes = max(timings.get("total_s", 0.0), 1e-9) / 60
    by_split = Counter(o["split"] for o in overlap)
    by_why = Counter(o["why"] for o in overlap)
    return {
        "chunks": n_chunks,
        "round_trip_k": k,
        "thresholds": {"near_dup_jaccard": NEAR_DUP_JACCARD, "holdout_jaccard": HOLDOUT_JACCARD},
        "kinds": rows,
        "kept": len(kept),
        "dropped": len(dropped),
        "kept_share": round(len(kept) / max(1, len(kept) + len(dropped)), 3),
        "kept_pairs_per_minute": round(len(kept) / minutes, 1),
        "timings": timings,
        "teacher": teacher_stats,
        "languages": dict(Counter(p.lang for p in kept)),
        "holdout": {
            "questions": len(holdout),
            "splits": dict(Counter(h.split for h in holdout)),
            "dropped_overlapping": len(overlap),
            "by_split": dict(by_split),
            "by_kind": dict(by_why),
            "kept_overlapping": 0,  # by construction; tests recheck the written file
        },
    }


def format_report(result: SynthResult, *, samples: int = 25) -> str:
    r = result.report
    lines = [
        "# Synthesized training pairs",
        "",
        f"{r['chunks']} chunks read; {r['kept']} pairs kept, {r['dropped']} dropped "
        f"(kept share {r['kept_share']:.1%}); {r['kept_pairs_per_minute']} kept pairs per "
        f"minute ({r['timings'].get('total_s')} s in all).",
        "",
        "| kind | candidates | kept | dropped | kept share | dropped by reason |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in r["kinds"]:
        share = f"{row['kept_share']:.1%}" if row["kept_share"] is not None else "n/a"
        reasons = ", ".join(f"{k}: {v}" for k, v in row["dropped_by_reason"].items()) or "-"
        lines.append(
            f"| {row['kind']} | {row['candidates']} | {row['kept']} | {row['dropped']} | "
            f"{share} | {reasons} |"
        )
    h = r["holdout"]
    lines += [
        "",
        f"Holdout: {h['questions']} eval questions ({h['splits']}); {h['dropped_overlapping']} "
        f"synthesized questions dropped as near-duplicates or same facts (by split: "
        f"{h['by_split']}; by kind: {h['by_kind']}); kept pairs overlapping: "
        f"{h['kept_overlapping']}.",
        f"Timings (s): {r['timings']}",
    ]
    if r.get("teacher"):
        lines.append(f"Teacher: {r['teacher']}")
    rng = random.Random(0)
    for title, pool in (("Kept (sample)", result.kept), ("Dropped (sample)", result.dropped)):
        lines += ["", f"## {title}", "", "| id | kind | question | answer | evidence / reason |"]
        lines.append("|---|---|---|---|---|")
        for p in rng.sample(pool, min(samples, len(pool))):
            tail = p.reason if p.status == "dropped" else (p.evidence or "(abstention)")
            cells = [p.id, p.kind, p.question, p.answer, tail or ""]
            lines.append("| " + " | ".join(c.replace("|", "\\|")[:160] for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(result: SynthResult, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "pairs": out / "pairs.jsonl",
        "dropped": out / "dropped.jsonl",
        "report_json": out / "report.json",
        "report_md": out / "report.md",
    }
    for key, items in (("pairs", result.kept), ("dropped", result.dropped)):
        with atomic_file(paths[key], overwrite=True) as tmp, tmp.open("w", encoding="utf-8") as fh:
            for p in items:
                fh.write(json.dumps(p.chat(), ensure_ascii=False) + "\n")
    report_json = json.dumps(result.report, indent=2) + "\n"
    atomic_write_text(paths["report_json"], report_json, overwrite=True)
    atomic_write_text(paths["report_md"], format_report(result), overwrite=True)
    return paths
