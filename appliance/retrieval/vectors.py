"""Dense search: an hnswlib cosine graph over chunk embeddings, plus exact search for filters.

hnswlib answers unfiltered queries in well under a millisecond. When metadata filters leave a
small candidate set, an exact scan of those vectors is both faster and exact (a filtered
graph walk can miss results when few nodes pass); a large filtered set uses hnswlib's own
filter callback.

Test: .venv/bin/pytest tests/appliance/test_retrieval.py
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXACT_SCAN_LIMIT = 4096  # filtered sets up to this size are scanned exactly


@dataclass(frozen=True)
class HnswParams:
    M: int = 16
    ef_construction: int = 200
    ef_search: int = 128

    def __post_init__(self) -> None:
        if not (2 <= self.M <= 128):
            raise ValueError(f"M must be in [2, 128], got {self.M}")
        if self.ef_construction < self.M:
            raise ValueError(f"ef_construction must be >= M, got {self.ef_construction}")
        if self.ef_search < 1:
            raise ValueError(f"ef_search must be >= 1, got {self.ef_search}")


class VectorIndex:
    """An hnswlib index whose labels are chunk ids."""

    def __init__(self, index, dim: int, params: HnswParams, live: int = 0) -> None:
        self._index = index
        self.dim = dim
        self.live = live  # elements not marked deleted (the owner keeps this in step)
        self.params = params
        self._ef = params.ef_search
        self._lock = threading.Lock()  # set_ef is not safe during a search

    @classmethod
    def create(cls, dim: int, capacity: int, params: HnswParams | None = None) -> VectorIndex:
        import hnswlib

        params = params or HnswParams()
        index = hnswlib.Index(space="cosine", dim=dim)
        index.init_index(
            max_elements=max(capacity, 16),
            M=params.M,
            ef_construction=params.ef_construction,
            allow_replace_deleted=True,
        )
        index.set_ef(params.ef_search)
        return cls(index, dim, params)

    @classmethod
    def load(cls, path: Path, dim: int, live: int, params: HnswParams | None = None) -> VectorIndex:
        """Load a saved graph. Verify the file's checksum first: hnswlib trusts its input."""
        import hnswlib

        params = params or HnswParams()
        index = hnswlib.Index(space="cosine", dim=dim)
        index.load_index(str(path), allow_replace_deleted=True)
        index.set_ef(params.ef_search)
        return cls(index, dim, params, live)

    def save(self, path: Path) -> None:
        self._index.save_index(str(path))

    @property
    def capacity(self) -> int:
        return self._index.get_max_elements()

    @property
    def element_count(self) -> int:
        """Slots in use, deleted ones included."""
        return self._index.get_current_count()

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        if len(labels) == 0:
            return
        needed = self._index.get_current_count() + len(labels)
        if needed > self._index.get_max_elements():
            self._index.resize_index(max(needed, int(self._index.get_max_elements() * 1.5)))
        # One thread: hnswlib links each new vector to the graph as it stands, so inserting on
        # several threads makes the graph, and an approximate search near the top-k edge, differ
        # from one build of the same documents to the next (two ingests of the example plant
        # gave two graphs; the Spanish test recall@5 read 24/28 on one build, 25/28 on another).
        # One thread makes an index, and every figure measured on it, reproducible.
        self._index.add_items(
            np.asarray(vectors, dtype=np.float32),
            np.asarray(labels, dtype=np.int64),
            num_threads=1,
            replace_deleted=True,
        )
        self.live += len(labels)

    def delete(self, labels) -> None:
        for label in labels:
            try:
                self._index.mark_deleted(int(label))
                self.live -= 1
            except RuntimeError:
                pass  # already deleted or never added

    def vectors(self, labels: np.ndarray) -> np.ndarray:
        if len(labels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self._index.get_items(list(map(int, labels))), dtype=np.float32)

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Top-k (label, cosine similarity), restricted to `allowed` labels if given."""
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if allowed is not None:
            if len(allowed) == 0:
                return []
            if len(allowed) <= EXACT_SCAN_LIMIT:
                vecs = self.vectors(allowed)
                sims = vecs @ q[0]
                top = np.argsort(-sims)[:k]
                return [(int(allowed[i]), float(sims[i])) for i in top]
        live = self.live
        k = min(k, live if allowed is None else min(live, len(allowed)))
        if k <= 0:
            return []
        allowed_set = set(map(int, allowed)) if allowed is not None else None
        with self._lock:
            ef = max(self.params.ef_search, k)
            if ef != self._ef:
                self._index.set_ef(ef)
                self._ef = ef
            try:
                labels, dists = self._index.knn_query(
                    q,
                    k=k,
                    num_threads=1,
                    filter=(lambda label: label in allowed_set) if allowed_set else None,
                )
            except RuntimeError:
                labels = None  # fewer than k reachable through the filter
        if labels is None:
            vecs = self.vectors(allowed)
            sims = vecs @ q[0]
            top = np.argsort(-sims)[:k]
            return [(int(allowed[i]), float(sims[i])) for i in top]
        return [(int(label), float(1.0 - d)) for label, d in zip(labels[0], dists[0], strict=True)]
