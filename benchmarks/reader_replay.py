"""Replay recorded model answers through the current reader: the fast loop for reader changes.

A reader change (how a quote is chosen, cut or checked) needs every dev split re-answered, and
`expert eval modes` runs the model on every question: about 20 minutes for the five dev sets on
the 2-core box. Most reader changes do not change what the model is asked, only what is made of
its text. This runs `expert eval modes` (`build.bundle_evaluation.evaluate_modes`, the same
retrieval, policy, checks and scoring) with a generator that gives, for each question and mode,
the model text a recorded report holds, and then lists what changed against that report: right
outcomes per mode and split, and the questions whose answer text changed. About 30 s a set.

What it cannot show: a change that alters the prompt, the passages shown, or whether the model is
asked at all (a question the recorded run answered without the model has no recorded text; it is
given an empty one). Confirm a kept change with `make eval`. Checked: replaying a report through
the code that made it gives every answer text for text.

    python -m benchmarks.reader_replay var/eval/debian-es/report.json --out var/eval/replay \\
        --bundle var/bundles/bundle-debian-es-0.1.0 --modes base+rag \\
        --questions examples/debian-es/qa/eval.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from appliance.generation.fake import FakeGenerator


class ReplayGenerator(FakeGenerator):
    """Answers a prompt with the text recorded for the question it holds (the longest recorded
    question found in the prompt); "" when none is recorded. The evaluation opens one model for
    the modes that share it (base and base + RAG), so the mode is read from the prompt: one that
    shows passages is `mode`'s retrieval mode, one without is its plain mode."""

    def __init__(self, recorded: Mapping[tuple[str, str], str], mode: str, context_length: int):
        super().__init__(model_id=f"replay:{mode}", context_length=context_length)
        self.recorded = recorded
        self.mode = mode
        self._questions = sorted({q for _, q in recorded}, key=len, reverse=True)
        self.unmatched = 0

    def recorded_for(self, prompt: str) -> str | None:
        plain = self.mode.split("+")[0]
        mode = f"{plain}+rag" if "<passage" in prompt else plain
        for question in self._questions:
            if question in prompt:
                return self.recorded.get((mode, question), "")
        return None

    def answer_for(self, prompt, params) -> str:
        return self.recorded_for(prompt) or ""

    def generate(self, prompt, params):
        """The recorded text whole: it was cut at the recorded run's own token limit, which
        this generator's token count (`FakeGenerator.count_tokens`) does not reproduce."""
        text = self.recorded_for(prompt)
        if text is None:
            self.unmatched += 1
            text = ""
        room = max(params.max_new_tokens, self.count_tokens(text))
        return super().generate(prompt, replace(params, max_new_tokens=room))


def recorded_texts(report: Mapping) -> dict[tuple[str, str], str]:
    """(mode, question) -> the model text a report recorded."""
    return {
        (mode, q["question"]): r.get("model_text") or ""
        for q in report["questions"]
        for mode, r in q["results"].items()
    }


def right(r: Mapping) -> bool:
    """A right outcome: the verdict the evaluation's strict scoring gave the answer
    (build.eval_metrics.score_answer: the facts with no conflicting value, or the abstention
    on an unanswerable question)."""
    return (r.get("score") or {}).get("verdict") == "correct"


def compare(before: Mapping, after: Mapping) -> list[dict]:
    """Per mode and split of `after`: right outcomes before and after, and the questions whose
    answer text changed, as "id(before->after)" with 1 for right."""
    old = {q["id"]: q for q in before["questions"]}
    rows: dict[tuple[str, str], dict] = {}
    for q in after["questions"]:
        for mode, r in q["results"].items():
            prior = old.get(q["id"], {}).get("results", {}).get(mode)
            if prior is None:
                continue
            row = rows.setdefault(
                (mode, q.get("split") or "none"),
                {"mode": mode, "split": q.get("split") or "none", "n": 0, "before": 0, "after": 0,
                 "changed": []},
            )  # fmt: skip
            was, now = right(prior), right(r)
            row["n"] += 1
            row["before"] += was
            row["after"] += now
            if prior["text"] != r["text"]:
                row["changed"].append(f"{q['id']}({int(was)}->{int(now)})")
    return list(rows.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path, help="a report.json of `expert eval modes`")
    parser.add_argument("--out", type=Path, required=True, help="folder for the new report")
    parser.add_argument("--bundle", type=Path, action="append", required=True,
                        help="the base bundle; a second --bundle: the fine-tuned one")  # fmt: skip
    parser.add_argument("--questions", type=Path, required=True)
    parser.add_argument("--modes", default="base+rag")
    parser.add_argument("--context-length", type=int, default=8192)
    args = parser.parse_args(argv)
    from build.bundle_evaluation import evaluate_modes

    before = json.loads(args.report.read_text(encoding="utf-8"))
    recorded = recorded_texts(before)
    opened: list[ReplayGenerator] = []

    def open_generator(mode):
        opened.append(ReplayGenerator(recorded, mode.name, args.context_length))
        return opened[-1]

    paths = evaluate_modes(
        questions_file=args.questions,
        out_dir=args.out,
        base_bundle=args.bundle[0],
        finetuned_bundle=args.bundle[1] if len(args.bundle) > 1 else None,
        only=args.modes.split(","),
        open_generator=open_generator,
    )
    after = json.loads(Path(paths["json"]).read_text(encoding="utf-8"))
    for row in compare(before, after):
        print(
            f"{row['mode']:14} {row['split']:5} right {row['before']} -> {row['after']} "
            f"/{row['n']}  changed: {' '.join(row['changed']) or 'none'}"
        )
    unmatched = sum(g.unmatched for g in opened)
    if unmatched:
        print(f"{unmatched} prompts held no recorded question (answered with an empty text)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
