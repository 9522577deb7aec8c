"""Retrieved passages and a fixed retriever for tests of the answer path (appliance.answering,
the eval scorer) that need no index: each passage is appliance.retrieval's own `Passage`, with
every field but the text and dense score defaulted."""

from __future__ import annotations

from appliance.retrieval.hybrid import Passage


def passage(text: str, dense_score: float = 0.9, chunk_id: str = "doc#0", **fields) -> Passage:
    """A retrieved passage; `fields` override doc_id, path, title, section, page, score,
    keyword_score, metadata."""
    values = {
        "doc_id": "doc",
        "path": "manual.md",
        "title": "Manual",
        "section": "1. Data",
        "page": None,
        "score": 0.5,
        "keyword_score": None,
        "metadata": {},
    }
    values.update(fields)
    return Passage(text=text, dense_score=dense_score, chunk_id=chunk_id, **values)


class FixedRetriever:
    """Returns its passages, in order, whatever the query; records each search."""

    def __init__(self, passages: list[Passage]) -> None:
        self.passages = passages
        self.calls: list[tuple] = []

    def search(self, query, k=5, filters=None, mode="hybrid"):
        self.calls.append((query, k, filters))
        return self.passages[:k]


# A tolerance row and its neighbour (the plant's shaft alignment section): the row answers
# "What is the maximum parallel offset allowed when aligning a pump to its motor?" but covers
# just under 0.4 of the question while its function words ("what", "when") count.
ALIGNMENT = [
    "Parameter: Parallel (offset) misalignment; Tolerance at 2,950 rpm: ≤ 0.05 mm",
    "Alignment between pump and motor is checked every 4,000 h. Use the laser tool LA-2.",
]
ALIGNMENT_HEADS = [
    "8. Shaft alignment > 8.1 Tolerances > Parallel (offset) misalignment",
    "8. Shaft alignment > 8.1 Tolerances",
]
