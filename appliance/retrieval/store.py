"""The SQLite store: documents, chunks, metadata, embeddings and the FTS5 keyword index.

One SQLite file per index version. While a version is being written it runs in WAL mode
(fast, crash-consistent appends); before it is published it is checkpointed into a single
self-contained file in rollback-journal mode, and readers open published files read-only
and `immutable`, so a read-only bundle folder works and no reader ever takes a lock.

Embeddings are kept here too (float32 blobs): they are the source of truth from which the
hnswlib graph can be rebuilt, and the exact scores for filtered search come from them.

Test: .venv/bin/pytest tests/appliance/test_retrieval.py
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.errors import UserFacingError
from appliance.retrieval.keywords import codes_column

SCHEMA_VERSION = 1
WILDCARD_VALUES = ("all", "*")  # a document scoped `line: all` matches every line filter

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    title TEXT NOT NULL,
    source TEXT NOT NULL,            -- 'folder' (expert ingest) or 'api' (POST /v1/documents)
    content_hash TEXT NOT NULL,      -- sha256 of the source bytes
    fingerprint TEXT NOT NULL,       -- content + metadata + chunking + embedder
    metadata TEXT NOT NULL,          -- JSON object
    n_chunks INTEGER NOT NULL,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS doc_meta (
    doc_id TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,             -- lower-cased, one row per value of a list
    PRIMARY KEY (doc_id, key, value)
);
CREATE INDEX IF NOT EXISTS doc_meta_kv ON doc_meta(key, value);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- the hnswlib label; never reused
    doc_id TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE,
    ord INTEGER NOT NULL,
    section TEXT NOT NULL,
    page INTEGER,
    kind TEXT NOT NULL,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    text TEXT NOT NULL,
    content_hash TEXT NOT NULL,      -- sha256 of the embedded text (header + text)
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE INDEX IF NOT EXISTS chunks_hash ON chunks(content_hash);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    body, codes, tokenize = 'unicode61 remove_diacritics 2'
);
"""

# bm25() column weights: body, codes. A matching code is strong evidence.
BM25_WEIGHTS = (1.0, 2.0)


@dataclass(frozen=True)
class DocumentRow:
    doc_id: str
    path: str
    title: str
    source: str
    content_hash: str
    fingerprint: str
    metadata: dict
    n_chunks: int
    added_at: str


@dataclass(frozen=True)
class ChunkRow:
    id: int
    doc_id: str
    ord: int
    section: str
    page: int | None
    kind: str
    char_start: int
    char_end: int
    text: str
    content_hash: str


@dataclass(frozen=True)
class NewChunk:
    """A chunk ready to store: `embed_text` is what was embedded and keyword-indexed."""

    ord: int
    section: str
    page: int | None
    kind: str
    char_start: int
    char_end: int
    text: str
    embed_text: str
    content_hash: str


def _is_fts_query_error(exc: sqlite3.OperationalError) -> bool:
    """An error in the MATCH expression itself (FTS5 syntax), as opposed to the database."""
    text = str(exc).lower()
    return text.startswith("fts5:") or "unterminated string" in text


def _meta_values(value: object) -> list[str]:
    vals = value if isinstance(value, list) else [value]
    return sorted({str(v).strip().lower() for v in vals if str(v).strip()})


class Store:
    """A connection to one version's SQLite file (writable while building, else read-only)."""

    def __init__(self, path: Path, *, writable: bool) -> None:
        self.path = Path(path)
        self.writable = writable
        self._lock = threading.Lock()
        try:
            if writable:
                self.conn = sqlite3.connect(str(self.path), check_same_thread=False)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self.conn.execute("PRAGMA foreign_keys=ON")
                self.conn.executescript(_SCHEMA)
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                self.conn.commit()
            else:
                uri = f"file:{self.path}?mode=ro&immutable=1"
                self.conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            version = self.get_meta("schema_version")
        except sqlite3.DatabaseError as exc:
            raise UserFacingError(
                f"index store {self.path} cannot be opened ({exc}); re-ingest the documents"
            ) from exc
        if version != str(SCHEMA_VERSION):
            raise UserFacingError(
                f"index store {self.path} has schema version {version}; this appliance reads "
                f"{SCHEMA_VERSION}. Re-ingest the documents with this version"
            )

    # -- meta --------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- writing -----------------------------------------------------------------------------

    def upsert_document(
        self, doc: DocumentRow, chunks: list[NewChunk], vectors: np.ndarray
    ) -> list[int]:
        """Replace a document and its chunks; returns the new chunk ids (hnswlib labels)."""
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        c = self.conn
        self.delete_document(doc.doc_id)
        c.execute(
            "INSERT INTO documents VALUES (?,?,?,?,?,?,?,?,?)",
            (
                doc.doc_id, doc.path, doc.title, doc.source, doc.content_hash, doc.fingerprint,
                json.dumps(doc.metadata, sort_keys=True), len(chunks), doc.added_at,
            ),
        )  # fmt: skip
        for key, value in doc.metadata.items():
            for v in _meta_values(value):
                c.execute("INSERT OR IGNORE INTO doc_meta VALUES (?,?,?)", (doc.doc_id, key, v))
        ids = []
        for ch, vec in zip(chunks, vectors, strict=True):
            cur = c.execute(
                "INSERT INTO chunks (doc_id, ord, section, page, kind, char_start, char_end, "
                "text, content_hash, embedding) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    doc.doc_id, ch.ord, ch.section, ch.page, ch.kind, ch.char_start, ch.char_end,
                    ch.text, ch.content_hash, np.asarray(vec, dtype=np.float32).tobytes(),
                ),
            )  # fmt: skip
            cid = int(cur.lastrowid)
            c.execute(
                "INSERT INTO chunks_fts (rowid, body, codes) VALUES (?,?,?)",
                (cid, ch.embed_text, codes_column(ch.embed_text)),
            )
            ids.append(cid)
        return ids

    def delete_document(self, doc_id: str) -> list[int]:
        """Remove a document; returns the chunk ids that went with it."""
        c = self.conn
        ids = [r[0] for r in c.execute("SELECT id FROM chunks WHERE doc_id=?", (doc_id,))]
        if ids:
            c.executemany("DELETE FROM chunks_fts WHERE rowid=?", [(i,) for i in ids])
        c.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
        c.execute("DELETE FROM doc_meta WHERE doc_id=?", (doc_id,))
        c.execute("DELETE FROM documents WHERE doc_id=?", (doc_id,))
        return ids

    def cached_embedding(self, content_hash: str, dim: int) -> np.ndarray | None:
        """An embedding already computed for identical text (re-ingest of an edited file)."""
        row = self.conn.execute(
            "SELECT embedding FROM chunks WHERE content_hash=? LIMIT 1", (content_hash,)
        ).fetchone()
        if row is None or len(row[0]) != dim * 4:
            return None
        return np.frombuffer(row[0], dtype=np.float32)

    def commit(self) -> None:
        self.conn.commit()

    def finalize(self) -> None:
        """Fold the WAL into the main file and leave WAL mode: the file stands alone."""
        self.conn.commit()
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.execute("PRAGMA journal_mode=DELETE")
        self.conn.execute("PRAGMA optimize")
        self.conn.close()

    # -- reading -----------------------------------------------------------------------------

    def documents(self, source: str | None = None) -> dict[str, DocumentRow]:
        sql = "SELECT * FROM documents" + (" WHERE source=?" if source else "")
        with self._lock:
            rows = self.conn.execute(sql, (source,) if source else ()).fetchall()
        return {r[0]: _doc_row(r) for r in rows}

    def document(self, doc_id: str) -> DocumentRow | None:
        with self._lock:
            r = self.conn.execute("SELECT * FROM documents WHERE doc_id=?", (doc_id,)).fetchone()
        return _doc_row(r) if r else None

    def counts(self) -> tuple[int, int]:
        with self._lock:
            docs = self.conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
            chunks = self.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        return int(docs), int(chunks)

    def chunk_rows(self, ids: Iterable[int]) -> dict[int, ChunkRow]:
        ids = list(ids)
        out: dict[int, ChunkRow] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                for r in self.conn.execute(
                    "SELECT id, doc_id, ord, section, page, kind, char_start, char_end, text, "
                    f"content_hash FROM chunks WHERE id IN ({marks})",
                    part,
                ):
                    out[r[0]] = ChunkRow(*r)
        return out

    def embeddings(self, ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 matrix) for the given chunk ids, or for all chunks."""
        with self._lock:
            if ids is None:
                rows = self.conn.execute("SELECT id, embedding FROM chunks ORDER BY id").fetchall()
            else:
                ids = list(ids)
                rows = []
                for start in range(0, len(ids), 500):
                    part = ids[start : start + 500]
                    marks = ",".join("?" * len(part))
                    rows.extend(
                        self.conn.execute(
                            f"SELECT id, embedding FROM chunks WHERE id IN ({marks})", part
                        ).fetchall()
                    )
        labels = np.array([r[0] for r in rows], dtype=np.int64)
        if not rows:
            return labels, np.zeros((0, 0), dtype=np.float32)
        return labels, np.vstack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    def first_chunk_of_section(self, doc_id: str, section: str) -> ChunkRow | None:
        """The first chunk of a document's section (an entry's head: its name and fact sheet)."""
        with self._lock:
            r = self.conn.execute(
                "SELECT id, doc_id, ord, section, page, kind, char_start, char_end, text, "
                "content_hash FROM chunks WHERE doc_id=? AND section=? ORDER BY ord LIMIT 1",
                (doc_id, section),
            ).fetchone()
        return ChunkRow(*r) if r else None

    def iter_chunks(self, doc_id: str) -> Iterator[tuple[ChunkRow, bytes]]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT id, doc_id, ord, section, page, kind, char_start, char_end, text, "
                "content_hash, embedding FROM chunks WHERE doc_id=? ORDER BY ord",
                (doc_id,),
            ).fetchall()
        for r in rows:
            yield ChunkRow(*r[:10]), r[10]

    def embed_texts(self, doc_id: str) -> dict[int, str]:
        """Chunk id -> what was embedded and keyword-indexed for it (header, glossary, text)."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT chunks.id, chunks_fts.body FROM chunks "
                "JOIN chunks_fts ON chunks_fts.rowid = chunks.id WHERE chunks.doc_id=?",
                (doc_id,),
            ).fetchall()
        return {int(i): body for i, body in rows}

    def filter_clause(self, filters: dict | None) -> tuple[str, list]:
        """SQL condition on `chunks.doc_id` for metadata filters (AND across keys, OR within).

        `{"line": "A"}` keeps documents whose `line` is A or a wildcard (`all`, `*`);
        `{"line": ["A", "B"]}` keeps either; `{"doc_id": ...}` and `{"path": ...}` match
        those columns. A document without the key does not match: a terminal scoped to a line
        sees only documents that say they belong to it.
        """
        if not filters:
            return "1", []
        parts, params = [], []
        for key, value in filters.items():
            vals = value if isinstance(value, list | tuple | set) else [value]
            vals = [str(v).strip() for v in vals if v is not None and str(v).strip()]
            if not vals:
                raise UserFacingError(f"filter {key!r} has no value; give a string or a list")
            marks = ",".join("?" * len(vals))
            if key in ("doc_id", "path"):
                parts.append(
                    f"chunks.doc_id IN (SELECT doc_id FROM documents WHERE {key} IN ({marks}))"
                )
                params.extend(vals)
                continue
            lowered = [v.lower() for v in vals] + list(WILDCARD_VALUES)
            marks = ",".join("?" * len(lowered))
            parts.append(
                f"chunks.doc_id IN (SELECT doc_id FROM doc_meta WHERE key=? AND value IN ({marks}))"
            )
            params.extend([str(key).lower(), *lowered])
        return " AND ".join(parts), params

    def allowed_ids(self, filters: dict) -> np.ndarray:
        where, params = self.filter_clause(filters)
        with self._lock:
            rows = self.conn.execute(f"SELECT id FROM chunks WHERE {where}", params).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def keyword_search(
        self, match: str, limit: int, filters: dict | None = None
    ) -> list[tuple[int, float]]:
        """(chunk id, BM25 score; higher is better) for an FTS5 MATCH expression."""
        where, params = self.filter_clause(filters)
        w_body, w_codes = BM25_WEIGHTS
        sql = (
            f"SELECT chunks_fts.rowid, -bm25(chunks_fts, {w_body}, {w_codes}) AS score "
            "FROM chunks_fts JOIN chunks ON chunks.id = chunks_fts.rowid "
            f"WHERE chunks_fts MATCH ? AND {where} ORDER BY score DESC LIMIT ?"
        )
        with self._lock:
            try:
                rows = self.conn.execute(sql, [match, *params, limit]).fetchall()
            except sqlite3.OperationalError as exc:
                if not _is_fts_query_error(exc):
                    raise  # I/O, locking or a damaged index: never "no match"
                return []  # a query FTS5 cannot parse finds nothing by keyword
        return [(int(r[0]), float(r[1])) for r in rows]

    def mentions(self, phrase: str) -> bool:
        """Some chunk holds `phrase` (its words in a row, as the keyword index reads them)."""
        words = phrase.replace('"', " ").split()
        if not words:
            return False
        match = '"' + " ".join(words) + '"'
        with self._lock:
            try:
                row = self.conn.execute(
                    "SELECT 1 FROM chunks_fts WHERE chunks_fts MATCH ? LIMIT 1", [match]
                ).fetchone()
            except sqlite3.OperationalError as exc:
                if not _is_fts_query_error(exc):
                    raise
                return True  # not checkable by keyword: never taken as absent
        return row is not None

    def mentions_with_number(self, name: str, limit: int = 200) -> bool:
        """Some chunk holds `name` run together with a number, as one word: "IP" in "IP66",
        "DN" in "DN150" (the keyword index reads those as single words, so `mentions` does not
        find the bare name). Looks at the first `limit` chunks whose words begin with `name`."""
        if not name or not name.isalnum():
            return False
        pattern = re.compile(rf"(?<![^\W\d_]){re.escape(name)}\d", re.I)
        with self._lock:
            try:
                rows = self.conn.execute(
                    "SELECT body FROM chunks_fts WHERE chunks_fts MATCH ? LIMIT ?",
                    [f'body : "{name}"*', limit],
                ).fetchall()
            except sqlite3.OperationalError as exc:
                if not _is_fts_query_error(exc):
                    raise
                return False
        return any(pattern.search(r[0] or "") for r in rows)

    def chunk_codes(self, ids: Iterable[int]) -> dict[int, set[str]]:
        """The code terms indexed for each chunk (the FTS `codes` column)."""
        ids = list(ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self.conn.execute(
                f"SELECT rowid, codes FROM chunks_fts WHERE rowid IN ({marks})", ids
            ).fetchall()
        return {int(r[0]): set(r[1].split()) for r in rows}

    def close(self) -> None:
        try:
            self.conn.close()
        except sqlite3.Error:
            pass


def _doc_row(r) -> DocumentRow:
    return DocumentRow(
        doc_id=r[0], path=r[1], title=r[2], source=r[3], content_hash=r[4], fingerprint=r[5],
        metadata=json.loads(r[6]), n_chunks=int(r[7]), added_at=r[8],
    )  # fmt: skip
