"""Retrieval speed and quality: our hnswlib index against exact brute-force search (numpy).

Run (all suites):  `expert bench --work var/work`
Run (this suite):  .venv/bin/python -m benchmarks.retrieval_bench [--quick] [--work var/work]

What is measured, at 10k and 100k vectors of 384 dimensions (10k only with --quick), and on
the example plant's own chunk embeddings:
- build time (hnswlib graph; for exact search, making the normalised float32 matrix),
- index memory (the saved graph; the matrix),
- p50/p99 latency and QPS of one query at a time, one thread each, top 10,
- recall@10 of the graph against the exact top 10.
On the plant corpus, also retrieval quality on the labelled questions: hybrid against dense
only (nDCG@10, code lookups), the reason hybrid exists.

The synthetic vectors are embedding-like, not uniform noise: 384-d, a rank-32 structure with
~n/100 clusters plus isotropic noise (nearest-neighbour cosine ~0.6, random pairs ~0), which
is how sentence embeddings behave. Queries are held-out points of the same distribution.
hnswlib runs with the appliance's own settings (M=16, ef_construction=200, ef=128).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from appliance.common.stats import percentile
from benchmarks.records import make_record, skipped_record

log = logging.getLogger(__name__)

SUITE = "retrieval"
PEER = "numpy exact search"
DIM = 384
K = 10


def embedding_like(n: int, dim: int = DIM, rank: int = 32, seed: int = 0) -> np.ndarray:
    """Unit vectors with the low intrinsic dimension and clustering of text embeddings."""
    rng = np.random.default_rng(seed)
    clusters = max(n // 100, 10)
    basis = rng.standard_normal((rank, dim)).astype(np.float32)
    centers = rng.standard_normal((clusters, rank)).astype(np.float32)
    z = centers[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, rank)).astype(np.float32)  # fmt: skip
    x = z @ basis + 0.9 * np.sqrt(rank) * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _limit_blas(threads: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=threads)


def exact_topk(matrix: np.ndarray, q: np.ndarray, k: int = K) -> np.ndarray:
    sims = matrix @ q
    top = np.argpartition(-sims, k)[:k]
    return top[np.argsort(-sims[top])]


def compare(
    name: str,
    data: np.ndarray,
    queries: np.ndarray,
    threads: int,
    *,
    index=None,
    labels: np.ndarray | None = None,
) -> list[dict]:
    """hnswlib vs exact on one dataset; `index` is an existing VectorIndex to measure."""
    from appliance.retrieval.vectors import HnswParams, VectorIndex

    params = HnswParams()
    n = len(data)
    labels = np.arange(n, dtype=np.int64) if labels is None else labels
    t0 = time.perf_counter()
    matrix = np.ascontiguousarray(data, dtype=np.float32)
    matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    exact_build = time.perf_counter() - t0

    t0 = time.perf_counter()
    built = VectorIndex.create(int(data.shape[1]), n, params)
    built._index.set_num_threads(threads)
    built.add(labels, data)
    hnsw_build = time.perf_counter() - t0
    index = index or built
    with tempfile.TemporaryDirectory() as tmp:
        built.save(Path(tmp) / "g.hnsw")
        hnsw_bytes = (Path(tmp) / "g.hnsw").stat().st_size

    k = min(K, n - 1)
    truth = []
    exact_lat = []
    with _limit_blas(threads):
        for q in queries:  # warm-up and ground truth
            truth.append(set(labels[exact_topk(matrix, q, k)].tolist()))
        for q in queries:
            t0 = time.perf_counter()
            exact_topk(matrix, q, k)
            exact_lat.append(time.perf_counter() - t0)
    hnsw_lat, hits = [], 0
    for q in queries[: min(len(queries), 20)]:
        index.search(q, k)  # warm-up
    for q, want in zip(queries, truth, strict=True):
        t0 = time.perf_counter()
        got = index.search(q, k)
        hnsw_lat.append(time.perf_counter() - t0)
        hits += len({label for label, _ in got} & want)
    recall = hits / (k * len(queries))
    conditions = {
        "vectors": n, "dim": int(data.shape[1]), "queries": len(queries), "k": k,
        "threads": threads, "M": params.M, "ef_construction": params.ef_construction,
        "ef_search": params.ef_search,
    }  # fmt: skip
    ms = 1000.0

    def rec(metric, unit, ours, peer, better, **kw):
        return make_record(SUITE, f"{name}_{metric}", unit, ours, peer, PEER, better,
                           params=conditions, **kw)  # fmt: skip

    return [
        rec("recall@10", "fraction", recall, 1.0, "higher"),
        rec(
            "qps",
            "queries/s",
            len(queries) / sum(hnsw_lat),
            len(queries) / sum(exact_lat),
            "higher",
        ),  # fmt: skip
        rec(
            "latency_p50",
            "ms",
            percentile(hnsw_lat, 50) * ms,
            percentile(exact_lat, 50) * ms,
            "lower",
        ),  # fmt: skip
        rec(
            "latency_p99",
            "ms",
            percentile(hnsw_lat, 99) * ms,
            percentile(exact_lat, 99) * ms,
            "lower",
        ),  # fmt: skip
        rec(
            "build_time",
            "s",
            hnsw_build,
            exact_build,
            "lower",
            note="exact search has no index to build: its figure is making the float32 matrix",
        ),  # fmt: skip
        rec("index_memory", "MiB", hnsw_bytes / 2**20, matrix.nbytes / 2**20, "lower"),
    ]


def _find_embedder(bundle: Path | None, work: Path | None) -> Path | None:
    candidates = []
    if bundle:
        candidates.append(bundle / "embedder")
    if work:
        candidates.append(work / "embedder")
    candidates.append(Path("var/embedder"))
    candidates += sorted(Path("var/test-cache").glob("embedder-onnx-*/embedder"))
    return next((c for c in candidates if (c / "embedder.json").is_file()), None)


def plant_records(bundle: Path | None, work: Path | None, plant: Path | None, threads: int) -> list[dict]:  # fmt: skip
    from appliance.common.questions import load_questions
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import Retriever, ingest_folder
    from appliance.retrieval.evaluation import evaluate_retrieval

    plant = plant or Path("examples/plant")
    questions_path = plant / "qa" / "eval.jsonl"
    emb_dir = _find_embedder(bundle, work)
    if emb_dir is None or not questions_path.is_file():
        reason = "no exported embedder (run `expert export-embedder --out var/work/embedder`)"
        if emb_dir is not None:
            reason = f"no labelled questions at {questions_path}"
        return [skipped_record(SUITE, "plant_recall@10", reason, peer_name=PEER)]
    embedder = OnnxEmbedder(emb_dir, threads=threads)
    if bundle and (bundle / "index" / "CURRENT").is_file():
        index_dir = bundle / "index"
    else:
        # Incremental: re-running the suite only re-embeds documents that changed.
        index_dir = (work or Path("var/work")) / "bench-plant-index"
        ingest_folder(plant / "docs", index_dir, embedder, progress=False)
    retriever = Retriever.open(index_dir, embedder)
    store = retriever._snap.store
    labels, data = store.embeddings()
    questions = [q.to_dict() for q in load_questions(questions_path)]
    queries = embedder.embed([q["question"] for q in questions], kind="query")
    out = compare("plant", data, queries, threads, index=retriever._snap.vectors, labels=labels)
    quality = evaluate_retrieval(retriever, questions, modes=("hybrid", "dense", "keyword"))
    modes = quality["modes"]
    cond = {"questions": quality["graded"], "chunks": int(len(labels))}
    for metric in ("ndcg@10", "recall@5", "code_recall@5"):
        if modes["hybrid"][metric] is None:
            continue
        out.append(
            make_record(SUITE, f"plant_quality_{metric}", "fraction", modes["hybrid"][metric],
                        modes["dense"][metric], "dense-only search (same index)", "higher",
                        params=cond | {"keyword_only": modes["keyword"][metric]})
        )  # fmt: skip
    t_search = []
    for q in questions:
        t0 = time.perf_counter()
        retriever.search(q["question"], k=5)
        t_search.append(time.perf_counter() - t0)
    dense_only = []
    for q in questions:
        t0 = time.perf_counter()
        retriever.search(q["question"], k=5, mode="dense")
        dense_only.append(time.perf_counter() - t0)
    out.append(
        make_record(SUITE, "plant_search_latency_p50", "ms", percentile(t_search, 50) * 1000,
                    percentile(dense_only, 50) * 1000, "dense-only search (same index)", "lower",
                    params=cond, note="whole query: embedding + dense + BM25 + fusion + rows")
    )  # fmt: skip
    retriever.close()
    return out


def run(
    quick: bool,
    bundle: Path | None = None,
    work: Path | None = None,
    plant: Path | None = None,
    threads: int | None = None,
) -> list[dict]:
    threads = threads or min(os.cpu_count() or 1, 2)
    records: list[dict] = []
    sizes = (10_000,) if quick else (10_000, 100_000)
    n_queries = 200 if quick else 1000
    for n in sizes:
        log.info("synthetic %d x %d", n, DIM)
        data = embedding_like(n + n_queries, seed=n)
        records += compare(f"{n // 1000}k", data[n_queries:], data[:n_queries], threads)
    try:
        records += plant_records(bundle, work, plant, threads)
    except Exception as exc:  # the synthetic figures stand on their own
        log.exception("plant corpus benchmark failed")
        records.append(skipped_record(SUITE, "plant_recall@10", f"{type(exc).__name__}: {exc}", peer_name=PEER))  # fmt: skip
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("var/work"))
    parser.add_argument("--plant", type=Path, default=Path("examples/plant"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for r in run(args.quick, args.bundle, args.work, args.plant, args.threads):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
