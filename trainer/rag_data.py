"""RAG-aware training examples: each question carries the passages the index retrieves for it.

The appliance answers with `appliance.prompting.build_messages(question, passages)`. Training on
that exact prompt (same system prompt, same numbered and fenced passages) teaches the model to
answer from the passages and cite them, which is what "RAG + fine-tuning" needs.

For each example:
- the question is the last user turn before the last answer; earlier turns become `history`;
- the top `k` passages come from the index; when the example names its `source` document and
  no top-k passage comes from it, the best passage from that document within a wider search
  replaces the last one, so the answer is supported by what the model sees;
- `distractors` passages from other documents (retrieved for other questions) are mixed in at
  seeded random positions, so the model learns to ignore what does not answer the question;
- when the supporting passage is known, the answer ends with its citation, e.g. "... [2]";
- a share of extra examples (`unanswerable_fraction`) pairs a question with passages retrieved
  for an unrelated question and the answer NOT_IN_DOCUMENTS, teaching the plain refusal.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from appliance.errors import UserFacingError
from appliance.prompting import PLANT_WORDING, PromptPassage, Wording, build_messages
from trainer.data import ChatExample

log = logging.getLogger(__name__)

CITATION = re.compile(r"\s*\[\d+\](?:\s*\[\d+\])*")
WIDE_SEARCH_FACTOR = 4  # look this much deeper for a passage from the example's source document


@dataclass(frozen=True)
class RetrievedPassage:
    """What training needs from one search hit: the prompt view and the document it came from."""

    prompt: PromptPassage
    source: str


SearchFn = Callable[[str, int], Sequence[RetrievedPassage]]


@dataclass
class RagStats:
    examples: int = 0
    source_in_top_k: int = 0
    source_added: int = 0
    source_missing: list[str] = field(default_factory=list)
    no_source: int = 0
    unanswerable: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _hit_source(hit: Any) -> str:
    for name in ("source", "path", "doc_path", "document", "doc_id"):
        value = getattr(hit, name, None)
        if isinstance(value, str | Path) and str(value):
            return str(value)
    prompt = hit.to_prompt()
    return prompt.title


def open_index_search(index_dir: Path, embedder_dir: Path | None) -> SearchFn:
    """A search function over an index folder, using the appliance's own retriever."""
    try:
        from appliance.embedding import OnnxEmbedder
        from appliance.retrieval import Retriever
    except ImportError as exc:  # pragma: no cover - depends on the appliance extras
        raise UserFacingError(
            f"--with-retrieval needs the appliance retrieval modules ({exc}); install the "
            "appliance extras: pip install -e '.[appliance]'"
        ) from exc
    index_dir = Path(index_dir)
    if not index_dir.exists():
        raise UserFacingError(
            f"--with-retrieval {index_dir}: no such index folder; build one with "
            "`expert ingest --docs DIR --index DIR`"
        )
    if embedder_dir is None:
        sibling = index_dir.parent / "embedder"
        if not sibling.is_dir():
            raise UserFacingError(
                f"--with-retrieval {index_dir}: pass --embedder DIR, the embedder folder that "
                "built this index (no embedder/ folder next to the index)"
            )
        embedder_dir = sibling
    retriever = Retriever.open(index_dir, OnnxEmbedder(Path(embedder_dir)))

    def search(question: str, k: int) -> list[RetrievedPassage]:
        return [
            RetrievedPassage(h.to_prompt(), _hit_source(h)) for h in retriever.search(question, k)
        ]

    return search


def _same_document(passage_source: str, example_source: str) -> bool:
    a = passage_source.replace("\\", "/").strip("/")
    b = example_source.replace("\\", "/").strip("/")
    if not a or not b:
        return False
    return a == b or a.endswith("/" + b) or b.endswith("/" + a) or Path(a).name == Path(b).name


def _split_turns(example: ChatExample) -> tuple[str, list[dict], str]:
    """(question, history without system turns, final answer)."""
    msgs = list(example.messages)
    last_answer = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    last_question = max(i for i in range(last_answer) if msgs[i]["role"] == "user")
    history = [dict(m) for m in msgs[:last_question] if m["role"] != "system"]
    return msgs[last_question]["content"], history, msgs[last_answer]["content"]


def _cite(answer: str, n: int) -> str:
    body = CITATION.sub("", answer).rstrip()
    return f"{body} [{n}]"


def build_rag_examples(
    examples: Sequence[ChatExample],
    search: SearchFn,
    *,
    k: int = 3,
    distractors: int = 1,
    unanswerable_fraction: float = 0.1,
    seed: int = 42,
    stats: RagStats | None = None,
    words: Wording = PLANT_WORDING,
) -> list[ChatExample]:
    """Rewrite chat examples into the serve-time grounded format (see the module docstring)."""
    stats = stats if stats is not None else RagStats()
    rng = random.Random(seed)
    prepared = []
    for ex in examples:
        question, history, answer = _split_turns(ex)
        pool = list(search(question, k * WIDE_SEARCH_FACTOR))
        prepared.append((ex, question, history, answer, pool))

    out: list[ChatExample] = []
    for i, (ex, question, history, answer, pool) in enumerate(prepared):
        top = pool[:k]
        source = ex.extra.get("source")
        gold_source: str | None = None
        if isinstance(source, str) and source:
            gold = [p for p in top if _same_document(p.source, source)]
            if gold:
                stats.source_in_top_k += 1
            else:
                deeper = next((p for p in pool[k:] if _same_document(p.source, source)), None)
                if deeper is not None and top:
                    top = top[:-1] + [deeper]
                    stats.source_added += 1
                elif deeper is not None:
                    top = [deeper]
                    stats.source_added += 1
                else:
                    stats.source_missing.append(f"{ex.where} ({source})")
            if any(_same_document(p.source, source) for p in top):
                gold_source = source
        else:
            stats.no_source += 1

        chosen_texts = {p.prompt.text for p in top}
        others = _other_passages(prepared, i, chosen_texts, gold_source, rng, distractors)
        passages = list(top)
        for d in others:
            passages.insert(rng.randint(0, len(passages)), d)
        target = answer
        if gold_source is not None:
            first_gold = next(
                n for n, p in enumerate(passages, 1) if _same_document(p.source, gold_source)
            )
            target = _cite(answer, first_gold)
        messages = build_messages(
            question, [p.prompt for p in passages], history=history, words=words
        )
        messages.append({"role": "assistant", "content": target})
        out.append(replace(ex, messages=tuple(messages), extra={**ex.extra, "rag": "grounded"}))
        stats.examples += 1

    n_unanswerable = round(unanswerable_fraction * len(prepared))
    for i in rng.sample(range(len(prepared)), min(n_unanswerable, len(prepared))):
        ex, question, history, _answer, pool = prepared[i]
        own = {p.prompt.text for p in pool}
        source = ex.extra.get("source") if isinstance(ex.extra.get("source"), str) else None
        unrelated = _unrelated_top(prepared, i, own, source, rng, k)
        if not unrelated:
            continue
        messages = build_messages(
            question, [p.prompt for p in unrelated], history=history, words=words
        )
        messages.append({"role": "assistant", "content": words.abstain})
        out.append(replace(ex, messages=tuple(messages), extra={**ex.extra, "rag": "unanswerable"}))
        stats.unanswerable += 1
    return out


def _other_passages(
    prepared: list,
    i: int,
    exclude_texts: set[str],
    gold_source: str | None,
    rng: random.Random,
    n: int,
) -> list[RetrievedPassage]:
    """`n` passages retrieved for other questions, not already shown, not from the gold document."""
    if n == 0 or len(prepared) < 2:
        return []
    picked: list[RetrievedPassage] = []
    order = [j for j in range(len(prepared)) if j != i]
    rng.shuffle(order)
    for j in order:
        for p in prepared[j][4]:
            if p.prompt.text in exclude_texts:
                continue
            if gold_source is not None and _same_document(p.source, gold_source):
                continue
            picked.append(p)
            exclude_texts = exclude_texts | {p.prompt.text}
            break
        if len(picked) == n:
            break
    return picked


def _unrelated_top(
    prepared: list, i: int, own_texts: set[str], source: str | None, rng: random.Random, k: int
) -> list[RetrievedPassage]:
    """The top passages of another question that share nothing with this question's results."""
    order = [j for j in range(len(prepared)) if j != i]
    rng.shuffle(order)
    for j in order:
        top = prepared[j][4][:k]
        if not top or any(p.prompt.text in own_texts for p in top):
            continue
        if source is not None and any(_same_document(p.source, source) for p in top):
            continue
        return list(top)
    return []


def log_stats(stats: RagStats) -> None:
    log.info(
        "retrieval: %d grounded examples (source passage in top-k: %d, added from a deeper "
        "search: %d, no source given: %d), %d unanswerable examples",
        stats.examples,
        stats.source_in_top_k,
        stats.source_added,
        stats.no_source,
        stats.unanswerable,
    )
    if stats.source_missing:
        log.warning(
            "the index returned no passage from the source document of %d example(s); they "
            "train without a citation:\n  %s",
            len(stats.source_missing),
            "\n  ".join(stats.source_missing[:20]),
        )
