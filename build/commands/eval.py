"""`expert eval`: RAG against fine-tuning against both, retrieval, calibration, the quality gate.

Run: `expert eval modes --plant examples/plant --work var/work --bundle BUNDLE --out var/eval`
     `expert eval modes --bundle BASE_BUNDLE --bundle FINETUNED_BUNDLE --questions FILE --out DIR`
     `expert eval retrieval --bundle BUNDLE --questions FILE [--out FILE.json]`
     `expert eval calibrate --bundle BUNDLE --questions FILE [--by-answers]
                            [--out BUNDLE-EXTRA.json]`
     `expert eval quality-gate --hf DIR --onnx DIR --docs DIR --questions FILE --out FILE.json`
     `expert eval results plant=var/eval/plant/report.json ... --out results/eval`
     `expert eval rescore REPORT.json --out DIR`
Tests: .venv/bin/pytest tests/build/test_eval_modes.py tests/build/test_quality_gate.py

`expert eval --bundle ...` without a subcommand runs `modes`. The work is done by
build/bundle_evaluation.py (modes, retrieval, calibration), build/quality_gate.py and
build/eval_report.py (results, rescore). Exit 1 when the
quality gate fails (the gate file is still written), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.commands import with_default_subcommand
from appliance.errors import UserFacingError
from build.evaluation import DEFAULT_K, DEFAULT_MAX_NEW_TOKENS, DEFAULT_SEED, MODE_NAMES

log = logging.getLogger(__name__)

HELP = "Evaluate bundles (base / RAG / fine-tuned / both), retrieval, calibration, the gate."


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help=HELP,
        description=HELP + " Without a subcommand: modes.",
    )
    actions = parser.add_subparsers(dest="eval_command", metavar="subcommand", required=True)
    _add_modes(actions)
    _add_retrieval(actions)
    _add_calibrate(actions)
    _add_quality_gate(actions)
    _add_reports(actions)
    with_default_subcommand(parser, "modes")
    parser.set_defaults(explain_extra_args=_explain_extra_args(actions))


def _bundle_questions_out(parser: argparse.ArgumentParser, out_help: str, bundles: str) -> None:
    parser.add_argument(
        "--bundle", type=Path, action="append", default=[], metavar="DIR", help=bundles
    )
    parser.add_argument("--questions", type=Path, metavar="FILE", help="eval JSONL")
    parser.add_argument("--out", type=Path, metavar="PATH", help=out_help)


def _add_modes(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "modes",
        help="base / base+RAG / fine-tuned / fine-tuned+RAG on held-out questions (default)",
        description="base / base+RAG / fine-tuned / fine-tuned+RAG on held-out questions, with "
        "an HTML, JSON and Markdown report.",
    )
    _bundle_questions_out(
        p,
        "report folder (report.html/.json/.md)",
        "the base bundle; a second --bundle is the fine-tuned one",
    )
    p.add_argument(
        "--plant",
        type=Path,
        metavar="DIR",
        help="plant folder (docs/, qa/train.jsonl, qa/eval.jsonl)",
    )
    p.add_argument(
        "--work",
        type=Path,
        metavar="DIR",
        help="work folder for the fine-tuned model (reused when up to date)",
    )
    p.add_argument(
        "--base-hf",
        type=Path,
        metavar="DIR",
        help="the base HF checkpoint (default: the one the bundle was exported from)",
    )
    p.add_argument(
        "--full-precision", action="store_true", help="also evaluate the fp32 ONNX models"
    )
    p.add_argument(
        "--modes",
        default=None,
        metavar="LIST",
        help=f"comma-separated subset of {','.join(MODE_NAMES)}",
    )
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    p.add_argument("--k", type=int, default=DEFAULT_K, help="passages per question")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument(
        "--train-epochs",
        type=float,
        default=None,
        help="train full epochs when the fine-tuned model is built (default: a "
        "fixed budget of 48 steps, sized for 2 CPU cores)",
    )
    p.add_argument(
        "--train-max-steps",
        type=int,
        default=None,
        help="cap on training steps when the fine-tuned model is built",
    )
    p.add_argument(
        "--train-data",
        type=Path,
        metavar="FILE",
        help="chat JSONL the fine-tuned model trains on (default PLANT/qa/train.jsonl), e.g. "
        "the pairs.jsonl of `expert synth`",
    )
    p.add_argument(
        "--train-mix",
        action="append",
        default=[],
        metavar="FILE[:WEIGHT]",
        help="more training pairs mixed in and weighted (e.g. hand-written); repeatable",
    )
    p.add_argument(
        "--train-max-examples",
        type=int,
        default=None,
        metavar="N",
        help="train on a seeded sample of at most N pairs of --train-data",
    )
    p.add_argument(
        "--no-rag-training",
        action="store_true",
        help="train on plain Q&A instead of retrieval-augmented prompts",
    )
    p.set_defaults(func=run_modes)


def _add_one_bundle_command(
    actions: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    out_help: str,
    func: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """A subcommand over one bundle's index and eval questions (retrieval, calibrate)."""
    p = actions.add_parser(name, help=help, description=description)
    _bundle_questions_out(p, out_help, "the bundle")
    p.set_defaults(func=func)
    return p


def _add_retrieval(actions: argparse._SubParsersAction) -> None:
    _add_one_bundle_command(
        actions,
        "retrieval",
        help="retrieval metrics of a bundle's index",
        description="Retrieval metrics (recall, nDCG) of a bundle's index on eval questions.",
        out_help="write the metrics to FILE.json",
        func=run_retrieval,
    )


def _add_calibrate(actions: argparse._SubParsersAction) -> None:
    p = _add_one_bundle_command(
        actions,
        "calibrate",
        help="a bundle's abstention threshold, chosen on the dev split only",
        description="A bundle's abstention threshold, chosen on the dev split only; --out "
        "FILE.json merges it into a file for `expert bundle --extra`.",
        out_help="bundle-extra FILE.json to merge the threshold into",
        func=run_calibrate,
    )
    p.add_argument("--k", type=int, default=DEFAULT_K, help="passages per question")
    p.add_argument(
        "--decimals",
        type=int,
        default=2,
        help="round the threshold down to this many decimals (4 for an embedder whose scores "
        "lie in a narrow band, such as multilingual-e5-small)",
    )
    p.add_argument(
        "--cross-language",
        action="store_true",
        help="calibrate on the questions in another language than the bundle's documents only; "
        "--out writes retrieval.abstain_threshold_cross_language (the service's threshold for "
        "such questions) instead of retrieval.abstain_threshold",
    )
    p.add_argument(
        "--by-answers",
        action="store_true",
        help="choose by what the bundle answers (its model runs on every dev question twice: "
        "minutes on a CPU): the threshold with the most right answers and abstentions, instead "
        "of the score rule (the highest that still answers 95%% of the answerable questions)",
    )
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (--by-answers)")
    p.add_argument(
        "--signal",
        default="passage",
        help="what the threshold is compared with: passage (the best passage's dense score) or "
        "passage+sentence (its mean with the best sentence's; appliance/answering.py, "
        "ABSTAIN_SIGNALS); --out records it",
    )


def _add_quality_gate(actions: argparse._SubParsersAction) -> None:
    from build.quality_gate import GateThresholds

    p = actions.add_parser(
        "quality-gate",
        help="an export against the checkpoint it came from (the bundle's gate)",
        description="An export against the checkpoint it came from: perplexity change, next-"
        "token agreement, answer agreement. Exit 1 when it fails (the gate file is written).",
    )
    p.add_argument(
        "--hf",
        type=Path,
        metavar="DIR",
        help="the HF checkpoint the export was made from (the gate's reference)",
    )
    p.add_argument("--onnx", type=Path, metavar="DIR", help="exported ONNX model folder")
    p.add_argument("--docs", type=Path, metavar="DIR", help="documents for the perplexity text")
    p.add_argument("--questions", type=Path, metavar="FILE", help="eval JSONL")
    p.add_argument("--out", type=Path, metavar="FILE", help="the gate file (JSON) to write")
    p.add_argument(
        "--adapter",
        type=Path,
        metavar="DIR",
        help="LoRA adapter merged into the export (the reference merges it in fp32)",
    )
    d = GateThresholds()
    for flag, what, default in (
        ("--max-ppl-increase", "perplexity change in %% at most", d.max_perplexity_increase_pct),
        ("--min-top1", "top-1 next-token agreement", d.min_top1_agreement),
        ("--min-answer-agreement", "answer word F1", d.min_answer_agreement),
    ):
        p.add_argument(
            flag, type=float, default=None, help=f"pass mark: {what} (default {default})"
        )
    p.set_defaults(func=run_quality_gate)


def _add_reports(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "results",
        help="copy reports and write summary.md into a folder (the committed results/eval)",
        description="Copy `expert eval modes` reports into one folder and write summary.md.",
    )
    p.add_argument("reports", nargs="+", metavar="NAME=REPORT.json")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.set_defaults(func=run_results)
    p = actions.add_parser(
        "rescore",
        help="score a report's stored answers again under the current rules",
        description="Score a report's stored answers again under the current rules and write "
        "report.html/.json/.md anew.",
    )
    p.add_argument("report", type=Path, metavar="REPORT.json")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.set_defaults(func=run_rescore)


def _explain_extra_args(actions: argparse._SubParsersAction):
    """Name the subcommand a misplaced flag belongs to (`--hf` given to `eval retrieval`)."""
    owners: dict[str, list[str]] = {}
    for name, sub in actions.choices.items():
        for action in sub._actions:
            for flag in action.option_strings:
                owners.setdefault(flag, []).append(name)

    def explain(args: argparse.Namespace, extra: list[str]) -> str | None:
        flags = [x.split("=", 1)[0] for x in extra if x.startswith("--")]
        known = [f for f in flags if f in owners]
        if not known:
            return None
        where = "; ".join(f"{f}: `expert eval {'/'.join(owners[f])}`" for f in known)
        return f"{', '.join(known)} do(es) not apply to `expert eval {args.eval_command}` ({where})"

    return explain


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_quality_gate(args: argparse.Namespace) -> int:
    from build import quality_gate

    missing = [
        f
        for f in ("--hf", "--onnx", "--docs", "--questions", "--out")
        if getattr(args, f[2:]) is None
    ]
    if missing:
        raise UserFacingError(
            f"missing {', '.join(missing)}; see `expert eval quality-gate --help`"
        )
    _offline()
    thresholds = None
    marks = (args.max_ppl_increase, args.min_top1, args.min_answer_agreement)
    if any(m is not None for m in marks):
        d = quality_gate.GateThresholds()
        try:
            thresholds = quality_gate.GateThresholds(
                d.max_perplexity_increase_pct if marks[0] is None else marks[0],
                d.min_top1_agreement if marks[1] is None else marks[1],
                d.min_answer_agreement if marks[2] is None else marks[2],
            )
        except ValueError as exc:
            raise UserFacingError(str(exc)) from None
    gate = quality_gate.gate_export(
        args.hf,
        args.onnx,
        args.docs,
        args.questions,
        args.out,
        thresholds=thresholds,
        adapter_dir=args.adapter,
    )
    print(json.dumps(quality_gate.summary(gate), indent=2, ensure_ascii=False))
    if gate.get("passed") is not True:
        # Exit 1, so a script or make stops here; the result is written, and
        # `expert bundle` refuses it unless --accept-quality-loss (recorded).
        print(
            f"quality gate FAILED ({'; '.join(gate.get('failed') or [])}); the result is in "
            f"{args.out}. Export with a better int4 setting, or bundle with "
            "--accept-quality-loss",
            file=sys.stderr,
        )
        return 1
    return 0


def _one_bundle(args: argparse.Namespace, command: str) -> Path:
    """The single --bundle of a one-bundle subcommand, which also needs --questions."""
    if len(args.bundle) != 1 or args.questions is None:
        raise UserFacingError(f"{command} needs one --bundle DIR and --questions FILE")
    return args.bundle[0]


def run_calibrate(args: argparse.Namespace) -> int:
    from build.bundle_evaluation import calibrate_threshold

    if not 1 <= args.decimals <= 6:
        raise UserFacingError(f"--decimals must be between 1 and 6, got {args.decimals}")
    key = "abstain_threshold_cross_language" if args.cross_language else "abstain_threshold"
    # --out: a bundle-extra file; other keys (e.g. "prompting", the other threshold) are kept.
    extra: dict = {}
    if args.out is not None and args.out.is_file():
        extra = json.loads(args.out.read_text(encoding="utf-8"))
    retrieval = extra.get("retrieval") or {}
    other = "abstain_threshold" if args.cross_language else "abstain_threshold_cross_language"
    recorded = retrieval.get("abstain_signal", "passage")
    if other in retrieval and recorded != args.signal:
        raise UserFacingError(
            f"{args.out}: its {other} was calibrated on the signal {recorded!r}, not "
            f"{args.signal!r}; a bundle's two thresholds share one signal: pass --signal "
            f"{recorded}, or calibrate both again"
        )
    result = calibrate_threshold(
        _one_bundle(args, "calibrate"),
        args.questions,
        k=args.k,
        decimals=args.decimals,
        cross_language=args.cross_language,
        by_answers=args.by_answers,
        threads=args.threads,
        signal=args.signal,
    )
    if args.out is not None:
        retrieval = extra.setdefault("retrieval", {})
        retrieval["abstain_signal"] = args.signal
        retrieval[key] = result["abstain_threshold"]
        retrieval[f"{key}_calibration"] = {k: v for k, v in result.items() if k != "bundle"}
        args.out.write_text(json.dumps(extra, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


def run_retrieval(args: argparse.Namespace) -> int:
    from build.bundle_evaluation import evaluate_bundle_retrieval

    result = evaluate_bundle_retrieval(_one_bundle(args, "retrieval"), args.questions, args.out)
    print(json.dumps(result, indent=2, default=str))
    return 0


def run_modes(args: argparse.Namespace) -> int:
    from build.bundle_evaluation import evaluate_modes
    from build.evaluation import EvalSettings

    _offline()
    if not args.bundle:
        raise UserFacingError(
            "pass --bundle DIR (the base bundle, e.g. var/bundles/bundle-plant-0.1.0; "
            "`make bundle` builds it)"
        )
    if len(args.bundle) > 2:
        raise UserFacingError("pass at most two --bundle: the base one, then the fine-tuned one")
    if args.out is None:
        raise UserFacingError("pass --out DIR, the folder for report.html/.json/.md")
    questions = args.questions
    if questions is None:
        if args.plant is None:
            raise UserFacingError("pass --questions FILE (or --plant DIR for PLANT/qa/eval.jsonl)")
        questions = args.plant / "qa" / "eval.jsonl"
    only = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else None
    settings = EvalSettings(
        max_new_tokens=args.max_new_tokens,
        k=args.k,
        seed=args.seed,
        threads=args.threads,
        limit=args.limit,
    )
    options: dict[str, Any] = {}
    if args.train_epochs is not None:
        options["epochs"] = args.train_epochs
        options["max_steps"] = None  # full epochs, unless --train-max-steps caps them
    if args.train_max_steps is not None:
        options["max_steps"] = args.train_max_steps
    if args.no_rag_training:
        options["with_retrieval"] = False
    if args.train_mix:
        options["mix"] = tuple(args.train_mix)
    if args.train_max_examples is not None:
        options["max_examples"] = args.train_max_examples
    paths = evaluate_modes(
        questions_file=questions,
        out_dir=args.out,
        base_bundle=args.bundle[0],
        finetuned_bundle=args.bundle[1] if len(args.bundle) > 1 else None,
        plant=args.plant,
        work=args.work,
        base_hf=args.base_hf,
        full_precision=args.full_precision,
        only=only,
        settings=settings,
        finetune_options=options,
        train_data=args.train_data,
    )
    summary = json.loads(paths["json"].read_text(encoding="utf-8"))
    print(paths["md"].read_text(encoding="utf-8").split("\n## Per question")[0].rstrip())
    print(f"\nreport: {paths['html']}  (also {paths['json'].name}, {paths['md'].name})")
    rec = summary.get("recommendation") or {}
    if rec.get("mode"):
        log.info("recommended mode: %s", rec["mode"])
    return 0


def run_results(args: argparse.Namespace) -> int:
    from build.eval_report import write_results

    reports = {}
    for item in args.reports:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserFacingError(
                f"{item!r}: write NAME=PATH/report.json, e.g. plant=var/eval/plant/report.json"
            )
        reports[name] = Path(path)
    try:
        paths = write_results(reports, args.out)
    except FileNotFoundError as exc:
        raise UserFacingError(str(exc)) from None
    print(paths["summary"].read_text(encoding="utf-8"))
    return 0


def run_rescore(args: argparse.Namespace) -> int:
    from build.eval_report import rebuild_report, write_reports

    if not args.report.is_file():
        raise UserFacingError(f"{args.report}: no such report.json")
    report = rebuild_report(json.loads(args.report.read_text(encoding="utf-8")), rescore=True)
    paths = write_reports(report, args.out)
    print(paths["md"].read_text(encoding="utf-8").split("\n## Per question")[0])
    return 0
