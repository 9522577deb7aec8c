"""Hybrid retrieval: dense (hnswlib) + keyword (FTS5 BM25), fused by reciprocal rank.

Dense search finds paraphrases; BM25 finds exact codes (`E-47`, `P-101`) that embeddings
blur. Reciprocal-rank fusion needs no score calibration between the two. Metadata filters
are applied inside both searches, before ranking, so a terminal scoped to line A never sees
line B's chunks, not even as a candidate.

Every passage carries `dense_score`, the cosine similarity of the chunk to the question, also
for keyword-only hits: the service uses the best one as its calibrated "the documents do not
cover this" threshold.

A `Retriever` holds one index version (a snapshot) and answers each query wholly from one
snapshot; before a query it checks (one stat call) whether a newer version was published
and switches to it, so updates become visible without a restart.

Test: .venv/bin/pytest tests/appliance/test_retrieval.py
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from appliance.documents.chunking import SECTION_JOIN
from appliance.errors import UserFacingError
from appliance.i18n import detect_language
from appliance.prompting import PromptPassage
from appliance.retrieval import versions as V
from appliance.retrieval.keywords import code_terms, fold, fts_query, quoted_terms
from appliance.retrieval.store import DocumentRow, Store
from appliance.retrieval.vectors import HnswParams, VectorIndex

log = logging.getLogger(__name__)

MODES = ("hybrid", "dense", "keyword")
MAX_K = 100
QUERY_VECTORS_KEPT = 16  # one per concurrent answer is enough (a handful of slots)
RRF_K = 60
CODE_BONUS = 1.0 / (RRF_K + 1)
ENTRY_BONUS = CODE_BONUS


@dataclass
class Passage:
    """One retrieved chunk, with where it came from and how it scored."""

    chunk_id: str
    doc_id: str
    path: str  # relative to the ingested folder (or the API file name)
    title: str
    section: str  # section path joined with " > "
    page: int | None
    text: str
    score: float  # the ranking score of the mode (RRF for hybrid)
    dense_score: float  # cosine similarity to the query, always filled
    keyword_score: float | None  # BM25 (higher is better); None if no keyword match
    metadata: dict = field(default_factory=dict)

    def to_prompt(self) -> PromptPassage:
        return PromptPassage(text=self.text, title=self.title, section=self.section, page=self.page)

    def to_dict(self) -> dict:
        return asdict(self)


def _fold_entry(name: str) -> str:
    return fold(" ".join(name.split()).lower())


class _Snapshot:
    """One published version, opened read-only after its checksums were verified."""

    def __init__(self, index_dir: Path, hnsw: HnswParams) -> None:
        last_exc: Exception | None = None
        for _ in range(5):  # a version can be swept between reading CURRENT and opening it
            self.stamp = V.pointer_stamp(index_dir)
            self.version = V.read_pointer(index_dir)
            vdir = V.version_dir(index_dir, self.version)
            if not vdir.is_dir() and V.pointer_stamp(index_dir) != self.stamp:
                continue
            try:
                self.manifest = V.verify_version(vdir)
                self.store = Store(vdir / V.STORE_FILE, writable=False)
                break
            except V.IndexCorruptError as exc:
                if V.pointer_stamp(index_dir) == self.stamp:
                    raise
                last_exc = exc
        else:
            raise last_exc or V.IndexCorruptError(f"index {index_dir} keeps changing; retry")
        emb = self.manifest.get("embedder", {})
        self.dim = int(emb.get("dim", 0))
        self.model_id = str(emb.get("model_id", ""))
        try:
            self.vectors = VectorIndex.load(
                vdir / V.VECTORS_FILE, self.dim, live=int(self.manifest.get("chunks", 0)),
                params=hnsw,
            )  # fmt: skip
        except Exception as exc:
            self.store.close()
            raise V.IndexCorruptError(
                f"index file {vdir / V.VECTORS_FILE} cannot be loaded ({exc}); re-ingest"
            ) from exc
        self.docs: dict[str, DocumentRow] = self.store.documents()
        self.chunk_count = int(self.manifest.get("chunks", 0))

    def close(self) -> None:
        self.store.close()


class Retriever:
    """Search an index folder. Thread-safe; one instance per process is enough."""

    def __init__(self, index_dir: Path, embedder, snapshot: _Snapshot, hnsw: HnswParams) -> None:
        self.index_dir = Path(index_dir)
        self.embedder = embedder
        self.hnsw = hnsw
        self._snap = snapshot
        self._reload_lock = threading.Lock()
        self._bad_stamp = None
        # The vectors of the last few queries: the answer path embeds the question again for
        # its abstention score (appliance.answering.best_sentence_score) right after searching.
        self._query_vectors: dict[str, np.ndarray] = {}
        self._query_lock = threading.Lock()
        self.candidates = 50  # per method, before fusion
        # The embedder's own trust in the keyword side (embedder.json `keyword_weight`).
        config = getattr(embedder, "config", None)
        self.keyword_weight = float(getattr(config, "keyword_weight", 1.0))

    @classmethod
    def open(cls, index_dir: Path, embedder, *, hnsw: HnswParams | None = None) -> Retriever:
        """Open the current version; refuses a corrupt index or a mismatched embedder."""
        hnsw = hnsw or HnswParams()
        snap = _Snapshot(Path(index_dir), hnsw)
        cls._check_embedder(snap, embedder)
        return cls(index_dir, embedder, snap, hnsw)

    @staticmethod
    def _check_embedder(snap: _Snapshot, embedder) -> None:
        if (snap.model_id, snap.dim) != (embedder.model_id, embedder.dim):
            snap.close()
            raise UserFacingError(
                f"index version {snap.version} was built with embedder {snap.model_id!r} "
                f"(dim {snap.dim}) but the embedder given is {embedder.model_id!r} "
                f"(dim {embedder.dim}); use the bundle's own embedder or re-ingest"
            )

    # -- versions ----------------------------------------------------------------------------

    @property
    def version(self) -> str:
        return self._snap.version

    def refresh(self) -> bool:
        """Switch to a newer published version if there is one; True if it switched.

        A newer version that fails verification is logged and skipped: the current one
        keeps serving.
        """
        stamp = V.pointer_stamp(self.index_dir)
        if stamp is None or stamp == self._snap.stamp or stamp == self._bad_stamp:
            return False
        with self._reload_lock:
            if stamp == self._snap.stamp:
                return False
            try:
                snap = _Snapshot(self.index_dir, self.hnsw)
                self._check_embedder(snap, self.embedder)
            except UserFacingError as exc:
                log.error("index update not loaded, still serving %s: %s", self.version, exc)
                self._bad_stamp = stamp
                return False
            self._snap = snap  # in-flight queries keep the snapshot they started with
            log.info("index switched to version %s", snap.version)
            return True

    # -- queries -----------------------------------------------------------------------------

    def search(
        self, query: str, k: int = 5, filters: dict | None = None, mode: str = "hybrid"
    ) -> list[Passage]:
        if mode not in MODES:
            raise UserFacingError(f"mode must be one of {MODES}, got {mode!r}")
        if not (1 <= k <= MAX_K):
            raise UserFacingError(f"k must be between 1 and {MAX_K}, got {k}")
        if not isinstance(query, str) or not query.strip():
            raise UserFacingError("the query is empty; give a question")
        if filters is not None and not isinstance(filters, dict):
            raise UserFacingError('filters must be an object such as {"line": "A"}')
        self.refresh()
        snap = self._snap  # the whole query uses this one version
        return self._search(snap, query, self.embed_query(query), k, filters or None, mode)

    def embed_query(self, query: str) -> np.ndarray:
        """The embedder's vector of `query` as a question; the last few are kept, so a caller
        that searched for a question gets its vector again without another embedding."""
        with self._query_lock:
            hit = self._query_vectors.get(query)
        if hit is not None:
            return hit
        vec = self.embedder.embed([query], kind="query")[0]
        with self._query_lock:
            if len(self._query_vectors) >= QUERY_VECTORS_KEPT:
                self._query_vectors.pop(next(iter(self._query_vectors)))
            self._query_vectors[query] = vec
        return vec

    def _search(
        self, snap: _Snapshot, query: str, qvec: np.ndarray, k: int, filters, mode: str
    ) -> list[Passage]:
        n = max(self.candidates, k)
        allowed = snap.store.allowed_ids(filters) if filters else None
        if allowed is not None and len(allowed) == 0:
            return []
        dense: list[tuple[int, float]] = []
        keyword: list[tuple[int, float]] = []
        if mode in ("hybrid", "dense"):
            dense = snap.vectors.search(qvec, n, allowed)
        if mode in ("hybrid", "keyword"):
            match = fts_query(query, language=detect_language(query))
            if match:
                keyword = snap.store.keyword_search(match, n, filters)
        if mode == "dense":
            scores = {i: s for i, s in dense}
        elif mode == "keyword":
            scores = {i: s for i, s in keyword}
        else:
            scores = {}
            for ranked, weight in ((dense, 1.0), (keyword, self.keyword_weight)):
                for rank, (i, _) in enumerate(ranked, start=1):
                    scores[i] = scores.get(i, 0.0) + weight / (RRF_K + rank)
            # A code the question names (E-47, P-101) found in the chunk counts as one more
            # first-place vote, split across the codes asked for.
            asked = set(code_terms(query, prefixes=False))
            if asked and scores:
                for i, codes in snap.store.chunk_codes(scores).items():
                    matched = len(asked & codes)
                    if matched:
                        scores[i] += CODE_BONUS * matched / len(asked)
            # A chunk that is the entry a question quotes ("¿qué hace la tecla «_»?", the row
            # named "_" of a key table) gets the same vote: the keyword side cannot find a
            # symbol, and a table's rows all look alike to the dense side.
            quoted = quoted_terms(query)
            if quoted and scores:
                for i, r in snap.store.chunk_rows(scores).items():
                    entry = r.section.rsplit(SECTION_JOIN, 1)[-1] if r.section else ""
                    if entry and _fold_entry(entry) in quoted:
                        scores[i] += ENTRY_BONUS
        top = sorted(scores, key=lambda i: (-scores[i], i))[:k]
        if not top:
            return []
        dense_by_id = dict(dense)
        missing = [i for i in top if i not in dense_by_id]
        if missing:
            vecs = snap.vectors.vectors(np.array(missing, dtype=np.int64))
            dense_by_id.update(zip(missing, (vecs @ qvec).tolist(), strict=True))
        kw_by_id = dict(keyword)
        rows = snap.store.chunk_rows(top)
        out = []
        for i in top:
            r = rows.get(i)
            if r is None:
                continue
            doc = snap.docs.get(r.doc_id)
            out.append(
                Passage(
                    chunk_id=f"{r.doc_id}#{r.ord}", doc_id=r.doc_id,
                    path=doc.path if doc else "", title=doc.title if doc else "",
                    section=r.section, page=r.page, text=r.text, score=float(scores[i]),
                    dense_score=float(dense_by_id[i]), keyword_score=kw_by_id.get(i),
                    metadata=dict(doc.metadata) if doc else {},
                )
            )  # fmt: skip
        return out

    # -- information -------------------------------------------------------------------------

    def count(self) -> int:
        """Chunks (searchable passages) in the current version."""
        self.refresh()
        return self._snap.chunk_count

    def document_count(self) -> int:
        self.refresh()
        return len(self._snap.docs)

    def documents(self) -> list[dict]:
        """id, path, title, source, metadata and chunk count of every document."""
        self.refresh()
        return [
            {
                "doc_id": d.doc_id, "path": d.path, "title": d.title, "source": d.source,
                "metadata": d.metadata, "chunks": d.n_chunks, "added_at": d.added_at,
            }
            for d in sorted(self._snap.docs.values(), key=lambda d: d.path)
        ]  # fmt: skip

    def mentions(self, phrase: str) -> bool:
        """Some passage of the current version holds `phrase` (keyword index, accents and
        case aside): a name the documents never mention cannot be answered from them. A name
        in capitals also counts where it is run together with a number ("IP" in "IP66", "DN"
        in "DN150"): the documents name that rating or size, only as one word.

        (The second form was added on the plant dev split: q079, "To which IP rating must the
        P-102 motor terminal box be sealed?", was refused because no passage holds "IP" alone.
        On the three dev splits no unanswerable question names such a prefix.)"""
        self.refresh()
        store = self._snap.store
        if store.mentions(phrase):
            return True
        word = phrase.strip()
        return len(word) >= 2 and word.isupper() and store.mentions_with_number(word)

    def entry_head(self, passage: Passage) -> Passage | None:
        """The first chunk of `passage`'s entry (same document and section path), scored like
        `passage`; None when `passage` is that chunk. A long entry is split into pieces and
        only the first holds its fact sheet (an Apache directive's Default line)."""
        snap = self._snap
        r = snap.store.first_chunk_of_section(passage.doc_id, passage.section)
        if r is None or f"{r.doc_id}#{r.ord}" == passage.chunk_id:
            return None
        doc = snap.docs.get(r.doc_id)
        return Passage(
            chunk_id=f"{r.doc_id}#{r.ord}", doc_id=r.doc_id, path=doc.path if doc else "",
            title=doc.title if doc else "", section=r.section, page=r.page, text=r.text,
            score=passage.score, dense_score=passage.dense_score,
            keyword_score=passage.keyword_score, metadata=dict(doc.metadata) if doc else {},
        )  # fmt: skip

    def passages_of_path(self, path: str) -> list[Passage]:
        """Every chunk of the document(s) at `path` (suffix match), unscored, in order."""
        snap = self._snap
        want = path.strip("/")
        out = []
        for doc in snap.docs.values():
            p = doc.path.strip("/")
            if not (p == want or want.endswith("/" + p) or p.endswith("/" + want)):
                continue
            for r, _ in snap.store.iter_chunks(doc.doc_id):
                out.append(
                    Passage(
                        chunk_id=f"{r.doc_id}#{r.ord}", doc_id=r.doc_id, path=doc.path,
                        title=doc.title, section=r.section, page=r.page, text=r.text,
                        score=0.0, dense_score=0.0, keyword_score=None, metadata=doc.metadata,
                    )
                )  # fmt: skip
        return out

    def stats(self) -> dict:
        self.refresh()
        s = self._snap
        return {
            "version": s.version, "documents": len(s.docs), "chunks": s.chunk_count,
            "embedder": s.model_id, "created": s.manifest.get("created"),
        }  # fmt: skip

    # -- live updates (the service's POST/DELETE /v1/documents) -------------------------------

    def add_documents(self, inputs: Sequence) -> object:
        """Add or replace `DocumentInput`s; returns an `AddReport`. Searchable on return."""
        from appliance.retrieval.updates import add_documents

        report = add_documents(self.index_dir, self.embedder, inputs)
        self.refresh()
        return report

    def delete_document(self, doc_id: str) -> bool:
        """Delete one document by id; True if it existed. Gone from search on return."""
        from appliance.retrieval.updates import delete_document

        existed = delete_document(self.index_dir, self.embedder, doc_id)
        self.refresh()
        return existed

    def close(self) -> None:
        self._snap.close()
