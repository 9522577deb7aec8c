"""GGUF → HF import: the rebuilt byte-level BPE tokenizer must agree with onnxruntime-genai.

Run: .venv/bin/pytest tests/build/test_import_model.py
"""

from __future__ import annotations

import json

import pytest

from appliance.errors import UserFacingError
from build.import_model import import_model

SAMPLE = [
    "Replace the mechanical seal on P-101; torque the gland nuts to 24 N·m.",
    "Alarm E-47 / part HX-4471-B, line A: 6.5 bar @ 85 °C, 1,250 h, 3.14159, -40",
    "Pièce détachée n° 12 — crème brûlée, naïve café, Ärger über Öl, ñandú",
    "温度传感器故障 ポンプの点検 펌프 점검 Ελληνικά русский עברית العربية",
    "emoji 🔧⚙️👷‍♀️✅🇩🇪 and a ZWJ family 👨‍👩‍👧",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\tif x >= 10**6: pass",
    "   three leading spaces, trailing   \n\n\n\r\nCRLF and\ttabs",
    "1234567890 12.5% $99.99 2026-11-26T10:00:00Z 0x1F 1e-5",
    "Don't, we'll, they're, I'M, it's — quotes “curly” ‘single’ «guillemets»",
    "P-101/E-47 V-12/B LP-12 C-301 C-302 HX-4471-B",
]


def test_tokenizer_matches_onnxruntime_genai(smollm2_hf, smollm2_onnx_int4):
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(smollm2_hf))
    genai = og.Tokenizer(og.Model(str(smollm2_onnx_int4)))
    chat = hf.apply_chat_template(
        [
            {"role": "system", "content": "Cite passages."},
            {"role": "user", "content": "What is E-47?"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "<|im_start|>assistant" in chat
    for text in [*SAMPLE, chat]:
        hf_ids = hf.encode(text, add_special_tokens=False)
        og_ids = [int(i) for i in genai.encode(text)]
        assert hf_ids == og_ids, f"ids differ for {text!r}"
        # Both decode back to the text; onnxruntime-genai drops special tokens when decoding.
        assert hf.decode(hf_ids, skip_special_tokens=False) == text
        assert genai.decode(og_ids) == hf.decode(hf_ids, skip_special_tokens=True)
    # The chat markers are single special tokens, never split into pieces.
    ids = hf.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)
    assert ids[0] == hf.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == hf.convert_tokens_to_ids("<|im_end|>")


def test_import_record_and_config(smollm2_hf):
    record = json.loads((smollm2_hf / "import.json").read_text())
    assert record["model_type"] == "llama"
    assert record["tokenizer"]["rebuilt_from_gguf"] is True
    assert len(record["source"]["sha256"]) == 64
    config = json.loads((smollm2_hf / "config.json").read_text())
    tok_cfg = json.loads((smollm2_hf / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>"
    assert "chat_template" in tok_cfg
    assert config["eos_token_id"] == 2
    assert (smollm2_hf / "model.safetensors").stat().st_size > 100_000_000


def test_import_refuses_to_overwrite(smollm2_hf, tmp_path):
    with pytest.raises(UserFacingError, match="already holds an imported model"):
        import_model(hf=smollm2_hf, out=smollm2_hf)


def test_import_hf_folder_round_trip(tiny_phi3_hf, tmp_path):
    out = import_model(hf=tiny_phi3_hf, out=tmp_path / "phi3")
    record = json.loads((out / "import.json").read_text())
    assert record["model_type"] == "phi3"
    assert record["tokenizer"]["round_trip_problems"] == []
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gguf": "missing.gguf"}, "does not exist"),
        ({}, "exactly one of"),
    ],
)
def test_import_bad_input(tmp_path, kwargs, message):
    kwargs = {k: tmp_path / v for k, v in kwargs.items()}
    with pytest.raises(UserFacingError, match=message):
        import_model(out=tmp_path / "out", **kwargs)


def test_import_hf_folder_without_config(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(UserFacingError, match="no config.json"):
        import_model(hf=tmp_path / "src", out=tmp_path / "out")
