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
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from appliance.common.stats import wilson_interval

REPO = Path(__file__).resolve().parents[1]
VALUED = __import__("os").environ.get("VALUED") == "1"  # replay: quote value-bearing sentences

# name -> AnswerPolicy overrides. "legacy" is the reader before this work (5 passages, no
# check, the plant wording), kept as the peer every variant is compared with.
VARIANTS: dict[str, dict] = {
    "legacy": {"max_passages": None, "grounding": False, "focus_entries": False, "legacy": True},
    "nocheck": {"grounding": False},
    "base": {},
    "k1": {"max_passages": 1},
    "k2": {"max_passages": 2},
    "k3": {"max_passages": 3},
    "k5": {"max_passages": 5},
    "nofocus": {"focus_entries": False},
    "noextract": {"extract_fields": False},
    "unnamed4": {"extract_unnamed_share": 0.4},
    "unnamed6": {"extract_unnamed_share": 0.6},
    "k3noextract": {"max_passages": 3, "extract_fields": False},
    "q0": {"quote_min_share": 0.0},
    "q2": {"quote_min_share": 0.2},
    "q4": {"quote_min_share": 0.4},
    "q5": {"quote_min_share": 0.5},
    "qa4": {"quote_over_abstention": 0.4},
    "qa5": {"quote_over_abstention": 0.5},
    "qa6": {"quote_over_abstention": 0.6},
}


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson interval (appliance.common.stats); (0, 1), knowing nothing, for n = 0."""
    return wilson_interval(k, n) or (0.0, 1.0)


# The code an index is built by: loading, chunking, and what ingest writes (store, keywords,
# vectors, versions). A change to any of it rebuilds the cached index.
INDEX_CODE = (
    "appliance/documents/loaders.py",
    "appliance/documents/chunking.py",
    "appliance/documents/abbreviations.py",
    "appliance/documents/model.py",
    "appliance/documents/limits.py",
    "appliance/retrieval/ingest.py",
    "appliance/retrieval/writer.py",
    "appliance/retrieval/store.py",
    "appliance/retrieval/keywords.py",
    "appliance/retrieval/vectors.py",
    "appliance/retrieval/versions.py",
)


def index_key(corpus: Path, embedder_folder: Path) -> str:
    """What a cached index depends on: the code that builds it (INDEX_CODE), the corpus'
    documents and every file of the embedder (model, tokenizer, embedder.json with its prefixes
    and keyword weight), so that two embedders, or two exports of one model, never share an
    index."""
    from appliance.common.fsutil import sha256_file

    h = hashlib.sha256()
    for rel in INDEX_CODE:
        h.update(rel.encode() + b"\0" + (REPO / rel).read_bytes())
    for f in sorted((corpus / "docs").rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    h.update(b"\0embedder\0")
    for f in sorted(Path(embedder_folder).rglob("*")):
        if f.is_file():
            rel = f.relative_to(embedder_folder).as_posix()
            h.update(f"{rel}\0{sha256_file(f)}\0".encode())
    return h.hexdigest()[:12]


def build_index(corpus: Path, embedder, out_root: Path) -> Path:
    """The corpus' index for this embedder under the current index code (rebuilt when either
    changes; see index_key)."""
    from appliance.retrieval.ingest import ingest_folder

    index = out_root / f"{corpus.name}-{index_key(corpus, embedder.folder)}" / "index"
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


def load_metrics(path: Path | None):
    """build.eval_metrics, or the scorer module at `path` (e.g. a newer, stricter one)."""
    if path is None:
        from build import eval_metrics

        return eval_metrics
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_metrics_alt", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def score(metrics, q: dict, text: str, service_flag: bool):
    """(abstained, verdict) of one answer under `metrics` (question-aware when it can be)."""
    import inspect

    kw = {"question": q["question"]} if "question" in inspect.signature(
        metrics.detect_abstention).parameters else {}  # fmt: skip
    abst = metrics.detect_abstention(text, service_flag=service_flag, **kw)
    kw2 = {"question": q["question"]} if "question" in inspect.signature(
        metrics.score_answer).parameters else {}  # fmt: skip
    sc = metrics.score_answer(
        text=text, answerable=q["answerable"], expected_facts=q["facts"],
        reference_answer=q.get("reference", ""), abstained=abst, use_retrieval=True,
        cited=[], source=None, **kw2,
    )  # fmt: skip
    return abst, sc.verdict


def summarize(rows: list[dict]) -> dict:
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    correct = sum(r["verdict"] == "correct" for r in ans)
    needless = sum(r["abstained"] for r in ans)
    refused = sum(r["abstained"] for r in una)
    absent = sum(bool(r.get("absent_values")) for r in rows)
    prompts = [r["prompt_tokens"] for r in rows if r.get("prompt_tokens")]
    ttfts = [r["ttft_s"] for r in rows if r.get("ttft_s") is not None]
    return {
        "fact_accuracy": [correct, len(ans), *wilson(correct, len(ans))],
        "needless_abstentions": [needless, len(ans), *wilson(needless, len(ans))],
        "unanswerable_abstained": [refused, len(una), *wilson(refused, len(una))],
        "absent_value_answers": [absent, len(rows), *wilson(absent, len(rows))],
        "quoted": [sum(r.get("grounding") == "quoted" for r in rows), len(rows)],
        "median_prompt_tokens": statistics.median(prompts) if prompts else None,
        "median_ttft_s": statistics.median(ttfts) if ttfts else None,
        "median_total_s": statistics.median([r["total_s"] for r in rows]) if rows else None,
    }


def rescore(
    path: Path,
    metrics_path: Path | None,
    shares: list[float],
    contra: float | None = None,
    override: float | None = None,
) -> None:
    """Replay the grounding decision on saved model answers with other quote thresholds
    (no generation: the model's text does not depend on them)."""
    from appliance.answering import _entry_terms
    from appliance.grounding import best_sentence, check, contradicts, new_values, occurs
    from appliance.prompting import wording

    metrics = load_metrics(metrics_path)
    report = json.loads(path.read_text())
    words = wording(report.get("domain")) if report.get("domain") else wording(None)
    for name, variant in report["variants"].items():
        for share in shares:
            rows = []
            for r in variant["rows"]:
                r = dict(r)
                q = {"question": r["question"], "answerable": r["answerable"],
                     "facts": r["facts"], "reference": r.get("reference", "")}  # fmt: skip
                texts, heads = r["source_texts"], r["sources"]
                terms = [t for t in _entry_terms(r["question"]) if t.kind != "quoted"]
                focus = [
                    i
                    for i, (h, x) in enumerate(zip(heads, texts, strict=True), 1)
                    if any(occurs(t, f"{h}\n{x}") is not None for t in terms)
                ]
                text = r["text"]
                if r["grounding"] in ("supported", "quoted") and r["model_text"] and texts:
                    v = check(r["model_text"], texts, focus=focus or None)
                    if v.supported and contra is not None:
                        ev = best_sentence(r["question"], texts, within=focus or None,
                                           min_share=contra, headings=heads)  # fmt: skip
                        if ev is not None and (
                            contradicts(r["model_text"], ev)
                            or (
                                not new_values(r["model_text"], r["question"])
                                and new_values(ev.sentence, r["question"])
                            )
                        ):
                            v = replace(v, status="unsupported")
                    if v.supported:
                        text, r["grounding"] = r["model_text"], "supported"
                    else:
                        best = best_sentence(r["question"], texts, within=focus or None,
                                             min_share=share, headings=heads,
                                             valued=VALUED)  # fmt: skip
                        if best:
                            text, r["grounding"] = (
                                words.quote_of(best.sentence, best.passage),
                                "quoted",
                            )
                        else:
                            text, r["grounding"] = words.abstain, "abstained"
                if (
                    override is not None
                    and r["grounding"] == "abstained"
                    and r["model_text"]
                    and texts
                ):
                    best = best_sentence(r["question"], texts, within=focus or None,
                                         min_share=override, headings=heads,
                                         valued=VALUED)  # fmt: skip
                    if best:
                        text, r["grounding"] = words.quote_of(best.sentence, best.passage), "quoted"
                flag = r["grounding"] == "abstained" and not r["model_text"]
                r["abstained"], r["verdict"] = score(metrics, q, text, flag)
                r["text"] = text
                rows.append(r)
            print(name, share, json.dumps(summarize(rows)))


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
    ap.add_argument("--metrics", type=Path, help="score with this eval_metrics.py instead")
    ap.add_argument("--rescore", type=Path, help="replay a results file with --shares")
    ap.add_argument("--shares", default="0.2,0.3,0.4,0.5")
    ap.add_argument("--contra", type=float, help="replay: contradiction check at this share")
    ap.add_argument("--override", type=float, help="replay: quote over a model abstention")
    if argv is None and "--rescore" in sys.argv:
        ap.set_defaults(corpus=Path("."), llm=Path("."), embedder=Path("."))
        for a in ap._actions:
            a.required = False
    args = ap.parse_args(argv)
    if args.rescore:
        rescore(args.rescore, args.metrics, [float(x) for x in args.shares.split(",")],
                args.contra, args.override)  # fmt: skip
        return 0

    sys.path.insert(0, str(REPO))
    from appliance.answering import AnswerPolicy, answer_stream
    from appliance.common.questions import load_questions
    from appliance.embedding import OnnxEmbedder
    from appliance.generation.base import GenerationParams
    from appliance.generation.genai import GenaiGenerator
    from appliance.grounding import occurs, value_spans
    from appliance.prompting import PLANT_WORDING, wording
    from appliance.retrieval import Retriever

    metrics = load_metrics(args.metrics)

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
                                   params=params, k=5, policy=policy, filters=q.filters)  # fmt: skip
            for _ in stream:
                if first is None:
                    first = time.perf_counter() - t0
            total = time.perf_counter() - t0
            a = stream.result
            qd = {"question": q.question, "answerable": q.answerable,
                  "facts": list(q.expected_facts), "reference": q.reference_answer}  # fmt: skip
            flag = a.abstain_reason in ("low_score", "no_passages", "unknown_term")
            abst, verdict = score(metrics, qd, a.text, flag)
            absent = (
                []
                if abst
                else [v.text for v in value_spans(a.text)
                      if not any(occurs(v, d) is not None for d in docs)]
            )  # fmt: skip
            rows.append({
                "id": q.id, "answerable": q.answerable, "verdict": verdict,
                "abstained": abst, "grounding": a.grounding, "absent_values": absent,
                "prompt_tokens": a.prompt_tokens, "ttft_s": first, "total_s": total,
                "text": a.text, "model_text": a.model_text, "facts": list(q.expected_facts),
                "sources": [s.section for s in a.sources],
                "source_texts": [s.text for s in a.sources], "question": q.question,
                "unsupported": a.unsupported, "reference": q.reference_answer,
            })  # fmt: skip
            if args.show:
                print(f"{q.id} {verdict:12s} {a.grounding} | {a.model_text[:100]!r} -> "
                      f"{a.text[:120]!r} facts={list(q.expected_facts)}", flush=True)  # fmt: skip
        summary = {
            "policy": {k: v for k, v in policy.__dict__.items() if k != "wording"},
            **summarize(rows),
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
