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


@pytest.fixture(scope="module")
def uncached(smollm2_onnx_int4: Path) -> GenaiGenerator:
    # Also keeps the weight file's pages: `gen` releases them, so equal answers cover that too.
    return GenaiGenerator(
        smollm2_onnx_int4,
        threads=2,
        prefix_cache_tokens=0,
        prefill_chunk=None,
        release_pages=False,
    )


def _turns(gen: GenaiGenerator, first_answer: str) -> tuple[str, str]:
    system = {"role": "system", "content": "You are the plant's maintenance expert. Be brief."}
    q1 = {"role": "user", "content": "What does a mechanical seal do in a pump?"}
    q2 = {"role": "user", "content": "And how often is it replaced?"}
    follow_up = [system, q1, {"role": "assistant", "content": first_answer}, q2]
    return gen.chat_prompt([system, q1]), gen.chat_prompt(follow_up)


def test_prefix_cache_reuses_earlier_turns_and_changes_no_output(
    gen: GenaiGenerator, uncached: GenaiGenerator
):
    params = GenerationParams(max_new_tokens=24)
    gen.drop_cache()
    first, _ = _turns(gen, "")
    s1 = gen.generate(first, params)
    a1 = "".join(s1)
    assert a1 == "".join(uncached.generate(first, params))  # one pass vs chunks + cache
    _, follow_up = _turns(gen, a1)
    s2 = gen.generate(follow_up, params)
    a2 = "".join(s2)
    # The system prompt, the first question and the answer's tokens come from the cache.
    assert s2.reused_tokens >= gen.count_tokens(first)
    assert a2 == "".join(uncached.generate(follow_up, params))
    stats = gen.prefix_stats()
    assert stats["hits"] >= 1 and stats["kv_length"] <= stats["max_length"]
    assert uncached.prefix_stats() is None


def test_prefix_cache_is_bounded_and_dropped(smollm2_onnx_int4: Path):
    small = GenaiGenerator(smollm2_onnx_int4, threads=2, prefix_cache_tokens=64, prefill_chunk=7)
    prompt = small.chat_prompt([{"role": "user", "content": "Name three kinds of pump. " * 8}])
    params = GenerationParams(max_new_tokens=8)
    text = "".join(small.generate(prompt, params))  # beyond the cache: a fresh generator
    assert text and small.prefix_stats()["misses"] == 0 and small.prefix_stats()["kv_length"] == 0
    short = small.chat_prompt([{"role": "user", "content": "Name a pump."}])
    "".join(small.generate(short, params))
    assert 0 < small.prefix_stats()["kv_length"] <= 64
    small.drop_cache()
    assert small.prefix_stats()["kv_length"] == 0
    # Sampling never touches the cache.
    "".join(small.generate(short, GenerationParams(max_new_tokens=4, temperature=1.0, seed=3)))
    assert small.prefix_stats()["kv_length"] == 0


def test_bad_cache_settings_are_refused(smollm2_onnx_int4: Path):
    with pytest.raises(ValueError, match="prefix_cache_tokens"):
        GenaiGenerator(smollm2_onnx_int4, prefix_cache_tokens=-1)
    with pytest.raises(ValueError, match="prefill_chunk"):
        GenaiGenerator(smollm2_onnx_int4, prefill_chunk=0)


def test_follow_up_turn_through_http_reuses_the_earlier_turns(
    serve, smollm2_onnx_int4: Path, tmp_path: Path
):
    """The real generator behind the real service: the second turn's usage says how many
    prompt tokens came from the cache (OpenAI's usage.prompt_tokens_details.cached_tokens)."""
    import openai

    from appliance.server.auth import add_key

    key = add_key(tmp_path / "state" / "api_keys.json", "client")
    generator = GenaiGenerator(smollm2_onnx_int4, threads=2, model_id="bundle-genai")
    server = serve(generator=generator, retriever=None, embedder=None)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)

    def turn(messages):
        stream = client.chat.completions.create(
            model="bundle-genai",
            messages=messages,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"retrieval": False},
        )
        text, usage = "", None
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        return text, usage

    q1 = {"role": "user", "content": "What does a mechanical seal do in a pump?"}
    a1, u1 = turn([q1])
    a2, u2 = turn([q1, {"role": "assistant", "content": a1}, {"role": "user", "content": "Why?"}])
    assert a1 and a2
    assert u2.prompt_tokens_details.cached_tokens >= u1.prompt_tokens
    assert u2.prompt_tokens_details.cached_tokens < u2.prompt_tokens


def _mapped_weight_kib(folder: Path) -> int:
    from appliance.common.residency import file_mappings

    smaps = Path("/proc/self/smaps").read_text()
    return sum(m[2] for p in folder.iterdir() for m in file_mappings(p, smaps))


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="needs Linux /proc")
def test_residency_release_drops_load_only_pages_and_changes_no_output(
    gen: GenaiGenerator, uncached: GenaiGenerator, smollm2_onnx_int4: Path
):
    # `gen` released the pages its load read; `uncached` kept them (both map the same file).
    assert gen.released_pages["released_mb"] > 1 and gen.released_pages["kept_written"] == 0
    assert uncached.released_pages is None and uncached.released_library_pages is None
    # The libraries' never-written pages went too; their relocated (written) data stayed.
    assert gen.released_library_pages["released_mb"] > 1
    assert gen.released_library_pages["kept_written"] > 0
    before = _mapped_weight_kib(smollm2_onnx_int4)
    again = GenaiGenerator(smollm2_onnx_int4, threads=2, prefix_cache_tokens=0)
    assert again.released_pages["mappings"] > 0
    assert _mapped_weight_kib(smollm2_onnx_int4) <= before
    prompt = gen.chat_prompt([{"role": "user", "content": QUESTION}])
    params = GenerationParams(max_new_tokens=12)
    assert "".join(again.generate(prompt, params)) == "".join(uncached.generate(prompt, params))


def test_residency_choice_of_pages(smollm2_onnx_int4: Path):
    weights_only = GenaiGenerator(
        smollm2_onnx_int4, threads=2, prefix_cache_tokens=0, release_pages={"weights"}
    )
    assert weights_only.released_pages is not None
    assert weights_only.released_library_pages is None
    with pytest.raises(ValueError, match="unknown page kinds \\['code'\\]"):
        GenaiGenerator(smollm2_onnx_int4, release_pages={"weights", "code"})
