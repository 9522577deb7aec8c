"""The loaded-document model shared by loaders, chunking and the index.

A loader turns a file into a `Document`: an ordered list of `Block`s, each carrying the
structure it came from (section path, page, table row). Chunking keeps that structure, so a
retrieved passage can say where it stands ("Pump manual > 4. Seals, page 12").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

BLOCK_KINDS = ("text", "table_row", "code")
BLOCK_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Block:
    """A run of text with one structural position: a paragraph, a page, a table row."""

    text: str
    section: tuple[str, ...] = ()
    page: int | None = None
    kind: str = "text"

    def __post_init__(self) -> None:
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"kind must be one of {BLOCK_KINDS}, got {self.kind!r}")
        if self.page is not None and self.page < 1:
            raise ValueError(f"page must be >= 1, got {self.page}")


@dataclass
class Document:
    """One source document, loaded. `path` is relative to the ingested folder (POSIX form)."""

    path: str
    title: str
    blocks: list[Block]
    metadata: dict[str, object] = field(default_factory=dict)
    content_hash: str = ""  # sha256 of the source bytes

    def full_text(self) -> tuple[str, list[int]]:
        """The blocks joined by blank lines, and each block's start offset in that text.

        Chunk character spans are offsets into this text.
        """
        starts, pos = [], 0
        for b in self.blocks:
            starts.append(pos)
            pos += len(b.text) + len(BLOCK_SEPARATOR)
        return BLOCK_SEPARATOR.join(b.text for b in self.blocks), starts


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
