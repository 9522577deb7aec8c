# Run: .venv/bin/pytest tests/appliance/test_retrieval_keyword_errors.py
"""Keyword search finds nothing for a query FTS5 cannot parse, but never hides a broken
index: an I/O or schema error reaches the caller instead of looking like "no match"."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from appliance.retrieval.store import DocumentRow, NewChunk, Store


def _store(path: Path) -> Store:
    store = Store(path, writable=True)
    row = DocumentRow(
        doc_id="d1", path="d1.md", title="D1", source="api", content_hash="h", fingerprint="f",
        metadata={}, n_chunks=1, added_at="2026-01-01T00:00:00+00:00",
    )  # fmt: skip
    chunk = NewChunk(
        ord=0, section="", page=None, kind="text", char_start=0, char_end=20,
        text="Pump P-101 seal kit", embed_text="Pump P-101 seal kit", content_hash="c1",
    )  # fmt: skip
    store.upsert_document(row, [chunk], np.ones((1, 4), dtype=np.float32))
    store.commit()
    return store


def test_unparsable_query_finds_nothing_but_a_broken_index_raises(tmp_path: Path):
    store = _store(tmp_path / "store.sqlite")
    assert store.keyword_search('"seal"', 5)
    assert store.keyword_search('"unterminated', 5) == []  # FTS5 syntax: no keyword hits
    # The full-text table is gone (a damaged or half-written file): that is an error.
    store.conn.execute("DROP TABLE chunks_fts")
    with pytest.raises(sqlite3.OperationalError, match="chunks_fts"):
        store.keyword_search('"seal"', 5)
    store.close()
