"""Runtime settings that make onnxruntime-genai generate fast on a small CPU box.

The benchmarks (benchmarks/generation_bench.py, findings in benchmarks/OPTIMISATION.md) measure
these settings against llama.cpp on the same machine; this module is where the appliance takes
them from, so serving runs with exactly what was measured. Only runtime settings live here
(threads, spinning, arena, ...); export-time settings (LM-head pruning, quantization) belong to
build/export_llm.py.

Use: `apply_tuning(config, GenaiTuning.for_this_machine())` on an `og.Config` before `og.Model`.

Test: .venv/bin/pytest tests/benchmarks/test_bench_schema.py
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which systemd and containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class GenaiTuning:
    """Session settings for the decoder. None leaves onnxruntime's own default in place.

    - intra_op_threads: threads one generation uses. One per usable core: more threads than cores
      only adds context switches; fewer leaves a core idle during prompt processing.
    - allow_spinning: worker threads busy-wait between operators instead of sleeping. A decode step
      runs ~300 small operators, so waking sleeping threads costs more than spinning on a box that
      serves one generation at a time.
    - stop_spinning_after_run: the workers stop spinning as soon as a forward pass returns
      (`session.force_spinning_stop`), so the Python, web-server and client work between two
      tokens gets the cores. Streaming over HTTP, 64 tokens, ~800-token prompt, interleaved
      servers (2026-12-01): quiet box 113.1 tok/s against 101.4 spinning and 89.5 not spinning;
      load 2-4: 41.9-93.2 (median 67) against 35.3-45.7 spinning and 63.3-77.0 not spinning.
    - enable_cpu_mem_arena / enable_mem_pattern: onnxruntime's allocator caching.
    """

    intra_op_threads: int | None = None
    allow_spinning: bool | None = None
    stop_spinning_after_run: bool | None = None
    enable_cpu_mem_arena: bool | None = None
    enable_mem_pattern: bool | None = None

    def __post_init__(self) -> None:
        if self.intra_op_threads is not None and (
            not isinstance(self.intra_op_threads, int) or self.intra_op_threads < 1
        ):
            raise ValueError(
                f"intra_op_threads must be an int >= 1 or None, got {self.intra_op_threads!r}"
            )
        for name in (
            "allow_spinning",
            "stop_spinning_after_run",
            "enable_cpu_mem_arena",
            "enable_mem_pattern",
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool or None, got {value!r}")

    @classmethod
    def for_this_machine(cls, threads: int | None = None) -> GenaiTuning:
        """The measured best settings (benchmarks/OPTIMISATION.md), with one thread per usable
        core unless `threads` is given: spinning on (+47 % decode on a quiet 2-core box), and
        onnxruntime's memory patterns off (peak RSS of an 800- then 1,600-token request 326.5 /
        325.6 MB against 331.0 / 336.0 with them, TTFT and decode within 6 %: two interleaved
        fresh processes each, load 0.5-0.9, 2026-11-30 22:52 UTC)."""
        return cls(
            intra_op_threads=threads or usable_cores(),
            allow_spinning=True,
            stop_spinning_after_run=True,
            enable_mem_pattern=False,
        )

    def session_options(self) -> dict:
        """The `model.decoder.session_options` entries of genai_config.json for these settings."""
        options: dict = {}
        if self.intra_op_threads is not None:
            options["intra_op_num_threads"] = self.intra_op_threads
            options["inter_op_num_threads"] = 1
        if self.allow_spinning is not None:
            # An onnxruntime session config entry; genai passes unknown string keys through.
            options["session.intra_op.allow_spinning"] = "1" if self.allow_spinning else "0"
        if self.stop_spinning_after_run is not None:
            options["session.force_spinning_stop"] = "1" if self.stop_spinning_after_run else "0"
        if self.enable_cpu_mem_arena is not None:
            options["enable_cpu_mem_arena"] = self.enable_cpu_mem_arena
        if self.enable_mem_pattern is not None:
            options["enable_mem_pattern"] = self.enable_mem_pattern
        return options

    def overlay_json(self) -> str:
        """A JSON overlay for `og.Config.overlay`."""
        return json.dumps({"model": {"decoder": {"session_options": self.session_options()}}})

    def to_dict(self) -> dict:
        return asdict(self)


def apply_tuning(config, tuning: GenaiTuning) -> None:
    """Apply `tuning` to an `onnxruntime_genai.Config` (before `og.Model(config)`)."""
    if tuning.session_options():
        config.overlay(tuning.overlay_json())


def common_prefix_length(a, b) -> int:
    """Length of the longest common prefix of two token-id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and int(a[i]) == int(b[i]):
        i += 1
    return i


# Cached KV buffers are sized in steps of KV_ROUND tokens, with FOLLOW_UP_HEADROOM tokens beyond
# the request for the next turn's question (the previous answer is already inside the request's
# max_new_tokens). Both were 256: a 1,600-token request with 64 new tokens then held 2,048
# tokens of KV (94 MB of fp32 for SmolLM2) where 1,728 serve it and a 64-token follow-up question
# (15 MB less, benchmarks/results/latest.md memory breakdown). A longer follow-up is a cache
# miss: it is processed in full, as without the cache.
KV_ROUND = 64
FOLLOW_UP_HEADROOM = 64


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


class PrefixCache:
    """Reuses the KV cache of the previous request's tokens for the next request's shared start.

    Every grounded request begins with the same system prompt (~70 tokens of SmolLM2's RAG
    prompt), and a follow-up turn re-sends the earlier conversation, so the tokens the previous
    request processed (its prompt and its answer) are usually the start of the next prompt. One
    onnxruntime-genai generator is kept alive with its KV cache; a new request rewinds it to the
    longest common prefix of its token ids and the tokens the cache holds, and only the rest of
    the prompt is processed. llama.cpp's server does the same (`cache_prompt`). The output is
    the same as a fresh generator's: rewinding drops the cache past that point and greedy
    decoding continues from identical state.

    Memory is bounded: the cached generator's KV buffer is sized to the request that created
    it (prompt + max_new_tokens + `headroom` for a follow-up turn, rounded up to KV_ROUND tokens) and
    never beyond `max_length` tokens. A request that does not fit the held buffer but fits
    `max_length` replaces it (a miss); one beyond `max_length` is declined.

    Limits, by design: greedy requests only (sampling state and seeds would carry over), no
    runtime adapter. One request at a time holds the cache; `lease` returns None for a request
    it cannot serve, and the caller then uses a fresh generator as before. The cache belongs to
    one loaded model: a reload loads a new model with a new, empty cache (`clear()` frees the
    old one at once).

    Use:
        lease = cache.lease(ids, max_new_tokens)
        if lease is None: ...fresh generator...
        else:
            with lease:                      # releases the cache when the request ends
                lease.generator.append_tokens(ids[lease.reused:])
                ...generate_next_token() until max_new_tokens or end of sequence (the buffer
                   may be longer than this request needs)...
    """

    def __init__(
        self, model, max_length: int, *, min_reuse: int = 16, headroom: int = FOLLOW_UP_HEADROOM
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        if min_reuse < 1:
            raise ValueError(f"min_reuse must be >= 1, got {min_reuse}")
        if headroom < 0:
            raise ValueError(f"headroom must be >= 0, got {headroom}")
        import threading

        self._model = model
        self.max_length = int(max_length)
        self.min_reuse = int(min_reuse)
        self.headroom = int(headroom)
        self.round_to = KV_ROUND
        self._lock = threading.Lock()
        self._busy = False
        self._generator = None
        self.length = 0  # KV buffer length of the held generator (0: none held)
        self.hits = 0
        self.misses = 0
        self.reused_tokens = 0

    def _new_generator(self, length: int):
        import onnxruntime_genai as og

        params = og.GeneratorParams(self._model)
        params.set_search_options(do_sample=False, max_length=length)
        return og.Generator(self._model, params)

    def stats(self) -> dict:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "reused_tokens": self.reused_tokens,
            "kv_length": self.length,
            "max_length": self.max_length,
        }

    def lease(self, ids, max_new_tokens: int, *, greedy: bool = True, adapter: str | None = None):
        """A `PrefixLease` on the cached generator, or None (busy, sampling, adapter, too long)."""
        need = len(ids) + max_new_tokens
        if not greedy or adapter or len(ids) < 1 or need > self.max_length:
            return None
        with self._lock:
            if self._busy:
                return None
            self._busy = True
        try:
            reused = 0
            if self._generator is not None and need <= self.length:
                # The last token of the sequence may be a sampled token the model has not run on
                # yet (its KV is not in the cache), so it is never reused.
                held = self._generator.get_sequence(0)[:-1]
                # Keep at least one prompt token to append: its logits start the answer.
                reused = min(common_prefix_length(held, ids), len(ids) - 1)
                if reused < self.min_reuse:
                    reused = 0
            if reused:
                self._generator.rewind_to(reused)
                self.hits += 1
                self.reused_tokens += reused
            else:
                # Nothing worth keeping: a fresh generator costs less than rewinding to zero.
                self._generator = None
                self.length = 0
                length = min(self.max_length, _round_up(need + self.headroom, self.round_to))
                self._generator = self._new_generator(length)
                self.length = length
                self.misses += 1
            return PrefixLease(self, self._generator, reused)
        except BaseException:
            self._generator = None
            self.length = 0
            self._release()
            raise

    def _release(self) -> None:
        with self._lock:
            self._busy = False

    def clear(self) -> None:
        """Drop the cached KV (e.g. when the model is replaced by a reload)."""
        with self._lock:
            if not self._busy:
                self._generator = None
                self.length = 0


class PrefixLease:
    """One request's use of a `PrefixCache`: `generator` already holds `reused` prompt tokens."""

    def __init__(self, cache: PrefixCache, generator, reused: int) -> None:
        self._cache = cache
        self.generator = generator
        self.reused = reused
        self._done = False

    def release(self, *, keep: bool = True) -> None:
        """Give the cache back; keep=False drops its KV (e.g. after an error mid-request)."""
        if self._done:
            return
        self._done = True
        if not keep:
            self._cache._generator = None
            self._cache.length = 0
        self._cache._release()

    def __enter__(self) -> PrefixLease:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # A cancelled stream (GeneratorExit) leaves a valid cache; an error may not.
        self.release(keep=exc_type is None or not issubclass(exc_type, Exception))
