"""Measure RAG against fine-tuning against both, on the plant's own questions (`expert eval`,
whose command line is build/commands/eval.py).

Run: `expert eval modes --plant examples/plant --work var/work --bundle var/bundles/bundle-plant-0.1.0 --out var/eval`
     `expert eval calibrate --bundle BUNDLE --questions FILE [--out BUNDLE-EXTRA.json]`
     `expert eval retrieval --bundle BUNDLE --questions FILE [--out FILE.json]`
Tests: .venv/bin/pytest tests/build/test_eval_metrics.py tests/build/test_eval_report.py tests/build/test_eval_modes.py

The usual advice (RAG for changing data and traceable answers, fine-tuning for stable
terminology, both for automated flows) is checked here on the plant's data instead of taken
on faith. Held-out questions go through four modes: the base model, the base model with
retrieval, the fine-tuned model, the fine-tuned model with retrieval; each answer is produced by
`appliance.answering`, the code the service runs, with the int4 models the device runs
(`--full-precision` adds the fp32 ONNX exports), greedy and seeded. build/eval_metrics.py
scores the answers, build/eval_report.py writes the HTML, JSON and Markdown reports.

With `--plant` and `--work` and a single `--bundle`, the fine-tuned model is built when missing
(build/finetune_pipeline.py: LoRA training, merge, int4 export, a fine-tuned bundle); outputs
that exist and match their inputs are reused.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.common.questions import SPLITS, EvalQuestion, load_questions
from appliance.common.versions import package_versions
from appliance.errors import UserFacingError
from build import eval_metrics

log = logging.getLogger(__name__)

# The four modes, in report order: (name, label, fine-tuned?, retrieval?).
MODE_TABLE = (
    ("base", "Base", False, False),
    ("base+rag", "Base + RAG", False, True),
    ("finetuned", "Fine-tuned", True, False),
    ("finetuned+rag", "Fine-tuned + RAG", True, True),
)
MODE_NAMES = tuple(m[0] for m in MODE_TABLE)

# 160 new tokens hold every reference answer of the example plant (the longest is ~60 tokens)
# with room to spare, and keep a full `make eval` within its time budget on 2 cores.
DEFAULT_MAX_NEW_TOKENS = 160
DEFAULT_K = 5
DEFAULT_SEED = 1234


# --------------------------------------------------------------------------------------------
# Modes and settings


@dataclass(frozen=True)
class EvalSettings:
    """How every mode generates: the same for all, so only the mode differs."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    k: int = DEFAULT_K
    seed: int = DEFAULT_SEED
    threads: int | None = None
    limit: int | None = None  # evaluate only the first N questions (quick looks)

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 4096:
            raise UserFacingError(
                f"max_new_tokens must be an integer in [1, 4096], got {self.max_new_tokens!r}"
            )
        if not isinstance(self.k, int) or not 1 <= self.k <= 50:
            raise UserFacingError(f"k must be an integer in [1, 50], got {self.k!r}")
        if not isinstance(self.seed, int):
            raise UserFacingError(f"seed must be an integer, got {self.seed!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UserFacingError(f"threads must be an integer >= 1, got {self.threads!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise UserFacingError(f"limit must be an integer >= 1, got {self.limit!r}")


@dataclass(frozen=True)
class ModeSpec:
    """One evaluated mode: which model (by key; modes sharing a key share the loaded model)
    and whether answers are grounded in retrieved passages."""

    name: str
    label: str
    model: str
    use_retrieval: bool
    finetuned: bool
    precision: str = "int4"
    llm_dir: Path | None = None
    bundle: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.model:
            raise ValueError("ModeSpec: name and model must be non-empty")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["llm_dir"] = str(self.llm_dir) if self.llm_dir is not None else None
        return d


def standard_modes(
    base_llm: Path,
    finetuned_llm: Path | None,
    *,
    base_bundle: str | None = None,
    finetuned_bundle: str | None = None,
    fp32: Mapping[str, Path] | None = None,
    only: Sequence[str] | None = None,
) -> list[ModeSpec]:
    """The four modes over the int4 models, plus their fp32 twins for the models in `fp32`
    (keys "base" / "finetuned"). `only` keeps the named int4 modes (and their fp32 twins)."""
    modes: list[ModeSpec] = []
    for precision, models in (
        ("int4", {"base": base_llm, "finetuned": finetuned_llm}),
        ("fp32", dict(fp32 or {})),
    ):
        for name, label, finetuned, rag in MODE_TABLE:
            if only is not None and name not in only:
                continue
            which = "finetuned" if finetuned else "base"
            llm = models.get(which)
            if llm is None:
                continue
            suffix = "" if precision == "int4" else "@fp32"
            modes.append(
                ModeSpec(
                    name=name + suffix,
                    label=label + ("" if precision == "int4" else " (fp32)"),
                    model=f"{which}-{precision}",
                    use_retrieval=rag,
                    finetuned=finetuned,
                    precision=precision,
                    llm_dir=Path(llm),
                    bundle=(finetuned_bundle if finetuned else base_bundle)
                    if precision == "int4"
                    else None,
                )
            )
    return modes


# --------------------------------------------------------------------------------------------
# Running


@dataclass
class AnswerRecord:
    """One mode's answer to one question, with its timings and score."""

    question_id: str
    mode: str
    text: str
    abstained: bool
    abstain_reason: str | None
    service_abstained: bool
    abstention: str | None = None  # eval_metrics.abstention_kind
    cited: list[dict] = field(default_factory=list)
    # markers the appliance appended itself because the model cited nothing (Answer field)
    appended_citations: list[int] = field(default_factory=list)
    # the service's grounding verdict (appliance.grounding: "supported" | "quoted" |
    # "abstained" | "unsupported" | "no_values"; None where the service has none) and evidence
    grounding: str | None = None
    evidence: list[dict] = field(default_factory=list)
    # value-like tokens of the answer found in no retrieved passage (appliance.grounding's
    # value_spans/occurs); None: not measured (no retrieval, or no appliance.grounding)
    unsupported_values: list[str] | None = None
    # what the model said before the grounding check, and the values the check refused
    model_text: str | None = None
    model_unsupported: list[str] = field(default_factory=list)
    # the answer is the named entry's labelled field, quoted; no model ran (appliance.fields)
    extracted: bool = False
    retrieved: list[str] = field(default_factory=list)
    best_score: float | None = None
    ttft_s: float | None = None
    total_s: float = 0.0
    retrieval_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    tokens_per_s: float | None = None
    error: str | None = None
    score: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _source_names(source: Any) -> list[str]:
    return [n for n in (getattr(source, "document", ""), getattr(source, "title", "")) if n]


def evaluate_question(
    q: EvalQuestion,
    mode: ModeSpec,
    *,
    generator: Any,
    retriever: Any,
    settings: EvalSettings,
    policy: Any = None,
) -> AnswerRecord:
    """Answer `q` in `mode` through appliance.answering (as the service does) and score it.

    Time to first token is measured from the call (retrieval and prompt assembly included)
    to the first text delta: what a terminal user waits for."""
    from appliance.answering import answer_stream
    from appliance.generation.base import GenerationParams

    params = GenerationParams(
        max_new_tokens=settings.max_new_tokens, temperature=0.0, seed=settings.seed
    )
    t0 = time.perf_counter()
    first: float | None = None
    try:
        stream = answer_stream(
            q.question,
            (),
            generator=generator,
            retriever=retriever if mode.use_retrieval else None,
            params=params,
            k=settings.k,
            filters=q.filters,
            use_retrieval=mode.use_retrieval,
            policy=policy,
        )
        for _delta in stream:
            if first is None:
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        result = stream.result
        assert result is not None
    except (UserFacingError, ValueError) as exc:
        # A question the mode cannot answer at all (e.g. the prompt does not fit the
        # context): recorded as an error, scored as a failure, and the run goes on.
        record = AnswerRecord(
            question_id=q.id,
            mode=mode.name,
            text="",
            abstained=False,
            abstain_reason=None,
            service_abstained=False,
            total_s=time.perf_counter() - t0,
            error=str(exc),
        )
        record.score = {**asdict(_score(q, mode, record)), "verdict": "error"}
        return record

    cited = [s for s in result.sources if s.cited]
    appended = [int(n) for n in (getattr(result, "appended_citations", None) or [])]
    model_cited = [s for s in cited if s.n not in appended]
    decode_s = result.generation_s - (result.first_token_s or 0.0)
    record = AnswerRecord(
        question_id=q.id,
        mode=mode.name,
        text=result.text,
        abstained=False,
        abstain_reason=result.abstain_reason,
        # The service's own abstention (retrieval under the threshold), not the model saying
        # the sentence (answering flags that too, as abstain_reason "model").
        service_abstained=result.abstain_reason in ("low_score", "no_passages", "unknown_term"),
        cited=[
            {"n": s.n, "document": s.document, "title": s.title, "section": s.section}
            for s in cited
        ],
        appended_citations=appended,
        model_text=getattr(result, "model_text", None),
        model_unsupported=list(getattr(result, "unsupported", None) or []),
        extracted=bool(getattr(result, "extracted", False)),
        grounding=getattr(result, "grounding", None),
        evidence=[_as_dict(e) for e in (getattr(result, "evidence", None) or [])],
        unsupported_values=unsupported_values(result.text, result.sources)
        if mode.use_retrieval
        else None,
        retrieved=[s.document or s.title for s in result.sources],
        best_score=result.best_score,
        ttft_s=first,
        total_s=total,
        retrieval_s=result.retrieval_s,
        prompt_tokens=int(result.prompt_tokens),
        completion_tokens=int(result.completion_tokens),
        finish_reason=result.finish_reason,
        tokens_per_s=(result.completion_tokens - 1) / decode_s
        if result.completion_tokens > 1 and decode_s > 0
        else None,
    )
    record.abstention = eval_metrics.abstention_kind(
        record.text,
        service_flag=record.service_abstained or record.grounding == "abstained",
        use_retrieval=mode.use_retrieval,
        question=q.question,
    )
    record.abstained = record.abstention is not None
    record.score = asdict(
        _score(
            q,
            mode,
            record,
            cited=[_source_names(s) for s in cited],
            model_cited=[_source_names(s) for s in model_cited],
        )
    )
    return record


def _as_dict(obj: Any) -> dict:
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return asdict(obj) if hasattr(obj, "__dataclass_fields__") else dict(obj)


def unsupported_values(text: str, sources: Sequence[Any]) -> list[str] | None:
    """The value-like tokens of an answer (appliance.grounding.value_spans) that occur in no
    retrieved passage (appliance.grounding.occurs): what the grounding check exists to stop.
    None when appliance.grounding is not available."""
    try:
        from appliance.grounding import occurs, value_spans
    except ImportError:
        return None
    passages = [str(getattr(s, "text", "") or "") for s in sources]
    clean = eval_metrics.strip_citations(text)
    return [v.text for v in value_spans(clean) if not any(occurs(v, p) for p in passages)]


def _score(
    q: EvalQuestion,
    mode: ModeSpec,
    record: AnswerRecord,
    cited: Sequence[Sequence[str]] = (),
    model_cited: Sequence[Sequence[str]] | None = None,
) -> eval_metrics.AnswerScore:
    return eval_metrics.score_answer(
        text=record.text,
        answerable=q.answerable,
        expected_facts=q.expected_facts,
        reference_answer=q.reference_answer,
        abstained=record.abstained,
        use_retrieval=mode.use_retrieval,
        cited=cited,
        source=q.source,
        model_cited=model_cited,
        question=q.question,
    )


def run_modes(
    questions: Sequence[EvalQuestion],
    modes: Sequence[ModeSpec],
    *,
    open_generator: Callable[[ModeSpec], Any],
    retriever: Any,
    settings: EvalSettings,
    policy: Any = None,
    progress: bool = True,
) -> list[AnswerRecord]:
    """Every question through every mode. Modes sharing a model run back to back and the model
    is opened once (`open_generator(mode)`) and released before the next one is opened."""
    from tqdm import tqdm

    if any(m.use_retrieval for m in modes) and retriever is None:
        raise UserFacingError("a retrieval mode was asked for but no index is open; pass --bundle")
    order: dict[str, list[ModeSpec]] = {}
    for m in modes:
        order.setdefault(m.model, []).append(m)
    records: list[AnswerRecord] = []
    total = len(questions) * len(modes)
    with tqdm(total=total, desc="eval", unit="answer", disable=not progress) as bar:
        for model_key, group in order.items():
            generator = open_generator(group[0])
            try:
                for mode in group:
                    bar.set_postfix_str(mode.name)
                    for q in questions:
                        records.append(
                            evaluate_question(
                                q,
                                mode,
                                generator=generator,
                                retriever=retriever,
                                settings=settings,
                                policy=policy,
                            )
                        )
                        bar.update(1)
            finally:
                log.debug("releasing model %s", model_key)
                del generator
    rank = {m.name: i for i, m in enumerate(modes)}
    qrank = {q.id: i for i, q in enumerate(questions)}
    records.sort(key=lambda r: (rank[r.mode], qrank[r.question_id]))
    return records


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
) -> dict[str, Path]:
    """Build what is missing, run the modes, write report.{html,json,md}; return their paths."""
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
            open_generator=lambda m: open_genai(m, settings.threads),
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
# `expert eval retrieval` and `expert eval calibrate`


def evaluate_retrieval_cli(bundle_path: Path, questions_file: Path, out: Path | None) -> dict:
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
    bundle_path: Path, questions_file: Path, *, split: str = "dev", k: int = DEFAULT_K
) -> dict:
    """The abstention threshold for a bundle, chosen on one split only (dev by default).

    For each question of the split: the best dense score of the top-k passages the bundle's
    index returns; then `appliance.answering.calibrate_abstain_threshold` (the highest
    threshold that still answers >= 95% of the answerable questions), rounded down to two
    decimals so that the 95% still holds. The other split is only reported."""
    from appliance.answering import best_dense_score, calibrate_abstain_threshold
    from appliance.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    questions = load_questions(questions_file)
    if split not in SPLITS or not any(q.split == split for q in questions):
        raise UserFacingError(f"{questions_file}: no questions in split {split!r}")
    scores: dict[str, dict[str, list[float]]] = {}
    with open_retriever(bundle) as retriever:
        for q in questions:
            best = best_dense_score(retriever.search(q.question, k=k, filters=q.filters))
            part = scores.setdefault(q.split or "none", {"answerable": [], "unanswerable": []})
            part["answerable" if q.answerable else "unanswerable"].append(
                -1.0 if best is None else float(best)
            )
    tuned = scores[split]
    cal = calibrate_abstain_threshold(tuned["answerable"], tuned["unanswerable"])
    threshold = math.floor(cal.threshold * 100) / 100

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
        "calibrated": round(cal.threshold, 4),
        "abstain_threshold": threshold,
        "by_split": {name: effect(part) for name, part in sorted(scores.items())},
    }
