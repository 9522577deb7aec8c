"""Measure RAG against fine-tuning against both, on the plant's own questions: the modes, and
how one question is answered and scored in each (`expert eval modes`; build/bundle_evaluation.py
opens the bundles and writes the reports, build/commands/eval.py is the command line).

Run: `expert eval modes --plant examples/plant --work var/work --bundle var/bundles/bundle-plant-0.1.0 --out var/eval`
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
`run_modes` takes a generator factory and a retriever, so it runs as well on fakes as on the
bundles' models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.answering import SERVICE_ABSTAIN_REASONS
from appliance.common.questions import EvalQuestion
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
        service_abstained=result.abstain_reason in SERVICE_ABSTAIN_REASONS,
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
