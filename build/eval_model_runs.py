"""Per split: right answers, abstentions, and the times of the answers the model itself wrote.

Most answers of the reference corpora are a quoted field or a refusal, for which no model runs
(first token in ~0.01 s), so a report's median first-token time says little about the model.
This prints, for each report and split of one mode: right / needless abstentions / unanswerable
abstained / answers with an unsupported value, then over the answers the model wrote (completion
tokens > 0 and model text): their count and the medians of first token, total time and prompt
tokens. The README's model-comparison rows cite it.

Run: `python -m build.eval_model_runs var/eval/apache/report.json [...] [--mode base+rag]`
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def split_stats(report: dict, split: str, mode: str = "base+rag") -> dict:
    questions = [q for q in report["questions"] if q.get("split") == split]
    pairs = [(q, q["results"][mode]) for q in questions if mode in (q.get("results") or {})]
    answerable = [r for q, r in pairs if q["answerable"]]
    unanswerable = [r for q, r in pairs if not q["answerable"]]
    model = [r for _, r in pairs if (r.get("completion_tokens") or 0) > 0 and r.get("model_text")]

    def median(key: str) -> float | None:
        values = [r[key] for r in model if r.get(key) is not None]
        return round(statistics.median(values), 2) if values else None

    return {
        "split": split,
        "right": sum(r["score"]["verdict"] == "correct" for r in answerable),
        "answerable": len(answerable),
        "needless_abstentions": sum(bool(r["score"]["abstained"]) for r in answerable),
        "unanswerable_abstained": sum(bool(r["score"]["abstained"]) for r in unanswerable),
        "unanswerable": len(unanswerable),
        "unsupported_value": sum(bool(r.get("unsupported_values")) for _, r in pairs),
        "questions": len(pairs),
        "model_wrote": len(model),
        "first_token_median_s": median("ttft_s"),
        "total_median_s": median("total_s"),
        "prompt_tokens_median": median("prompt_tokens"),
    }


def line(name: str, s: dict) -> str:
    return (
        f"{name} {s['split']}: right {s['right']}/{s['answerable']}, needless abstentions "
        f"{s['needless_abstentions']}/{s['answerable']}, unanswerable abstained "
        f"{s['unanswerable_abstained']}/{s['unanswerable']}, unsupported value "
        f"{s['unsupported_value']}/{s['questions']} | the model wrote {s['model_wrote']}: first "
        f"token median {s['first_token_median_s']} s, total {s['total_median_s']} s, prompt "
        f"{s['prompt_tokens_median']} tokens"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="report.json of `expert eval modes`")
    parser.add_argument("--mode", default="base+rag")
    args = parser.parse_args(argv)
    for path in args.reports:
        if not path.is_file():
            print(f"{path}: no such report; `expert eval modes --out DIR` writes DIR/report.json",
                  file=sys.stderr)  # fmt: skip
            return 2
        report = json.loads(path.read_text(encoding="utf-8"))
        for split in ("dev", "test"):
            print(line(str(path), split_stats(report, split, args.mode)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
