"""The engines a generation benchmark times, each in its own worker process: ours as the
service runs it, onnxruntime-genai directly, llama.cpp and transformers; `EngineProcess` is the
parent's handle on a worker, and records how much CPU other processes took during each run.

Test: .venv/bin/pytest tests/benchmarks/test_bench_schema.py
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import time
import traceback
from pathlib import Path

from benchmarks.processes import machine_cpu_s, others_share, process_cpu_s, status_kib

log = logging.getLogger(__name__)


def _memory_kib() -> dict:
    mem = status_kib("self", ("VmHWM", "VmRSS"))
    return {"peak_rss_kib": mem.get("VmHWM"), "rss_kib": mem.get("VmRSS")}


class _ServedEngine:
    """GenaiGenerator, as the service builds it: the timer starts at `generate(prompt_text)`.

    A run without reuse first empties the prefix cache (a request that shares nothing with
    the last one, beyond what the cache would find anyway); a run with reuse keeps it."""

    def __init__(self, model_dir: str, threads: int, options: dict) -> None:
        from appliance.generation.genai import GenaiGenerator
        from appliance.generation.tuning import GenaiTuning

        options = dict(options)
        if isinstance(options.get("tuning"), dict):
            options["tuning"] = GenaiTuning(**options["tuning"])
        self.generator = GenaiGenerator(Path(model_dir), threads=threads, **options)
        self.settings = {
            **self.generator.tuning.to_dict(),
            "prefill_chunk": self.generator.prefill_chunk,
            "prefix_cache": self.generator.prefix_stats(),
            "path": "appliance.generation.genai.GenaiGenerator.generate",
        }

    def run(
        self, ids: list[int], new_tokens: int, reuse: bool = False, text: str | None = None
    ) -> tuple[list[float], list[int]]:
        from appliance.generation.base import GenerationParams

        if text is None:
            raise RuntimeError("the served engine needs the prompt text")
        if not reuse:
            self.generator.drop_cache()
        times: list[float] = []
        counts: list[int] = []
        t0 = time.perf_counter()
        stream = self.generator.generate(text, GenerationParams(max_new_tokens=new_tokens))
        for _ in stream:  # a delta may carry more than one token (held-back text)
            times.append(time.perf_counter() - t0)
            counts.append(stream.completion_tokens)
        self.last = {"reused_tokens": stream.reused_tokens, "prompt_tokens": stream.prompt_tokens}
        return times, counts


class _GenaiEngine:
    def __init__(self, model_dir: str, threads: int, tuning: dict) -> None:
        import onnxruntime_genai as og

        from appliance.generation.tuning import GenaiTuning, apply_tuning

        self.og = og
        tuning = dict(tuning)
        # Bench-only knob: the KV buffer length (default: exactly prompt + new tokens, as the
        # appliance sizes it). "context" = the model's context_length, genai_config's default.
        self.kv_length = tuning.pop("max_length", None)
        self.cache_length = int(tuning.pop("cache_length", 4096))
        # The appliance's own settings, with this variant's overrides on top.
        settings = dataclasses.replace(GenaiTuning.for_this_machine(threads), **tuning)
        config = og.Config(model_dir)
        apply_tuning(config, settings)
        self.model = og.Model(config)
        self.settings = {**settings.to_dict(), "max_length": self.kv_length}
        if self.kv_length == "context":
            cfg = json.loads((Path(model_dir) / "genai_config.json").read_text())
            self.kv_length = int(cfg["model"]["context_length"])

    def run(
        self, ids: list[int], new_tokens: int, reuse: bool = False, text: str | None = None
    ) -> tuple[list[float], list[int]]:
        if reuse:
            return self._run_reusing(ids, new_tokens)
        og = self.og
        total = len(ids) + new_tokens
        params = og.GeneratorParams(self.model)
        # min_length = max_length keeps the end-of-sequence token from ending a run early.
        params.set_search_options(
            do_sample=False, max_length=max(total, int(self.kv_length or 0)), min_length=total
        )
        generator = og.Generator(self.model, params)
        times: list[float] = []
        tokens: list[int] = []
        t0 = time.perf_counter()
        generator.append_tokens(ids)
        while len(tokens) < new_tokens and not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            times.append(time.perf_counter() - t0)
        del generator
        return times, tokens

    def _run_reusing(self, ids: list[int], new_tokens: int) -> tuple[list[float], list[int]]:
        """Through appliance.generation.tuning.PrefixCache: the KV of the shared start of the
        previous request is kept, and only the rest of the prompt is processed."""
        from appliance.generation.tuning import PrefixCache

        if getattr(self, "cache", None) is None:
            self.cache = PrefixCache(self.model, max_length=self.cache_length)
        times: list[float] = []
        tokens: list[int] = []
        t0 = time.perf_counter()
        lease = self.cache.lease(ids, new_tokens)
        if lease is None:
            raise RuntimeError("the prefix cache declined the request")
        with lease:
            lease.generator.append_tokens(ids[lease.reused :])
            while len(tokens) < new_tokens:
                lease.generator.generate_next_token()
                tokens.append(int(lease.generator.get_next_tokens()[0]))
                times.append(time.perf_counter() - t0)
        return times, tokens


class _LlamaCppEngine:
    def __init__(self, gguf: str, threads: int, n_ctx: int, flash_attn: bool = False) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise RuntimeError(
                "llama-cpp-python is not installed; it is a benchmark-only peer: install it as "
                "benchmarks/requirements.txt says (make bench does)"
            ) from exc

        self.llm = Llama(
            model_path=gguf,
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=flash_attn,
            verbose=False,
        )
        self.settings = {
            "n_ctx": n_ctx,
            "n_threads": threads,
            "n_threads_batch": threads,
            "n_batch": self.llm.n_batch,
            "flash_attn": flash_attn,
        }

    def run(
        self, ids: list[int], new_tokens: int, reuse: bool = False, text: str | None = None
    ) -> tuple[list[float], list[int]]:
        if not reuse:
            self.llm.reset()  # no reuse of the previous run's KV cache: every run starts cold
        # With reuse, generate(reset=True) keeps the KV of the longest common prefix of the
        # previous tokens and this prompt, as llama.cpp's server does with cache_prompt.
        times: list[float] = []
        tokens: list[int] = []
        t0 = time.perf_counter()
        stream = self.llm.generate(
            ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True
        )
        for token in stream:  # generate() ignores end-of-sequence; the caller stops it
            tokens.append(int(token))
            times.append(time.perf_counter() - t0)
            if len(tokens) >= new_tokens:
                break
        stream.close()
        return times, tokens


class _TransformersEngine:
    def __init__(self, hf_dir: str, threads: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        self.settings = {"dtype": "float32", "threads": threads}

    def run(
        self, ids: list[int], new_tokens: int, reuse: bool = False, text: str | None = None
    ) -> tuple[list[float], list[int]]:
        if reuse:
            raise RuntimeError("prefix reuse is not measured for transformers' generate")
        from transformers.generation.streamers import BaseStreamer

        torch = self.torch
        times: list[float] = []
        tokens: list[int] = []
        t0 = time.perf_counter()

        class Timing(BaseStreamer):
            prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:  # the first call hands over the prompt itself
                    self.prompt_seen = True
                    return
                times.append(time.perf_counter() - t0)
                tokens.append(int(value.reshape(-1)[0]))

            def end(self):
                pass

        input_ids = torch.tensor([ids], dtype=torch.long)
        with torch.inference_mode():
            self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=Timing(),
                pad_token_id=self.model.config.eos_token_id,
            )
        return times, tokens


def _make_engine(kind: str, spec: dict):
    if kind == "served":
        return _ServedEngine(spec["model_dir"], spec["threads"], spec.get("tuning") or {})
    if kind == "genai":
        return _GenaiEngine(spec["model_dir"], spec["threads"], spec.get("tuning") or {})
    if kind == "llama.cpp":
        return _LlamaCppEngine(
            spec["gguf"], spec["threads"], spec["n_ctx"], spec.get("flash_attn", False)
        )
    if kind == "transformers":
        return _TransformersEngine(spec["hf_dir"], spec["threads"])
    raise ValueError(f"unknown engine kind {kind!r}")


def _worker(conn, kind: str, spec: dict) -> None:
    """Worker process: load one engine, then answer ("run", ids, n) until ("stop",)."""
    threads = str(spec["threads"])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = threads
    os.environ.update(spec.get("env") or {})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        rss_before = status_kib("self", ("VmRSS",)).get("VmRSS")
        t0 = time.perf_counter()
        engine = _make_engine(kind, spec)
        conn.send(
            (
                "ready",
                {
                    "load_s": time.perf_counter() - t0,
                    "rss_before_load_kib": rss_before,
                    "settings": engine.settings,
                },
            )
        )
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which records a skip
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        conn.close()
        return
    while True:
        message = conn.recv()
        if message[0] in ("stats", "stop"):
            conn.send(("stats", _memory_kib()))
            if message[0] == "stop":
                conn.close()
                return
            continue
        _, ids, new_tokens, reuse, text = message
        try:
            times, tokens = engine.run(ids, new_tokens, reuse=reuse, text=text)
            conn.send(("result", {"times": times, "tokens": tokens, "kind": kind}))
        except BaseException as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


class EngineProcess:
    """The parent's handle on one worker process."""

    def __init__(self, name: str, kind: str, spec: dict, timeout_s: float) -> None:
        self.name, self.kind, self.spec, self.timeout_s = name, kind, spec, timeout_s
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, kind, spec), name=f"bench-{name}")
        self.process.start()
        child.close()
        self.info: dict = {}
        self.error: str | None = None

    def _recv(self):
        if not self.conn.poll(self.timeout_s):
            # Stop it: a run still going would take the CPU from every later measurement.
            self.process.terminate()
            raise TimeoutError(f"{self.name} did not answer within {self.timeout_s:.0f} s")
        try:
            return self.conn.recv()
        except EOFError as exc:
            self.process.join(5)
            raise RuntimeError(
                f"{self.name} worker died (exit code {self.process.exitcode})"
            ) from exc

    def wait_ready(self) -> bool:
        try:
            message = self._recv()
        except (TimeoutError, RuntimeError) as exc:
            self.error = str(exc)
            return False
        if message[0] == "ready":
            self.info.update(message[1])
            return True
        self.error = message[1]
        log.debug("%s failed to load:\n%s", self.name, message[2])
        return False

    def run(
        self, ids: list[int], new_tokens: int, reuse: bool = False, text: str | None = None
    ) -> dict:
        """One generation; the result also says how much CPU other processes took meanwhile."""
        pid = self.process.pid
        own0, (b0, t0) = process_cpu_s(pid), machine_cpu_s()
        try:
            self.conn.send(("run", ids, new_tokens, reuse, text))
        except OSError as exc:  # the worker is gone (killed, crashed)
            raise RuntimeError(f"{self.name} worker is gone: {exc}") from exc
        message = self._recv()
        own1, (b1, t1) = process_cpu_s(pid), machine_cpu_s()
        if message[0] != "result":
            raise RuntimeError(f"{self.name} failed: {message[1]}")
        result = message[1]
        result["others_cpu_share"] = others_share(b0, t0, b1, t1, own1 - own0)
        return result

    def memory(self) -> dict:
        """Peak and current resident memory of the worker so far."""
        self.conn.send(("stats",))
        message = self._recv()
        return message[1] if message[0] == "stats" else {}

    def stop(self) -> dict:
        try:
            if self.process.is_alive():
                self.conn.send(("stop",))
                message = self._recv()
                if message[0] == "stats":
                    self.info.setdefault("end_rss_kib", message[1].get("rss_kib"))
        except (TimeoutError, RuntimeError, OSError, BrokenPipeError) as exc:
            log.debug("stopping %s: %s", self.name, exc)
        finally:
            self.process.join(10)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(5)
            self.conn.close()
        return self.info
