# Run: .venv/bin/pytest tests/appliance/test_generation_genai.py
"""The onnxruntime-genai generator on the real SmolLM2 int4 export (built once, cached)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from appliance.errors import BundleError
from appliance.generation.base import GenerationParams, Generator
from appliance.generation.genai import GenaiGenerator, compile_chat_template, load_chat_template
from appliance.prompting import PromptPassage, build_messages

QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def gen(smollm2_onnx_int4: Path) -> GenaiGenerator:
    return GenaiGenerator(smollm2_onnx_int4, threads=2)


def test_loads_with_context_and_template(gen: GenaiGenerator):
    assert isinstance(gen, Generator)
    assert gen.context_length >= 2048
    prompt = gen.chat_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>system\nS<|im_end|>" in prompt
    assert gen.count_tokens(prompt) > 4


def test_template_matches_transformers(gen: GenaiGenerator, smollm2_hf: Path):
    from transformers import AutoTokenizer  # the build side; the appliance must agree with it

    tok = AutoTokenizer.from_pretrained(smollm2_hf)
    messages = build_messages(
        "Which pump?", [PromptPassage("P-101 feeds raw water.", "Pumps", "2.1", 3)]
    )
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert gen.chat_prompt(messages) == expected


def test_greedy_answer_is_sensible_and_deterministic(gen: GenaiGenerator):
    prompt = gen.chat_prompt([{"role": "user", "content": QUESTION}])
    params = GenerationParams(max_new_tokens=12)
    first = gen.generate(prompt, params)
    text = "".join(first)
    assert "Paris" in text
    assert first.finish_reason in ("stop", "length") and first.completion_tokens >= 1
    assert "<|im_end|>" not in text
    assert "".join(gen.generate(prompt, params)) == text


def test_sampling_honours_seed(gen: GenaiGenerator):
    prompt = gen.chat_prompt([{"role": "user", "content": "Write a sentence about pumps."}])
    p = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=11)
    a = "".join(gen.generate(prompt, p))
    b = "".join(gen.generate(prompt, p))
    assert a == b


def test_stop_strings_and_max_new_tokens(gen: GenaiGenerator):
    prompt = gen.chat_prompt(
        [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    )
    limited = gen.generate(prompt, GenerationParams(max_new_tokens=5))
    "".join(limited)
    assert limited.completion_tokens == 5 and limited.finish_reason == "length"
    full = "".join(gen.generate(prompt, GenerationParams(max_new_tokens=40)))
    assert "5" in full
    cut = gen.generate(prompt, GenerationParams(max_new_tokens=40, stop=("5",)))
    text = "".join(cut)
    assert "5" not in text and cut.finish_reason == "stop"
    assert full.startswith(text)


def test_closing_the_stream_frees_the_generation(gen: GenaiGenerator):
    prompt = gen.chat_prompt([{"role": "user", "content": "Tell me a long story."}])
    stream = gen.generate(prompt, GenerationParams(max_new_tokens=200))
    next(stream)
    assert gen.active == 1
    stream.close()
    assert gen.active == 0


def test_overlong_prompt_is_refused_before_generation(gen: GenaiGenerator):
    with pytest.raises(ValueError, match="context"):
        gen.generate("word " * gen.context_length, GenerationParams(max_new_tokens=10))
    with pytest.raises(ValueError, match="adapter"):
        gen.generate("hi", GenerationParams(adapter="missing"))


def test_template_sources(tmp_path: Path, smollm2_onnx_int4: Path):
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": [{"name": "default", "template": "T{{ messages[0].content }}"}],
                "bos_token": {"content": "<s>"},
            }
        )
    )
    template, special = load_chat_template(tmp_path)
    assert template.startswith("T{{") and special == {"bos_token": "<s>"}
    (tmp_path / "chat_template.jinja").write_text("J")
    assert load_chat_template(tmp_path)[0] == "J"
    broken = tmp_path / "broken"
    shutil.copytree(smollm2_onnx_int4, broken)
    (broken / "genai_config.json").unlink()
    with pytest.raises(BundleError, match="genai_config.json"):
        GenaiGenerator(broken)


def test_templates_that_refuse_messages(gen: GenaiGenerator):
    saved = gen._template
    try:
        gen._template = compile_chat_template(
            "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
            "{{ messages[0].content }}|"
        )
        msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
        assert gen.chat_prompt(msgs) == "S\n\nQ|"  # the system turn is folded into the user turn
        gen._template = compile_chat_template("{{ raise_exception('roles must alternate') }}")
        with pytest.raises(ValueError, match="roles must alternate"):
            gen.chat_prompt([{"role": "user", "content": "Q"}])
    finally:
        gen._template = saved
