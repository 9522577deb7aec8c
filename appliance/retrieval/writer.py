"""Every change to an index goes through `IndexWriter`: it copies the current version aside,
applies the change (chunk, embed, SQLite + FTS5 + hnswlib) and publishes the result as the
next version (see versions.py), under the index's writer lock.

Also here: `DocumentInput`, a document handed over directly (the service's uploads), and the
path checks that keep every write inside its folder (`..`, absolute paths and links that
leave it are refused).

Test: .venv/bin/pytest tests/appliance/test_retrieval.py tests/appliance/test_retrieval_faults.py
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import numpy as np

from appliance.documents import (
    ChunkingConfig,
    Document,
    LoaderError,
    chunk_document,
    is_supported,
    load_bytes,
    tokenizer_offsets,
)
from appliance.documents.chunking import CHUNK_FORMAT
from appliance.documents.limits import (
    ParseLimits,
    check_chunks,
    check_deadline,
    check_limits,
)
from appliance.documents.model import sha256_text
from appliance.errors import UserFacingError
from appliance.retrieval import versions as V
from appliance.retrieval.store import DocumentRow, NewChunk, Store
from appliance.retrieval.vectors import HnswParams, VectorIndex

log = logging.getLogger(__name__)

DOC_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REBUILD_DELETED_FRACTION = 0.3  # rebuild the graph when this share of its slots is deleted
SOURCES = ("folder", "api")
# Manifest keys of a writable copy that say which bundle index it was made from; every later
# version built on it keeps them.
INHERITED_KEYS = ("base_id", "copied_from")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def doc_id_for_path(rel: str) -> str:
    """A stable, URL-safe id for a folder document: a slug of its path plus a short hash."""
    slug = re.sub(r"[^a-z0-9]+", "-", rel.lower()).strip("-")[:48].strip("-") or "doc"
    return f"{slug}-{sha256_text(rel)[:8]}"


def check_relative(rel: str, what: str) -> str:
    """Refuse absolute paths and `..`; returns the normalised POSIX relative path."""
    if not rel or "\x00" in rel:
        raise UserFacingError(f"{what}: empty or invalid path {rel!r}")
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or re.match(r"^[A-Za-z]:", rel):
        raise UserFacingError(
            f"{what}: absolute path {rel!r} refused; use a path inside the folder"
        )
    if ".." in p.parts:
        raise UserFacingError(f"{what}: path {rel!r} leaves the folder ('..'); refused")
    return p.as_posix()


def resolve_inside(root: Path, rel: str, what: str = "path") -> Path:
    """root/rel, refusing absolute paths, `..` and symbolic links that leave `root`."""
    rel = check_relative(rel, what)
    root = Path(root).resolve()
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise UserFacingError(f"{what}: {rel!r} resolves outside {root} (symbolic link); refused")
    return target


# --- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentInput:
    """A document handed to the index directly (the service's POST /v1/documents).

    Give `data` (file bytes; the suffix of `name` picks the loader) or `text` (plain text or
    Markdown). `name` is a bare file name: paths, `..` and absolute names are refused.
    `doc_id` defaults to one derived from the name; re-posting the same id replaces it.
    """

    name: str
    data: bytes | None = None
    text: str | None = None
    title: str | None = None
    metadata: dict | None = None
    doc_id: str | None = None
    limits: ParseLimits | None = None  # the service's parse limits; None: unlimited

    def __post_init__(self) -> None:
        if (self.data is None) == (self.text is None):
            raise UserFacingError("a document needs exactly one of `data` (bytes) or `text`")
        name = self.name or ""
        if (
            not name
            or "/" in name
            or "\\" in name
            or name in (".", "..")
            or name.startswith(".")
            or "\x00" in name
        ):
            raise UserFacingError(
                f"document name {name!r} is not a plain file name; give a name such as "
                "'pump-notes.md' (no folders, no '..', no leading dot)"
            )
        if self.doc_id is not None and not DOC_ID_RE.match(self.doc_id):
            raise UserFacingError(
                f"doc_id {self.doc_id!r} is invalid; use 1-128 letters, digits, '.', '_' or '-'"
            )
        if self.data is None and not is_supported(name):
            object.__setattr__(self, "name", name + ".txt")
        elif self.data is not None and not is_supported(name):
            raise LoaderError(name, "unsupported file type; use pdf, docx, html, md, txt or csv")

    @property
    def resolved_id(self) -> str:
        return self.doc_id or f"api-{doc_id_for_path(self.name)}"

    def load(self) -> Document:
        meta = dict(self.metadata or {})
        if self.title:
            meta["title"] = self.title
        data = self.data if self.data is not None else (self.text or "").encode("utf-8")
        if self.limits is not None:
            check_limits(data, self.name, self.limits)  # before any parser sees the bytes
        return load_bytes(data, self.name, metadata=meta)


# --- the writer ---------------------------------------------------------------------------


class IndexWriter:
    """One transaction on an index folder: `with IndexWriter(...) as w: ...; w.commit()`.

    Holds the folder's writer lock for its lifetime. Nothing is visible to readers until
    `commit()` publishes the new version; leaving the block without commit discards it.
    """

    def __init__(
        self,
        index_dir: Path,
        embedder,
        *,
        chunking: ChunkingConfig | None = None,
        hnsw: HnswParams | None = None,
        rebuild: bool = False,
        lock_timeout_s: float = 60.0,
        batch_size: int = 32,
        base_from: Path | None = None,
        manifest_extra: dict | None = None,
    ) -> None:
        """`base_from`: start from this version folder of another index (a bundle's) instead
        of this index's current version; `manifest_extra`: recorded in the new version's
        manifest (and kept by later versions built on it)."""
        self.index_dir = Path(index_dir)
        self.base_from = Path(base_from) if base_from is not None else None
        self.manifest_extra = dict(manifest_extra or {})
        self.embedder = embedder
        self.chunking = chunking
        self.hnsw = hnsw or HnswParams()
        self.rebuild = rebuild
        self.lock_timeout_s = lock_timeout_s
        self.batch_size = batch_size
        self._lock_cm = None
        self.tmp: Path | None = None
        self.store: Store | None = None
        self.vectors: VectorIndex | None = None
        self.base_version: str | None = None
        self.changed = False
        self.chunks_embedded = 0
        self.version: str | None = None

    # context management ------------------------------------------------------------------

    def __enter__(self) -> IndexWriter:
        self._lock_cm = V.write_lock(self.index_dir, self.lock_timeout_s)
        self._lock_cm.__enter__()
        try:
            self._begin()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if self.store is not None and self.version is None:
            self.store.close()
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self._lock_cm is not None:
            self._lock_cm.__exit__(None, None, None)
            self._lock_cm = None

    def _begin(self) -> None:
        V.collect_garbage(self.index_dir, keep=2)
        self.tmp = V.new_tmp_dir(self.index_dir)
        dim = self.embedder.dim
        old_store = None
        if self.base_from is not None:
            manifest = V.verify_version(self.base_from)
            self.chunking = self.chunking or ChunkingConfig(**manifest.get("chunking", {}))
            shutil.copyfile(self.base_from / V.STORE_FILE, self.tmp / V.STORE_FILE)
            self.store = Store(self.tmp / V.STORE_FILE, writable=True)
            self.vectors = VectorIndex.load(
                self.base_from / V.VECTORS_FILE,
                dim,
                live=int(manifest.get("chunks", 0)),
                params=self.hnsw,
            )
            self.changed = True  # always published: it is a new base
        elif V.is_index(self.index_dir):
            self.base_version = V.read_pointer(self.index_dir)
            vdir = V.version_dir(self.index_dir, self.base_version)
            manifest = V.verify_version(vdir)
            emb = manifest.get("embedder", {})
            same_embedder = emb.get("model_id") == self.embedder.model_id and emb.get("dim") == dim
            if not same_embedder and not self.rebuild:
                raise UserFacingError(
                    f"index {self.index_dir} was built with embedder {emb.get('model_id')!r} "
                    f"(dim {emb.get('dim')}), not {self.embedder.model_id!r} (dim {dim}); "
                    "re-ingest with --rebuild or use another --index"
                )
            if self.chunking is None:
                self.chunking = ChunkingConfig(**manifest.get("chunking", {}))
            for key in INHERITED_KEYS:
                if key in manifest:
                    self.manifest_extra.setdefault(key, manifest[key])
            if self.rebuild:
                old_store = Store(vdir / V.STORE_FILE, writable=False)
            else:
                shutil.copyfile(vdir / V.STORE_FILE, self.tmp / V.STORE_FILE)
                self.store = Store(self.tmp / V.STORE_FILE, writable=True)
                self.vectors = VectorIndex.load(
                    vdir / V.VECTORS_FILE,
                    dim,
                    live=int(manifest.get("chunks", 0)),
                    params=self.hnsw,
                )
        if self.chunking is None:
            self.chunking = ChunkingConfig()
        if self.store is None:
            self.store = Store(self.tmp / V.STORE_FILE, writable=True)
            self.vectors = VectorIndex.create(dim, 1024, self.hnsw)
            self.changed = True
        if old_store is not None:
            try:
                for doc in old_store.documents(source="api").values():
                    self._carry_over(old_store, doc, reembed=True)
            finally:
                old_store.close()
        self._offsets = tokenizer_offsets(self.embedder.tokenizer)

    # reading -------------------------------------------------------------------------------

    def documents(self, source: str | None = None) -> dict[str, DocumentRow]:
        return self.store.documents(source)

    def fingerprint(self, content_hash: str, path: str, metadata: dict) -> str:
        return sha256_text(
            json.dumps(
                {
                    "content": content_hash,
                    "path": path,
                    "metadata": metadata,
                    "chunking": self.chunking.to_dict(),
                    "chunk_format": CHUNK_FORMAT,
                    "embedder": [self.embedder.model_id, self.embedder.dim],
                },
                sort_keys=True,
            )
        )

    # changes -------------------------------------------------------------------------------

    def put(
        self,
        doc: Document,
        doc_id: str,
        source: str,
        fingerprint: str | None = None,
        *,
        limits: ParseLimits | None = None,
        deadline: float | None = None,
    ) -> int:
        """Add or replace a document; returns its number of chunks. With `limits`, a document
        of too many chunks is refused before any is embedded, and embedding stops at
        `deadline` (LimitExceeded)."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if not DOC_ID_RE.match(doc_id):
            raise UserFacingError(f"doc_id {doc_id!r} is invalid")
        chunks = chunk_document(doc, self._offsets, self.chunking)
        if limits is not None:
            check_chunks(doc.path, len(chunks), limits)
        new = [
            NewChunk(
                ord=c.ord, section=c.section_path, page=c.page, kind=c.kind,
                char_start=c.char_start, char_end=c.char_end, text=c.text,
                embed_text=c.embed_text(doc.title), content_hash=c.content_hash(doc.title),
            )
            for c in chunks
        ]  # fmt: skip
        vecs = self._embed(new, deadline=deadline, limits=limits, name=doc.path)
        row = DocumentRow(
            doc_id=doc_id, path=doc.path, title=doc.title, source=source,
            content_hash=doc.content_hash,
            fingerprint=fingerprint or self.fingerprint(doc.content_hash, doc.path, doc.metadata),
            metadata=doc.metadata, n_chunks=len(new), added_at=_now(),
        )  # fmt: skip
        self._replace(row, new, vecs)
        return len(new)

    def delete(self, doc_id: str) -> bool:
        """Remove a document; True if it was there."""
        existed = self.store.document(doc_id) is not None
        ids = self.store.delete_document(doc_id)
        self.vectors.delete(ids)
        self.store.commit()
        self.changed = self.changed or existed
        return existed

    def _replace(self, row: DocumentRow, chunks: list[NewChunk], vecs: np.ndarray) -> None:
        old_ids = self.store.delete_document(row.doc_id)
        self.vectors.delete(old_ids)
        ids = self.store.upsert_document(row, chunks, vecs)
        self.vectors.add(np.array(ids, dtype=np.int64), vecs)
        self.store.commit()
        self.changed = True

    def _embed(
        self,
        chunks: list[NewChunk],
        *,
        deadline: float | None = None,
        limits: ParseLimits | None = None,
        name: str = "",
    ) -> np.ndarray:
        dim = self.embedder.dim
        out = np.zeros((len(chunks), dim), dtype=np.float32)
        todo = []
        for i, c in enumerate(chunks):
            cached = self.store.cached_embedding(c.content_hash, dim)
            if cached is not None:
                out[i] = cached
            else:
                todo.append(i)
        if todo and deadline is None:
            out[todo] = self.embedder.embed(
                [chunks[i].embed_text for i in todo], batch_size=self.batch_size
            )
        elif todo:  # batch by batch, so the time limit is checked between batches
            for start in range(0, len(todo), self.batch_size):
                check_deadline(name, deadline, limits)
                part = todo[start : start + self.batch_size]
                out[part] = self.embedder.embed(
                    [chunks[i].embed_text for i in part], batch_size=self.batch_size
                )
        self.chunks_embedded += len(todo)
        return out

    def _carry_over(self, old: Store, doc: DocumentRow, reembed: bool) -> None:
        """Copy a document from another store; re-embed when the embedder differs. What was
        embedded (header, glossary lines, text) is copied as it was indexed."""
        rows = list(old.iter_chunks(doc.doc_id))
        indexed = old.embed_texts(doc.doc_id)  # every chunk has its keyword-index row
        chunks = [
            NewChunk(
                ord=r.ord, section=r.section, page=r.page, kind=r.kind,
                char_start=r.char_start, char_end=r.char_end, text=r.text,
                embed_text=indexed[r.id], content_hash=r.content_hash,
            )
            for r, _ in rows
        ]  # fmt: skip
        if reembed:
            vecs = self._embed(chunks)
            fingerprint = self.fingerprint(doc.content_hash, doc.path, doc.metadata)
        else:
            vecs = (
                np.vstack([np.frombuffer(b, dtype=np.float32) for _, b in rows])
                if rows
                else (np.zeros((0, self.embedder.dim), dtype=np.float32))
            )
            fingerprint = doc.fingerprint
        row = DocumentRow(**{**doc.__dict__, "fingerprint": fingerprint})
        self._replace(row, chunks, vecs)

    # publication ---------------------------------------------------------------------------

    def commit(self) -> str:
        """Publish the new version (or keep the current one when nothing changed)."""
        if not self.changed and self.base_version is not None:
            self.version = self.base_version
            self.store.close()
            return self.version
        docs, n_chunks = self.store.counts()
        slots = self.vectors.element_count
        if slots and (slots - n_chunks) > REBUILD_DELETED_FRACTION * slots:
            labels, mat = self.store.embeddings()
            self.vectors = VectorIndex.create(self.embedder.dim, max(len(labels), 16), self.hnsw)
            self.vectors.add(labels, mat)
        self.vectors.save(self.tmp / V.VECTORS_FILE)
        self.store.set_meta("embedder_model_id", self.embedder.model_id)
        self.store.finalize()
        version = V.next_version(self.index_dir)
        V.write_manifest(
            self.tmp,
            {
                "version": version,
                "created": _now(),
                "previous": self.base_version,
                "documents": docs,
                "chunks": n_chunks,
                "embedder": {"model_id": self.embedder.model_id, "dim": self.embedder.dim},
                "chunking": self.chunking.to_dict(),
                "hnsw": {"M": self.hnsw.M, "ef_construction": self.hnsw.ef_construction},
                **self.manifest_extra,
            },
        )
        V.publish(self.index_dir, self.tmp, version)
        self.tmp = None
        self.version = version
        V.collect_garbage(self.index_dir, keep=2)
        return version
