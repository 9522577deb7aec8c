"""The fine-tuned side of the evaluation: train -> merge -> int4 export -> a fine-tuned bundle.

Run: `expert eval modes --plant examples/plant --work var/work --bundle var/bundles/bundle-plant-0.1.0 --out var/eval`
     (this module builds what that command lacks; it has no command of its own)
Test: .venv/bin/pytest tests/build/test_eval_modes.py

`make eval` must work from a bundle alone, so whatever the fine-tuned modes need is built here
from the plant's training data and the same base checkpoint the bundle was exported from:

1. a LoRA adapter (trainer.train.train), RAG-aware when the index is at hand: each training
   question carries the passages the bundle's own index retrieves for it, in the exact prompt
   the appliance sends (trainer.rag_data), so "fine-tuned + RAG" is trained for what it does;
2. the adapter merged into the base and exported to int4 with the base bundle's quantization
   settings (build.export_llm, whose `adapter_dir` merges before export), so the two int4
   models differ only by the fine-tuning;
3. the quality gate on that int4 model (build.quality_gate), against the base checkpoint with
   the adapter merged in fp32, on the plant's documents and questions, like the base model's
   gate in `make bundle`: the result is `<key>/quality-gate.json`;
4. a bundle `bundle-<name>-finetuned-<version>` beside the base bundle: same embedder and
   index, the fine-tuned model, its gate, the training record in its manifest (`finetune`).
   A fine-tuned model that fails its gate is still bundled for the evaluation, with
   `--accept-quality-loss` recorded in the manifest and a warning: the report compares it
   anyway, and its gate figures go into the report's build record.

Each output lives under `<work>/finetune/<key>/`, where the key hashes every input (training
data, base checkpoint, index, settings). Finished outputs with the same key are reused, and a
change of any input builds a fresh set. A fine-tuned bundle built from other inputs is replaced
(bundles are immutable: it is removed whole and rebuilt, never edited).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.common.fsutil import sha256_file
from appliance.errors import UserFacingError

log = logging.getLogger(__name__)

FINETUNE_DIR = "finetune"
STAMP = "stamp.json"
TRAIN_SUMMARY = "training_summary.json"  # trainer.train writes it last: the run finished
EXPORT_RECORD = "export.json"  # build.export_llm writes it last: the export finished
GATE_RESULT = "quality-gate.json"  # build.quality_gate's result for the fine-tuned int4 model


@dataclass(frozen=True)
class FinetuneOptions:
    """Training settings for the evaluation's fine-tuned model, sized for 2 CPU cores.

    RAG-aware LoRA (r=16, all linear layers) on SmolLM2-135M: each example is ~470 tokens (two
    retrieved passages, one distractor, question and answer). Measured on the 2-core build
    machine, idle: 11.6 s per step of 4 examples (160 tokens/s). A full epoch of the example
    plant (262 examples with the generated unanswerable ones, 66 steps) would take ~13 minutes
    and push `make eval` to ~20; the default is a fixed budget of 48 steps (192 examples,
    ~9 minutes), at a learning rate high enough (1e-3) to move a LoRA adapter in that many
    steps. A fixed step count, not a time limit, keeps the run reproducible. On a bigger
    machine ask for full epochs: `--train-epochs 3` (max_steps is then unset). No gradient
    checkpointing: memory is not the limit on a 135M model and recomputation only costs time.
    How these values were chosen: from the time budget alone, not from any evaluation score;
    a setting tuned on scores must be chosen on the dev split of the eval questions only
    (`appliance.common.questions.load_questions(path, split="dev")`), never on test.
    """

    method: str = "lora"
    epochs: float = 1.0
    max_steps: int | None = 48
    with_retrieval: bool = True
    retrieval_k: int = 2
    distractors: int = 1
    max_seq_length: int = 1024
    batch_size: int = 4
    learning_rate: float | None = 1e-3
    rank: int | None = None  # None: the method's default
    eval_fraction: float = 0.05
    seed: int = 42
    gradient_checkpointing: bool = False
    # Synthesized data (expert synth): the bundle's RAG wording, hand-written pairs mixed in
    # ("FILE[:WEIGHT]"), and a seeded sample of at most this many pairs (None: all).
    domain: str | None = None
    mix: tuple[str, ...] = ()
    max_examples: int | None = None

    def __post_init__(self) -> None:
        if self.method not in ("lora", "qlora"):
            raise UserFacingError(f"finetune method: {self.method!r} is not lora or qlora")
        if not (isinstance(self.epochs, int | float) and self.epochs > 0):
            raise UserFacingError(f"finetune epochs must be > 0, got {self.epochs!r}")
        if self.max_steps is not None and (
            not isinstance(self.max_steps, int) or self.max_steps < 1
        ):
            raise UserFacingError(
                f"finetune max_steps must be an integer >= 1, got {self.max_steps!r}"
            )
        for name in ("retrieval_k", "batch_size", "max_seq_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserFacingError(f"finetune {name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.eval_fraction, float) and 0 < self.eval_fraction < 1):
            raise UserFacingError(
                f"finetune eval_fraction must be in (0, 1), got {self.eval_fraction!r}"
            )
        if self.max_examples is not None and (
            not isinstance(self.max_examples, int) or self.max_examples < 1
        ):
            raise UserFacingError(
                f"finetune max_examples must be an integer >= 1, got {self.max_examples!r}"
            )
        if not isinstance(self.distractors, int) or self.distractors < 0:
            raise UserFacingError(
                f"finetune distractors must be an integer >= 0, got {self.distractors!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> FinetuneOptions:
        values = dict(values or {})
        if "mix" in values:
            values["mix"] = tuple(values["mix"] or ())
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserFacingError(f"unknown fine-tuning option(s) {unknown}")
        return cls(**values)


@dataclass
class FinetuneResult:
    """What `ensure_finetuned` built or reused."""

    key: str
    work_dir: Path
    adapter_dir: Path
    int4_dir: Path
    fp32_dir: Path | None
    bundle: Path
    base_hf: Path
    options: dict[str, Any] = field(default_factory=dict)
    reused: dict[str, bool] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    quality_gate: dict[str, Any] = field(default_factory=dict)  # build.quality_gate.summary

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
        return d


# --------------------------------------------------------------------------------------------
# Inputs


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def resolve_base_hf(base_bundle, base_hf: Path | None, work: Path | None) -> Path:
    """The HF checkpoint the base bundle's model was exported from (the fine-tuning base)."""
    candidates: list[tuple[Path, str]] = []
    if base_hf is not None:
        candidates.append((Path(base_hf), "--base-hf"))
    else:
        record = _read_json(base_bundle.llm_dir / EXPORT_RECORD)
        source = (record.get("source") or {}).get("path")
        if source:
            candidates.append((Path(source), "the bundle's export record"))
        if work is not None:
            candidates.append((Path(work) / "smollm2-hf", "the work folder"))
    for path, _origin in candidates:
        if (path / "config.json").is_file():
            return path
    tried = ", ".join(f"{p} ({o})" for p, o in candidates) or "nothing"
    raise UserFacingError(
        f"the base HF checkpoint for fine-tuning was not found (tried {tried}); build it with "
        "`make bundle` (or `expert import-model --embedded --out var/work/smollm2-hf`), or pass "
        "--base-hf DIR"
    )


def _checkpoint_fingerprint(model_dir: Path) -> dict:
    """Cheap identity of an HF checkpoint: config and tokenizer hashes, weight file sizes."""
    files = {}
    for p in sorted(model_dir.iterdir()):
        if p.suffix in (".json", ".jinja", ".txt", ".model"):
            files[p.name] = sha256_file(p)
        elif p.suffix in (".safetensors", ".bin"):
            files[p.name] = p.stat().st_size
    return files


def _int4_options(base_bundle):
    """The base bundle's int4 settings, so the fine-tuned export is quantized the same way."""
    from build.export_llm import Int4Options

    quant = (_read_json(base_bundle.llm_dir / EXPORT_RECORD).get("quantization")) or {}
    names = {f.name for f in dataclasses.fields(Int4Options)}
    try:
        return Int4Options(**{k: v for k, v in quant.items() if k in names})
    except (TypeError, ValueError):
        return Int4Options()


def _bundle_part_hashes(bundle, part: str) -> dict:
    files = bundle.manifest.get("files") or {}
    return {k: v.get("sha256") for k, v in sorted(files.items()) if k.startswith(part + "/")}


def input_key(
    *, train_data: Path, base_hf: Path, base_bundle, options: FinetuneOptions, int4: Any
) -> str:
    """Hash of every input of the fine-tuned model; equal keys mean reusable outputs."""
    payload = {
        "train_data": sha256_file(train_data),
        "base_hf": _checkpoint_fingerprint(base_hf),
        "index": _bundle_part_hashes(base_bundle, "index") if options.with_retrieval else None,
        "embedder": _bundle_part_hashes(base_bundle, "embedder")
        if options.with_retrieval
        else None,
        "options": dataclasses.asdict(options),
        "int4": dataclasses.asdict(int4),
    }
    if options.mix:
        from trainer.config import parse_mix

        payload["mix"] = [sha256_file(parse_mix(m)[0]) for m in options.mix]
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Steps


def _sample_lines(path: Path, n: int, seed: int, folder: Path) -> Path:
    """A seeded sample of at most `n` lines of a JSONL file (the file itself if it is short)."""
    import random

    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if len(lines) <= n:
        return path
    picked = sorted(random.Random(seed).sample(range(len(lines)), n))
    out = folder / f"sample-{n}-{path.name}"
    out.write_text("".join(lines[i] + "\n" for i in picked), encoding="utf-8")
    log.info("training on a seeded sample of %d of the %d pairs in %s", n, len(lines), path)
    return out


def train_adapter(
    *,
    base_hf: Path,
    train_data: Path,
    out: Path,
    options: FinetuneOptions,
    index_dir: Path | None,
    embedder_dir: Path | None,
) -> dict:
    """Train (or resume) the LoRA adapter into `out`; returns the training summary."""
    from trainer.config import TrainConfig
    from trainer.train import train

    if (out / TRAIN_SUMMARY).is_file():
        return _read_json(out / TRAIN_SUMMARY)
    config = TrainConfig(
        base=base_hf,
        data=train_data,
        out=out,
        method=options.method,
        epochs=options.epochs,
        max_steps=options.max_steps,
        batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        rank=options.rank,
        max_seq_length=options.max_seq_length,
        eval_fraction=options.eval_fraction,
        seed=options.seed,
        gradient_checkpointing=options.gradient_checkpointing,
        with_retrieval=index_dir,
        embedder=embedder_dir,
        retrieval_k=options.retrieval_k,
        distractors=options.distractors,
        domain=options.domain,
        mix=list(options.mix),
    )
    result = train(config)
    summary = _read_json(out / TRAIN_SUMMARY)
    return summary or (result.to_json() if hasattr(result, "to_json") else {})


def export_model(
    base_hf: Path, out: Path, *, adapter_dir: Path | None, precision: str, int4: Any = None
) -> Path:
    """Merge the adapter (if any) and export; an existing finished export is reused."""
    from build.export_llm import export_llm

    if (out / EXPORT_RECORD).is_file() and (out / "genai_config.json").is_file():
        return out
    return export_llm(
        base_hf,
        out,
        backend="genai",
        precision=precision,
        int4=int4,
        adapter_dir=adapter_dir,
        force=out.exists(),
    )


def gate_model(
    base_hf: Path,
    adapter_dir: Path,
    int4_dir: Path,
    plant: Path | None,
    out: Path,
    index_dir: Path,
    questions: Path | None = None,
) -> tuple[dict, bool]:
    """The quality gate of the fine-tuned int4 model (reference: base + adapter merged, fp32);
    a finished result for these very model files is reused. Returns (gate dict, reused).

    Domain text: the plant's Markdown/text documents, as `make bundle`'s gate uses; without a
    plant folder (training on `--train-data`, e.g. `expert synth` pairs of another corpus) or
    one without docs/, the text of the base bundle's index. Questions (only the two models'
    answers are compared, no reference answer is read): PLANT/qa/eval.jsonl, else `questions`
    (the evaluation's file), else the gate's default."""
    from appliance.quality_gate import digest_of, model_file_hashes
    from build.quality_gate import run_quality_gate, write_result

    old = _read_json(out)
    if old.get("passed") is not None and (old.get("model") or {}).get("sha256") == digest_of(
        model_file_hashes(int4_dir)
    ):
        return old, True
    docs = Path(plant) / "docs" if plant is not None else None
    if plant is not None and (Path(plant) / "qa" / "eval.jsonl").is_file():
        questions = Path(plant) / "qa" / "eval.jsonl"
    has_docs = docs is not None and docs.is_dir()
    result = run_quality_gate(
        base_hf,
        int4_dir,
        texts=None if has_docs else index_texts(index_dir),
        docs_dir=docs if has_docs else None,
        questions=questions if questions is not None and Path(questions).is_file() else None,
        adapter_dir=adapter_dir,
    )
    return write_result(result, out), False


def index_texts(index_dir: Path) -> list[str]:
    """Each document's chunk texts from an index's current version (read-only)."""
    from appliance.retrieval import versions
    from appliance.retrieval.store import Store

    vdir = versions.version_dir(index_dir, versions.read_pointer(index_dir))
    store = Store(vdir / versions.STORE_FILE, writable=False)
    try:
        return [
            "\n\n".join(chunk.text for chunk, _ in store.iter_chunks(doc_id))
            for doc_id in sorted(store.documents())
        ]
    finally:
        store.close()


def _writable_copy(src: Path, dest: Path) -> Path:
    """A bundle's index is read-only; the retriever gets a private copy."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    for p in [dest, *dest.rglob("*")]:
        p.chmod(0o700 if p.is_dir() else 0o600)
    return dest


def finetuned_bundle(
    base_bundle,
    *,
    llm_dir: Path,
    key: str,
    record: Mapping[str, Any],
    quality_gate: dict | None = None,
) -> Path:
    """`bundle-<name>-finetuned-<version>` beside the base bundle, rebuilt when its key differs
    (or when it carries no gate: built before the fine-tuned model was gated).

    `quality_gate`: the gate result of `llm_dir`. A failed or absent gate is bundled with
    `accept_quality_loss` (recorded in the manifest): this bundle exists for the evaluation."""
    from appliance.bundle import load_bundle, read_manifest
    from build.bundle import build_bundle

    name = f"{base_bundle.name or 'plant'}-finetuned"
    version = base_bundle.version or "0.0.0"
    out_root = base_bundle.root.parent
    final = out_root / f"bundle-{name}-{version}"
    if final.is_dir():
        try:
            old = read_manifest(final)
        except UserFacingError:
            old = {}
        old_key = (old.get("finetune") or {}).get("key")
        gated = old.get("quality_gate") is not None or old.get("quality_loss_accepted") is not None
        if old_key == key and gated:
            load_bundle(final)
            return final
        log.warning(
            "%s was built from other inputs (key %s, now %s): rebuilding it", final, old_key, key
        )
        for p in [final, *final.rglob("*")]:
            p.chmod(0o700 if p.is_dir() else 0o600)
        shutil.rmtree(final)
    extra: dict[str, Any] = {"finetune": {"key": key, **record}}
    if base_bundle.manifest.get("retrieval"):
        extra["retrieval"] = base_bundle.manifest["retrieval"]
    passed = bool(quality_gate and quality_gate.get("passed") is True)
    if not passed:
        log.warning(
            "the fine-tuned model %s its quality gate; bundling it for the evaluation with "
            "--accept-quality-loss (recorded in %s's manifest)",
            "failed" if quality_gate else "has no result for",
            final.name,
        )
    return build_bundle(
        out_root,
        name=name,
        version=version,
        llm_dir=llm_dir,
        embedder_dir=base_bundle.embedder_dir,
        index_dir=base_bundle.index_dir,
        quality_gate=quality_gate,
        accept_quality_loss=not passed,
        quality_loss_reason=None
        if passed
        else "evaluation bundle: `expert eval modes` compares the fine-tuned model whatever its "
        "gate says, and reports the gate figures",
        extra=extra,
    )


def ensure_finetuned(
    *,
    base_bundle,
    plant: Path | None,
    work: Path,
    base_hf: Path | None = None,
    full_precision: bool = False,
    options: FinetuneOptions | Mapping[str, Any] | None = None,
    train_data: Path | None = None,
    gate_questions: Path | None = None,
) -> FinetuneResult:
    """Build (or reuse) adapter, int4 export, optional fp32 export and fine-tuned bundle.

    `train_data` (default PLANT/qa/train.jsonl) is the chat JSONL trained on, e.g. the
    pairs.jsonl of `expert synth`. `gate_questions`: the questions of the fine-tuned model's
    quality gate when there is no plant folder (see `gate_model`).
    """
    options = (
        options if isinstance(options, FinetuneOptions) else FinetuneOptions.from_mapping(options)
    )
    prompting = (getattr(base_bundle, "manifest", None) or {}).get("prompting") or {}
    if options.domain is None and prompting.get("domain"):
        # train on the wording the bundle will serve with
        options = dataclasses.replace(options, domain=str(prompting["domain"]))
    if train_data is None:
        if plant is None:
            raise UserFacingError("fine-tuning needs --plant DIR or --train-data FILE")
        train_data = Path(plant) / "qa" / "train.jsonl"
    train_data = Path(train_data)
    if not train_data.is_file():
        raise UserFacingError(
            f"{train_data}: missing; the fine-tuned modes train on the plant's Q&A (chat JSONL, "
            "one {'messages': [...]} per line), or pass the fine-tuned bundle as a second --bundle"
        )
    base_hf = resolve_base_hf(base_bundle, base_hf, work)
    int4 = _int4_options(base_bundle)
    key = input_key(
        train_data=train_data, base_hf=base_hf, base_bundle=base_bundle, options=options, int4=int4
    )
    root = Path(work) / FINETUNE_DIR
    ft_dir = root / key
    ft_dir.mkdir(parents=True, exist_ok=True)
    for stale in root.iterdir():
        if stale.is_dir() and stale.name != key:
            log.info("removing fine-tuning outputs of other inputs: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
    if options.max_examples is not None:
        train_data = _sample_lines(train_data, options.max_examples, options.seed, ft_dir)
    stamp = {
        "key": key,
        "train_data": str(train_data),
        "base_hf": str(base_hf),
        "base_bundle": base_bundle.id,
        "options": dataclasses.asdict(options),
    }
    (ft_dir / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")

    result = FinetuneResult(
        key=key,
        work_dir=ft_dir,
        adapter_dir=ft_dir / "adapter",
        int4_dir=ft_dir / "int4",
        fp32_dir=ft_dir / "fp32" if full_precision else None,
        bundle=Path(),
        base_hf=base_hf,
        options=dataclasses.asdict(options),
    )

    t0 = time.perf_counter()
    result.reused["adapter"] = (result.adapter_dir / TRAIN_SUMMARY).is_file()
    index_copy = None
    if not result.reused["adapter"]:
        log.info(
            "training the LoRA adapter on %s (%s) into %s",
            train_data,
            "RAG-aware" if options.with_retrieval else "plain Q&A",
            result.adapter_dir,
        )
        if options.with_retrieval:
            index_copy = _writable_copy(base_bundle.index_dir, ft_dir / "index-copy")
    try:
        result.training = train_adapter(
            base_hf=base_hf,
            train_data=train_data,
            out=result.adapter_dir,
            options=options,
            index_dir=index_copy,
            embedder_dir=base_bundle.embedder_dir if index_copy is not None else None,
        )
    finally:
        if index_copy is not None:
            shutil.rmtree(index_copy, ignore_errors=True)
    result.seconds["train"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    result.reused["int4"] = (result.int4_dir / EXPORT_RECORD).is_file()
    export_model(
        base_hf, result.int4_dir, adapter_dir=result.adapter_dir, precision="int4", int4=int4
    )
    result.seconds["export_int4"] = round(time.perf_counter() - t0, 1)
    if result.fp32_dir is not None:
        t0 = time.perf_counter()
        result.reused["fp32"] = (result.fp32_dir / EXPORT_RECORD).is_file()
        export_model(base_hf, result.fp32_dir, adapter_dir=result.adapter_dir, precision="fp32")
        result.seconds["export_fp32"] = round(time.perf_counter() - t0, 1)

    from build.quality_gate import summary as gate_summary

    t0 = time.perf_counter()
    gate, result.reused["quality_gate"] = gate_model(
        base_hf,
        result.adapter_dir,
        result.int4_dir,
        Path(plant) if plant is not None else None,
        ft_dir / GATE_RESULT,
        base_bundle.index_dir,
        questions=gate_questions,
    )
    result.quality_gate = gate_summary(gate)
    result.seconds["quality_gate"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    record = {
        "base_bundle": base_bundle.id,
        "base_hf": str(base_hf),
        "train_data": str(train_data),
        "train_data_sha256": sha256_file(train_data),
        "options": dataclasses.asdict(options),
        "training": {
            k: result.training.get(k)
            for k in (
                "global_step",
                "epochs",
                "eval_loss_before",
                "eval_loss",
                "train_runtime_s",
                "stopped_early",
            )
            if k in result.training
        },
    }
    result.bundle = finetuned_bundle(
        base_bundle, llm_dir=result.int4_dir, key=key, record=record, quality_gate=gate
    )
    result.seconds["bundle"] = round(time.perf_counter() - t0, 1)
    return result


def ensure_fp32_for_bundle(bundle, *, work: Path | None, base_hf: Path | None = None) -> Path:
    """The fp32 twin of a bundle's int4 model (same source checkpoint and merged adapter),
    exported once into `<work>/fp32/<bundle id>/`."""
    if work is None:
        raise UserFacingError("--full-precision needs --work DIR for the fp32 exports")
    record = _read_json(bundle.llm_dir / EXPORT_RECORD)
    source = (
        Path(base_hf) if base_hf is not None else Path((record.get("source") or {}).get("path", ""))
    )
    if not (source / "config.json").is_file():
        raise UserFacingError(
            f"{bundle.id}: the checkpoint its model was exported from ({source}) is not here; "
            "pass --base-hf DIR for the full-precision modes"
        )
    adapter = (record.get("adapter") or {}).get("path")
    adapter_dir = Path(adapter) if adapter else None
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        raise UserFacingError(
            f"{bundle.id}: its merged adapter {adapter_dir} is not here; rebuild it or drop "
            "--full-precision"
        )
    out = Path(work) / "fp32" / bundle.id
    if (out / EXPORT_RECORD).is_file():
        old = _read_json(out / EXPORT_RECORD)
        same_source = (old.get("source") or {}).get("config_sha256") == (
            record.get("source") or {}
        ).get("config_sha256")
        same_adapter = (old.get("adapter") or {}).get("path") == (record.get("adapter") or {}).get(
            "path"
        )
        if same_source and same_adapter:
            return out
    if out.exists():
        shutil.rmtree(out)
    return export_model(source, out, adapter_dir=adapter_dir, precision="fp32")
