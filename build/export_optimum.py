"""The Optimum export backend (`expert export --backend optimum`): Optimum's ONNX export, then
onnxruntime's MatMulNBits quantizer, then a genai_config.json read from the exported graph.

Tests: .venv/bin/pytest tests/build/test_export_llm.py (the SmolLM2 run: add `-m slow`)

A second, independent path beside the onnxruntime-genai model builder, for checkpoints the
builder does not handle and as a cross-check of it; it decodes ~2.5-3x slower (no fused
attention). build/export_llm.py chooses the backend, checks the inputs, runs this into its
`.partial` folder and keeps the exporters' output out of the log.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from appliance.errors import UserFacingError
from build.int4_options import Int4Options
from build.onnx_files import save_with_external_data

log = logging.getLogger(__name__)

# Architectures the optimum path handles end to end: Optimum exports them with the standard
# `past_key_values.N.key` / `present.N.key` names, and onnxruntime-genai runs them as the
# decoder-only model type named here (the `model.type` in genai_config.json).
OPTIMUM_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Phi3ForCausalLM": "phi3",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}


def export_optimum(
    model_dir: Path,
    out: Path,
    precision: str,
    execution_provider: str,
    int4: Int4Options,
    arch: str,
    scratch: Path,
) -> None:
    """Optimum's fp32 export of `model_dir` into scratch, quantized into `out` (model.onnx +
    .data), with genai_config.json and the tokenizer files beside it."""
    from optimum.exporters.onnx import main_export

    raw = scratch / "optimum-fp32"
    log.info("optimum export: %s -> %s", model_dir, raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit tracer warnings, expected for these models
        main_export(
            str(model_dir),
            output=str(raw),
            task="text-generation-with-past",
            device="cpu",
            do_validation=False,
            local_files_only=True,
        )
    model_path = raw / "model.onnx"
    if not model_path.is_file():
        raise UserFacingError(f"Optimum wrote no model.onnx into {raw}; see the log above.")
    if precision == "fp32":
        save_with_external_data(_load_onnx(model_path), out / "model.onnx")
    else:
        bits = 4 if precision == "int4" else 8
        model = quantize_matmul_nbits(_load_onnx(model_path), bits, int4, execution_provider)
        save_with_external_data(model, out / "model.onnx")
    write_genai_config(model_dir, out, OPTIMUM_ARCHITECTURES[arch], execution_provider)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))


def _load_onnx(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=True)


def _matmul_groups(graph) -> dict[str, list[str]]:
    """Node names of the quantizable MatMuls, grouped the way the builder's `_last` and `_mixed`
    presets see them (LM head; per layer: q/k/v, o, gate/up, down)."""
    import re

    inits = {t.name for t in graph.initializer}
    groups: dict[str, list[str]] = {"last": [], "mixed": []}
    layer_re = re.compile(r"/model/layers\.(\d+)/")
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and any(i in inits for i in n.input)]
    layers = sorted({int(m.group(1)) for n in matmuls if (m := layer_re.search(n.name))})
    num_layers = (max(layers) + 1) if layers else 0
    # llama.cpp's mixed preset, as the genai builder applies it: the first and last eighth of the
    # layers plus every third layer get int8 for V (or fused QKV) and the MLP down projection.
    upgraded = {
        i
        for i in range(num_layers)
        if i < num_layers / 8 or i >= 7 * num_layers / 8 or (i - round(num_layers / 8)) % 3 == 2
    }
    for n in matmuls:
        if n.name.startswith("/lm_head/"):
            groups["last"].append(n.name)
        m = layer_re.search(n.name)
        if (
            m
            and int(m.group(1)) in upgraded
            and re.search(r"/(v_proj|qkv_proj|down_proj)/", n.name)
        ):
            groups["mixed"].append(n.name)
    if not groups["last"] and matmuls:
        groups["last"].append(matmuls[-1].name)
    return groups


def quantize_matmul_nbits(model, bits: int, int4: Int4Options, execution_provider: str):
    """onnxruntime's MatMulNBitsQuantizer over an fp32 ONNX model; returns the quantized proto."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        HQQWeightOnlyQuantConfig,
        KQuantWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
        RTNWeightOnlyQuantConfig,
    )

    accuracy_level = int4.resolved_accuracy_level(execution_provider)
    algo = int4.algo
    base = {"rtn_last": "rtn", "k_quant_last": "k_quant", "k_quant_mixed": "k_quant"}.get(
        algo, algo
    )
    groups = _matmul_groups(model.graph)
    upgraded: list[str] = []
    if algo.endswith("_last"):
        upgraded = groups["last"]
    elif algo == "k_quant_mixed":
        upgraded = groups["last"] + groups["mixed"]
    custom = {name: {"bits": 8} for name in upgraded}

    def run(quantizer):
        quantizer.process()
        return quantizer.model.model

    common = dict(
        block_size=int4.block_size,
        is_symmetric=int4.symmetric,
        accuracy_level=accuracy_level,
    )
    if base == "default":
        return run(MatMulNBitsQuantizer(model, bits=bits, algo_config=None, **common))
    if base == "hqq":
        cfg = HQQWeightOnlyQuantConfig(block_size=int4.block_size, bits=bits)
        return run(MatMulNBitsQuantizer(model, bits=bits, algo_config=cfg, **common))
    cls = RTNWeightOnlyQuantConfig if base == "rtn" else KQuantWeightOnlyQuantConfig
    cfg = cls(customized_weight_config=custom)
    return run(MatMulNBitsQuantizer(model, bits=bits, algo_config=cfg, **common))


def write_genai_config(
    model_dir: Path, out: Path, model_type: str, execution_provider: str
) -> dict:
    """genai_config.json for an Optimum-exported decoder, with names read from the graph."""
    import onnx

    hf = json.loads((model_dir / "config.json").read_text())
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    for required in ("input_ids", "attention_mask", "past_key_values.0.key"):
        if required not in inputs:
            raise UserFacingError(
                f"the exported graph has no input {required!r} (inputs: {inputs[:6]}...); this "
                "checkpoint cannot run on onnxruntime-genai through the optimum backend; use "
                "--backend genai."
            )
    gen = {}
    if (model_dir / "generation_config.json").is_file():
        gen = json.loads((model_dir / "generation_config.json").read_text())
    heads = hf["num_attention_heads"]
    context = int(hf.get("max_position_embeddings") or 4096)

    def first(v):
        return v[0] if isinstance(v, list) and v else v

    eos = gen.get("eos_token_id", hf.get("eos_token_id"))
    decoder_inputs = {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "past_key_names": "past_key_values.%d.key",
        "past_value_names": "past_key_values.%d.value",
    }
    if "position_ids" in inputs:
        decoder_inputs["position_ids"] = "position_ids"
    provider_options = [] if execution_provider == "cpu" else [{execution_provider: {}}]
    config = {
        "model": {
            "bos_token_id": first(gen.get("bos_token_id", hf.get("bos_token_id"))),
            "context_length": context,
            "decoder": {
                "session_options": {
                    "log_id": "onnxruntime-genai",
                    "provider_options": provider_options,
                },
                "filename": "model.onnx",
                "head_size": int(hf.get("head_dim") or hf["hidden_size"] // heads),
                "hidden_size": hf["hidden_size"],
                "inputs": decoder_inputs,
                "outputs": {
                    "logits": "logits" if "logits" in outputs else outputs[0],
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": heads,
                "num_hidden_layers": hf["num_hidden_layers"],
                "num_key_value_heads": hf.get("num_key_value_heads") or heads,
            },
            "eos_token_id": eos,
            "pad_token_id": first(gen.get("pad_token_id", hf.get("pad_token_id"))) or first(eos),
            "type": model_type,
            "vocab_size": hf["vocab_size"],
        },
        "search": {
            "do_sample": False,
            "max_length": context,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            # The Optimum graph concatenates past and new keys (no GroupQueryAttention), so the
            # runtime must hand it separate past/present buffers.
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 50,
            "top_p": 1.0,
        },
    }
    (out / "genai_config.json").write_text(json.dumps(config, indent=4) + "\n")
    return config
