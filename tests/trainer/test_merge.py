# Run: .venv/bin/pytest tests/trainer/test_merge.py
"""Merging adapters into the full-precision base: same logits, safe outputs, right base only.

Tolerance: the merged fp32 model's logits equal the fp32 base + adapter's within 1e-4 absolute
(the only difference is the order of floating-point sums; measured ~3e-6 on the tiny Phi-3).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import UserFacingError
from trainer.merge import load_adapter_model, merge_adapter, sample_inputs

LOGIT_TOLERANCE = 1e-4


def _logits(model, ids, mask):  # noqa: ANN001, ANN202
    import torch

    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits[mask.bool()]


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_merged_logits_match_the_adapter_model(
    trained: dict, tiny_phi3_hf: Path, tmp_path: Path, method: str
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = trained[method].out
    record = merge_adapter(tiny_phi3_hf, adapter, tmp_path / "merged", verify=True)
    assert record["verify_max_abs_logit_diff"] <= LOGIT_TOLERANCE
    assert record["adapter"]["method"] == method and record["dtype"] == "float32"

    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    tok.pad_token = tok.pad_token or tok.eos_token
    ids, mask = sample_inputs(tok)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    reference = load_adapter_model(tiny_phi3_hf, adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_phi3_hf, dtype=torch.float32).eval()
    got, want, plain = (
        _logits(merged, ids, mask),
        _logits(reference, ids, mask),
        _logits(base, ids, mask),
    )
    assert float((got - want).abs().max()) <= LOGIT_TOLERANCE
    # ...and the adapter really changes the model, so the comparison above means something.
    assert float((got - plain).abs().max()) > 100 * LOGIT_TOLERANCE

    # The tokenizer files are the base's, byte for byte (the export relies on them).
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "merged" / name).read_bytes() == (tiny_phi3_hf / name).read_bytes()
    assert not list(tmp_path.glob(".merged.partial-*"))


def test_refuses_to_overwrite_a_finished_output(
    trained: dict, tiny_phi3_hf: Path, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    merge_adapter(tiny_phi3_hf, trained["lora"].out, out)
    before = (out / "merge.json").read_text()
    with pytest.raises(UserFacingError, match="already holds a finished checkpoint"):
        merge_adapter(tiny_phi3_hf, trained["lora"].out, out)
    assert (out / "merge.json").read_text() == before


def test_refuses_an_adapter_of_another_base(trained: dict, tmp_path: Path) -> None:
    from tests.tiny_models import make_tiny_phi3

    other = make_tiny_phi3(tmp_path / "other-phi3", seed=1)  # same shapes, other weights
    adapter = trained["lora"].out
    trained_on = json.loads((adapter / "expert_adapter.json").read_text())["base"]["path"]
    with pytest.raises(UserFacingError) as info:
        merge_adapter(other, adapter, tmp_path / "merged")
    message = str(info.value)
    assert trained_on in message and str(other.resolve()) in message
    assert not (tmp_path / "merged").exists()


def test_cli_names_a_missing_adapter(
    tiny_phi3_hf: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from appliance.cli import main

    rc = main(
        [
            "merge",
            "--base",
            str(tiny_phi3_hf),
            "--adapter",
            str(tmp_path),
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert rc == 2
    assert "no adapter_config.json" in capsys.readouterr().err


def test_merged_checkpoint_exports_and_runs_in_onnxruntime_genai(
    trained: dict, tiny_phi3_hf: Path, tmp_path: Path
) -> None:
    """The merged folder is what `expert export` takes: fp32 ONNX greedy tokens = merged HF's."""
    import onnxruntime_genai as og
    import torch
    from transformers import AutoModelForCausalLM

    from build.export_llm import export_llm

    merged = tmp_path / "merged"
    merge_adapter(tiny_phi3_hf, trained["lora"].out, merged)
    onnx_dir = export_llm(merged, tmp_path / "onnx", precision="fp32")
    prompt = [1, 520, 3017, 29, 355, 1122]
    model = og.Model(str(onnx_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + 6)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    got = []
    while not gen.is_done():
        gen.generate_next_token()
        got.append(int(gen.get_next_tokens()[0]))
    hf = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf.generate(
            torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6, do_sample=False
        )
    assert got == want[0, len(prompt) :].tolist()
