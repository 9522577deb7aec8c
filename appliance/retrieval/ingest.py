"""Writing the index: folder ingestion (incremental), live document add/delete, bundle copies.

Every change goes through `IndexWriter`, which copies the current version aside, applies the
change (chunk, embed, SQLite + FTS5 + hnswlib), and publishes the result as the next
version (see versions.py). `expert ingest` re-run on a changed folder adds new and changed
files, removes deleted ones and skips unchanged ones by content hash; documents added through
the service's API (`source='api'`) are never removed by a folder re-ingest.

Ingestion never reads outside the folder it was given: symbolic links that leave it, `..`
and absolute paths (in metadata.json or in API file names) are refused.

Test: .venv/bin/pytest tests/appliance/test_retrieval.py tests/appliance/test_retrieval_faults.py
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
    normalize_metadata,
    tokenizer_offsets,
)
from appliance.documents.chunking import SECTION_JOIN
from appliance.documents.limits import (
    LimitExceeded,
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

METADATA_FILE = "metadata.json"
DOC_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REBUILD_DELETED_FRACTION = 0.3  # rebuild the graph when this share of its slots is deleted
SOURCES = ("folder", "api")
# Manifest keys of a writable copy that say which bundle index it was made from; every later
# version built on it keeps them.
INHERITED_KEYS = ("base_id", "copied_from")
# How long a live update (the service's POST/DELETE /v1/documents) waits for another writer,
# such as `expert ingest`, before it is answered 409 (try again).
API_LOCK_TIMEOUT_S = 10.0


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
        """Copy a document from another store; re-embed when the embedder differs."""
        rows = list(old.iter_chunks(doc.doc_id))
        chunks = []
        for r, _ in rows:
            head = SECTION_JOIN.join(x for x in (doc.title, r.section) if x)
            embed_text = f"{head}\n{r.text}" if head else r.text
            chunks.append(
                NewChunk(
                    ord=r.ord, section=r.section, page=r.page, kind=r.kind,
                    char_start=r.char_start, char_end=r.char_end, text=r.text,
                    embed_text=embed_text, content_hash=sha256_text(embed_text),
                )
            )  # fmt: skip
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


# --- folder ingestion ---------------------------------------------------------------------


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    chunks_embedded: int = 0
    documents: int = 0
    chunks: int = 0
    version: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"index version {self.version}: {self.documents} documents, {self.chunks} chunks "
            f"({len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} "
            f"removed, {len(self.unchanged)} unchanged, {len(self.skipped)} skipped; "
            f"{self.chunks_embedded} chunks embedded in {self.seconds:.1f} s)"
        ]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def iter_source_files(
    src: Path, exclude: Sequence[Path] = ()
) -> Iterator[tuple[str, Path | None, str | None]]:
    """(relative path, file to read or None, reason it is skipped or None), sorted.

    Hidden files and folders are ignored; symbolic links that leave `src` are refused;
    symbolic links to folders are not followed (loops); only regular files are read.
    """
    root = Path(src).resolve()
    excluded = {Path(e).resolve() for e in exclude}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            p = here / d
            rel = p.relative_to(root).as_posix()
            if d.startswith(".") or p.resolve() in excluded:
                continue
            if p.is_symlink():
                target = p.resolve()
                reason = (
                    "refused: symbolic link leads outside the folder"
                    if not target.is_relative_to(root)
                    else "symbolic link to a folder is not followed"
                )
                yield rel + "/", None, reason
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = here / name
            rel = p.relative_to(root).as_posix()
            if rel == METADATA_FILE:
                continue
            target = p.resolve() if p.is_symlink() else p
            if p.is_symlink() and not target.is_relative_to(root):
                yield rel, None, "refused: symbolic link leads outside the folder"
                continue
            try:
                mode = os.stat(target).st_mode
            except OSError as exc:
                yield rel, None, f"cannot be read ({exc.strerror})"
                continue
            if not stat.S_ISREG(mode):
                yield rel, None, "not a regular file"
                continue
            if not is_supported(name):
                yield rel, None, f"unsupported file type {Path(name).suffix or '(none)'}"
                continue
            yield rel, target, None


def read_metadata_file(root: Path) -> dict[str, dict]:
    """metadata.json: {relative path: {key: value}}; paths are checked like any other."""
    path = Path(root) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserFacingError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc
    if not isinstance(raw, dict):
        raise UserFacingError(f"{path} must map file paths to metadata objects")
    out = {}
    for rel, meta in raw.items():
        norm = check_relative(rel, f"{METADATA_FILE} entry")
        if not isinstance(meta, dict):
            raise UserFacingError(f"{path}: the entry for {rel!r} must be an object")
        out[norm] = normalize_metadata(meta, f"{METADATA_FILE} entry {rel!r}")
    return out


def ingest_folder(
    src: Path,
    index_dir: Path,
    embedder,
    *,
    metadata: dict | None = None,
    progress: bool = True,
    chunking: ChunkingConfig | None = None,
    rebuild: bool = False,
) -> IngestReport:
    """Bring `index_dir` in line with the documents under `src`, incrementally.

    `metadata` applies to every document (e.g. {"site": "riverside"}); a file's own front
    matter and its metadata.json entry override it. Unreadable files are skipped and listed
    in the report; the rest of the batch goes on.
    """
    t0 = time.perf_counter()
    src = Path(src)
    if not src.is_dir():
        raise UserFacingError(f"{src} is not a folder; give the folder that holds the documents")
    defaults = normalize_metadata(metadata, "--metadata")
    per_file = read_metadata_file(src)
    report = IngestReport()
    entries = list(iter_source_files(src, exclude=[index_dir]))
    seen_paths = {rel for rel, _, _ in entries}
    for rel in per_file:
        if rel not in seen_paths:
            log.warning("%s names %s, which is not in %s", METADATA_FILE, rel, src)

    from tqdm import tqdm

    with IndexWriter(index_dir, embedder, chunking=chunking, rebuild=rebuild) as writer:
        existing = {d.path: d for d in writer.documents(source="folder").values()}
        for rel, file, reason in tqdm(entries, desc="ingest", unit="file", disable=not progress):
            if reason is not None:
                report.skipped.append((rel, reason))
                continue
            try:
                data = file.read_bytes()
            except OSError as exc:
                report.skipped.append((rel, f"cannot be read ({exc.strerror})"))
                continue
            meta = {**defaults, **per_file.get(rel, {})}
            old = existing.get(rel)
            # Front matter is part of the bytes, so bytes + external metadata decide.
            fingerprint = writer.fingerprint(_sha256(data), rel, {"external": meta})
            if old is not None and old.fingerprint == fingerprint:
                report.unchanged.append(rel)
                continue
            try:
                doc = load_bytes(data, rel, metadata=meta)
            except LoaderError as exc:
                report.skipped.append((rel, exc.reason))
                continue
            doc_id = old.doc_id if old is not None else doc_id_for_path(rel)
            writer.put(doc, doc_id, source="folder", fingerprint=fingerprint)
            (report.updated if old is not None else report.added).append(rel)
        for path, old in existing.items():
            if path not in seen_paths:
                writer.delete(old.doc_id)
                report.removed.append(path)
        report.version = writer.commit()
        report.chunks_embedded = writer.chunks_embedded
        report.documents, report.chunks = _counts(index_dir)
    report.seconds = time.perf_counter() - t0
    for path, why in report.skipped:
        log.warning("skipped %s: %s", path, why)
    return report


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _counts(index_dir: Path) -> tuple[int, int]:
    manifest = json.loads(
        (V.version_dir(index_dir, V.read_pointer(index_dir)) / V.MANIFEST).read_text()
    )
    return int(manifest.get("documents", 0)), int(manifest.get("chunks", 0))


# --- live updates and bundle copies -------------------------------------------------------


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)  # doc ids
    replaced: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    chunks: int = 0
    version: str = ""


def add_documents(index_dir: Path, embedder, inputs: Sequence[DocumentInput]) -> AddReport:
    """Add or replace documents (source 'api') and publish a new version.

    Documents are parsed before the index's writer lock is taken, so a slow or refused upload
    never holds up other writers. A document over its `limits` raises LimitExceeded and
    nothing is published; one that cannot be read is skipped and reported."""
    report = AddReport()
    loaded = []
    for item in inputs:
        started = time.monotonic()
        try:
            doc = item.load()
        except LimitExceeded:
            raise
        except LoaderError as exc:
            report.skipped.append((item.name, exc.reason))
            continue
        deadline = item.limits.deadline(started) if item.limits is not None else None
        if item.limits is not None:
            check_deadline(item.name, deadline, item.limits)
        loaded.append((item, doc, deadline))
    with IndexWriter(index_dir, embedder, lock_timeout_s=API_LOCK_TIMEOUT_S) as writer:
        for item, doc, deadline in loaded:
            doc_id = item.resolved_id
            existed = writer.store.document(doc_id) is not None
            report.chunks += writer.put(
                doc, doc_id, source="api", limits=item.limits, deadline=deadline
            )
            (report.replaced if existed else report.added).append(doc_id)
        report.version = writer.commit()
    return report


def delete_document(index_dir: Path, embedder, doc_id: str) -> bool:
    """Delete a document (any source); True if it existed. Publishes a new version."""
    with IndexWriter(index_dir, embedder, lock_timeout_s=API_LOCK_TIMEOUT_S) as writer:
        existed = writer.delete(doc_id)
        writer.commit()
    return existed


BASE_FILE = "base.json"


def open_writable_copy(bundle_index_dir: Path, state_dir: Path, embedder=None) -> Path:
    """A writable index for live updates, copied once from a bundle's read-only index.

    Returns `state_dir/index`. The copy is reused while the bundle's index is the same one it
    came from; when a new bundle brings a different index, a fresh copy is made and documents
    added through the API are carried over (re-embedded if the embedder changed and an
    `embedder` is given; dropped with a warning otherwise).

    The copy and the carried-over documents are built in one temporary version and published
    once, with the bundle index's id in its manifest: a crash, a full disk or an embedding
    error on the way leaves the previous version (with its API documents) current, and the
    next start simply tries again.
    """
    bundle_index_dir = Path(bundle_index_dir)
    dest = Path(state_dir) / "index"
    src_version = V.read_pointer(bundle_index_dir)
    src_vdir = V.version_dir(bundle_index_dir, src_version)
    src_manifest = V.verify_version(src_vdir)
    base_id = src_manifest["files"][V.STORE_FILE]["sha256"]
    if _copy_base_id(dest) == base_id:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    bundle_emb = src_manifest.get("embedder") or {}
    extra = {"base_id": base_id, "copied_from": str(src_vdir)}
    writer_emb = embedder if embedder is not None else _ManifestEmbedder(src_manifest)
    with IndexWriter(dest, writer_emb, base_from=src_vdir, manifest_extra=extra) as writer:
        if _copy_base_id(dest) == base_id:  # another process made it meanwhile
            return dest
        if V.is_index(dest):
            old_vdir = V.version_dir(dest, V.read_pointer(dest))
            old_emb = V.verify_version(old_vdir).get("embedder", {})
            same = old_emb == bundle_emb
            old_store = Store(old_vdir / V.STORE_FILE, writable=False)
            try:
                old_api = list(old_store.documents(source="api").values())
                if old_api and (same or embedder is not None):
                    for doc in old_api:
                        writer._carry_over(old_store, doc, reembed=not same)
                elif old_api:
                    log.warning(
                        "the new bundle's embedder differs; %d documents added through the API "
                        "were not carried over (pass an embedder to re-embed them)",
                        len(old_api),
                    )
            finally:
                old_store.close()
        writer.commit()
    (dest / BASE_FILE).unlink(missing_ok=True)  # the id now lives in the version's manifest
    return dest


def _copy_base_id(dest: Path) -> str | None:
    """The id of the bundle index the current version of `dest` was copied from, or None."""
    if not V.is_index(dest):
        return None
    try:
        vdir = V.version_dir(dest, V.read_pointer(dest))
        manifest = json.loads((vdir / V.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, UserFacingError):
        return None
    if "base_id" in manifest:
        return manifest["base_id"]
    legacy = dest / BASE_FILE  # copies made before the id moved into the manifest
    try:
        return json.loads(legacy.read_text()).get("base_id") if legacy.is_file() else None
    except (OSError, ValueError):
        return None


class _ManifestEmbedder:
    """Stands in for the embedder when documents are copied with their vectors unchanged."""

    def __init__(self, manifest: dict) -> None:
        self.model_id = manifest["embedder"]["model_id"]
        self.dim = int(manifest["embedder"]["dim"])
        self.tokenizer = None

    def embed(self, texts, batch_size: int = 32):
        raise UserFacingError("re-embedding needs the bundle's embedder")
