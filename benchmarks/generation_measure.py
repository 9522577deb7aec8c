"""One generation benchmark run: warm-ups, interleaved repetitions of every engine, prefix
reuse, weights; then the records (ours vs each peer), the equal-quality verdict and the
contention flags.

Test: .venv/bin/pytest tests/benchmarks/test_gguf_peers.py tests/benchmarks/test_bench_schema.py
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from benchmarks.bandwidth import (
    gguf_weight_bytes,
    measure_copy_bandwidth,
    onnx_weight_bytes,
    safetensors_weight_bytes,
)
from benchmarks.generation_config import (
    LLAMA_CPP,
    SUITE,
    TRANSFORMERS,
    GenerationBenchConfig,
    build_prompt_texts,
)
from benchmarks.generation_engines import EngineProcess
from benchmarks.processes import wait_for_quiet
from benchmarks.records import make_record, skipped_record, summarize

log = logging.getLogger(__name__)


def _timings(result: dict, new_tokens: int) -> dict:
    """TTFT and decode rate. A served run yields text deltas (`tokens` = tokens generated so
    far at each delta); the others yield one token id per step."""
    times = result["times"]
    if result.get("kind") == "served":
        counts = result["tokens"]
        if not counts or counts[-1] < 2:
            raise RuntimeError(f"the served generator produced {counts[-1:]} tokens")
        generated = counts[-1]
        span = counts[-1] - counts[0]
    else:
        if len(times) < new_tokens:
            raise RuntimeError(f"generated {len(times)} tokens, expected {new_tokens}")
        generated, span = len(times), len(times) - 1
    ttft = times[0]
    decode = span / (times[-1] - times[0]) if times[-1] > times[0] else math.inf
    return {
        "ttft_s": ttft,
        "decode_tok_s": decode,
        "total_s": times[-1],
        "tokens": generated,
        "others_cpu_share": result.get("others_cpu_share"),
    }


def _agreement(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _engine_specs(
    config: GenerationBenchConfig, max_total: int, failures: dict[str, str]
) -> list[tuple[str, str, dict]]:
    specs: list[tuple[str, str, dict]] = []
    for v in config.variants:
        if v.served:
            # The service's cache is bounded by the bundle's budget; here by the longest request.
            tuning = {"prefix_cache_tokens": max_total + 256, **v.tuning}
            if not config.spinning:
                tuning["tuning"] = {"intra_op_threads": config.threads, "allow_spinning": False}
            specs.append((v.name, "served", _spec(config, v.model_dir, tuning)))
        else:
            tuning = {"cache_length": max_total, **v.tuning}
            specs.append((v.name, "genai", _spec(config, v.model_dir, tuning)))
    n_ctx = int(math.ceil(max_total / 256) * 256)
    for peer in config.peers:
        if peer == TRANSFORMERS:
            if config.hf_dir is None or not (Path(config.hf_dir) / "config.json").is_file():
                failures[peer] = f"no HF checkpoint for transformers (got {config.hf_dir})"
            else:
                spec = {"hf_dir": str(config.hf_dir), "threads": config.threads}
                specs.append((peer, "transformers", spec))
            continue
        gguf = config.ggufs.get(peer)
        if gguf is None or not Path(gguf).is_file():
            failures[peer] = f"no GGUF file for {peer} (got {gguf})"
            continue
        spec = {"gguf": str(gguf), "threads": config.threads, "n_ctx": n_ctx, "flash_attn": True}
        if not config.spinning:
            spec["env"] = {"OMP_WAIT_POLICY": "PASSIVE"}
        specs.append((peer, "llama.cpp", spec))
    return specs


def _spec(config: GenerationBenchConfig, model_dir: Path, tuning: dict) -> dict:
    return {"model_dir": str(model_dir), "threads": config.threads, "tuning": tuning}


def measure(config: GenerationBenchConfig, progress: bool = True) -> dict:
    """Run every engine interleaved; returns raw measurements (see `records_from`)."""
    from tqdm import tqdm

    first = config.variants[0]
    prompts = build_prompt_texts(first.model_dir, config.prompt_tokens, config.plant_dir)
    max_total = max(len(ids) for _, ids in prompts.values()) + config.new_tokens
    engines: list[EngineProcess] = []
    failures: dict[str, str] = {}
    specs = _engine_specs(config, max_total, failures)
    # Load one at a time so loading does not compete with loading.
    for name, kind, spec in specs:
        engine = EngineProcess(name, kind, spec, config.worker_timeout_s)
        if engine.wait_ready():
            engines.append(engine)
        else:
            failures[name] = engine.error or "failed to load"
            engine.stop()
    runs: dict[str, dict[int, list[dict]]] = {e.name: {s: [] for s in prompts} for e in engines}
    tokens: dict[str, dict[int, list[int]]] = {e.name: {} for e in engines}
    memory: dict[str, dict[int, dict]] = {e.name: {} for e in engines}
    load = {"before": [round(x, 2) for x in os.getloadavg()]}
    try:
        total = len(prompts) * (config.warmups + config.repeats) * len(engines)
        bar = tqdm(total=total, desc="generation", unit="run", disable=not progress)
        share = (
            config.budget_s / (len(prompts) + int(config.prefix_reuse)) if config.budget_s else None
        )
        cut: dict[int, int] = {}
        for size, (text, ids) in sorted(prompts.items()):
            size_t0 = time.monotonic()
            # Warm-up rounds before the first size only: after it every engine is loaded and
            # has run, and a contended box has no time to spare.
            warmups = config.warmups if size == min(prompts) else 0
            for round_ in range(warmups + config.repeats):
                live = [e for e in engines if e.name not in failures]
                if not live:
                    break
                if share and round_ > warmups and time.monotonic() - size_t0 > share:
                    cut[size] = round_ - warmups  # measured rounds that fit the budget
                    break
                shift = round_ % len(live)
                for engine in live[shift:] + live[:shift]:
                    if config.quiet_wait_s > 0:
                        wait_for_quiet(config.quiet_wait_s, config.quiet_share)
                    try:
                        result = engine.run(ids, config.new_tokens, text=text)
                        timing = _timings(result, config.new_tokens)
                    except (RuntimeError, TimeoutError) as exc:
                        failures[engine.name] = str(exc)
                        continue
                    finally:
                        bar.update(1)
                    tokens[engine.name][size] = result["tokens"]
                    if round_ >= warmups:
                        runs[engine.name][size].append(timing)
            # Peak memory after each prompt size (VmHWM only grows: the peak up to this size).
            for engine in engines:
                if engine.name not in failures:
                    try:
                        memory[engine.name][size] = engine.memory()
                    except (RuntimeError, TimeoutError) as exc:
                        log.warning("memory of %s: %s", engine.name, exc)
        bar.close()
        for engine in engines:
            if engine.name in memory and memory[engine.name]:
                engine.info.update(memory[engine.name][max(memory[engine.name])])
        reuse = (
            _measure_prefix_reuse(config, engines, failures, prompts, share)
            if config.prefix_reuse
            else {}
        )
    finally:
        for engine in engines:
            engine.stop()
    load["after"] = [round(x, 2) for x in os.getloadavg()]
    bandwidth = max(measure_copy_bandwidth(1), measure_copy_bandwidth(config.threads))
    return {
        "prompts": {size: len(ids) for size, (_, ids) in prompts.items()},
        "runs": runs,
        "tokens": tokens,
        "memory": memory,
        "engines": {e.name: e.info for e in engines},
        "failures": failures,
        "copy_bandwidth_bytes_s": bandwidth,
        "reuse": reuse,
        "load_average": load,
        "rounds_cut_by_budget": cut,
    }


REUSE_KINDS = ("served", "genai", "llama.cpp")  # engines with a prefix cache


def _measure_prefix_reuse(
    config: GenerationBenchConfig,
    engines: list[EngineProcess],
    failures: dict[str, str],
    prompts: dict[int, tuple[str, list[int]]],
    budget_s: float | None = None,
) -> dict:
    """Request A then request B, both with the same system prompt and passage header but other
    passages; each engine keeps the KV of what they share. B's timings are recorded. The size
    is the one closest to 800 tokens (the grounded prompt of the service's default top_k)."""
    from appliance.generation.tuning import common_prefix_length

    size = min(prompts, key=lambda n: abs(n - 800))
    first_text, first = prompts[size]
    other_text, other = build_prompt_texts(
        config.variants[0].model_dir, (size,), config.plant_dir, offset_words=7919
    )[size]
    live = [e for e in engines if e.kind in REUSE_KINDS and e.name not in failures]
    runs: dict[str, list[dict]] = {e.name: [] for e in live}
    errors: dict[str, str] = {}
    t0 = time.monotonic()
    # Every engine has run the first request's size already; the rounds alternate A and B.
    for round_ in range(config.repeats):
        if budget_s and round_ > 0 and time.monotonic() - t0 > budget_s:
            break
        shift = round_ % max(len(live), 1)
        for engine in live[shift:] + live[:shift]:
            if engine.name in errors:
                continue
            if config.quiet_wait_s > 0:
                wait_for_quiet(config.quiet_wait_s, config.quiet_share)
            try:
                # fills the cache (a cold start for the first, the previous B for later rounds)
                engine.run(first, config.new_tokens, reuse=True, text=first_text)
                result = engine.run(other, config.new_tokens, reuse=True, text=other_text)
                timing = _timings(result, config.new_tokens)
            except (RuntimeError, TimeoutError) as exc:
                errors[engine.name] = str(exc)
                continue
            runs[engine.name].append(timing)
    return {
        "size": size,
        "prompt_tokens": len(other),
        "shared_tokens": common_prefix_length(first, other),
        "runs": runs,
        "errors": errors,
    }


def _weights(config: GenerationBenchConfig) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for v in config.variants:
        out[v.name] = _try(onnx_weight_bytes, v.model_dir)
    for peer, path in config.ggufs.items():
        out[peer] = _try(gguf_weight_bytes, path)
    out[TRANSFORMERS] = _try(safetensors_weight_bytes, config.hf_dir) if config.hf_dir else None
    return out


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - a missing size only drops the ceiling figure
        log.warning("%s(%s) failed: %s", fn.__name__, args, exc)
        return None


def median_share(runs: list[dict]) -> float | None:
    """Median share of the CPU other processes took during these runs (0 = a quiet machine)."""
    shares = [r["others_cpu_share"] for r in runs if r.get("others_cpu_share") is not None]
    return round(summarize(shares)["median"], 2) if shares else None


def median_of(runs: list[dict], key: str) -> float | None:
    return summarize([r[key] for r in runs])["median"] if runs else None


def equal_quality_verdict(config: GenerationBenchConfig, raw: dict, ours: str) -> dict | None:
    """Our default against the fastest llama.cpp quantization whose perplexity is within ours
    (fastest = highest decode rate at the prompt size closest to 800 tokens)."""
    quality = raw.get("quality") or {}
    mine = (quality.get(ours) or {}).get("perplexity")
    if mine is None:
        return None
    size = min(raw["prompts"], key=lambda n: abs(n - 800))
    candidates = []
    for peer in config.peers:
        ppl = (quality.get(peer) or {}).get("perplexity")
        runs = raw["runs"].get(peer, {}).get(size)
        if ppl is not None and ppl <= mine and runs:
            candidates.append((median_of(runs, "decode_tok_s"), peer, ppl))
    out = {"ours": ours, "ours_perplexity": mine, "size": size}
    if not candidates:
        out["peer"] = None
        return out
    _, peer, ppl = max(candidates)
    out.update(peer=peer, peer_perplexity=ppl, by_size={})
    for n in sorted(raw["prompts"]):
        a, b = raw["runs"].get(ours, {}).get(n), raw["runs"].get(peer, {}).get(n)
        if a and b:
            out["by_size"][n] = {
                "ttft_ratio": median_of(a, "ttft_s") / median_of(b, "ttft_s"),
                "decode_ratio": median_of(a, "decode_tok_s") / median_of(b, "decode_tok_s"),
            }
    return out


def records_from(config: GenerationBenchConfig, raw: dict, ours: str | None = None) -> list[dict]:
    """Comparison records for variant `ours` (default: the first) against every peer."""
    ours = ours or config.variants[0].name
    out: list[dict] = []
    failures = raw["failures"]
    if ours in failures:
        reason = f"our model ({ours}) could not be measured: {failures[ours]}"
        for peer in config.peers:
            out.append(skipped_record(SUITE, "generation", reason, peer_name=peer))
        return out
    weights = _weights(config)
    bandwidth = raw["copy_bandwidth_bytes_s"]
    quality = raw.get("quality") or {}
    base = {
        "threads": config.threads,
        "new_tokens": config.new_tokens,
        "greedy": True,
        "spinning": config.spinning,
    }
    verdict = equal_quality_verdict(config, raw, ours)
    chosen = verdict.get("peer") if verdict else None
    for peer in config.peers:
        if peer in failures or peer not in raw["runs"]:
            reason = failures.get(peer, "not run")
            out.append(skipped_record(SUITE, f"generation vs {peer}", reason, peer_name=peer))
            continue
        tag = " (equal-quality verdict)" if peer == chosen else ""
        qa, qb = quality.get(ours) or {}, quality.get(peer) or {}
        if "perplexity" in qa and "perplexity" in qb:
            out.append(
                make_record(
                    SUITE,
                    f"perplexity on held-out text{tag}",
                    "ppl",
                    qa["perplexity"],
                    qb["perplexity"],
                    peer,
                    "lower",
                    params={
                        "tokens": qa.get("tokens"),
                        "reference": f"{LLAMA_CPP} F16",
                        "ours_change_vs_f16_pct": round(qa.get("change_pct", math.nan), 1),
                        "peer_change_vs_f16_pct": round(qb.get("change_pct", math.nan), 1),
                        "ours_top1_vs_f16": round(qa.get("top1_vs_f16", math.nan), 3),
                        "peer_top1_vs_f16": round(qb.get("top1_vs_f16", math.nan), 3),
                    },
                    note="the quality gate's held-out text (plant documents, 256-token windows), "
                    "teacher-forced, same token ids for every engine",
                )
            )
        for size, n_prompt in sorted(raw["prompts"].items()):
            a, b = raw["runs"][ours][size], raw["runs"][peer][size]
            if not a or not b:
                continue
            params = {
                **base,
                "prompt_tokens": n_prompt,
                "ours_tokens": int(median_of(a, "tokens")),
                "others_cpu_share_ours": median_share(a),
                "others_cpu_share_peer": median_share(b),
            }
            out.append(
                _ttft_record(f"time to first token, ~{size}-token prompt{tag}", a, b, peer, params)
            )
            da = summarize([r["decode_tok_s"] for r in a])
            db = summarize([r["decode_tok_s"] for r in b])
            # For a higher-is-better rate the slow tail is the 5th percentile; it is stored as p95
            # of the time per token, converted back to tokens/s.
            da_slow = 1 / summarize([1 / r["decode_tok_s"] for r in a])["p95"]
            db_slow = 1 / summarize([1 / r["decode_tok_s"] for r in b])["p95"]
            out.append(
                make_record(
                    SUITE,
                    f"decode speed, ~{size}-token prompt{tag}",
                    "tokens/s",
                    da["median"],
                    db["median"],
                    peer,
                    "higher",
                    ours_p95=da_slow,
                    peer_p95=db_slow,
                    repeats=len(a),
                    params=params,
                    note="p95 = the slow tail (95th percentile of time per token), as tokens/s"
                    if size == min(raw["prompts"])
                    else None,
                )
            )
            wa, wb = weights.get(ours), weights.get(peer)
            if wa and wb and bandwidth and size == min(raw["prompts"]):
                ceil_a, ceil_b = bandwidth / wa, bandwidth / wb
                out.append(
                    make_record(
                        SUITE,
                        f"share of bandwidth decode ceiling, ~{size}-token prompt",
                        "%",
                        100 * da["median"] / ceil_a,
                        100 * db["median"] / ceil_b,
                        peer,
                        "higher",
                        params={
                            **params,
                            "ours_weight_mb": round(wa / 1e6, 1),
                            "peer_weight_mb": round(wb / 1e6, 1),
                            "ours_ceiling_tok_s": round(ceil_a, 1),
                            "peer_ceiling_tok_s": round(ceil_b, 1),
                            "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2),
                        },
                        note="ceiling = measured copy bandwidth / bytes of weights read per token "
                        "(KV cache not counted)",
                    )
                )
        reuse = raw.get("reuse") or {}
        ra_runs = (reuse.get("runs") or {}).get(ours)
        rb_runs = (reuse.get("runs") or {}).get(peer)
        if ra_runs and rb_runs:
            out.append(
                _ttft_record(
                    f"time to first token, follow-up request reusing the shared prefix, "
                    f"~{reuse['size']}-token prompt{tag}",
                    ra_runs,
                    rb_runs,
                    peer,
                    {
                        **base,
                        "prompt_tokens": reuse["prompt_tokens"],
                        "shared_prefix_tokens": reuse["shared_tokens"],
                        "others_cpu_share_ours": median_share(ra_runs),
                        "others_cpu_share_peer": median_share(rb_runs),
                    },
                    note="both engines keep the KV cache of the system prompt and passage header "
                    "shared with the previous request (ours: GenaiGenerator's prefix cache; "
                    "llama.cpp: its longest-common-prefix reuse)",
                )
            )
        ra = raw["engines"].get(ours, {}).get("peak_rss_kib")
        rb = raw["engines"].get(peer, {}).get("peak_rss_kib")
        if ra and rb:
            out.append(
                make_record(
                    SUITE,
                    f"peak resident memory{tag}",
                    "MB",
                    ra * 1024 / 1e6,
                    rb * 1024 / 1e6,
                    peer,
                    "lower",
                    params={
                        "threads": config.threads,
                        "max_tokens": max(raw["prompts"].values()) + config.new_tokens,
                    },
                    note="whole worker process (VmHWM): interpreter, runtime and model, after "
                    "every prompt size",
                )
            )
    return out


def _ttft_record(
    metric: str, a: list[dict], b: list[dict], peer: str, params: dict, note: str | None = None
) -> dict:
    """The time-to-first-token record of our runs `a` against the peer's runs `b`: medians,
    with the p95 of each as its slow tail."""
    ta = summarize([r["ttft_s"] for r in a])
    tb = summarize([r["ttft_s"] for r in b])
    return make_record(
        SUITE, metric, "s", ta["median"], tb["median"], peer, "lower",
        ours_p95=ta["p95"], peer_p95=tb["p95"], repeats=len(a), params=params, note=note,
    )  # fmt: skip


CONTENTION_SHARE = 0.2


def flag_contention(records: list[dict]) -> list[dict]:
    """Say so on every record whose runs shared the CPU with other busy processes: engines that
    spin at barriers (llama.cpp's OpenMP threads, onnxruntime with spinning on) lose most of
    their speed when another process takes a core, so such a ratio says little about a quiet box."""
    for r in records:
        params = r.get("params") or {}
        shares = [params.get(k) for k in ("others_cpu_share_ours", "others_cpu_share_peer")]
        worst = max((x for x in shares if x is not None), default=None)
        if worst is not None and worst > CONTENTION_SHARE:
            warning = (
                f"measured under contention: other processes used up to {worst:.0%} of the "
                "CPU during these runs; not representative of a quiet machine"
            )
            r["note"] = f"{r['note']}; {warning}" if r.get("note") else warning
    return records


def run_config(config: GenerationBenchConfig, progress: bool = True) -> tuple[list[dict], dict]:
    raw = measure(config, progress=progress)
    return flag_contention(records_from(config, raw)), raw
