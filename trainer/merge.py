"""`expert merge`: fold a LoRA/QLoRA adapter into its full-precision base, for export.

Run: expert merge --base DIR --adapter DIR --out DIR [--dtype auto|fp32|bf16|fp16] [--verify]
Test: .venv/bin/pytest tests/trainer/test_merge.py

The base is loaded in fp32 and the adapter is merged there, also for QLoRA adapters: merging
into 4-bit weights would bake their rounding error into the result. The merged checkpoint is
then saved in the base's own dtype (or --dtype). Tokenizer and other files of the base
(chat template, import provenance) are copied byte for byte, so the export sees the same
tokenizer the base had. The output is written to a temporary folder and renamed into place:
a finished output is never overwritten, and a crash leaves no half-written checkpoint.
The adapter must come from this base: the fingerprint recorded at training time must match.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from appliance.common.fsutil import atomic_dir
from appliance.errors import UserFacingError

log = logging.getLogger(__name__)

MERGE_FORMAT_VERSION = 1
MERGE_INFO = "merge.json"
DTYPES = ("auto", "fp32", "bf16", "fp16")
# Files the merged model writes itself; everything else in the base folder is copied.
OWN_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Sample text for --verify: domain words, digits and units.
VERIFY_TEXTS = (
    "Isolate pump P-101 at lock point LP-12 before opening the casing.",
    "Compressor C-301 unloads at 7.5 bar; the safety valve SV-301 lifts at 9.0 bar.",
)


def _read_adapter_meta(adapter: Path) -> dict[str, Any] | None:
    if not (adapter / "adapter_config.json").is_file():
        raise UserFacingError(
            f"{adapter} is not an adapter folder (no adapter_config.json); pass the --out folder "
            "of a finished `expert train` run"
        )
    from trainer.train import ADAPTER_FORMAT_VERSION, ADAPTER_META, SUMMARY

    if (adapter / "checkpoints").is_dir() and not (adapter / SUMMARY).is_file():
        raise UserFacingError(
            f"{adapter} is an unfinished training run; finish it first (run `expert train` again)"
        )
    meta_path = adapter / ADAPTER_META
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise UserFacingError(
            f"{meta_path}: format_version {meta.get('format_version')!r} is not supported "
            f"(this version reads {ADAPTER_FORMAT_VERSION}); retrain the adapter"
        )
    return meta


def check_adapter_matches_base(
    base: Path, adapter: Path, meta: dict[str, Any] | None
) -> dict[str, Any]:
    """Raise naming both models when the adapter was trained on another base."""
    from trainer.base_identity import base_identity, describe

    identity = base_identity(base)
    if meta is None:
        peft_cfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        log.warning(
            "%s has no training record; cannot prove it belongs to %s (it names base %r)",
            adapter,
            base,
            peft_cfg.get("base_model_name_or_path"),
        )
        return identity
    trained_on = meta.get("base", {})
    if trained_on.get("fingerprint") != identity["fingerprint"]:
        raise UserFacingError(
            f"adapter {adapter} was trained on base {describe(trained_on)}, not on "
            f"{describe(identity)}; merge it into the base it was trained on"
        )
    return identity


def _check_out(out: Path) -> None:
    if out.exists():
        if (out / MERGE_INFO).is_file() or (out / "config.json").is_file():
            raise UserFacingError(
                f"{out} already holds a finished checkpoint; choose a new --out or delete that folder"
            )
        if not out.is_dir() or any(out.iterdir()):
            raise UserFacingError(
                f"--out {out} exists and is not an empty folder; choose a new path"
            )


def _torch_dtype(name: str, base_config: Any) -> Any:
    import torch

    if name == "auto":
        stored = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
        if isinstance(stored, str):
            stored = getattr(torch, stored, None)
        return stored if stored in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def load_adapter_model(base: Path, adapter: Path) -> Any:
    """The fp32 base with the adapter attached (not merged): the reference for --verify."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    try:
        return PeftModel.from_pretrained(model, str(adapter)).eval()
    except (RuntimeError, ValueError, KeyError) as exc:  # shape mismatch: another architecture
        raise UserFacingError(f"adapter {adapter} does not fit base {base}: {exc}") from exc


def merge_adapter(
    base: Path | str,
    adapter: Path | str,
    out: Path | str,
    dtype: str = "auto",
    verify: bool = False,
) -> dict[str, Any]:
    """Merge and save; returns the merge record (also written to <out>/merge.json)."""
    import torch
    from transformers import AutoConfig

    from trainer.modeling import check_base_dir

    base, adapter, out = Path(base), Path(adapter), Path(out)
    if dtype not in DTYPES:
        raise UserFacingError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    check_base_dir(base)
    meta = _read_adapter_meta(adapter)
    identity = check_adapter_matches_base(base, adapter, meta)
    _check_out(out)
    save_dtype = _torch_dtype(dtype, AutoConfig.from_pretrained(str(base)))

    started = time.perf_counter()
    model = load_adapter_model(base, adapter)
    merged = model.merge_and_unload()  # fp32 arithmetic, whatever the adapter was trained on
    max_diff = verify_merge(base, adapter, merged) if verify else None
    merged = merged.to(save_dtype)

    with atomic_dir(out, overwrite=False) as tmp:  # an existing --out was refused unless empty
        merged.save_pretrained(str(tmp), safe_serialization=True)
        for item in sorted(base.iterdir()):
            if item.is_file() and item.name not in OWN_FILES and item.suffix not in WEIGHT_SUFFIXES:
                shutil.copy2(item, tmp / item.name)
        record = {
            "format_version": MERGE_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "base": identity,
            "adapter": {"path": str(adapter.resolve()), **(meta or {})},
            "dtype": str(save_dtype).replace("torch.", ""),
            "verify_max_abs_logit_diff": max_diff,
            "seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / MERGE_INFO).write_text(
            json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8"
        )
    del merged, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log.info("merged %s into %s -> %s (%s)", adapter, base, out, record["dtype"])
    return record


def sample_inputs(tokenizer: Any, texts: tuple[str, ...] = VERIFY_TEXTS) -> Any:
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def verify_merge(base: Path, adapter: Path, merged: Any) -> float:
    """Max |logit difference| between the adapter model and the merged model on sample text."""
    import torch

    from trainer.modeling import load_tokenizer

    ids, mask = sample_inputs(load_tokenizer(base))
    reference = load_adapter_model(base, adapter)
    with torch.no_grad():
        a = reference(input_ids=ids, attention_mask=mask).logits
        b = merged.eval()(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    diff = float((a - b).abs()[keep].max())
    log.info("verify: max |logit difference| adapter vs merged = %.3g", diff)
    return diff
