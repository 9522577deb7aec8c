"""Does the abbreviation glossary help retrieval? The same documents indexed with and without it.

Chunk format 4 gives each chunk that uses one form of an abbreviation its document defines a
glossary line with the other form ("NM: NetworkManager"; `appliance/documents/abbreviations.py`).
This ingests each corpus twice in the same run, through the appliance's own ingest: once as the
appliance does, once with no definitions found (the chunks of chunk format 3), and measures the
hybrid search the service answers from on each question set: recall@5 (answerable questions
with a passage holding an expected fact in the top 5) and MRR@10. The dev splits by default,
where the glossary was chosen; `--split test` reports the test splits.

Run: `python -m benchmarks.abbreviation_glossary --minilm var/work/embedder --e5
var/work/embedder-e5` (the embedders `make eval` exports; a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (set, documents, embedder, questions)
SETS = (
    ("plant", "examples/plant/docs", "minilm", "examples/plant/qa/eval.jsonl"),
    ("apache", "examples/apache/docs", "minilm", "examples/apache/qa/eval.jsonl"),
    ("spanish", "examples/debian-es/docs", "e5", "examples/debian-es/qa/eval.jsonl"),
    (
        "english over spanish",
        "examples/debian-es/docs",
        "e5",
        "examples/debian-es/qa/mixed-en.jsonl",
    ),  # fmt: skip
    ("spanish over plant", "examples/plant/docs", "e5", "examples/plant/qa/eval-es.jsonl"),
)


@contextmanager
def without_glossary() -> Iterator[None]:
    """Chunking finds no abbreviation definitions while inside: no glossary lines."""
    import appliance.documents.chunking as chunking

    saved = chunking.definitions
    chunking.definitions = lambda text: {}
    try:
        yield
    finally:
        chunking.definitions = saved


def hybrid_figures(result: dict) -> tuple[int, int, float]:
    """(questions with a relevant passage in the top 5, graded questions, MRR@10) of an
    `evaluate_retrieval` result."""
    hybrid = result["modes"]["hybrid"]
    n = result["graded"]
    return round(hybrid["recall@5"] * n), n, hybrid["mrr@10"]


def measure(embedder_dirs: dict[str, Path], split: str, work: Path) -> list[dict]:
    from appliance.common.questions import load_questions
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import Retriever, ingest_folder
    from appliance.retrieval.evaluation import evaluate_retrieval

    embedders = {name: OnnxEmbedder(path) for name, path in embedder_dirs.items()}
    indexes: dict[tuple[str, str, bool], Path] = {}
    rows = []
    for name, docs, emb, questions in SETS:
        qs = [q.to_dict() for q in load_questions(REPO / questions)]
        qs = [q for q in qs if split == "all" or q.get("split") == split]
        row: dict = {"set": f"{name} ({emb})"}
        for glossary in (False, True):
            key = (docs, emb, glossary)
            if key not in indexes:
                out = work / f"{Path(docs).parent.name}-{emb}-{'glossary' if glossary else 'none'}"
                with nullcontext() if glossary else without_glossary():
                    ingest_folder(REPO / docs, out, embedders[emb], progress=False)
                indexes[key] = out
            retriever = Retriever.open(indexes[key], embedders[emb])
            try:
                hits, n, mrr = hybrid_figures(evaluate_retrieval(retriever, qs, modes=("hybrid",)))
            finally:
                retriever.close()
            label = "with glossary" if glossary else "without"
            row[f"recall@5 {label}"] = f"{hits}/{n}"
            row[f"MRR@10 {label}"] = f"{mrr:.3f}"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minilm", type=Path, default=REPO / "var" / "work" / "embedder")
    parser.add_argument("--e5", type=Path, default=REPO / "var" / "work" / "embedder-e5")
    parser.add_argument("--split", choices=("dev", "test", "all"), default="dev")
    args = parser.parse_args(argv)
    for flag, path in (("--minilm", args.minilm), ("--e5", args.e5)):
        if not (path / "embedder.json").is_file():
            parser.error(f"{flag} {path} holds no exported embedder; run `make eval` first")
    with tempfile.TemporaryDirectory(prefix="glossary-bench-") as tmp:
        rows = measure({"minilm": args.minilm, "e5": args.e5}, args.split, Path(tmp))
    keys = [k for k in rows[0] if k != "set"]
    print(f"| {args.split} set | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for r in rows:
        print(f"| {r['set']} | " + " | ".join(r[k] for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
