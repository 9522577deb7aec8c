# Run: .venv/bin/pytest tests/benchmarks/test_gguf_peers.py  (the F16 conversion: add -m slow)
"""llama.cpp peers at equal quality: perplexity scoring, the equal-quality choice, the F16 GGUF."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.generation_config import GenerationBenchConfig, Variant
from benchmarks.generation_measure import equal_quality_verdict
from benchmarks.gguf_peers import equal_quality_peers, quality_markdown, score


def test_score_is_teacher_forced_perplexity():
    vocab = 8
    uniform = score(lambda ids: np.zeros((len(ids), vocab)), [[1, 2, 3, 4], [5, 6, 7]])
    assert uniform["tokens"] == 5
    assert uniform["perplexity"] == pytest.approx(vocab)

    def sure(ids):  # puts almost all mass on the true next token
        logits = np.full((len(ids), vocab), -20.0)
        for i, nxt in enumerate(ids[1:]):
            logits[i, nxt] = 20.0
        return logits

    assert score(sure, [[1, 2, 3, 4]])["perplexity"] == pytest.approx(1.0, abs=1e-6)


def test_equal_quality_choice_takes_the_fastest_peer_within_our_perplexity(tmp_path: Path):
    quality = {
        "ours": {"perplexity": 10.0},
        "llama.cpp Q4_0": {"perplexity": 11.0},  # worse: not eligible however fast
        "llama.cpp Q4_K_M": {"perplexity": 9.5},
        "llama.cpp Q8_0": {"perplexity": 9.0},
    }
    peers = ["llama.cpp Q4_0", "llama.cpp Q4_K_M", "llama.cpp Q8_0"]
    assert equal_quality_peers(quality, "ours", peers) == ["llama.cpp Q4_K_M", "llama.cpp Q8_0"]
    run = lambda ttft, dec: [{"ttft_s": ttft, "decode_tok_s": dec}]  # noqa: E731
    raw = {
        "prompts": {100: 99, 800: 800},
        "quality": quality,
        "runs": {
            "ours": {100: run(0.1, 200), 800: run(0.6, 150)},
            "llama.cpp Q4_0": {100: run(0.2, 300), 800: run(1.0, 250)},
            "llama.cpp Q4_K_M": {100: run(0.2, 180), 800: run(1.5, 130)},
            "llama.cpp Q8_0": {100: run(0.3, 160), 800: run(2.0, 110)},
        },
    }
    config = GenerationBenchConfig(variants=(Variant("ours", tmp_path),), peers=tuple(peers))
    verdict = equal_quality_verdict(config, raw, "ours")
    assert verdict["peer"] == "llama.cpp Q4_K_M"
    assert verdict["by_size"][800]["decode_ratio"] == pytest.approx(150 / 130)
    assert verdict["by_size"][800]["ttft_ratio"] == pytest.approx(0.6 / 1.5)
    quality["ours"]["perplexity"] = 8.0  # better than every peer: no peer of equal quality
    assert equal_quality_verdict(config, raw, "ours")["peer"] is None
    table = quality_markdown({**quality, "llama.cpp F16": {"error": "boom"}})
    assert "failed: boom" in table and "| ours |" in table


@pytest.mark.slow
def test_f16_gguf_holds_the_checkpoints_weights(tmp_path: Path, smollm2_gguf: Path, smollm2_hf):
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    from benchmarks.gguf_peers import make_f16_gguf

    out = make_f16_gguf(smollm2_gguf, tmp_path / "f16.gguf")
    tensors = {t.name: t for t in GGUFReader(str(out)).tensors}
    emb = np.asarray(tensors["token_embd.weight"].data, dtype=np.float32)
    ref = load_file(str(smollm2_hf / "model.safetensors"))["model.embed_tokens.weight"]
    assert emb.shape == ref.shape
    assert float(np.abs(emb - ref).max()) < 2e-3  # f16 rounding of the same values
    assert not math.isnan(float(emb.sum()))
