# Run: .venv/bin/pytest tests/benchmarks/test_generation_tuning.py
"""Generation settings the benchmarks recommend: they load, and the prefix cache changes no output.

Uses the shared int4 SmolLM2 export (`smollm2_onnx_int4`); a few short greedy generations.
"""

from __future__ import annotations

import pytest

og = pytest.importorskip("onnxruntime_genai")

from appliance.generation.tuning import (  # noqa: E402
    GenaiTuning,
    PrefixCache,
    apply_tuning,
    common_prefix_length,
)

SYSTEM = (
    "<|im_start|>system\nYou are the plant's maintenance and operations expert. Answer from the "
    "numbered passages only. Cite the passages you use as [1], [2].<|im_end|>\n<|im_start|>user\n"
)
QUESTIONS = (
    "What does a mechanical seal do?<|im_end|>\n<|im_start|>assistant\n",
    "How is a centrifugal pump primed?<|im_end|>\n<|im_start|>assistant\n",
)
NEW = 12


@pytest.fixture(scope="module")
def model(smollm2_onnx_int4):
    config = og.Config(str(smollm2_onnx_int4))
    apply_tuning(config, GenaiTuning.for_this_machine(threads=2))
    return og.Model(config)


def _fresh(model, ids: list[int], n: int = NEW) -> list[int]:
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + n)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    out = []
    while len(out) < n and not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def _cached(cache: PrefixCache, ids: list[int], n: int = NEW) -> tuple[list[int], int]:
    lease = cache.lease(ids, n)
    assert lease is not None
    with lease:
        lease.generator.append_tokens(ids[lease.reused :])
        out = []
        while len(out) < n:
            lease.generator.generate_next_token()
            out.append(int(lease.generator.get_next_tokens()[0]))
    return out, lease.reused


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([7, 8], [7, 8]) == 2


def test_prefix_cache_gives_the_fresh_generators_tokens(model):
    tokenizer = og.Tokenizer(model)
    first = list(tokenizer.encode(SYSTEM + QUESTIONS[0]))
    second = list(tokenizer.encode(SYSTEM + QUESTIONS[1]))
    cache = PrefixCache(model, max_length=512, min_reuse=4)

    out1, reused1 = _cached(cache, first)
    assert reused1 == 0 and out1 == _fresh(model, first)

    out2, reused2 = _cached(cache, second)  # shares the system prompt with the first request
    shared = common_prefix_length(first, second)
    assert reused2 == shared > 10
    assert out2 == _fresh(model, second)

    # A follow-up re-sends the whole first exchange: everything but the new turn is reused.
    follow = (
        second
        + out2
        + list(
            tokenizer.encode(
                "<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
            )
        )
    )
    out3, reused3 = _cached(cache, follow)
    assert reused3 >= len(second) + len(out2) - 1
    assert out3 == _fresh(model, follow)
    assert cache.hits == 2 and cache.misses == 1


def test_prefix_cache_serves_again_after_end_of_sequence(model):
    tokenizer = og.Tokenizer(model)
    short = list(tokenizer.encode(SYSTEM + "Say hello.<|im_end|>\n<|im_start|>assistant\n"))
    cache = PrefixCache(model, max_length=512, min_reuse=4)
    for _ in range(2):  # the first answer ends with end-of-sequence; the cache is reused after it
        lease = cache.lease(short, 40)
        with lease:
            lease.generator.append_tokens(short[lease.reused :])
            out = []
            while not lease.generator.is_done() and len(out) < 40:
                lease.generator.generate_next_token()
                out.append(int(lease.generator.get_next_tokens()[0]))
        assert out == _fresh(model, short, n=40)[: len(out)]
    assert cache.hits == 1


def test_prefix_cache_declines_what_it_cannot_serve(model):
    cache = PrefixCache(model, max_length=64)
    ids = list(range(10, 30))
    assert cache.lease(ids, 8, greedy=False) is None
    assert cache.lease(ids, 8, adapter="plant") is None
    assert cache.lease(ids, 64) is None  # does not fit the cached KV buffer
    lease = cache.lease(ids, 8)
    assert lease is not None
    assert cache.lease(ids, 8) is None  # busy: the caller uses a fresh generator
    lease.release()
    again = cache.lease(ids, 8)
    assert again is not None
    again.release(keep=False)
    with pytest.raises(ValueError, match="max_length"):
        PrefixCache(model, max_length=1)


def test_tuning_overlay_is_accepted_by_genai(smollm2_onnx_int4):
    tuning = GenaiTuning(intra_op_threads=1, allow_spinning=False, enable_cpu_mem_arena=True)
    config = og.Config(str(smollm2_onnx_int4))
    apply_tuning(config, tuning)
    model = og.Model(config)
    assert len(_fresh(model, [1, 2, 3, 4], n=2)) == 2
