"""Structure-aware chunking sized in tokens of the embedder's own tokenizer.

A chunk never crosses a section or page boundary, and a table row is a chunk of its own (it
carries its header, so it reads on its own). Inside a section, sentences are packed up to
`max_tokens` with `overlap_tokens` of trailing context repeated in the next chunk; a sentence
longer than a chunk is cut at token boundaries. Sizes are counted with the embedder's
tokenizer, so a chunk plus its title line fits the embedder's window and nothing is lost to
truncation.

Test: .venv/bin/pytest tests/appliance/test_documents.py
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from appliance.documents.abbreviations import definitions, glossary
from appliance.documents.model import Block, Document, sha256_text

SECTION_JOIN = " > "
# What the chunker makes of a document, as a number: raise it whenever the same document and
# settings would give other chunks (a new boundary, an entry's name prefix). It is part of each
# document's ingest fingerprint, so the next ingest re-chunks documents that an older chunker
# cut, instead of keeping them as "unchanged". 2: entry-level chunks of reference material.
# 3: HTML tables of contents and navigation dropped, a note box laid out as a table read as text
# (appliance.documents.loaders; the Debian Reference pages; Apache and plant blocks unchanged).
# 4: a glossary line for each abbreviation the document defines whose other form the chunk
# lacks (appliance.documents.abbreviations), in what is embedded and keyword-indexed.
CHUNK_FORMAT = 4


@dataclass(frozen=True)
class ChunkingConfig:
    max_tokens: int = 160
    overlap_tokens: int = 32

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise ValueError(f"max_tokens must be >= 16, got {self.max_tokens}")
        if not (0 <= self.overlap_tokens < self.max_tokens // 2):
            raise ValueError(
                f"overlap_tokens must be >= 0 and < max_tokens / 2 ({self.max_tokens // 2}), "
                f"got {self.overlap_tokens}"
            )

    def to_dict(self) -> dict:
        return {"max_tokens": self.max_tokens, "overlap_tokens": self.overlap_tokens}


@dataclass(frozen=True)
class Chunk:
    ord: int
    text: str
    section: tuple[str, ...]
    page: int | None
    kind: str
    char_start: int  # span in Document.full_text()
    char_end: int
    # "NM: NetworkManager": abbreviations the document defines, the chunk has one form of
    glossary: tuple[str, ...] = ()

    @property
    def section_path(self) -> str:
        return SECTION_JOIN.join(self.section)

    def header(self, title: str) -> str:
        """The line that situates the chunk: 'Pump manual > 4. Seals'."""
        return SECTION_JOIN.join(x for x in (title, *self.section) if x)

    def embed_text(self, title: str) -> str:
        """What is embedded and keyword-indexed: the header line, the glossary lines, then the
        text."""
        return "\n".join(x for x in (self.header(title), *self.glossary, self.text) if x)

    def content_hash(self, title: str) -> str:
        return sha256_text(self.embed_text(title))


# A sentence ends at . ! ? followed by space, or at a line break (lists, table-ish lines).
_UNIT_RE = re.compile(r"[^\n]*?(?:[.!?](?=\s)|\n|$)")


def _units(text: str, base: int) -> list[tuple[int, int]]:
    """Sentence/line spans (absolute offsets) covering `text`, whitespace trimmed."""
    spans = []
    for m in _UNIT_RE.finditer(text):
        s, e = m.start(), m.end()
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            spans.append((base + s, base + e))
    return spans


TokenOffsets = Callable[[str], list[tuple[int, int]]]


def chunk_document(
    doc: Document, token_offsets: TokenOffsets, config: ChunkingConfig | None = None
) -> list[Chunk]:
    """Split a document into chunks.

    `token_offsets(text)` returns the character span of each token (no special tokens); pass
    `tokenizer_offsets(embedder.tokenizer)`.
    """
    cfg = config or ChunkingConfig()
    full, starts = doc.full_text()
    defined = definitions(full)
    chunks: list[Chunk] = []

    def emit(s: int, e: int, block: Block) -> None:
        text = full[s:e].strip()
        if text:
            chunks.append(
                Chunk(
                    len(chunks), text, block.section, block.page, block.kind, s, e,
                    tuple(glossary(text, defined)),
                )
            )  # fmt: skip

    # Group consecutive text blocks that share a section and page.
    groups: list[list[int]] = []
    for i, b in enumerate(doc.blocks):
        prev = doc.blocks[groups[-1][-1]] if groups else None
        if (
            prev is not None
            and b.kind != "table_row"
            and prev.kind != "table_row"
            and (prev.section, prev.page) == (b.section, b.page)
        ):
            groups[-1].append(i)
        else:
            groups.append([i])

    for group in groups:
        first = doc.blocks[group[0]]
        spans: list[tuple[int, int]] = []
        for i in group:
            spans.extend(_units(doc.blocks[i].text, starts[i]))
        if first.kind == "table_row":
            spans = [(starts[group[0]], starts[group[0]] + len(first.text))]
        # Token counts per unit; a unit longer than a chunk is cut at token boundaries.
        units: list[tuple[int, int, int]] = []
        for s, e in spans:
            offs = token_offsets(full[s:e])
            if len(offs) <= cfg.max_tokens:
                units.append((s, e, len(offs)))
                continue
            step = cfg.max_tokens - cfg.overlap_tokens
            for t0 in range(0, len(offs), step):
                window = offs[t0 : t0 + cfg.max_tokens]
                units.append((s + window[0][0], s + window[-1][1], len(window)))
                if t0 + cfg.max_tokens >= len(offs):
                    break
        _pack(units, cfg, lambda s, e, b=first: emit(s, e, b))
    return chunks


def _pack(
    units: list[tuple[int, int, int]], cfg: ChunkingConfig, emit: Callable[[int, int], None]
) -> None:
    """Greedy packing of units into windows of <= max_tokens with trailing overlap."""
    i = 0
    while i < len(units):
        total, j = 0, i
        while j < len(units) and (j == i or total + units[j][2] <= cfg.max_tokens):
            total += units[j][2]
            j += 1
        emit(units[i][0], units[j - 1][1])
        if j >= len(units):
            break
        # Start the next window with as many trailing units as fit in the overlap.
        back, k = 0, j
        while k - 1 > i and back + units[k - 1][2] <= cfg.overlap_tokens:
            back += units[k - 1][2]
            k -= 1
        i = k


def tokenizer_offsets(tokenizer) -> TokenOffsets:
    """Adapter for a `tokenizers.Tokenizer`: text -> token character spans."""

    def offsets(text: str) -> list[tuple[int, int]]:
        return [tuple(o) for o in tokenizer.encode(text, add_special_tokens=False).offsets]

    return offsets
