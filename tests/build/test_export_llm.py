# Run: .venv/bin/pytest tests/build/test_export_llm.py        (slow ones: add -m slow)
"""`expert export`: both backends produce folders onnxruntime-genai opens and runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import UserFacingError
from build.export_llm import (
    EXPORT_RECORD,
    GENAI_ARCHITECTURES,
    Int4Options,
    export_llm,
    has_chat_template,
)


def greedy_genai(onnx_dir: Path, prompt_ids: list[int], n: int) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(onnx_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt_ids) + n)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt_ids)
    out = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def greedy_hf(hf_dir: Path, prompt_ids: list[int], n: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n
        )
    return out[0, len(prompt_ids) :].tolist()


def assert_genai_folder(out: Path, backend: str, precision: str) -> dict:
    for name in ("model.onnx", "genai_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert has_chat_template(out)
    record = json.loads((out / EXPORT_RECORD).read_text())
    assert record["backend"] == backend and record["precision"] == precision
    assert record["versions"]["onnxruntime-genai"] == "0.15.2"
    assert "model.onnx" in record["files"]
    assert not list(out.parent.glob(f".{out.name}.partial-*")), "partial folder left behind"
    return record


@pytest.fixture(scope="module")
def tiny_exports(tiny_phi3_hf: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-exports")
    return {
        "genai-int4": export_llm(tiny_phi3_hf, root / "genai-int4"),
        # the optimum backend keeps the embedding in fp32: compare like with like
        "genai-int4-fp32-embedding": export_llm(
            tiny_phi3_hf, root / "genai-int4-e0", int4=Int4Options(embedding_bits=0)
        ),
        "optimum-int4": export_llm(tiny_phi3_hf, root / "optimum-int4", backend="optimum"),
    }


@pytest.mark.parametrize("which", ["genai-int4", "optimum-int4"])
def test_tiny_phi3_int4_exports_run_on_genai(tiny_exports, which):
    out = tiny_exports[which]
    backend, precision = which.split("-")
    record = assert_genai_folder(out, backend, precision)
    assert record["source"]["architecture"] == "Phi3ForCausalLM"
    assert record["quantization"]["bits"] == 4
    cfg = json.loads((out / "genai_config.json").read_text())
    assert cfg["model"]["type"] == "phi3"
    tokens = greedy_genai(out, [1, 520, 2318, 314], 8)
    assert len(tokens) == 8


def test_both_backends_agree_on_tiny_phi3(tiny_exports):
    # Same weights, same int4 algorithm: greedy continuations of the tiny model should agree.
    a = greedy_genai(tiny_exports["genai-int4-fp32-embedding"], [1, 520, 2318, 314], 12)
    b = greedy_genai(tiny_exports["optimum-int4"], [1, 520, 2318, 314], 12)
    assert np.mean(np.array(a) == np.array(b)) >= 0.75, (a, b)


@pytest.mark.parametrize("backend", ["genai", "optimum"])
def test_fp32_export_matches_transformers_greedy(tiny_phi3_hf, tmp_path, backend):
    out = export_llm(tiny_phi3_hf, tmp_path / "fp32", backend=backend, precision="fp32")
    assert_genai_folder(out, backend, "fp32")
    prompt = [1, 4093, 314, 260, 3575, 30]
    assert greedy_genai(out, prompt, 10) == greedy_hf(tiny_phi3_hf, prompt, 10)


def test_refuses_to_overwrite_finished_export_unless_forced(tiny_phi3_hf, tiny_exports, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(tiny_exports["genai-int4"], out)
    with pytest.raises(UserFacingError, match="--force"):
        export_llm(tiny_phi3_hf, out)
    (out / "stale.txt").write_text("x")
    export_llm(tiny_phi3_hf, out, precision="int8", force=True)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / EXPORT_RECORD).read_text())["precision"] == "int8"


def test_refuses_non_empty_unfinished_output(tiny_phi3_hf, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserFacingError, match="not empty"):
        export_llm(tiny_phi3_hf, out)
    assert (out / "notes.txt").read_text() == "mine"


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    model = tmp_path / "bert"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(UserFacingError) as err:
        export_llm(model, tmp_path / "out")
    msg = str(err.value)
    assert "BertForMaskedLM" in msg and "LlamaForCausalLM" in msg and "Phi3ForCausalLM" in msg
    assert "LlamaForCausalLM" in GENAI_ARCHITECTURES


def test_missing_model_and_bad_options_are_user_errors(tmp_path, tiny_phi3_hf):
    with pytest.raises(UserFacingError, match="config.json"):
        export_llm(tmp_path, tmp_path / "out")
    with pytest.raises(UserFacingError, match="hqq"):
        export_llm(tiny_phi3_hf, tmp_path / "o", int4=Int4Options(algo="hqq"))
    with pytest.raises(ValueError, match="block_size"):
        Int4Options(block_size=48)
    with pytest.raises(ValueError, match="algo"):
        Int4Options(algo="awq")
    with pytest.raises(ValueError, match="accuracy_level"):
        Int4Options(accuracy_level=7)


def test_cli_export_and_error_exit(tiny_phi3_hf, tmp_path, capsys):
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
            "genai",
            "--precision",
            "int4",
            "--block-size",
            "16",
            "--int4-algo",
            "rtn_last",
            "--accuracy-level",
            "4",
            "--asymmetric",
            "--embedding-bits",
            "8",
        ]
    )
    assert rc == 0
    q = json.loads((out / EXPORT_RECORD).read_text())["quantization"]
    assert q == {
        "block_size": 16,
        "algo": "rtn_last",
        "symmetric": False,
        "accuracy_level": 4,
        "embedding_bits": 8,
        "bits": 4,
        "weight_by_weight": True,
    }
    gather = _nodes(out)["/model/embed_tokens/GatherBlockQuantized"]
    assert {a.name: a.i for a in gather.attribute}["bits"] == 8
    rc = main(["export", "--model", str(tiny_phi3_hf), "--out", str(out)])
    assert rc == 2
    assert "--force" in capsys.readouterr().err


def test_smollm2_int4_answers_through_genai(smollm2_onnx_int4):
    """The shared fixture (genai backend, default settings) is a working chat model."""
    import onnxruntime_genai as og

    record = assert_genai_folder(smollm2_onnx_int4, "genai", "int4")
    assert record["source"]["architecture"] == "LlamaForCausalLM"
    model = og.Model(str(smollm2_onnx_int4))
    tok = og.Tokenizer(model)
    prompt = tok.apply_chat_template(
        json.dumps([{"role": "user", "content": "What is the capital of France?"}]),
        add_generation_prompt=True,
    )
    answer = tok.decode(greedy_genai(smollm2_onnx_int4, list(tok.encode(prompt)), 12))
    assert "Paris" in answer


@pytest.mark.slow
def test_smollm2_optimum_int4_answers(smollm2_hf, tmp_path):
    import onnxruntime_genai as og

    out = export_llm(smollm2_hf, tmp_path / "opt", backend="optimum")
    assert_genai_folder(out, "optimum", "int4")
    model = og.Model(str(out))
    tok = og.Tokenizer(model)
    prompt = tok.apply_chat_template(
        json.dumps([{"role": "user", "content": "What is the capital of France?"}]),
        add_generation_prompt=True,
    )
    assert "Paris" in tok.decode(greedy_genai(out, list(tok.encode(prompt)), 12))


def test_cuda_target_export_is_built_for_cuda(tiny_phi3_hf, tmp_path):
    """Built here (no GPU): fp16 I/O, the CUDA provider in genai_config, accuracy level 0.
    Running it needs onnxruntime-genai-cuda on the target."""
    import onnx

    out = export_llm(tiny_phi3_hf, tmp_path / "cuda", execution_provider="cuda")
    cfg = json.loads((out / "genai_config.json").read_text())
    assert "cuda" in cfg["model"]["decoder"]["session_options"]["provider_options"][0]
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    logits = next(o for o in graph.output if o.name == "logits")
    assert logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    record = json.loads((out / EXPORT_RECORD).read_text())
    assert record["execution_provider"] == "cuda"
    assert record["quantization"]["accuracy_level"] == 0


def test_adapter_is_merged_before_export(tiny_phi3_hf, tmp_path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_phi3_hf), dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
    lora.save_pretrained(str(tmp_path / "lora"))
    out = export_llm(
        tiny_phi3_hf, tmp_path / "merged", precision="fp32", adapter_dir=tmp_path / "lora"
    )
    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_phi3_hf), dtype=torch.float32),
        str(tmp_path / "lora"),
    ).merge_and_unload()
    merged.save_pretrained(str(tmp_path / "merged-hf"))
    prompt = [1, 4093, 314, 260, 3575, 30]
    assert greedy_genai(out, prompt, 8) == greedy_hf(tmp_path / "merged-hf", prompt, 8)
    assert greedy_genai(out, prompt, 8) != greedy_hf(tiny_phi3_hf, prompt, 8)
    assert json.loads((out / EXPORT_RECORD).read_text())["adapter"]["mode"] == "merged"
    with pytest.raises(UserFacingError, match="adapter_config.json"):
        export_llm(tiny_phi3_hf, tmp_path / "x", adapter_dir=tmp_path)


# --------------------------------------------------------------------------------------------
# Weight-by-weight quantization (build/stream_quantize.py): same bytes, less memory, smaller
# --------------------------------------------------------------------------------------------


def _initializers(onnx_dir: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_dir / "model.onnx"))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _nodes(onnx_dir: Path) -> dict[str, object]:
    import onnx

    model = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
    return {n.name: n for n in model.graph.node}


def test_weight_by_weight_quantization_equals_the_builders_quantizer(
    tiny_phi3_hf, tmp_path, monkeypatch
):
    """With the embedding left alone, streaming gives byte-identical MatMulNBits weights, scales
    and zero points to the builder's whole-model MatMulNBitsQuantizer pass."""
    ours = export_llm(tiny_phi3_hf, tmp_path / "ours", int4=Int4Options(embedding_bits=0))
    monkeypatch.setattr(Int4Options, "streams", property(lambda self: False))
    theirs = export_llm(tiny_phi3_hf, tmp_path / "theirs")
    a, b = _initializers(ours), _initializers(theirs)
    assert sorted(a) == sorted(b)
    quantized = [n for n in a if "_Q4G" in n or "_Q8G" in n]
    assert len(quantized) >= 9  # 2 layers x (qkv, o, gate_up, down) + lm_head
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert json.loads((ours / EXPORT_RECORD).read_text())["quantization"]["weight_by_weight"]


def test_untied_embedding_is_quantized_to_4_bits(tiny_phi3_hf, tiny_exports):
    """The embedding becomes a GatherBlockQuantized that onnxruntime dequantizes back to the
    checkpoint's rows within 4-bit error, and the export shrinks by most of the fp32 table."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from safetensors.numpy import load_file

    out, fp32_embed = tiny_exports["genai-int4"], tiny_exports["genai-int4-fp32-embedding"]
    gather = _nodes(out)["/model/embed_tokens/GatherBlockQuantized"]
    attrs = {a.name: a.i for a in gather.attribute}
    assert attrs["bits"] == 4 and attrs["quantize_axis"] == 1
    inits = _initializers(out)
    assert "model.embed_tokens.weight" not in inits
    data, scale, zp = (inits[gather.input[i]] for i in (0, 2, 3))
    assert data.shape == (49152, 32)  # 64 dims at 4 bits
    size = (out / "model.onnx.data").stat().st_size
    assert size < 0.6 * (fp32_embed / "model.onnx.data").stat().st_size

    def value(name, array):
        dtype = TensorProto.UINT8 if array.dtype == np.uint8 else TensorProto.FLOAT
        return helper.make_tensor_value_info(name, dtype, array.shape)

    ids = np.array([[0, 7, 520, 49151]], dtype=np.int64)
    graph = helper.make_graph(
        [helper.make_node("GatherBlockQuantized", ["d", "i", "s", "z"], ["y"],
                          domain="com.microsoft", **attrs)],
        "g",
        [value("d", data), helper.make_tensor_value_info("i", TensorProto.INT64, ids.shape),
         value("s", scale), value("z", zp)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    session = ort.InferenceSession(model.SerializeToString())
    rows = session.run(None, {"d": data, "i": ids, "s": scale, "z": zp})[0][0]
    table = load_file(str(tiny_phi3_hf / "model.safetensors"))["model.embed_tokens.weight"]
    reference = table[ids[0]]
    assert np.linalg.norm(rows - reference) / np.linalg.norm(reference) < 0.12
    assert len(greedy_genai(out, [1, 520, 2318, 314], 8)) == 8


def test_quantize_weight_refuses_non_finite_and_keeps_constant_blocks_finite():
    from build.stream_quantize import quantize_weight

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 48)).astype(np.float32)
    w[:, :8] = 0.0  # constant blocks: k-quant's scale search divides by zero on these
    for method in ("k_quant", "rtn"):
        for bits in (4, 8):
            data, scales, zps = quantize_weight(
                w, bits=bits, block_size=32, method=method, symmetric=True, name="w"
            )
            assert np.isfinite(scales).all()
            assert data.shape == (48, 2, 32 * bits // 8)
    w[3, 5] = np.nan
    with pytest.raises(UserFacingError, match="w holds NaN or inf"):
        quantize_weight(w, bits=4, block_size=32, method="k_quant", symmetric=True, name="w")


def test_export_refuses_early_when_memory_is_short(tiny_phi3_hf, tmp_path):
    from build.export_llm import check_export_memory, checkpoint_parameters

    params = checkpoint_parameters(tiny_phi3_hf)
    assert 6_000_000 < params < 8_000_000  # 2 x 49152 x 64 embeddings + 2 small layers
    with pytest.raises(UserFacingError, match="needs about .* GB .* 0.5 GB available"):
        check_export_memory(tiny_phi3_hf, "genai", "int4", Int4Options(), available=1 << 29)
    check_export_memory(tiny_phi3_hf, "genai", "int4", Int4Options(), available=8 << 30)
