"""Quality gate: is the exported (int4) model still the model that was trained?

Run: `expert eval quality-gate --hf DIR --onnx DIR --docs DIR --questions FILE --out FILE`
Tests: `.venv/bin/pytest tests/build/test_quality_gate.py` (the SmolLM2 gate is part of make test).

int4 costs a 135M model a lot (tens of percent perplexity), so the bundle step does not take an
export on trust. The exported folder is run through onnxruntime-genai, the runtime the device
uses, and compared with the HF checkpoint it was exported from (transformers, fp32) on:

- held-out domain text (the plant's Markdown documents), teacher-forced in fixed windows:
  perplexity of each model, the relative change, and top-1 next-token agreement (the share of
  positions where both models' most likely next token is the same);
- the eval questions, answered greedily by both without retrieval: answer agreement is the mean
  word-level F1 (SQuAD-style: lower-cased word multisets, order-insensitive) between the two
  answers, and `answer_exact` the share of identical answers. F1 rather than exact match
  because a small wording drift late in an answer is not a quality loss, while a different
  value, tag or unit is.

The reference is named from the checkpoint's import record (build/import_model.py writes
import.json; `expert merge` carries it over and adds merge.json): for the embedded SmolLM2 it is
the *dequantized source GGUF (Q4_1)*, the best there is but not the original full-precision
weights; for an imported HF checkpoint it is full precision. A fine-tuned model is measured
against its base with the LoRA adapter merged in fp32 (`adapter_dir`).

Both models see the same token ids (the HF tokenizer's; the import checks that
onnxruntime-genai's tokenizer agrees). `GateResult.to_dict()` is the gate file: it records
`passed`, the thresholds, the reference and the sha256 *model digest* of the exported files it
measured (appliance/quality_gate.py defines it). `expert bundle` refuses a missing, malformed,
failed or foreign gate (digest of another model) unless `--accept-quality-loss`, which the
manifest records; the device logs and serves the gate's figures.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from appliance.common.fsutil import atomic_write_text
from appliance.common.questions import load_questions as load_eval_questions
from appliance.errors import UserFacingError
from appliance.quality_gate import (
    DIGEST_ALGORITHM,
    GATE_FORMAT_VERSION,
    digest_of,
    model_file_hashes,
)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DOCS = REPO / "examples" / "plant" / "docs"
DEFAULT_QUESTIONS = REPO / "examples" / "plant" / "qa" / "eval.jsonl"
TEXT_SUFFIXES = (".md", ".txt")


@dataclass(frozen=True)
class GateThresholds:
    """Pass marks. The defaults sit between what SmolLM2-135M's good int4 settings reach and
    what plain round-to-nearest int4 reaches (benchmarks/quantization_bench.py, default gate
    settings): k_quant_mixed +10% perplexity / 0.80 top-1 / 0.60 answer F1 passes; the builder's
    default RTN +34% / 0.69 / 0.47 and k_quant_last +24% / 0.73 / 0.51 fail. Answer F1 over 8
    questions is noisy, so its floor only catches a broken model (which scores ~0.1)."""

    max_perplexity_increase_pct: float = 20.0
    min_top1_agreement: float = 0.75
    min_answer_agreement: float = 0.40

    def __post_init__(self) -> None:
        if not (self.max_perplexity_increase_pct >= 0.0):
            raise ValueError(
                f"max_perplexity_increase_pct must be >= 0, got {self.max_perplexity_increase_pct!r}"
            )
        for name in ("min_top1_agreement", "min_answer_agreement"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True)
class GateSettings:
    """How much is measured: enough to separate the int4 settings, small enough for a build."""

    max_tokens: int = 2048  # domain-text tokens scored (teacher-forced)
    window: int = 256  # tokens per forward pass; windows go round-robin over the documents
    max_questions: int = 8
    answer_tokens: int = 48
    # Threads for the transformers reference. None keeps torch's default (all cores). On a
    # box shared with other jobs, 1 can be several times faster: torch's OpenMP threads
    # spin-wait on each other when the cores are oversubscribed.
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens", "window", "max_questions", "answer_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1 or None, got {self.torch_threads!r}")
        if self.window < 2:
            raise ValueError(f"window must be >= 2, got {self.window}")


@dataclass
class GateResult:
    passed: bool
    reference: dict  # describe_reference(): what the export was compared with
    model: dict  # the exported model measured: path, sha256 (model digest), file hashes
    perplexity_reference: float
    perplexity_exported: float
    perplexity_change_pct: float
    top1_agreement: float
    answer_agreement: float
    answer_exact: float
    tokens_scored: int
    questions: int
    thresholds: GateThresholds
    failed: list[str] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)
    export: dict | None = None
    settings: dict | None = None
    duration_s: float = 0.0

    def to_dict(self) -> dict:
        d = {"format_version": GATE_FORMAT_VERSION, **asdict(self)}
        for key in (
            "perplexity_reference",
            "perplexity_exported",
            "perplexity_change_pct",
            "top1_agreement",
            "answer_agreement",
            "answer_exact",
            "duration_s",
        ):
            d[key] = round(float(d[key]), 4)
        d["metric"] = {
            "perplexity_change_pct": "100 * (ppl_exported / ppl_reference - 1), teacher-forced",
            "top1_agreement": "share of positions where both models' argmax next token agrees",
            "answer_agreement": "mean word-level F1 between greedy answers of both models",
        }
        return d


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def load_texts(docs_dir: Path) -> list[str]:
    """The Markdown / text documents of a folder, sorted by name (held-out domain text)."""
    docs_dir = Path(docs_dir)
    if not docs_dir.is_dir():
        raise UserFacingError(f"documents folder {docs_dir} does not exist; pass --docs DIR.")
    texts = [
        p.read_text(encoding="utf-8")
        for p in sorted(docs_dir.iterdir())
        if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()
    ]
    if not texts:
        raise UserFacingError(
            f"{docs_dir} holds no .md or .txt documents; the gate scores the model on plain "
            "domain text: point --docs at a folder with some."
        )
    return texts


def load_questions(path: Path) -> list[str]:
    """The question texts of an eval JSONL, read and checked by the one question loader."""
    return [q.question for q in load_eval_questions(path)]


def _question_of(row) -> str | None:
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("question"), str):
        return row["question"]
    for m in row.get("messages") or []:
        if isinstance(m, dict) and m.get("role") == "user":
            return m.get("content")
    return None


def _gguf_type(file_type) -> str | None:
    """GGUF `general.file_type` (an int) as llama.cpp names it, e.g. 3 -> "Q4_1"."""
    try:
        from gguf import LlamaFileType

        return LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (ImportError, TypeError, ValueError):
        return None


_FULL_PRECISION_GGUF = ("F32", "F16", "BF16")


def describe_reference(hf_dir: Path, adapter_dir: Path | None = None) -> dict:
    """What the gate's reference model is, from the checkpoint's own records.

    `description` is the phrase shown everywhere (gate output, manifest, service):
    "dequantized source GGUF (Q4_1)" for a checkpoint imported from a quantized GGUF,
    "full precision (HF checkpoint)" for one imported from an HF folder, with
    " + merged LoRA adapter" when an adapter is merged (`expert merge`'s merge.json, or
    `adapter_dir`). A checkpoint without an import record says so instead of guessing.
    """
    hf_dir = Path(hf_dir)
    record = _read_json_object(hf_dir / "import.json")
    source = record.get("source") if isinstance(record.get("source"), dict) else {}
    kind = source.get("kind")
    config = _read_json_object(hf_dir / "config.json")
    stored = config.get("torch_dtype") or config.get("dtype")
    out: dict = {"path": str(hf_dir), "source_kind": kind, "run_dtype": "float32"}
    if kind == "gguf":
        qtype = _gguf_type(source.get("file_type")) or f"file_type {source.get('file_type')}"
        out["gguf_type"] = qtype
        out["source_sha256"] = source.get("sha256")
        if qtype in _FULL_PRECISION_GGUF:
            text = f"full precision (source GGUF, {qtype})"
        else:
            text = f"dequantized source GGUF ({qtype})"
    elif kind == "hf":
        text = "full precision (HF checkpoint" + (
            f", stored as {stored})" if stored and stored != "float32" else ")"
        )
    elif kind:
        text = f"HF checkpoint from {kind}, run in fp32"
    else:
        text = "HF checkpoint without an import record (provenance not recorded), run in fp32"
    merged = _read_json_object(hf_dir / "merge.json")
    if merged or adapter_dir is not None:
        text += " + merged LoRA adapter"
        out["adapter"] = (
            str(adapter_dir)
            if adapter_dir is not None
            else ((merged.get("adapter") or {}).get("path"))
        )
    out["description"] = text
    return out


def _read_json_object(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_model(onnx_dir: Path) -> dict:
    """The exported model the gate measures: its model digest and the file hashes behind it."""
    hashes = model_file_hashes(Path(onnx_dir))
    return {
        "path": str(onnx_dir),
        "sha256": digest_of(hashes),
        "digest": DIGEST_ALGORITHM,
        "files": hashes,
    }


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)


def answer_f1(a: str, b: str) -> float:
    """Word-level F1 between two answers (lower-cased multisets of \\w+ runs)."""
    wa, wb = _WORD.findall(a.lower()), _WORD.findall(b.lower())
    if not wa and not wb:
        return 1.0
    if not wa or not wb:
        return 0.0
    common = sum((Counter(wa) & Counter(wb)).values())
    if common == 0:
        return 0.0
    p, r = common / len(wa), common / len(wb)
    return 2 * p * r / (p + r)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------------------------
# The two models
# --------------------------------------------------------------------------------------------


class _HFModel:
    def __init__(self, hf_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        if self.tokenizer.eos_token_id is not None:
            self.eos.add(self.tokenizer.eos_token_id)

    def logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.torch.tensor([ids])).logits[0].float().numpy()

    def greedy(self, ids: list[int], n: int) -> list[int]:
        with self.torch.no_grad():
            out = self.model.generate(
                self.torch.tensor([ids]),
                attention_mask=self.torch.ones(1, len(ids), dtype=self.torch.long),
                max_new_tokens=n,
                do_sample=False,
                pad_token_id=next(iter(self.eos), 0),
            )
        return _until_eos(out[0, len(ids) :].tolist(), self.eos)


class _GenaiModel:
    def __init__(self, onnx_dir: Path):
        import onnxruntime_genai as og

        self.og = og
        try:
            self.model = og.Model(str(onnx_dir))
        except Exception as exc:
            raise UserFacingError(f"onnxruntime-genai cannot open {onnx_dir}: {exc}") from exc
        cfg = json.loads((Path(onnx_dir) / "genai_config.json").read_text())
        self.context = int(cfg["model"]["context_length"])
        eos = cfg["model"].get("eos_token_id")
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}

    def _generator(self, max_length: int):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=min(max_length, self.context))
        return self.og.Generator(self.model, params)

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of `ids` ([len(ids), vocab]).

        An export whose LM head is pruned to the last position (the default, see
        build.export_llm.genai_extra_options) returns one row per forward pass, so its
        positions are teacher-forced one token at a time through the KV cache: the same
        computation as decoding, ~len(ids) small passes instead of one."""
        gen = self._generator(len(ids) + 1)
        gen.append_tokens(ids)
        out = np.asarray(gen.get_output("logits"))[0].astype(np.float32)
        del gen
        if out.shape[0] == len(ids):
            return out
        return last_position_logits(self.og, self.model, ids, self.context)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        gen = self._generator(len(ids) + n)
        gen.append_tokens(ids)
        out: list[int] = []
        while not gen.is_done() and len(out) < n:
            gen.generate_next_token()
            out.append(int(gen.get_next_tokens()[0]))
        del gen
        return _until_eos(out, self.eos)


def last_position_logits(og, model, ids: list[int], context: int) -> np.ndarray:
    """[len(ids), vocab] logits of an onnxruntime-genai model whose forward pass returns the last
    position only (a pruned LM head): one token per pass, the KV cache carrying the rest."""
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=min(len(ids) + 1, context))
    gen = og.Generator(model, params)
    rows = []
    for token in ids:
        gen.append_tokens([int(token)])
        rows.append(np.asarray(gen.get_output("logits"), dtype=np.float32)[0, -1])
    del gen
    return np.stack(rows)


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


# --------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------


@dataclass
class Reference:
    """What the reference model did on the gate's inputs. Computed once, compared with any
    number of exports (the quantization benchmark compares several). `description` names the
    reference truthfully (describe_reference)."""

    hf_dir: Path
    windows: list[list[int]]
    nll: list[float]  # summed NLL per window
    argmax: list[np.ndarray]  # argmax next token per position (all but the last) per window
    prompts: list[list[int]]
    questions: list[str]
    answers: list[list[int]]
    tokenizer: object = field(repr=False)
    seconds: float = 0.0
    description: dict = field(default_factory=dict)

    @classmethod
    def compute(
        cls,
        hf_dir: Path,
        texts: Iterable[str] | None = None,
        questions: Iterable[str | dict] | Path | None = None,
        *,
        docs_dir: Path | None = None,
        settings: GateSettings | None = None,
        adapter_dir: Path | None = None,
    ) -> Reference:
        """`adapter_dir`: a LoRA adapter of `hf_dir`, merged in fp32 by the trainer's merge
        (`expert merge`) into a temporary checkpoint that is the reference."""
        hf_dir = Path(hf_dir)
        if not (hf_dir / "config.json").is_file():
            raise UserFacingError(
                f"{hf_dir} is not an HF checkpoint (no config.json); pass the "
                "checkpoint the export was made from."
            )
        if adapter_dir is None:
            return cls._compute(hf_dir, texts, questions, docs_dir, settings, hf_dir)
        import tempfile

        from trainer.merge import merge_adapter

        with tempfile.TemporaryDirectory(prefix="quality-gate-merged-") as scratch:
            merged = Path(scratch) / "merged"
            merge_adapter(hf_dir, Path(adapter_dir), merged, dtype="fp32")
            ref = cls._compute(merged, texts, questions, docs_dir, settings, hf_dir)
        ref.hf_dir = hf_dir
        ref.description = describe_reference(hf_dir, adapter_dir=Path(adapter_dir))
        return ref

    @classmethod
    def _compute(cls, hf_dir, texts, questions, docs_dir, settings, named) -> Reference:
        started = time.monotonic()
        settings = settings or GateSettings()
        texts = load_texts(docs_dir or DEFAULT_DOCS) if texts is None else list(texts)
        texts = [t for t in texts if t and t.strip()]
        if not texts:
            raise UserFacingError("the gate got no domain text to score; pass documents.")
        if questions is None:
            questions = DEFAULT_QUESTIONS
        if isinstance(questions, (str, Path)):
            qs = load_questions(Path(questions))
        else:
            qs = [q for q in (_question_of(r) for r in questions) if q]
        qs = qs[: settings.max_questions]

        ref = _HFModel(hf_dir)
        tok = ref.tokenizer
        threads_before = ref.torch.get_num_threads()
        if settings.torch_threads:
            ref.torch.set_num_threads(settings.torch_threads)
        try:
            windows, nll, argmax, prompts, answers = _reference_runs(ref, texts, qs, settings)
        finally:
            ref.torch.set_num_threads(threads_before)
        del ref
        return cls(
            hf_dir=hf_dir,
            windows=windows,
            nll=nll,
            argmax=argmax,
            prompts=prompts,
            questions=qs,
            answers=answers,
            tokenizer=tok,
            seconds=time.monotonic() - started,
            description=describe_reference(named),
        )


def _reference_runs(ref: _HFModel, texts: list[str], qs: list[str], settings: GateSettings):
    from tqdm import tqdm

    from appliance.prompting import PLAIN_SYSTEM_PROMPT

    tok = ref.tokenizer
    docs = [tok(t, add_special_tokens=False, verbose=False)["input_ids"] for t in texts]
    windows = spread_windows(docs, settings.window, settings.max_tokens)
    if not windows:
        raise UserFacingError("the domain text is too short to score (fewer than 2 tokens).")
    nll, argmax = [], []
    for w in tqdm(windows, desc="quality gate: reference text", unit="window", leave=False):
        logits = ref.logits(w)
        nll.append(_nll(logits, w))
        argmax.append(logits[:-1].argmax(-1))
    prompts, answers = [], []
    for q in tqdm(qs, desc="quality gate: reference answers", unit="question", leave=False):
        msgs = [
            {"role": "system", "content": PLAIN_SYSTEM_PROMPT},
            {"role": "user", "content": q},
        ]
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if isinstance(prompt, dict) or hasattr(prompt, "keys"):  # BatchEncoding
            prompt = prompt["input_ids"]
        prompt = [int(t) for t in prompt]
        prompts.append(prompt)
        answers.append(ref.greedy(prompt, settings.answer_tokens))
    return windows, nll, argmax, prompts, answers


def spread_windows(docs: Sequence[Sequence[int]], window: int, max_tokens: int) -> list[list[int]]:
    """Windows of `window` tokens taken round-robin across documents (one per document per
    round) until `max_tokens`, so the score covers every document, not only the first."""
    out: list[list[int]] = []
    total, offset = 0, 0
    while total < max_tokens:
        took = False
        for ids in docs:
            w = list(ids[offset : offset + min(window, max_tokens - total)])
            if len(w) < 2:
                continue
            out.append(w)
            total += len(w)
            took = True
            if total >= max_tokens:
                break
        if not took:
            break
        offset += window
    return out


def _nll(logits: np.ndarray, ids: Sequence[int]) -> float:
    target = np.asarray(ids[1:])
    return float(-_log_softmax(logits[:-1])[np.arange(len(target)), target].sum())


def compare_with_reference(
    reference: Reference,
    onnx_dir: Path,
    thresholds: GateThresholds | None = None,
    *,
    settings: GateSettings | None = None,
) -> GateResult:
    """Run the export through onnxruntime-genai on the reference's inputs and score it."""
    from tqdm import tqdm

    started = time.monotonic()
    thresholds = thresholds or GateThresholds()
    settings = settings or GateSettings()
    onnx_dir = Path(onnx_dir)
    if not (onnx_dir / "genai_config.json").is_file():
        raise UserFacingError(
            f"{onnx_dir} is not an onnxruntime-genai folder (no "
            "genai_config.json); pass the output of `expert export`."
        )
    model = describe_model(onnx_dir)  # hashed before it is loaded: the files measured
    exp = _GenaiModel(onnx_dir)
    tok = reference.tokenizer
    nll_exp, agree, n = 0.0, 0, 0
    for w, am in tqdm(
        list(zip(reference.windows, reference.argmax, strict=True)),
        desc="quality gate: exported text",
        unit="window",
        leave=False,
    ):
        logits = exp.logits(w)
        nll_exp += _nll(logits, w)
        agree += int((logits[:-1].argmax(-1) == am).sum())
        n += len(w) - 1
    ppl_ref = math.exp(sum(reference.nll) / n)
    ppl_exp = math.exp(nll_exp / n)
    change = 100.0 * (ppl_exp / ppl_ref - 1.0)
    top1 = agree / n

    answers = []
    for q, prompt, ref_ids in tqdm(
        list(zip(reference.questions, reference.prompts, reference.answers, strict=True)),
        desc="quality gate: exported answers",
        unit="question",
        leave=False,
    ):
        a_ref = tok.decode(ref_ids, skip_special_tokens=True).strip()
        a_exp = tok.decode(
            exp.greedy(prompt, settings.answer_tokens), skip_special_tokens=True
        ).strip()
        answers.append(
            {
                "question": q,
                "reference": a_ref,
                "exported": a_exp,
                "f1": round(answer_f1(a_ref, a_exp), 4),
            }
        )
    agreement = float(np.mean([a["f1"] for a in answers])) if answers else 1.0
    exact = float(np.mean([a["reference"] == a["exported"] for a in answers])) if answers else 1.0

    failed = []
    if change > thresholds.max_perplexity_increase_pct:
        failed.append(
            f"perplexity rose {change:.1f}% (allowed {thresholds.max_perplexity_increase_pct}%)"
        )
    if top1 < thresholds.min_top1_agreement:
        failed.append(f"top-1 agreement {top1:.3f} < {thresholds.min_top1_agreement}")
    if agreement < thresholds.min_answer_agreement:
        failed.append(f"answer agreement {agreement:.3f} < {thresholds.min_answer_agreement}")

    export = None
    if (onnx_dir / "export.json").is_file():
        rec = json.loads((onnx_dir / "export.json").read_text())
        export = {
            k: rec.get(k) for k in ("backend", "precision", "execution_provider", "quantization")
        }
    result = GateResult(
        passed=not failed,
        reference=reference.description or describe_reference(reference.hf_dir),
        model=model,
        perplexity_reference=ppl_ref,
        perplexity_exported=ppl_exp,
        perplexity_change_pct=change,
        top1_agreement=top1,
        answer_agreement=agreement,
        answer_exact=exact,
        tokens_scored=n,
        questions=len(answers),
        thresholds=thresholds,
        failed=failed,
        answers=answers,
        export=export,
        settings=asdict(settings),
        duration_s=reference.seconds + time.monotonic() - started,
    )
    log.info(
        "quality gate %s (against %s; model sha256 %s): ppl %.2f -> %.2f (%+.1f%%), "
        "top-1 %.3f, answers F1 %.3f%s",
        "passed" if result.passed else "FAILED",
        result.reference["description"],
        model["sha256"][:12],
        ppl_ref,
        ppl_exp,
        change,
        top1,
        agreement,
        "" if result.passed else " — " + "; ".join(failed),
    )
    return result


def run_quality_gate(
    hf_dir: Path,
    onnx_dir: Path,
    texts: Iterable[str] | None = None,
    questions: Iterable[str | dict] | Path | None = None,
    thresholds: GateThresholds | None = None,
    *,
    docs_dir: Path | None = None,
    settings: GateSettings | None = None,
    adapter_dir: Path | None = None,
) -> GateResult:
    """Compare `onnx_dir` (onnxruntime-genai) with `hf_dir` (transformers, fp32).

    `texts`: held-out domain text (default: the Markdown/text files of `docs_dir`, else of
    examples/plant/docs). `questions`: strings, eval rows, or a JSONL path (default:
    examples/plant/qa/eval.jsonl); the first `settings.max_questions` are used.
    `adapter_dir`: the LoRA adapter merged into the export (the reference merges it too).
    """
    if not (Path(onnx_dir) / "genai_config.json").is_file():
        raise UserFacingError(
            f"{onnx_dir} is not an onnxruntime-genai folder (no "
            "genai_config.json); pass the output of `expert export`."
        )
    reference = Reference.compute(
        hf_dir, texts, questions, docs_dir=docs_dir, settings=settings, adapter_dir=adapter_dir
    )
    return compare_with_reference(reference, onnx_dir, thresholds, settings=settings)


SUMMARY_KEYS = (
    "passed",
    "perplexity_change_pct",
    "top1_agreement",
    "answer_agreement",
    "failed",
)


def write_result(result: GateResult | dict, out: Path) -> dict:
    """Write the gate file (JSON, written aside then renamed); returns the dict written."""
    d = result.to_dict() if isinstance(result, GateResult) else dict(result)
    out = Path(out)
    text = json.dumps(d, indent=2, ensure_ascii=False, default=str) + "\n"
    atomic_write_text(out, text, overwrite=True)
    return d


def summary(d: dict) -> dict:
    """The part of a gate file a person reads first (printed by the commands)."""
    out = {k: d.get(k) for k in SUMMARY_KEYS}
    out["reference"] = (d.get("reference") or {}).get("description")
    out["model_sha256"] = (d.get("model") or {}).get("sha256")
    out["thresholds"] = d.get("thresholds")
    return out


def gate_export(
    hf_dir: Path,
    onnx_dir: Path,
    docs_dir: Path,
    questions: Path,
    out: Path,
    *,
    thresholds: GateThresholds | None = None,
    adapter_dir: Path | None = None,
) -> dict:
    """`expert eval quality-gate`: check the inputs exist, run the gate, write the gate file to
    `out` and return it (its `passed` says whether the export may be bundled)."""
    for flag, path, kind in (
        ("--hf", hf_dir, "dir"),
        ("--onnx", onnx_dir, "dir"),
        ("--docs", docs_dir, "dir"),
        ("--questions", questions, "file"),
        ("--adapter", adapter_dir, "dir"),
    ):
        if path is None:
            continue
        if not (Path(path).is_dir() if kind == "dir" else Path(path).is_file()):
            raise UserFacingError(f"{flag} {path}: no such {'folder' if kind == 'dir' else 'file'}")
    extra: dict[str, object] = {}
    if thresholds is not None:
        extra["thresholds"] = thresholds
    if adapter_dir is not None:
        extra["adapter_dir"] = adapter_dir
    gate = run_quality_gate(
        hf_dir=hf_dir, onnx_dir=onnx_dir, docs_dir=docs_dir, questions=questions, **extra
    )
    return write_result(gate, out)
