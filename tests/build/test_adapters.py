# Run: .venv/bin/pytest tests/build/test_adapters.py
"""Runtime LoRA adapters: one exported base, two adapters chosen per request.

Tolerances: with an fp32 base the runtime-adapter logits must equal the merged-adapter
transformers model's logits within 1e-3 (observed ~1e-6 on the tiny models); with an int4 base
the adapter's effect (adapted minus base logits) must correlate with the merged model's effect
at >= 0.95, since int4 noise is in both the base and the adapted output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import UserFacingError
from build.adapters import (
    ADAPTER_SUFFIX,
    ADAPTERS_DIR,
    ADAPTERS_INDEX,
    LLM_DIR,
    export_runtime_adapters,
    read_peft_adapter,
)
from build.export_llm import export_llm

PROMPT = [1, 520, 2318, 314, 260, 3575, 30, 44, 55, 66, 1019, 4093]


def make_tiny_llama(out: Path, tokenizer_from: Path) -> Path:
    """A tiny LlamaForCausalLM with grouped-query attention (4 heads, 2 KV heads), so the
    builder's fused qkv_proj gets Q, K and V LoRA blocks of different widths."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = json.loads((tokenizer_from / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)
    model.save_pretrained(str(out))
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "generation_config.json",
    ):
        if (tokenizer_from / name).is_file():
            shutil.copy2(tokenizer_from / name, out / name)
    return out


def make_lora(base: Path, out: Path, *, targets: list[str], r: int, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, lora_dropout=0.0)
    )
    with torch.no_grad():  # a trained-looking adapter: B is zero at init, so fill both
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.05 if "lora_B" in name else 0.3)
    peft_model.save_pretrained(str(out))
    return out


def hf_logits(base: Path, adapter: Path | None) -> np.ndarray:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with torch.no_grad():
        return model.eval()(torch.tensor([PROMPT])).logits[0].numpy()


class GenaiRunner:
    """One og.Model + og.Adapters serving several adapters, as the appliance does."""

    def __init__(self, llm_dir: Path, adapters_dir: Path | None = None):
        import onnxruntime_genai as og

        self.og = og
        self.model = og.Model(str(llm_dir))
        self.adapters = og.Adapters(self.model)
        for f in sorted(adapters_dir.glob(f"*{ADAPTER_SUFFIX}")) if adapters_dir else []:
            self.adapters.load(str(f), f.name[: -len(ADAPTER_SUFFIX)])

    def logits(self, adapter: str | None) -> np.ndarray:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=64)
        gen = self.og.Generator(self.model, params)
        if adapter:
            gen.set_active_adapter(self.adapters, adapter)
        # One token per pass: the export's LM head runs on the last position only (the
        # default), so every position's logits come from its own pass, as in decoding.
        rows = []
        for token in PROMPT:
            gen.append_tokens([token])
            rows.append(np.asarray(gen.get_output("logits"))[0, -1].copy())
        return np.stack(rows)


@pytest.fixture(scope="module")
def phi3_loras(tiny_phi3_hf, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phi3-loras")
    return {
        # Phi-3 checkpoints fuse qkv_proj and gate_up_proj; the builder splits gate/up.
        "maintenance": make_lora(
            tiny_phi3_hf,
            root / "maintenance",
            r=4,
            seed=10,
            targets=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        ),
        "quality": make_lora(
            tiny_phi3_hf, root / "quality", r=8, seed=11, targets=["qkv_proj", "down_proj"]
        ),
    }


@pytest.fixture(scope="module")
def phi3_fp32_adapters(tiny_phi3_hf, phi3_loras, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phi3-fp32") / "out"
    return export_runtime_adapters(tiny_phi3_hf, phi3_loras, out, precision="fp32")


def test_layout_and_index(phi3_fp32_adapters):
    out = phi3_fp32_adapters
    assert (out / LLM_DIR / "genai_config.json").is_file()
    assert (out / LLM_DIR / "export.json").is_file()
    names = sorted(p.name for p in (out / ADAPTERS_DIR).iterdir())
    assert names == [ADAPTERS_INDEX, f"maintenance{ADAPTER_SUFFIX}", f"quality{ADAPTER_SUFFIX}"]
    index = json.loads((out / ADAPTERS_DIR / ADAPTERS_INDEX).read_text())
    assert index["adapters"]["quality"]["r"] == 8
    assert index["adapters"]["maintenance"]["target_modules"] == [
        "down_proj",
        "gate_up_proj",
        "o_proj",
        "qkv_proj",
    ]
    record = json.loads((out / LLM_DIR / "export.json").read_text())
    assert record["runtime_adapters"]["adapters"] == ["maintenance", "quality"]


def test_fp32_base_two_adapters_match_merged_models(tiny_phi3_hf, phi3_loras, phi3_fp32_adapters):
    runner = GenaiRunner(phi3_fp32_adapters / LLM_DIR, phi3_fp32_adapters / ADAPTERS_DIR)
    got = {name: runner.logits(name) for name in ("maintenance", "quality")}
    base = runner.logits(None)
    for name, lora in phi3_loras.items():
        np.testing.assert_allclose(got[name], hf_logits(tiny_phi3_hf, lora), atol=1e-3)
    np.testing.assert_allclose(base, hf_logits(tiny_phi3_hf, None), atol=1e-3)
    # The adapters really change the model, differently, and no adapter means the base.
    assert np.abs(got["maintenance"] - base).max() > 0.1
    assert np.abs(got["quality"] - base).max() > 0.1
    assert np.abs(got["maintenance"] - got["quality"]).max() > 0.1
    # Switching back and forth on one model leaves no state behind.
    np.testing.assert_array_equal(runner.logits("maintenance"), got["maintenance"])
    np.testing.assert_array_equal(runner.logits(None), base)


def test_int4_base_serves_adapters_and_is_the_plain_export_without_one(
    tiny_phi3_hf, phi3_loras, tmp_path
):
    out = export_runtime_adapters(tiny_phi3_hf, phi3_loras, tmp_path / "int4")
    plain = export_llm(tiny_phi3_hf, tmp_path / "plain")
    runner = GenaiRunner(out / LLM_DIR, out / ADAPTERS_DIR)
    base = runner.logits(None)
    # Same quantized weights; the LoRA path adds exact zeros when no adapter is active.
    np.testing.assert_allclose(base, GenaiRunner(plain).logits(None), atol=1e-5)
    hf_base = hf_logits(tiny_phi3_hf, None)
    for name, lora in phi3_loras.items():
        effect = (runner.logits(name) - base).ravel()
        expected = (hf_logits(tiny_phi3_hf, lora) - hf_base).ravel()
        assert np.corrcoef(effect, expected)[0, 1] >= 0.95, name


def test_grouped_query_llama_qkv_blocks(tiny_phi3_hf, tmp_path):
    """Separate q/k/v LoRAs (llama) land in the right columns of the fused qkv_proj."""
    base = make_tiny_llama(tmp_path / "llama", tiny_phi3_hf)
    loras = {
        "all": make_lora(
            base,
            tmp_path / "all",
            r=4,
            seed=3,
            targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
        "kv": make_lora(base, tmp_path / "kv", r=2, seed=4, targets=["k_proj", "v_proj"]),
    }
    out = export_runtime_adapters(base, loras, tmp_path / "out", precision="fp32")
    runner = GenaiRunner(out / LLM_DIR, out / ADAPTERS_DIR)
    for name, lora in loras.items():
        np.testing.assert_allclose(runner.logits(name), hf_logits(base, lora), atol=1e-3)


def test_appliance_generator_serves_two_adapters(phi3_fp32_adapters):
    from appliance.generation.base import GenerationParams
    from appliance.generation.genai import GenaiGenerator

    gen = GenaiGenerator(
        phi3_fp32_adapters / LLM_DIR, adapters_dir=phi3_fp32_adapters / ADAPTERS_DIR
    )
    assert sorted(gen.adapters) == ["maintenance", "quality"]
    prompt = gen.chat_prompt([{"role": "user", "content": "Seal torque on P-101?"}])
    texts = {
        a: "".join(gen.generate(prompt, GenerationParams(max_new_tokens=12, adapter=a)))
        for a in (None, "maintenance", "quality")
    }
    assert len(set(texts.values())) == 3, texts


def test_bad_adapters_are_user_errors(tiny_phi3_hf, phi3_loras, tmp_path):
    with pytest.raises(UserFacingError, match="adapter_config.json"):
        read_peft_adapter("x", tmp_path)
    with pytest.raises(UserFacingError, match="name"):
        read_peft_adapter("bad name/..", phi3_loras["quality"])
    dora = tmp_path / "dora"
    shutil.copytree(phi3_loras["quality"], dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps(cfg | {"use_dora": True}))
    with pytest.raises(UserFacingError, match="DoRA"):
        read_peft_adapter("dora", dora)
    with pytest.raises(UserFacingError, match="no adapters"):
        export_runtime_adapters(tiny_phi3_hf, {}, tmp_path / "o")


def test_optimum_base_and_cli(tiny_phi3_hf, phi3_loras, tmp_path):
    """The optimum graph (q/k/v named as in the checkpoint) takes runtime adapters too, and
    `expert export --runtime-adapter NAME=DIR` writes the bundle layout."""
    from appliance.cli import main

    out = tmp_path / "cli"
    rc = main(
        [
            "export",
            "--model",
            str(tiny_phi3_hf),
            "--out",
            str(out),
            "--backend",
            "optimum",
            "--precision",
            "fp32",
            "--runtime-adapter",
            f"quality={phi3_loras['quality']}",
        ]
    )
    assert rc == 0
    runner = GenaiRunner(out / LLM_DIR, out / ADAPTERS_DIR)
    np.testing.assert_allclose(
        runner.logits("quality"), hf_logits(tiny_phi3_hf, phi3_loras["quality"]), atol=1e-3
    )
    assert (
        main(
            [
                "export",
                "--model",
                str(tiny_phi3_hf),
                "--out",
                str(tmp_path / "x"),
                "--runtime-adapter",
                "no-equals-sign",
            ]
        )
        == 2
    )
