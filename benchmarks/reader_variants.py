"""Reader variants on a dev split: passages shown, prompt wording, quote threshold.

    PYTHONPATH=. nice .venv/bin/python benchmarks/reader_variants.py \
        --corpus examples/apache --domain "the Apache HTTP Server manual" --split dev \
        --llm var/work/smollm2-int4 --embedder var/work/embedder --variants base,k2,k1

Each variant is one `AnswerPolicy` (appliance.answering) over the same index and model; every
question goes through `answering.answer_stream` exactly as the service runs it and is scored by
build.eval_metrics (strict rules). Per variant it reports fact accuracy, needless abstentions,
unanswerable abstained, answers stating a value found nowhere in the corpus, quoted fallbacks,
and median prompt tokens / time to first token / total time, with 95% Wilson intervals. It is
the fast loop for choosing the reader's values on dev; `expert eval` is the full report.
Results: benchmarks/results/reader_variants-<corpus>-<split>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> AnswerPolicy overrides. "legacy" is the reader before this work (5 passages, no
# check, the plant wording), kept as the peer every variant is compared with.
VARIANTS: dict[str, dict] = {
    "legacy": {"max_passages": None, "grounding": False, "focus_entries": False, "legacy": True},
    "nocheck": {"grounding": False},
    "base": {},
    "k1": {"max_passages": 1},
    "k2": {"max_passages": 2},
    "k5": {"max_passages": 5},
    "nofocus": {"focus_entries": False},
    "q0": {"quote_min_share": 0.0},
    "q2": {"quote_min_share": 0.2},
    "q4": {"quote_min_share": 0.4},
    "q5": {"quote_min_share": 0.5},
}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def build_index(corpus: Path, embedder, out_root: Path) -> Path:
    """The corpus' index under the current chunking code (rebuilt when that code changes)."""
    from appliance.retrieval.ingest import ingest_folder

    h = hashlib.sha256()
    for rel in ("appliance/documents/chunking.py", "appliance/documents/loaders.py"):
        h.update((REPO / rel).read_bytes())
    for f in sorted((corpus / "docs").rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    index = out_root / f"{corpus.name}-{h.hexdigest()[:12]}" / "index"
    if not (index.parent / ".complete").is_file():
        ingest_folder(corpus / "docs", index, embedder, progress=False)
        (index.parent / ".complete").write_text("ok\n")
    return index


def corpus_text(corpus: Path) -> list[str]:
    from appliance.documents.loaders import is_supported, load_file

    texts = []
    for f in sorted((corpus / "docs").rglob("*")):
        if f.is_file() and is_supported(f.name):
            doc = load_file(f, f.name)
            texts.append(doc.title + "\n" + doc.full_text()[0])
    return texts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="folder with docs/ and qa/")
    ap.add_argument("--questions", type=Path, help="default: <corpus>/qa/eval.jsonl")
    ap.add_argument("--split", default="dev", choices=("dev", "test"))
    ap.add_argument("--domain", help="the bundle's domain phrase (None: the plant wording)")
    ap.add_argument("--llm", type=Path, required=True)
    ap.add_argument("--embedder", type=Path, required=True)
    ap.add_argument("--variants", default="base")
    ap.add_argument("--threshold", type=float, help="abstention threshold (default: answering's)")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--work", type=Path, default=REPO / "var" / "reader")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--show", action="store_true", help="print every answer")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from appliance.answering import AnswerPolicy, answer_stream
    from appliance.embedding import OnnxEmbedder
    from appliance.generation.base import GenerationParams
    from appliance.generation.genai import GenaiGenerator
    from appliance.grounding import occurs, value_spans
    from appliance.prompting import PLANT_WORDING, wording
    from appliance.retrieval import Retriever
    from build import eval_metrics
    from build.evaluation import load_questions

    questions = load_questions(args.questions or args.corpus / "qa" / "eval.jsonl", args.split)
    if args.limit:
        questions = questions[: args.limit]
    embedder = OnnxEmbedder(args.embedder)
    index = build_index(args.corpus, embedder, args.work)
    retriever = Retriever.open(index, embedder)
    generator = GenaiGenerator(args.llm, threads=2)
    docs = corpus_text(args.corpus)
    words = wording(args.domain) if args.domain else PLANT_WORDING
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=0.0, seed=1234)
    report = {"corpus": str(args.corpus), "split": args.split, "domain": args.domain,
              "n": len(questions), "variants": {}}  # fmt: skip
    for name in args.variants.split(","):
        over = dict(VARIANTS[name])
        legacy = over.pop("legacy", False)
        policy = AnswerPolicy(wording=PLANT_WORDING if legacy else words, **over)
        if args.threshold is not None:
            policy = replace(policy, abstain_threshold=args.threshold)
        rows = []
        for q in questions:
            t0 = time.perf_counter()
            first = None
            stream = answer_stream(q.question, generator=generator, retriever=retriever,
                                   params=params, k=5, policy=policy)  # fmt: skip
            for _ in stream:
                if first is None:
                    first = time.perf_counter() - t0
            total = time.perf_counter() - t0
            a = stream.result
            abst = a.abstained or eval_metrics.detect_abstention(
                a.text,
                service_flag=a.abstain_reason in ("low_score", "no_passages", "unknown_term"),
            )
            score = eval_metrics.score_answer(
                text=a.text, answerable=q.answerable, expected_facts=q.expected_facts,
                reference_answer=q.reference_answer, abstained=abst, use_retrieval=True,
                cited=[], source=q.source,
            )  # fmt: skip
            absent = (
                []
                if abst
                else [v.text for v in value_spans(a.text)
                      if not any(occurs(v, d) is not None for d in docs)]
            )  # fmt: skip
            rows.append({
                "id": q.id, "answerable": q.answerable, "verdict": score.verdict,
                "abstained": abst, "grounding": a.grounding, "absent_values": absent,
                "prompt_tokens": a.prompt_tokens, "ttft_s": first, "total_s": total,
                "text": a.text, "model_text": a.model_text, "facts": list(q.expected_facts),
                "sources": [s.section for s in a.sources],
                "source_texts": [s.text for s in a.sources], "question": q.question,
                "unsupported": a.unsupported,
            })  # fmt: skip
            if args.show:
                print(f"{q.id} {score.verdict:12s} {a.grounding} | {a.model_text[:100]!r} -> "
                      f"{a.text[:120]!r} facts={list(q.expected_facts)}", flush=True)  # fmt: skip
        ans = [r for r in rows if r["answerable"]]
        una = [r for r in rows if not r["answerable"]]
        correct = sum(r["verdict"] == "correct" for r in ans)
        needless = sum(r["abstained"] for r in ans)
        refused = sum(r["abstained"] for r in una)
        absent = sum(bool(r["absent_values"]) for r in rows)
        quoted = sum(r["grounding"] == "quoted" for r in rows)
        prompts = [r["prompt_tokens"] for r in rows if r["prompt_tokens"]]
        ttfts = [r["ttft_s"] for r in rows if r["ttft_s"] is not None]
        summary = {
            "policy": {k: v for k, v in policy.__dict__.items() if k != "wording"},
            "fact_accuracy": [correct, len(ans), *wilson(correct, len(ans))],
            "needless_abstentions": [needless, len(ans), *wilson(needless, len(ans))],
            "unanswerable_abstained": [refused, len(una), *wilson(refused, len(una))],
            "absent_value_answers": [absent, len(rows), *wilson(absent, len(rows))],
            "quoted": [quoted, len(rows)],
            "median_prompt_tokens": statistics.median(prompts) if prompts else None,
            "median_ttft_s": statistics.median(ttfts) if ttfts else None,
            "median_total_s": statistics.median([r["total_s"] for r in rows]),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        }
        report["variants"][name] = {"summary": summary, "rows": rows}
        print(name, json.dumps({k: v for k, v in summary.items() if k != "policy"}), flush=True)
    out = args.out or REPO / "benchmarks" / "results" / (
        f"reader_variants-{args.corpus.name}-{args.split}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
