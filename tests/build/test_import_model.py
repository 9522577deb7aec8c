"""GGUF → HF import: the rebuilt byte-level BPE tokenizer must agree with onnxruntime-genai.

Run: .venv/bin/pytest tests/build/test_import_model.py
"""

from __future__ import annotations

import json
from pathlib import Path

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


# --------------------------------------------------------------------------------------------
# Tokenizer families: parity with reference tokenizers (tests/build/reference_tokenizers.py)
# --------------------------------------------------------------------------------------------

# llama.cpp pre-tokenizer family -> a `tokenizer.ggml.pre` name that selects it
BYTE_LEVEL_FAMILIES = {
    "gpt-2": "gpt-2",
    "starcoder": "smollm",
    "llama3": "llama-bpe",
    "qwen2": "qwen2",
    "deepseek-llm": "deepseek-llm",
    "deepseek-coder": "deepseek-coder",
}
CHATML = (
    "<|im_start|>system\nCite passages.<|im_end|>\n<|im_start|>user\nWhat is E-47 at "
    "1234567 rpm?<file_sep>x<|im_end|>\n<|im_start|>assistant\n"
)


@pytest.fixture(scope="session")
def smollm2_fields(smollm2_gguf):
    from build.import_model import _gguf_fields

    return _gguf_fields(smollm2_gguf)


@pytest.mark.parametrize("family", sorted(BYTE_LEVEL_FAMILIES))
def test_byte_level_tokenizer_matches_llama_cpp_reference(smollm2_fields, family):
    from build.import_model import build_tokenizer
    from tests.build.reference_tokenizers import ReferenceByteLevelBPE

    fields = {**smollm2_fields, "tokenizer.ggml.pre": BYTE_LEVEL_FAMILIES[family]}
    tok = build_tokenizer(fields)
    ref = ReferenceByteLevelBPE(
        list(fields["tokenizer.ggml.tokens"]),
        list(fields["tokenizer.ggml.token_type"]),
        list(fields["tokenizer.ggml.merges"]),
        family,
    )
    for text in [*SAMPLE, CHATML]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == ref.encode(text), f"{family}: ids differ for {text!r}"
        assert tok.decode(ids, skip_special_tokens=False) == text == ref.decode(ids)


def test_families_split_differently(smollm2_fields):
    """The families are not interchangeable: each cuts this text into its own pieces."""
    from build.import_model import build_tokenizer

    text = "Order 1234567 parts:\n\n温度 they'RE OK, they're  !!\n"
    pieces = {
        family: tuple(
            p
            for p, _ in build_tokenizer(
                {**smollm2_fields, "tokenizer.ggml.pre": pre}
            ).pre_tokenizer.pre_tokenize_str(text)
        )
        for family, pre in BYTE_LEVEL_FAMILIES.items()
    }
    assert len(set(pieces.values())) == len(BYTE_LEVEL_FAMILIES), pieces


@pytest.fixture(scope="session")
def tiny_sentencepiece(tmp_path_factory):
    from tests.tiny_models import sentencepiece_gguf_vocab, train_tiny_sentencepiece

    model = train_tiny_sentencepiece(tmp_path_factory.mktemp("sp"))
    return model, sentencepiece_gguf_vocab(model)


def _sp_fields(vocab: dict) -> dict:
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": vocab["tokens"],
        "tokenizer.ggml.scores": vocab["scores"],
        "tokenizer.ggml.token_type": vocab["types"],
        "tokenizer.ggml.bos_token_id": vocab["bos"],
        "tokenizer.ggml.eos_token_id": vocab["eos"],
        "tokenizer.ggml.unknown_token_id": vocab["unk"],
        "tokenizer.ggml.padding_token_id": vocab["pad"],
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": True,
        "general.architecture": "phi3",
    }


PHI3_CHAT = "<|system|>\nCite passages.<|end|>\n<|user|>\nWhat is E-47?<|end|>\n<|assistant|>\n"


def test_sentencepiece_tokenizer_matches_sentencepiece(tiny_sentencepiece):
    from build.import_model import build_tokenizer
    from tests.build.reference_tokenizers import ReferenceSentencePiece
    from tests.tiny_models import PHI3_SPECIALS

    model, vocab = tiny_sentencepiece
    tok = build_tokenizer(_sp_fields(vocab))
    ref = ReferenceSentencePiece(model, list(PHI3_SPECIALS))
    for text in [*SAMPLE, PHI3_CHAT]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == ref.encode(text), f"ids differ for {text!r}"
        if "<|" not in text:  # a prefix space follows every special token, as in llama.cpp
            assert tok.decode(ids) == text == ref.decode(ids)
    # BOS is added in front when special tokens are asked for, as llama.cpp and HF Phi-3 do.
    assert tok.encode("hi").ids == ref.encode("hi", add_bos=True)


def test_transformers_gguf_converters_are_wrong_where_the_import_rebuilds(
    smollm2_fields, tiny_sentencepiece
):
    """Why the import rebuilds instead of using transformers' GGUF converters (4.57): its Llama
    converter gives a Llama-3 vocabulary GPT-2's regex, its Phi-3 converter never turns spaces
    into `▁`, its Qwen2 converter knows only three special tokens. Byte-level `gpt-2` is the one
    family where it agrees."""
    from transformers.integrations.ggml import convert_gguf_tokenizer

    from build.import_model import build_tokenizer

    def tf_dict(fields: dict) -> dict:
        out = {k.removeprefix("tokenizer.ggml."): v for k, v in fields.items()}
        out["token_type"] = out.get("token_type", [])
        out["tokenizer_type"] = out.pop("model")
        # the names transformers' GGUF reader gives these fields
        for ours, theirs in (
            ("padding_token_id", "pad_token_id"),
            ("unknown_token_id", "unk_token_id"),
        ):
            if ours in out:
                out[theirs] = out.pop(ours)
        return out

    def ids(tok, text):
        return tok.encode(text, add_special_tokens=False).ids

    llama3 = {**smollm2_fields, "tokenizer.ggml.pre": "llama-bpe"}
    theirs, _ = convert_gguf_tokenizer("llama", tf_dict(llama3))
    text = "Step 1:\n\nThey'RE OK"  # Llama-3 keeps ":\n\n" together; GPT-2 does not
    assert ids(theirs, text) != ids(build_tokenizer(llama3), text)

    qwen2 = {**smollm2_fields, "tokenizer.ggml.pre": "qwen2"}
    theirs, _ = convert_gguf_tokenizer("qwen2", tf_dict(qwen2))
    assert ids(theirs, "Plain text 42.") == ids(build_tokenizer(qwen2), "Plain text 42.")
    assert len(ids(theirs, "<file_sep>")) > 1 == len(ids(build_tokenizer(qwen2), "<file_sep>"))

    _, vocab = tiny_sentencepiece
    sp = _sp_fields(vocab)
    theirs, _ = convert_gguf_tokenizer("phi3", tf_dict(sp))
    text = "Replace the seal on P-101"
    assert ids(theirs, text) != ids(build_tokenizer(sp), text)

    gpt2 = {**smollm2_fields, "tokenizer.ggml.pre": "gpt-2"}
    theirs, _ = convert_gguf_tokenizer("gpt2", tf_dict(gpt2))
    for text in SAMPLE:
        assert ids(theirs, text) == ids(build_tokenizer(gpt2), text)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "klingon"}, "known: .*qwen2"),
        ({"tokenizer.ggml.model": "gpt2"}, "names no pre-tokenizer"),
        ({"tokenizer.ggml.model": "t5"}, r"supported: gpt2 \(byte-level BPE\), llama"),
    ],
)
def test_unknown_tokenizer_is_refused(fields, message):
    from build.import_model import build_tokenizer

    with pytest.raises(UserFacingError, match=message):
        build_tokenizer(fields)


def test_unknown_gguf_architecture_is_refused():
    from build.import_model import check_gguf_architecture

    with pytest.raises(UserFacingError, match="'mamba' is not supported.*qwen2, qwen3, phi3"):
        check_gguf_architecture({"general.architecture": "mamba"})


# --------------------------------------------------------------------------------------------
# Tiny GGUFs per family: import -> tokenizer parity with onnxruntime-genai -> train -> merge ->
# int4 export -> answer
# --------------------------------------------------------------------------------------------

GGUF_FAMILIES = ("phi3", "qwen2", "llama3")
CHATS = {"phi3": PHI3_CHAT, "qwen2": CHATML, "llama3": None}


@pytest.fixture(scope="session", params=GGUF_FAMILIES)
def tiny_gguf_import(request) -> tuple[str, Path, Path]:
    """(family, GGUF file, imported HF folder), built once per code change."""
    from tests.conftest import cached_dir
    from tests.tiny_models import write_tiny_gguf

    family = request.param

    def make(tmp: Path) -> None:
        write_tiny_gguf(tmp / f"{family}.gguf", family)
        import_model(gguf=tmp / f"{family}.gguf", out=tmp / "hf")

    sources = ("tests/tiny_models.py", "build/import_model.py")
    root = cached_dir(f"tiny-gguf-{family}", sources, make)
    return family, root / f"{family}.gguf", root / "hf"


def test_tiny_gguf_imports_with_its_family_tokenizer(tiny_gguf_import):
    family, _, hf = tiny_gguf_import
    record = json.loads((hf / "import.json").read_text())
    assert record["tokenizer"]["model"] == ("llama" if family == "phi3" else "gpt2")
    assert record["model_type"] == {"phi3": "phi3", "qwen2": "qwen2", "llama3": "llama"}[family]
    config = json.loads((hf / "config.json").read_text())
    if family == "phi3":  # the builder's plain RoPE path, not LongRoPE
        assert config["max_position_embeddings"] == config["original_max_position_embeddings"]


def test_tiny_gguf_pipeline_train_merge_export_answer(tiny_gguf_import, tmp_path):
    """The whole route a plant takes with its own GGUF, on a tiny model of each family."""
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    from appliance.generation.base import GenerationParams
    from appliance.generation.genai import GenaiGenerator
    from build.export_llm import export_llm
    from tests.trainer.trainer_samples import TINY, qa_records, write_jsonl
    from trainer.config import TrainConfig
    from trainer.merge import merge_adapter
    from trainer.train import train

    family, _, hf = tiny_gguf_import
    data = write_jsonl(tmp_path / "train.jsonl", qa_records()[:16])
    train(TrainConfig(base=hf, data=data, out=tmp_path / "adapter", **{**TINY, "max_steps": 2}))
    merge_adapter(hf, tmp_path / "adapter", tmp_path / "merged", dtype="fp32")
    onnx_dir = export_llm(tmp_path / "merged", tmp_path / "onnx", precision="int4")

    # The exported tokenizer (onnxruntime-genai) and the imported one (transformers) agree.
    hf_tok = AutoTokenizer.from_pretrained(str(hf))
    genai = GenaiGenerator(onnx_dir, threads=1)
    og_tok = og.Tokenizer(og.Model(str(onnx_dir)))
    messages = [{"role": "system", "content": "Cite passages."},
                {"role": "user", "content": "What is E-47?"}]  # fmt: skip
    chat = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat == genai.chat_prompt(messages)
    for text in [*SAMPLE, chat]:
        hf_ids = hf_tok.encode(text, add_special_tokens=False)
        assert [int(i) for i in og_tok.encode(text)] == hf_ids, f"{family}: {text!r}"
        if "<|" not in text:
            # onnxruntime-genai keeps the prefix space SentencePiece puts in front (the answer
            # path strips answers anyway); byte-level BPE decodes back verbatim.
            assert og_tok.decode(hf_ids) == (" " + text if family == "phi3" else text)

    stream = genai.generate(chat, GenerationParams(max_new_tokens=8))
    answer = "".join(stream)
    assert isinstance(answer, str)
    record = json.loads((onnx_dir / "export.json").read_text())
    assert record["quantization"]["weight_by_weight"] is True
