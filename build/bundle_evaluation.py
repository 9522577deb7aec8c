"""Evaluations that open bundles: the four modes end to end (`expert eval modes`), a bundle's
retrieval metrics (`expert eval retrieval`) and its abstention threshold (`expert eval
calibrate`); build/commands/eval.py is their command line.

Run: `expert eval modes --plant examples/plant --work var/work --bundle var/bundles/bundle-plant-0.1.0 --out var/eval`
Tests: .venv/bin/pytest tests/build/test_eval_modes.py

build/evaluation.py answers and scores the questions given a generator and a retriever; this
module opens those from the bundles (the int4 model through onnxruntime-genai, the index over a
scratch copy, the bundle's own answer policy), builds the fine-tuned bundle when it is missing
(build/finetune_pipeline.py) and writes the reports (build/eval_report.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from appliance.common.questions import SPLITS, load_questions
from appliance.common.versions import package_versions
from appliance.errors import UserFacingError
from build.evaluation import (
    DEFAULT_K,
    MODE_NAMES,
    EvalSettings,
    ModeSpec,
    evaluate_question,
    run_modes,
    standard_modes,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Where a run was made


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def machine_info() -> dict:
    """Where and on what code a run was made; the load average says how contended its timings
    are (timings on a busy shared box are several times an idle one's)."""
    info = {
        "git_commit": _git_commit(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    info["onnxruntime_genai"] = package_versions(["onnxruntime-genai"])["onnxruntime-genai"]
    return info


# --------------------------------------------------------------------------------------------
# The bundle side: generators, retriever, answer policy


def open_genai(mode: ModeSpec, threads: int | None = None):
    from appliance.generation.genai import GenaiGenerator

    if mode.llm_dir is None:
        raise UserFacingError(f"mode {mode.name}: no model folder")
    return GenaiGenerator(mode.llm_dir, threads=threads, model_id=mode.bundle or mode.model)


@contextmanager
def open_retriever(bundle) -> Iterator[Any]:
    """The bundle's retriever over a scratch copy of its index (a bundle is read-only; the
    retriever may want to write its journal), removed afterwards."""
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import Retriever

    with tempfile.TemporaryDirectory(prefix="expert-eval-index-") as tmp:
        index = Path(tmp) / "index"
        shutil.copytree(bundle.index_dir, index)
        for p in index.rglob("*"):
            p.chmod(0o700 if p.is_dir() else 0o600)
        retriever = Retriever.open(index, OnnxEmbedder(bundle.embedder_dir))
        try:
            yield retriever
        finally:
            close = getattr(retriever, "close", None)
            if callable(close):
                close()


def bundle_policy(manifest: Mapping | None):
    """The answer policy the service would use for this bundle (its calibrated threshold and
    its wording)."""
    from appliance.answering import AnswerPolicy

    return AnswerPolicy.from_manifest(manifest)


# --------------------------------------------------------------------------------------------
# `expert eval modes`


def evaluate_modes(
    *,
    questions_file: Path,
    out_dir: Path,
    base_bundle: Path,
    finetuned_bundle: Path | None = None,
    plant: Path | None = None,
    work: Path | None = None,
    base_hf: Path | None = None,
    full_precision: bool = False,
    only: Sequence[str] | None = None,
    settings: EvalSettings | None = None,
    finetune_options: Mapping[str, Any] | None = None,
    train_data: Path | None = None,
    open_generator: Callable[[ModeSpec], Any] | None = None,
) -> dict[str, Path]:
    """Build what is missing, run the modes, write report.{html,json,md}; return their paths.
    `open_generator` opens each mode's model (default: the bundle's int4 ONNX model,
    `open_genai`); `benchmarks/reader_replay.py` passes one that replays recorded answers."""
    from appliance.bundle import load_bundle
    from build import eval_report

    settings = settings or EvalSettings()
    started = time.perf_counter()
    started_load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    questions = load_questions(questions_file)
    if settings.limit:
        questions = questions[: settings.limit]
    base = load_bundle(base_bundle)
    wanted = list(only) if only else list(MODE_NAMES)
    unknown = sorted(set(wanted) - set(MODE_NAMES))
    if unknown:
        raise UserFacingError(f"--modes: unknown mode(s) {unknown}; choose from {list(MODE_NAMES)}")
    needs_ft = any(m.startswith("finetuned") for m in wanted)

    build_info: dict[str, Any] = {}
    ft = None
    fp32: dict[str, Path] = {}
    if needs_ft and finetuned_bundle is not None:
        ft = load_bundle(finetuned_bundle)
    elif needs_ft:
        if (plant is None and train_data is None) or work is None:
            raise UserFacingError(
                "the fine-tuned modes need a fine-tuned bundle: pass a second --bundle, or "
                "--plant DIR and --work DIR to build one (or --modes base,base+rag to skip them)"
            )
        from build import finetune_pipeline

        built = finetune_pipeline.ensure_finetuned(
            base_bundle=base,
            plant=Path(plant) if plant is not None else None,
            work=Path(work),
            base_hf=base_hf,
            full_precision=full_precision,
            options=finetune_options,
            train_data=train_data,
            gate_questions=questions_file,
        )
        ft = load_bundle(built.bundle)
        build_info["finetune"] = built.to_dict()
        if built.fp32_dir is not None:
            fp32["finetuned"] = built.fp32_dir
    if full_precision:
        from build import finetune_pipeline

        if ft is not None and "finetuned" not in fp32:
            fp32["finetuned"] = finetune_pipeline.ensure_fp32_for_bundle(ft, work=work)
        if any(not m.startswith("finetuned") for m in wanted):
            fp32["base"] = finetune_pipeline.ensure_fp32_for_bundle(
                base, work=work, base_hf=base_hf
            )

    modes = standard_modes(
        base.llm_dir,
        ft.llm_dir if ft is not None else None,
        base_bundle=base.id,
        finetuned_bundle=ft.id if ft is not None else None,
        fp32=fp32,
        only=wanted,
    )
    policy = bundle_policy(base.manifest)
    log.info(
        "evaluating %d questions x %d modes (%s), max_new_tokens=%d, k=%d",
        len(questions),
        len(modes),
        ", ".join(m.name for m in modes),
        settings.max_new_tokens,
        settings.k,
    )
    eval_started = time.perf_counter()
    with open_retriever(base) as retriever:
        records = run_modes(
            questions,
            modes,
            open_generator=open_generator or (lambda m: open_genai(m, settings.threads)),
            retriever=retriever,
            settings=settings,
            policy=policy,
        )
    run = {
        "questions_file": str(questions_file),
        "base_bundle": str(base.root),
        "finetuned_bundle": str(ft.root) if ft is not None else None,
        "settings": asdict(settings),
        "abstain_threshold": policy.abstain_threshold,
        "abstain_threshold_cross_language": policy.abstain_threshold_cross_language,
        "machine": machine_info(),
        "load_average_at_start": started_load,
        "eval_s": round(time.perf_counter() - eval_started, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "build": build_info,
    }
    report = eval_report.build_report(questions, modes, records, run=run)
    paths = eval_report.write_reports(report, out_dir)
    log.info("report: %s", paths["html"])
    return paths


# --------------------------------------------------------------------------------------------
# `expert eval retrieval` and `expert eval calibrate`: one bundle's index


def evaluate_bundle_retrieval(bundle_path: Path, questions_file: Path, out: Path | None) -> dict:
    """Retrieval metrics (appliance/retrieval/evaluation.py) of a bundle's own index; written
    to `out` as JSON when given."""
    from appliance.bundle import load_bundle
    from appliance.retrieval.evaluation import evaluate_retrieval

    bundle = load_bundle(bundle_path)
    if not Path(questions_file).is_file():
        raise UserFacingError(f"--questions {questions_file}: no such file")
    with open_retriever(bundle) as retriever:
        result = evaluate_retrieval(retriever, Path(questions_file))
    result = result.to_dict() if hasattr(result, "to_dict") else result
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return result


def calibrate_threshold(
    bundle_path: Path,
    questions_file: Path,
    *,
    split: str = "dev",
    k: int = DEFAULT_K,
    decimals: int = 2,
    cross_language: bool = False,
    by_answers: bool = False,
    threads: int | None = None,
    signal: str = "passage",
) -> dict:
    """The abstention threshold for a bundle, chosen on one split only (dev by default).

    `cross_language`: only the questions in another language than the bundle's documents (its
    wording's language; `appliance.i18n.detect_language` on each question) count, and the result
    is the bundle's `abstain_threshold_cross_language`, which the service applies to such
    questions (English questions over the Spanish corpus: examples/debian-es/qa/mixed-en.jsonl).

    For each question of the split: its abstention score over the top-k passages the bundle's
    index returns (`signal`); then `appliance.answering.calibrate_abstain_threshold` (the highest
    threshold that still answers >= 95% of the answerable questions), rounded down to `decimals`
    decimals so that the 95% still holds. Two suit MiniLM, whose best scores spread over
    0.3-0.8; multilingual-e5-small's lie in a narrow band (Spanish dev: answerable 0.868-0.931,
    unanswerable 0.848-0.906, neighbours 0.0002 apart), where rounding the chosen 0.8693 down to
    0.86 or 0.869 lets through a question the rule refuses, so its bundles take four. The other
    split is only reported.

    `by_answers`: the split's questions are answered by the bundle itself (its model, its index,
    its answer policy), once with the score refusing nothing and once with it refusing
    everything, and the threshold is the one with the most right outcomes
    (`appliance.answering.calibrate_by_outcomes`): a question under it counts as its refusal,
    one over it as its answer. The record then also gives the right outcomes at the chosen
    threshold beside those at the score rule's.

    `signal`: what the threshold is compared with (`appliance.answering.ABSTAIN_SIGNALS`); the
    record names it, and `expert eval calibrate --out` writes it beside the threshold."""
    from appliance.answering import (
        ABSTAIN_SIGNALS,
        abstention_score,
        calibrate_abstain_threshold,
        calibrate_by_outcomes,
        right_outcomes,
    )
    from appliance.bundle import load_bundle

    if signal not in ABSTAIN_SIGNALS:
        raise UserFacingError(
            f"--signal must be one of {', '.join(ABSTAIN_SIGNALS)}, got {signal!r}"
        )
    bundle = load_bundle(bundle_path)
    questions = load_questions(questions_file)
    scope = "all"
    if cross_language:
        # The service's own test (AnswerPolicy.for_question) of which questions take the value.
        policy = bundle_policy(bundle.manifest)
        questions = [q for q in questions if policy.is_cross_language(q.question)]
        scope = f"in another language than the documents' ({policy.wording.language!r}) only"
        if not questions:
            raise UserFacingError(
                f"{questions_file}: no question is in another language than the bundle's "
                f"documents ({policy.wording.language!r}); --cross-language calibrates on such "
                "questions"
            )
    if split not in SPLITS or not any(q.split == split for q in questions):
        raise UserFacingError(f"{questions_file}: no questions in split {split!r}")
    scores: dict[str, dict[str, list[float]]] = {}
    by_question: dict[str, float] = {}
    outcomes: list[Any] = []
    with open_retriever(bundle) as retriever:
        for q in questions:
            passages = retriever.search(q.question, k=k, filters=q.filters)
            best = abstention_score(q.question, passages, retriever, signal)
            part = scores.setdefault(q.split or "none", {"answerable": [], "unanswerable": []})
            by_question[q.id] = -1.0 if best is None else float(best)
            part["answerable" if q.answerable else "unanswerable"].append(by_question[q.id])
        if by_answers:
            tuned_questions = [q for q in questions if q.split == split]
            outcomes = answer_outcomes(
                bundle,
                retriever,
                tuned_questions,
                [by_question[q.id] for q in tuned_questions],
                k=k,
                threads=threads,
            )
    tuned = scores[split]
    cal = calibrate_abstain_threshold(tuned["answerable"], tuned["unanswerable"])
    scale = 10**decimals
    threshold = math.floor(cal.threshold * scale) / scale
    answers: dict[str, Any] | None = None
    if by_answers:
        chosen = calibrate_by_outcomes(outcomes)
        score_rule = threshold
        cal_threshold = chosen.threshold
        threshold = math.floor(cal_threshold * scale) / scale

        def right_at(t: float) -> str:
            return f"{right_outcomes(outcomes, t)}/{len(outcomes)}"

        answers = {
            "rule": "most right outcomes of the bundle's own answers (the middle one on ties)",
            "right": right_at(threshold),
            "tied_from": round(chosen.tied[0], 6),
            "tied_to": round(chosen.tied[1], 6),
            "right_at_score_rule": right_at(score_rule),
            "score_rule_threshold": score_rule,
            "right_refusing_nothing": right_at(-1.0),
        }
    else:
        cal_threshold = cal.threshold

    def effect(part: Mapping[str, list[float]]) -> dict:
        return {
            "answered": f"{sum(x >= threshold for x in part['answerable'])}/"
            f"{len(part['answerable'])} answerable",
            "refused": f"{sum(x < threshold for x in part['unanswerable'])}/"
            f"{len(part['unanswerable'])} unanswerable",
        }

    return {
        "bundle": str(bundle.root),
        "questions_file": str(questions_file),
        "chosen_on": split,
        "questions": scope,
        "signal": signal,
        # As precise as the finest --decimals (6), so that the record floors to the threshold.
        "calibrated": round(cal_threshold, 6),
        "abstain_threshold": threshold,
        "by_split": {name: effect(part) for name, part in sorted(scores.items())},
        **({"by_answers": answers} if answers is not None else {}),
    }


def answer_outcomes(
    bundle: Any,
    retriever: Any,
    questions: Sequence[Any],
    scores: Sequence[float],
    *,
    k: int = DEFAULT_K,
    threads: int | None = None,
) -> list[Any]:
    """Each question answered by the bundle (base model + RAG, the service's policy, over
    `retriever`, the bundle's index) with the score threshold refusing nothing, then refusing
    everything: `appliance.answering.Outcome`s (with `scores`, the questions' abstention
    scores) for `calibrate_by_outcomes`. Scored by the evaluation's strict rules
    (build/eval_metrics). The model is opened once for both."""
    from dataclasses import replace

    from tqdm import tqdm

    from appliance.answering import Outcome

    (mode,) = standard_modes(bundle.llm_dir, None, base_bundle=bundle.id, only=["base+rag"])
    policy = bundle_policy(bundle.manifest)
    # 1.0 is over every cosine score of two different texts: every question is refused.
    answered, refused = (
        replace(policy, abstain_threshold=t, abstain_threshold_cross_language=t)
        for t in (None, 1.0)
    )
    settings = EvalSettings(k=k, threads=threads)
    generator = open_genai(mode, threads)

    def right(q: Any, p: Any) -> bool:
        record = evaluate_question(
            q, mode, generator=generator, retriever=retriever, settings=settings, policy=p
        )
        bar.update(1)
        return record.score.get("verdict") == "correct"

    with tqdm(total=2 * len(questions), desc="calibrate", unit="answer") as bar:
        return [
            Outcome(score=score, right_answered=right(q, answered), right_refused=right(q, refused))
            for q, score in zip(questions, scores, strict=True)
        ]
