"""Ingest scaling: time and index size against the number of chunks (1k, 10k, 100k).

Run (all suites):  `expert bench --bundle var/bundles/bundle-plant-0.1.0`
Run (this suite):  .venv/bin/python -m benchmarks.ingest_bench --bundle DIR [--budget-s 300]

The corpus is synthetic but made of the example plant's own prose: each document is the
plant's paragraphs in a document-specific order under a unique title, so chunks differ from
each other and read like the real manuals. `appliance.retrieval.ingest.ingest_folder` ingests
it with the bundle's embedder, exactly as `expert ingest` does (chunking, embedding, SQLite +
FTS5, hnswlib graph, versioned publish). Measured per size: wall time, chunks/s, and the size
of the published index folder on disk.

The sizes run in increasing order. Before each, the time it would take is estimated from the
previous size's rate; a size whose estimate exceeds the budget (default 300 s, a fraction of
the whole `expert bench` run on a shared 2-core box) is not run and is reported as skipped,
with the estimate. The 100k point takes most of an hour on 2 quiet cores; to measure it, raise
the budget for one run: `INGEST_BENCH_BUDGET_S=7200 expert bench --suites ingest_bench
--timeout 7200 ...` (the section states the budget it ran under). No peer: this is a scaling
curve, reported as a section with a plot.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

SUITE = "retrieval"
REPO = Path(__file__).resolve().parents[1]
SIZES = (1_000, 10_000, 100_000)
DEFAULT_BUDGET_S = 300.0
BUDGET_ENV = "INGEST_BENCH_BUDGET_S"


def budget_from_env() -> float:
    """The budget in seconds: $INGEST_BENCH_BUDGET_S, or DEFAULT_BUDGET_S when unset."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_BUDGET_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{BUDGET_ENV}={raw!r} is not a number of seconds; e.g. 7200") from None
    if value <= 0:
        raise ValueError(f"{BUDGET_ENV} must be > 0 seconds, got {raw!r}")
    return value


def _paragraphs(plant: Path) -> list[str]:
    paras: list[str] = []
    for path in sorted((plant / "docs").glob("*.md")):
        text = path.read_text(encoding="utf-8", errors="replace")
        paras += [p.strip() for p in text.split("\n\n") if len(p.split()) >= 8]
    if not paras:
        raise RuntimeError(f"no paragraphs in {plant}/docs")
    return paras


def make_corpus(folder: Path, paragraphs: list[str], target_chunks: int, embedder) -> int:
    """Write documents until they hold `target_chunks` chunks (counted with the ingest's own
    chunker); returns the count."""
    from appliance.documents import ChunkingConfig, chunk_document, load_bytes, tokenizer_offsets

    cfg = ChunkingConfig()
    offsets = tokenizer_offsets(embedder.tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    chunks, k = 0, 0
    while chunks < target_chunks:
        rng = random.Random(k)
        picked = rng.sample(paragraphs, min(len(paragraphs), 12))
        data = f"# Synthetic manual {k}\n\n" + "\n\n".join(picked) + "\n"
        name = f"doc-{k:06d}.md"
        chunks += len(chunk_document(load_bytes(data.encode(), name), offsets, cfg))
        (folder / name).write_text(data, encoding="utf-8")
        k += 1
    return chunks


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def measure(bundle: Path, plant: Path, sizes=SIZES, budget_s: float = DEFAULT_BUDGET_S) -> dict:
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval.ingest import ingest_folder

    embedder = OnnxEmbedder(Path(bundle) / "embedder")
    paragraphs = _paragraphs(plant)
    rows: list[dict] = []
    rate = None
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        for n in sizes:
            if rate is not None and n / rate > budget_s:
                rows.append(
                    {
                        "target_chunks": n,
                        "skipped": f"estimated {n / rate:.0f} s at the {rate:.0f} chunks/s "
                        f"measured at the previous size, over the {budget_s:.0f} s budget",
                    }
                )
                continue
            src = Path(tmp) / f"docs-{n}"
            make_corpus(src, paragraphs, n, embedder)
            index = Path(tmp) / f"index-{n}"
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            report = ingest_folder(src, index, embedder, progress=False)
            seconds = time.perf_counter() - t0
            rate = report.chunks / seconds if seconds > 0 else None
            rows.append(
                {
                    "target_chunks": n,
                    "chunks": report.chunks,
                    "documents": report.documents,
                    "seconds": round(seconds, 1),
                    "chunks_per_s": round(rate, 1) if rate else None,
                    "index_mb": round(_dir_bytes(index) / 1e6, 1),
                    "load_average_1min_before": round(load0, 2),
                }
            )
            log.info("ingest %s", rows[-1])
    return {"rows": rows, "embedder": embedder.model_id, "budget_s": budget_s}


def plot(rows: list[dict], path: Path) -> Path | None:
    done = [r for r in rows if "chunks" in r]
    if not done:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = [r["chunks"] for r in done]
    ax1.plot(xs, [r["seconds"] for r in done], "-o")
    ax1.set(xscale="log", yscale="log", xlabel="chunks", ylabel="seconds", title="Ingest time")
    ax2.plot(xs, [r["index_mb"] for r in done], "-o")
    ax2.set(xscale="log", yscale="log", xlabel="chunks", ylabel="MB on disk", title="Index size")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def section(result: dict, png: Path | None) -> dict:
    lines = [
        f"`ingest_folder` with the bundle's embedder ({result['embedder']}), synthetic manuals "
        "made of the plant's paragraphs (benchmarks/ingest_bench.py). A size is skipped when "
        f"the previous size's rate puts it over the {result.get('budget_s', DEFAULT_BUDGET_S):.0f} s "
        f"budget (${BUDGET_ENV}).",
        "",
    ]
    if png is not None:
        lines += [f"![ingest scaling]({png.name})", ""]
    lines += [
        "| chunks | documents | time s | chunks/s | index MB | load (1 min) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| ~{r['target_chunks']:,} | – | skipped: {r['skipped']} | | | |")
        else:
            lines.append(
                f"| {r['chunks']:,} | {r['documents']:,} | {r['seconds']} | {r['chunks_per_s']} "
                f"| {r['index_mb']} | {r['load_average_1min_before']} |"
            )
    return {
        "title": "Retrieval: ingest time and index size against chunks",
        "markdown": "\n".join(lines),
    }


def run(
    quick: bool = False,
    *,
    bundle: Path | None = None,
    plant: Path | None = None,
    out: Path | None = None,
) -> dict:
    if bundle is None or not (Path(bundle) / "embedder").is_dir():
        return {"records": [], "sections": [{"title": "Retrieval: ingest scaling",
                                             "markdown": "Not run: no bundle with an embedder."}]}  # fmt: skip
    plant = Path(plant) if plant else REPO / "examples" / "plant"
    sizes = (1_000,) if quick else SIZES
    result = measure(Path(bundle), plant, sizes, budget_from_env())
    png = plot(result["rows"], Path(out) / "ingest_scaling.png") if out else None
    return {"records": [], "sections": [section(result, png)], "raw": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--plant", type=Path, default=REPO / "examples" / "plant")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    sizes = tuple(int(x) for x in args.sizes.split(","))
    result = measure(args.bundle, args.plant, sizes, args.budget_s)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
