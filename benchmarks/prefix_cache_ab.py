"""Decode speed of `GenaiGenerator` with its prefix cache against the same model without it.

Run: .venv/bin/python -m benchmarks.prefix_cache_ab --llm var/bundles/bundle-plant-0.1.0/llm

Two generators on the same int4 export in one process (the default prefix cache, and
`prefix_cache_tokens=0`), fed the same ~800-token grounded plant prompts (the generation
suite's `build_prompt_texts`, three starting points in the documents, so a request shares its
system prompt and passage header with the previous one), greedy, `--tokens` new
tokens, in pairs whose order alternates. Prints time to first token and decode tokens/s of each
run, the medians and the ratio (cache on / cache off). The HTTP suite showed the service with
its cache decoding 0.81-0.98x as fast as without it; this separates the generator from the
HTTP path.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _prompts(llm: Path, plant: Path, tokens: int = 800) -> list[str]:
    """Three grounded plant prompts of ~`tokens` tokens (the generation suite's builder),
    starting 300 words apart in the documents."""
    from benchmarks.generation_config import build_prompt_texts

    return [
        build_prompt_texts(llm, (tokens,), plant, offset)[tokens][0] for offset in (0, 300, 600)
    ]


def _timed(generator, prompt: str, params) -> tuple[float, float]:
    t0 = time.perf_counter()
    times = [time.perf_counter() - t0 for _ in generator.generate(prompt, params)]
    if len(times) < 2 or times[-1] <= times[0]:
        return (times[0] if times else float("nan")), float("nan")
    return times[0], (len(times) - 1) / (times[-1] - times[0])


def measure(llm: Path, plant: Path, pairs: int, tokens: int, threads: int) -> dict:
    from appliance.generation.base import GenerationParams
    from appliance.generation.genai import GenaiGenerator

    engines = {
        "cache on": GenaiGenerator(llm, threads=threads),
        "cache off": GenaiGenerator(llm, threads=threads, prefix_cache_tokens=0),
    }
    prompts = _prompts(llm, plant)
    params = GenerationParams(max_new_tokens=tokens)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    for i in range(pairs):
        order = list(engines) if i % 2 == 0 else list(engines)[::-1]
        for name in order:
            runs[name].append(_timed(engines[name], prompts[i % len(prompts)], params))
    medians = {name: statistics.median(d for _, d in r) for name, r in runs.items()}
    return {
        "runs": runs,
        "decode_median": medians,
        "ratio": medians["cache on"] / medians["cache off"],
        "cache": engines["cache on"].prefix_stats(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", type=Path, required=True, help="an int4 export (a bundle's llm/)")
    parser.add_argument("--plant", type=Path, default=REPO / "examples" / "plant")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not (args.llm / "genai_config.json").is_file():
        parser.error(f"{args.llm} has no genai_config.json: pass an int4 export (a bundle's llm/)")
    if args.pairs < 1 or args.tokens < 2:
        parser.error("--pairs must be >= 1 and --tokens >= 2")
    result = measure(args.llm, args.plant, args.pairs, args.tokens, args.threads)
    for name, runs in result["runs"].items():
        ttft = " ".join(f"{t:.3f}" for t, _ in runs)
        decode = " ".join(f"{d:.1f}" for _, d in runs)
        print(f"{name}: ttft s {ttft}; decode tok/s {decode}")
    print(
        "decode median: "
        + ", ".join(f"{k} {v:.1f}" for k, v in result["decode_median"].items())
        + f"; ratio (on/off) {result['ratio']:.3f}; cache {result['cache']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
