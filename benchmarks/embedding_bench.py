"""Embedding throughput: our ONNX embedder against sentence-transformers on PyTorch.

Run (all suites):  `expert bench --work var/work`
Run (this suite):  .venv/bin/python -m benchmarks.embedding_bench [--quick] [--work var/work]

The same texts (the example plant's chunks, as ingestion embeds them: title line + chunk,
~20-200 tokens) go through both engines with the same batch size and thread count; runs are
interleaved (ours, peer, peer, ours, ...) so a noisy neighbour hits both alike, and figures
are medians. Our variants:
- fp32: the exported graph with onnxruntime's offline BERT fusions (Attention, SkipLayerNorm,
  FastGelu) and ORT_ENABLE_ALL, batches sorted by length so little padding is computed;
- int8: the same plus dynamic int8 quantisation of the MatMul weights.
Quality cost is measured too: cosine to the sentence-transformers vectors, and how many of
each question's 10 nearest chunks int8 keeps (overlap@10 against fp32).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.records import make_record, skipped_record, summarize

log = logging.getLogger(__name__)

SUITE = "embedding"
PEER = "sentence-transformers (PyTorch fp32)"
BATCH = 32


def _embedder_dirs(work: Path) -> tuple[Path, Path]:
    """fp32 and int8 exports under `work`, made once (the export is cached there)."""
    from build.export_embedder import export_embedder

    fp32, int8 = work / "embedder", work / "embedder-int8"
    if not (fp32 / "embedder.json").is_file():
        export_embedder(fp32)
    if not (int8 / "embedder.json").is_file():
        export_embedder(int8, int8=True)
    return fp32, int8


def plant_texts(plant: Path, tokenizer, limit: int | None) -> list[str]:
    from appliance.documents import (
        ChunkingConfig,
        LoaderError,
        chunk_document,
        load_file,
        tokenizer_offsets,
    )
    from appliance.retrieval.ingest import iter_source_files

    texts = []
    for rel, file, reason in iter_source_files(plant / "docs"):
        if reason:
            continue
        try:
            doc = load_file(file, rel)
        except LoaderError:
            continue
        for c in chunk_document(doc, tokenizer_offsets(tokenizer), ChunkingConfig()):
            texts.append(c.embed_text(doc.title))
    return texts[:limit] if limit else texts


def _timed(fn, texts) -> float:
    t0 = time.perf_counter()
    fn(texts)
    return time.perf_counter() - t0


def run(
    quick: bool,
    work: Path | None = None,
    plant: Path | None = None,
    threads: int | None = None,
) -> list[dict]:
    threads = threads or min(os.cpu_count() or 1, 2)
    work = work or Path("var/work")
    plant = plant or Path("examples/plant")
    try:
        import torch
        from sentence_transformers import SentenceTransformer

        from appliance.embedding import OnnxEmbedder
        from build.export_embedder import packaged_model_dir
    except ModuleNotFoundError as exc:
        return [skipped_record(SUITE, "throughput_fp32", f"missing module {exc.name}", peer_name=PEER)]  # fmt: skip
    fp32_dir, int8_dir = _embedder_dirs(work)
    ours = OnnxEmbedder(fp32_dir, threads=threads)
    ours8 = OnnxEmbedder(int8_dir, threads=threads)
    torch.set_num_threads(threads)
    peer = SentenceTransformer(str(packaged_model_dir()), device="cpu")
    texts = plant_texts(plant, ours.tokenizer, 128 if quick else None)
    if len(texts) < 16:
        return [skipped_record(SUITE, "throughput_fp32", f"too few texts under {plant}/docs", peer_name=PEER)]  # fmt: skip
    tokens = sum(min(ours.count_tokens(t) + 2, ours.max_length) for t in texts)

    engines = {
        "fp32": lambda xs: ours.embed(xs, batch_size=BATCH),
        "int8": lambda xs: ours8.embed(xs, batch_size=BATCH),
        "peer": lambda xs: peer.encode(
            xs, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False
        ),
    }
    for fn in engines.values():  # warm-up
        fn(texts[:BATCH])
    repeats = 2 if quick else 3
    times: dict[str, list[float]] = {name: [] for name in engines}
    order = list(engines)
    for r in range(repeats):
        for name in order[r % 3 :] + order[: r % 3]:  # rotate who goes first
            times[name].append(_timed(engines[name], texts))

    ref = np.asarray(engines["peer"](texts))
    v32, v8 = ours.embed(texts), ours8.embed(texts)
    cos32, cos8 = (v32 * ref).sum(1), (v8 * ref).sum(1)
    questions = []
    qpath = plant / "qa" / "eval.jsonl"
    if qpath.is_file():
        from appliance.common.questions import load_questions

        questions = [q.question for q in load_questions(qpath)]
    overlap = None
    if questions:
        q32, q8 = ours.embed(questions), ours8.embed(questions)
        k = min(10, len(texts))
        top32 = np.argsort(-(q32 @ v32.T), axis=1)[:, :k]
        top8 = np.argsort(-(q8 @ v8.T), axis=1)[:, :k]
        overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top32, top8, strict=True)]))  # fmt: skip

    cond = {"texts": len(texts), "tokens": tokens, "batch_size": BATCH, "threads": threads, "repeats": repeats}  # fmt: skip
    peer_s = summarize(times["peer"])
    out = []
    for name, note in (
        ("fp32", "onnxruntime: offline BERT fusions + ORT_ENABLE_ALL + length-sorted batches"),
        ("int8", "as fp32 plus dynamic int8 quantisation of MatMul weights"),
    ):
        s = summarize(times[name])
        out.append(
            make_record(SUITE, f"throughput_{name}", "texts/s", len(texts) / s["median"],
                        len(texts) / peer_s["median"], PEER, "higher", repeats=repeats,
                        ours_p95=len(texts) / s["p95"], peer_p95=len(texts) / peer_s["p95"],
                        params=cond | {"tokens_per_s": tokens / s["median"]}, note=note)
        )  # fmt: skip
    out.append(make_record(SUITE, "cosine_to_reference_fp32_min", "cosine", float(cos32.min()), 1.0, PEER, "higher", params=cond))  # fmt: skip
    out.append(make_record(SUITE, "cosine_to_reference_int8_min", "cosine", float(cos8.min()), 1.0, PEER, "higher",
                           params=cond | {"mean": float(cos8.mean())}))  # fmt: skip
    if overlap is not None:
        out.append(
            make_record(SUITE, "int8_neighbour_overlap@10", "fraction", overlap, 1.0,
                        "our fp32 embedder", "higher", params=cond | {"questions": len(questions)},
                        note="share of each question's 10 nearest chunks that int8 keeps")
        )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("var/work"))
    parser.add_argument("--plant", type=Path, default=Path("examples/plant"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for r in run(args.quick, args.work, args.plant, args.threads):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
