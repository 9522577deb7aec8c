"""`expert train`: LoRA or QLoRA fine-tuning of a causal LM on chat-format JSONL.

Run: expert train --base DIR --data FILE --method lora|qlora --out DIR [--config FILE] [flags]
Test: .venv/bin/pytest tests/trainer/test_train.py

The loop is Hugging Face's Trainer: progress bar, eval loss every epoch, early stopping on eval
loss (the best epoch's adapter is kept), gradient checkpointing, a fixed seed, and checkpoints
in <out>/checkpoints. Ctrl-C (or SIGTERM) saves a checkpoint at the end of the current step;
running the same command again resumes from the newest checkpoint. Metrics go to
<out>/metrics.jsonl, one JSON object per log line.

Output (<out>/): adapter_config.json + adapter_model.safetensors (peft), the tokenizer,
expert_adapter.json (method, base fingerprint, settings), data_report.json, metrics.jsonl and
training_summary.json, which is written last and marks the run finished.

Several GPUs: `accelerate launch --num_processes N -m appliance.cli train ...`. Each process
loads its own copy of the model on its local GPU (QLoRA uses device_map={"": LOCAL_RANK});
only the main process writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.common.fsutil import atomic_write_text
from appliance.errors import UserFacingError
from trainer.config import (
    RESUME_SENSITIVE,
    TrainConfig,
)

log = logging.getLogger(__name__)

ADAPTER_FORMAT_VERSION = 1
ADAPTER_META = "expert_adapter.json"
SUMMARY = "training_summary.json"
RUN_CONFIG = "train_config.json"
METRICS = "metrics.jsonl"
DATA_REPORT = "data_report.json"
CHECKPOINTS = "checkpoints"


class TrainingInterrupted(UserFacingError):
    """Training stopped on request after saving a checkpoint; the same command resumes."""


@dataclass
class TrainResult:
    out: Path
    method: str
    global_step: int
    epochs: float
    eval_loss_before: float | None
    eval_loss: float | None
    best_checkpoint: str | None
    resumed_from: str | None
    train_runtime_s: float
    train_tokens: int
    tokens_per_second: float
    stopped_early: bool
    peak_cuda_memory_mib: float | None = None  # this process's, on CUDA only
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["out"] = str(self.out)
        d.pop("history")
        return d


# --- callbacks -----------------------------------------------------------------------------


def _callbacks_module():
    from transformers import TrainerCallback

    class MetricsLogger(TrainerCallback):
        """Appends every log record (train loss, eval loss, learning rate...) to metrics.jsonl."""

        def __init__(self, path: Path) -> None:
            self.path = path
            self.history: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if not logs:
                return
            record = {
                "step": state.global_step,
                "epoch": state.epoch,
                "time": round(time.time(), 3),
            }
            record.update({k: v for k, v in logs.items() if isinstance(v, int | float | str)})
            self.history.append(record)
            if state.is_world_process_zero:
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")

    class GracefulStop(TrainerCallback):
        """Turns a stop request (Ctrl-C, SIGTERM) into: save a checkpoint now, then stop."""

        def __init__(self) -> None:
            self.requested = False
            self.stopped_at: int | None = None

        def request(self) -> None:
            self.requested = True

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.requested and self.stopped_at is None:
                self.stopped_at = state.global_step
                control.should_save = True
                control.should_training_stop = True
            return control

    class EvalBefore(TrainerCallback):
        """Keeps the step-0 evaluation (eval_on_start) as the loss before training."""

        def __init__(self, path: Path) -> None:
            self.path = path
            self.loss: float | None = None

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
            if self.loss is None and state.global_step == 0 and metrics:
                self.loss = float(metrics["eval_loss"])
                log.info("eval loss before training: %.4f", self.loss)
                if state.is_world_process_zero:
                    _write_json(self.path, {"eval_loss": self.loss})

    return MetricsLogger, GracefulStop, EvalBefore


class _SignalStop:
    """Installs SIGINT/SIGTERM handlers for the duration of training (main thread only)."""

    def __init__(self, stopper: Any) -> None:
        self.stopper = stopper
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stopper.requested:  # second request: stop hard
            raise KeyboardInterrupt
        log.warning("stop requested: saving a checkpoint after this step (again to abort now)")
        self.stopper.request()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# --- output folder -------------------------------------------------------------------------


def _check_out(config: TrainConfig) -> str | None:
    """Refuse a finished output; return the checkpoint to resume from, if any."""
    from transformers.trainer_utils import get_last_checkpoint

    out = config.out
    if (out / SUMMARY).is_file():
        raise UserFacingError(
            f"{out} already holds a finished adapter ({SUMMARY}); choose a new --out or delete "
            "that folder to train again"
        )
    if out.exists() and not out.is_dir():
        raise UserFacingError(f"--out {out} is a file; give a folder path")
    ckpt_dir = out / CHECKPOINTS
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    saved = out / RUN_CONFIG
    if last is not None and saved.is_file():
        before = json.loads(saved.read_text(encoding="utf-8"))
        now = config.to_json()
        diff = [k for k in RESUME_SENSITIVE if before.get(k) != now.get(k)]
        if diff:
            details = ", ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in diff)
            raise UserFacingError(
                f"{out} holds checkpoints of a run with other settings ({details}); resume with "
                "the same settings, or choose a new --out"
            )
    elif (
        _is_main_process()  # other processes may see the main one's first files appear
        and out.is_dir()
        and any(out.iterdir())
        and last is None
        and not saved.is_file()
    ):
        raise UserFacingError(
            f"--out {out} is a non-empty folder that is not a training run; choose a new or empty folder"
        )
    return last


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main_process() -> bool:
    # Set by `accelerate launch` / torchrun for every process; absent in a plain run.
    return int(os.environ.get("RANK", "0")) == 0


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n", overwrite=True)


# --- the run ---------------------------------------------------------------------------------


def train(config: TrainConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Validate data, then train; returns the result or raises TrainingInterrupted."""
    import torch
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

    from trainer import data as chat_data
    from trainer.base_identity import base_identity
    from trainer.modeling import (
        check_base_dir,
        device_and_dtype,
        load_model_for_training,
        load_tokenizer,
        model_context_length,
        trainable_parameter_count,
    )

    check_base_dir(config.base)
    # 1. Data first: a bad line must fail in seconds, not after the model has loaded.
    train_ex, eval_ex, report = chat_data.load_and_split(
        config.data, config.eval_data, config.eval_fraction, config.seed
    )
    if config.mix:
        train_ex = train_ex + chat_data.load_mix(config.mix, eval_ex, config.seed, report)
    resume_from = _check_out(config)
    tokenizer = load_tokenizer(config.base)
    chat_data.check_tokenizer(tokenizer, config.base)
    rag_stats = None
    if config.with_retrieval is not None:
        from appliance.prompting import wording
        from trainer.rag_data import RagStats, build_rag_examples, log_stats, open_index_search

        search = open_index_search(config.with_retrieval, config.embedder)
        rag_stats = RagStats()
        kwargs = {
            "k": config.retrieval_k,
            "distractors": config.distractors,
            "seed": config.seed,
            "words": wording(config.domain),
        }
        train_ex = build_rag_examples(
            train_ex,
            search,
            unanswerable_fraction=config.unanswerable_fraction,
            stats=rag_stats,
            **kwargs,
        )
        eval_ex = build_rag_examples(eval_ex, search, unanswerable_fraction=0.0, **kwargs)
        log_stats(rag_stats)
    max_len = min(config.max_seq_length, model_context_length(config.base))
    prepared = chat_data.prepare_data(
        tokenizer, train_ex, eval_ex, max_len, config.overlong, report
    )
    report.log_summary()

    out = config.out
    if _is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / RUN_CONFIG, config.to_json())
        report_json = report.to_json()
        if rag_stats is not None:
            report_json["retrieval"] = rag_stats.to_json()
        _write_json(out / DATA_REPORT, report_json)

    # 2. Model and trainer.
    set_seed(config.seed)
    device, dtype = device_and_dtype(config)
    model = load_model_for_training(config)
    trainable, total = trainable_parameter_count(model)
    log.info(
        "%s on %s (%s): %d trainable of %d parameters (%.2f%%)",
        config.method,
        device,
        str(dtype).replace("torch.", ""),
        trainable,
        total,
        100.0 * trainable / max(total, 1),
    )
    MetricsLogger, GracefulStop, EvalBefore = _callbacks_module()
    metrics = MetricsLogger(out / METRICS)
    stopper = GracefulStop()
    all_callbacks = [metrics, *callbacks, stopper]
    if config.early_stopping_patience > 0:
        all_callbacks.append(
            EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience)
        )
    global_batch = config.batch_size * config.grad_accum * _world_size()
    steps_per_epoch = math.ceil(len(prepared.train) / global_batch)
    args = TrainingArguments(
        output_dir=str(out / CHECKPOINTS),
        num_train_epochs=float(config.epochs),
        max_steps=config.max_steps if config.max_steps is not None else -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_ratio=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm,
        eval_strategy="epoch",
        # The loss before training is measured inside train(), after the model is wrapped for
        # several processes. A trainer.evaluate() before train() would mark the bare model as
        # prepared, and train() would then skip the DistributedDataParallel wrapper: every
        # process would train on its own shard without averaging gradients.
        eval_on_start=resume_from is None,
        save_strategy="epoch",
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_strategy="steps",
        logging_steps=min(config.logging_steps, max(1, steps_per_epoch)),
        logging_first_step=True,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=dtype == torch.bfloat16 and device == "cuda",
        fp16=dtype == torch.float16,
        use_cpu=device == "cpu",
        seed=config.seed,
        data_seed=config.seed,
        report_to="none",
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        save_only_model=False,
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=chat_data.ListDataset(prepared.train),
        eval_dataset=chat_data.ListDataset(prepared.evaluation),
        data_collator=chat_data.ChatDataCollator(tokenizer.pad_token_id),
        callbacks=all_callbacks,
        processing_class=tokenizer,
    )

    eval_before = None
    if resume_from is None:
        before = EvalBefore(out / "eval_before.json")
        trainer.add_callback(before)
    else:
        log.info("resuming from %s", resume_from)
        before_file = out / "eval_before.json"
        if before_file.is_file():
            eval_before = json.loads(before_file.read_text())["eval_loss"]

    # 3. Train (the first evaluation, at step 0, is the loss before training).
    started = time.perf_counter()
    with _SignalStop(stopper):
        trainer.train(resume_from_checkpoint=resume_from)
    runtime = time.perf_counter() - started
    if resume_from is None:
        eval_before = before.loss
    state = trainer.state
    if stopper.stopped_at is not None:
        raise TrainingInterrupted(
            f"stopped at step {stopper.stopped_at}; checkpoint saved in {out / CHECKPOINTS}. "
            "Run the same command again to resume."
        )
    final = trainer.evaluate()  # the best checkpoint is loaded at the end of training
    eval_loss = float(final["eval_loss"])
    tokens = int(state.num_input_tokens_seen or 0)
    epochs_done = float(state.epoch or 0.0)
    planned_steps = state.max_steps
    stopped_early = state.global_step < planned_steps
    result = TrainResult(
        out=out,
        method=config.method,
        global_step=state.global_step,
        epochs=epochs_done,
        eval_loss_before=eval_before,
        eval_loss=eval_loss,
        best_checkpoint=state.best_model_checkpoint,
        resumed_from=resume_from,
        train_runtime_s=round(runtime, 3),
        train_tokens=tokens,
        tokens_per_second=round(tokens / runtime, 2) if runtime > 0 else 0.0,
        stopped_early=stopped_early,
        peak_cuda_memory_mib=(
            round(torch.cuda.max_memory_allocated() / 2**20, 1)
            if torch.cuda.is_available()
            else None
        ),
        history=list(metrics.history),
    )

    # 4. Save the adapter (the main process only), then mark the run finished.
    trainer.save_model(str(out))
    (out / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    if trainer.is_world_process_zero():
        meta = {
            "format_version": ADAPTER_FORMAT_VERSION,
            "kind": "lora-adapter",
            "method": config.method,
            "base": base_identity(config.base),
            "lora": {
                "rank": config.rank,
                "alpha": config.alpha,
                "dropout": config.dropout,
                "target_modules": config.target_modules,
            },
            "quantization": (
                {
                    "quant_type": config.quant_type,
                    "double_quant": config.double_quant,
                    "embeddings": config.quantize_embeddings,
                }
                if config.qlora
                else None
            ),
            "with_retrieval": str(config.with_retrieval) if config.with_retrieval else None,
            "max_seq_length": max_len,
            "eval_loss_before": eval_before,
            "eval_loss": eval_loss,
            "trainable_parameters": trainable,
        }
        _write_json(out / ADAPTER_META, meta)
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        (out / "eval_before.json").unlink(missing_ok=True)
        _write_json(out / SUMMARY, result.to_json())
    log.info(
        "done: %d steps, eval loss %s -> %.4f, %.0f tokens/s; adapter in %s",
        result.global_step,
        f"{eval_before:.4f}" if eval_before is not None else "?",
        eval_loss,
        result.tokens_per_second,
        out,
    )
    return result
