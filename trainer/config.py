"""Training settings: one typed dataclass, per-method defaults, config file + flag overrides.

Precedence, lowest first: the dataclass defaults, the defaults of the chosen method
(`METHOD_DEFAULTS`), a config file (`--config FILE`, TOML or JSON, keys = field names), then
command-line flags. Everything is validated once, in `__post_init__`, naming the bad field.

Example config file (`plant.toml`):
    method = "qlora"
    rank = 32
    learning_rate = 1e-4
    epochs = 4
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import UserFacingError

METHODS = ("lora", "qlora")
OVERLONG_POLICIES = ("drop", "truncate")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Per-method defaults. LoRA: a common small-model setting. QLoRA: the QLoRA paper's setting for
# models up to 13B (r=64, alpha=16, dropout 0.1, lr 2e-4), 4-bit NF4 with double quantization.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"rank": 16, "alpha": 32, "dropout": 0.05, "learning_rate": 2e-4, "epochs": 3},
    "qlora": {"rank": 64, "alpha": 16, "dropout": 0.1, "learning_rate": 2e-4, "epochs": 3},
}

ALL_LINEAR = "all-linear"


@dataclass
class TrainConfig:
    """Everything one training run needs. Paths are resolved; None means "method default"."""

    base: Path
    data: Path
    out: Path
    method: str = "lora"
    eval_data: Path | None = None  # a separate eval file; else a split of `data`
    eval_fraction: float = 0.1
    # LoRA
    rank: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    target_modules: str | list[str] = ALL_LINEAR
    # optimisation
    learning_rate: float | None = None
    epochs: float | None = None
    max_steps: int | None = None  # stops earlier than `epochs` (smoke tests, benchmarks)
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    early_stopping_patience: int = 2  # epochs without eval-loss improvement; 0 = off
    gradient_checkpointing: bool = True
    precision: str = "auto"  # auto: bf16 on a CUDA device that supports it, else fp32
    seed: int = 42
    logging_steps: int = 5
    save_total_limit: int = 2
    # data
    max_seq_length: int = 2048  # capped at the model's context length
    overlong: str = "drop"  # a sample longer than max_seq_length: drop it or truncate it
    # QLoRA
    quant_type: str = "nf4"
    double_quant: bool = True
    quantize_embeddings: bool = True  # also keep the frozen embedding / LM head in 4 bit
    # RAG-aware training
    with_retrieval: Path | None = None  # an index folder
    embedder: Path | None = None  # the ONNX embedder folder that built the index
    retrieval_k: int = 3
    distractors: int = 1
    unanswerable_fraction: float = 0.1  # share of examples trained to answer NOT_IN_DOCUMENTS
    # RAG prompt wording: the domain phrase of the bundle the adapter will serve in (its
    # manifest's prompting.domain); None: the plant's wording. Must match that bundle's.
    domain: str | None = None
    # More training data mixed into `data`'s training split: "FILE" or "FILE:WEIGHT", each
    # example repeated WEIGHT times (a fraction is drawn with the seed), e.g. hand-written pairs
    # beside synthesized ones: mix = ["examples/plant/qa/train.jsonl:2"].
    mix: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into metadata

    def __post_init__(self) -> None:
        for name in ("base", "data", "out", "eval_data", "with_retrieval", "embedder"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        if self.method not in METHODS:
            raise ConfigError(f"method: {self.method!r} is not one of {', '.join(METHODS)}")
        for key, value in METHOD_DEFAULTS[self.method].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        _check(isinstance(self.rank, int) and self.rank >= 1, "rank", self.rank, "an integer >= 1")
        _check(_num(self.alpha) and self.alpha > 0, "alpha", self.alpha, "a number > 0")
        _check(_num(self.dropout) and 0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")
        _check(
            _num(self.learning_rate) and 0 < self.learning_rate < 1,
            "learning_rate",
            self.learning_rate,
            "in (0, 1)",
        )
        _check(_num(self.epochs) and self.epochs > 0, "epochs", self.epochs, "a number > 0")
        _check(
            self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1),
            "max_steps",
            self.max_steps,
            "an integer >= 1 or unset",
        )
        _check(0 < self.eval_fraction < 1, "eval_fraction", self.eval_fraction, "in (0, 1)")
        for name in ("batch_size", "grad_accum", "logging_steps", "save_total_limit"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", self.warmup_ratio, "in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm, "> 0")
        _check(
            isinstance(self.early_stopping_patience, int) and self.early_stopping_patience >= 0,
            "early_stopping_patience",
            self.early_stopping_patience,
            "an integer >= 0 (0 = off)",
        )
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {PRECISIONS}")
        _check(
            isinstance(self.max_seq_length, int) and self.max_seq_length >= 16,
            "max_seq_length",
            self.max_seq_length,
            "an integer >= 16",
        )
        _check(
            self.overlong in OVERLONG_POLICIES,
            "overlong",
            self.overlong,
            f"one of {OVERLONG_POLICIES}",
        )
        _check(self.quant_type in ("nf4", "fp4"), "quant_type", self.quant_type, "nf4 or fp4")
        if isinstance(self.target_modules, str):
            if self.target_modules != ALL_LINEAR:
                self.target_modules = [
                    m.strip() for m in self.target_modules.split(",") if m.strip()
                ]
        _check(
            self.target_modules == ALL_LINEAR
            or (isinstance(self.target_modules, list) and len(self.target_modules) > 0),
            "target_modules",
            self.target_modules,
            f"{ALL_LINEAR!r} or a list of module names such as ['q_proj', 'v_proj']",
        )
        _check(self.retrieval_k >= 1, "retrieval_k", self.retrieval_k, "an integer >= 1")
        _check(self.distractors >= 0, "distractors", self.distractors, "an integer >= 0")
        if isinstance(self.mix, str):
            self.mix = [m for m in self.mix.split(",") if m.strip()]
        for spec in self.mix:
            parse_mix(spec)  # raises ConfigError naming the bad entry
        _check(
            0 <= self.unanswerable_fraction < 1,
            "unanswerable_fraction",
            self.unanswerable_fraction,
            "in [0, 1)",
        )

    @property
    def qlora(self) -> bool:
        return self.method == "qlora"

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict (paths as strings), stored beside the adapter and compared on resume."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


class ConfigError(UserFacingError):
    """A training setting is invalid; the message names the field."""


def parse_mix(spec: str) -> tuple[Path, float]:
    """'FILE' or 'FILE:WEIGHT' (weight > 0, default 1) -> (path, weight)."""
    text = str(spec).strip()
    path, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            path, weight = head, float(tail)
        except ValueError:
            path, weight = text, 1.0  # a colon that is part of the path
    if not path or not (weight > 0 and weight <= 100):
        raise ConfigError(
            f"mix: {spec!r} is not FILE or FILE:WEIGHT with 0 < WEIGHT <= 100 "
            "(e.g. examples/plant/qa/train.jsonl:2)"
        )
    return Path(path), weight


# Fields that change what is learned: a run may only resume from checkpoints with equal values.
RESUME_SENSITIVE = (
    "base",
    "data",
    "method",
    "eval_data",
    "eval_fraction",
    "rank",
    "alpha",
    "dropout",
    "target_modules",
    "learning_rate",
    "batch_size",
    "grad_accum",
    "max_seq_length",
    "overlong",
    "seed",
    "quant_type",
    "double_quant",
    "quantize_embeddings",
    "with_retrieval",
    "domain",
    "mix",
)


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, name: str, value: Any, want: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: got {value!r}, expected {want}")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON config file; unknown keys are an error that lists the known ones."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} does not exist; pass an existing .toml or .json file"
        )
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".json":
            values = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise ConfigError(f"config file {path}: use a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"config file {path} is not valid {path.suffix[1:].upper()}: {exc}"
        ) from exc
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: expected a table of settings at the top level")
    unknown = sorted(set(values) - set(field_names()))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known settings: {', '.join(field_names())}"
        )
    return values


def resolve_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> TrainConfig:
    """Merge config-file values and flags (flags win; a flag left as None is unset)."""
    merged = dict(file_values)
    merged.update({k: v for k, v in flag_values.items() if v is not None})
    missing = [k for k in ("base", "data", "out") if merged.get(k) in (None, "")]
    if missing:
        raise ConfigError(
            "missing required setting(s): "
            + ", ".join(missing)
            + " (give --base DIR --data FILE --out DIR, or set them in the config file)"
        )
    try:
        return TrainConfig(**merged)
    except TypeError as exc:  # wrong key passed programmatically
        raise ConfigError(str(exc)) from exc
