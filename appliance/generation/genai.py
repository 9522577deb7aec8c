"""The device's text generator: an int4 ONNX model run by onnxruntime-genai.

One `og.Model` is loaded per bundle and shared by every request. A greedy request without a
runtime adapter runs on the model's prefix cache (`appliance.generation.tuning.PrefixCache`):
one generator whose KV cache is kept after the request, so the next request processes only
the tokens after the start it shares with the previous one (the system prompt; in a follow-up
turn, the earlier conversation). The cache is bounded (`prefix_cache_tokens` of KV) and held by
one request at a time; any other request (sampling, an adapter, a second concurrent one, too
long) gets its own `og.Generator`, created when iteration starts and dropped as soon as the
caller stops iterating, so a client that disconnects frees its memory at once. After loading,
the pages of the weight file and of the runtime's libraries that only the load read are given
back to the kernel (`appliance.common.residency`).

The decoder session takes its threads and spinning from `GenaiTuning.for_this_machine` (the
settings benchmarks/OPTIMISATION.md measured). Prompts are processed in chunks of
`prefill_chunk` tokens, which bounds a pass's scratch: the attention scores (heads x chunk x
context floats) and, in an export made before `expert export` pruned the LM head to the last
position, the logits of every prompt position (800 x 49,152 floats = 157 MB for SmolLM2 in one
pass).

The chat template is the Hugging Face one that was exported with the model (chat_template.jinja
or tokenizer_config.json), rendered with a sandboxed Jinja2 environment configured as
transformers configures it, so the device formats prompts exactly as training did.

Test: .venv/bin/pytest tests/appliance/test_generation_genai.py
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

from appliance.common.residency import release_load_only_pages
from appliance.errors import BundleError
from appliance.generation.base import GenerationParams, GenerationStream, scan_tokens
from appliance.generation.tuning import GenaiTuning, PrefixCache, apply_tuning

log = logging.getLogger(__name__)

ADAPTER_SUFFIX = ".onnx_adapter"

# KV tokens the prefix cache may hold: a grounded prompt (5 passages of <= 160 tokens, system
# prompt, question: ~1,000 tokens) plus the default 256 new tokens and a few follow-up turns.
# Bounds its memory (SmolLM2: 46 KB of fp32 KV per token, 94 MB at 2,048); 0 turns it off.
DEFAULT_PREFIX_CACHE_TOKENS = 2048
# Prompt tokens per forward pass. Chosen from benchmarks/results/latest.md (memory breakdown):
# on an unpruned export 256 cut the 800-token request's peak RSS by ~125 MB (the all-position
# logits); on the pruned default export it bounds the attention scratch (9 heads x 256 x 1,728
# floats = 16 MB at a 1,600-token prompt, against 100 MB in one pass). None: one pass.
DEFAULT_PREFILL_CHUNK = 256


RELEASABLE_PAGES = frozenset({"weights", "libraries"})


def _release_kinds(release_pages: bool | Iterable[str]) -> frozenset[str]:
    """Which load-only pages `GenaiGenerator` gives back: True = all, False = none, else names."""
    if release_pages is True:
        return RELEASABLE_PAGES
    if release_pages is False:
        return frozenset()
    kinds = frozenset(release_pages)
    if unknown := kinds - RELEASABLE_PAGES:
        raise ValueError(
            f"release_pages: unknown page kinds {sorted(unknown)}; "
            f"use True, False or some of {sorted(RELEASABLE_PAGES)}"
        )
    return kinds


def _decoded_tokens(generator, decoder) -> Iterator[str]:
    """The text of each new token of an og.Generator until it is done. is_done() covers the
    end-of-sequence token (and a fresh generator's buffer end); scan_tokens stops at
    max_new_tokens, which a cached generator's longer buffer would not."""
    while not generator.is_done():
        generator.generate_next_token()
        yield decoder.decode(int(generator.get_next_tokens()[0]))


def load_chat_template(llm_dir: Path) -> tuple[str | None, dict]:
    """The HF chat template exported with the model, and the special tokens it may use."""
    special: dict = {}
    template: str | None = None
    cfg_path = llm_dir / "tokenizer_config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BundleError(
                f"{cfg_path.name} in the model folder is not valid JSON: {exc}"
            ) from None
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = cfg.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                special[key] = value
        raw = cfg.get("chat_template")
        if isinstance(raw, list):  # named templates: use "default"
            named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
            raw = named.get("default") or next(iter(named.values()), None)
        if isinstance(raw, str):
            template = raw
    jinja_file = llm_dir / "chat_template.jinja"
    if jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
    elif template is None and (llm_dir / "chat_template.json").is_file():
        try:
            template = json.loads((llm_dir / "chat_template.json").read_text("utf-8"))[
                "chat_template"
            ]
        except (ValueError, KeyError) as exc:
            raise BundleError(
                f"chat_template.json in the model folder is unreadable: {exc}"
            ) from None
    return template, special


def compile_chat_template(template: str):
    """A Jinja2 template configured as transformers renders chat templates."""
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


class GenaiGenerator:
    """`Generator` backed by onnxruntime-genai, for the `llm/` folder of a bundle."""

    def __init__(
        self,
        llm_dir: Path,
        *,
        adapters_dir: Path | None = None,
        threads: int | None = None,
        model_id: str | None = None,
        tuning: GenaiTuning | None = None,
        prefix_cache_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS,
        prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK,
        release_pages: bool | Iterable[str] = True,
    ) -> None:
        import onnxruntime_genai as og

        self.llm_dir = Path(llm_dir)
        config_path = self.llm_dir / "genai_config.json"
        if not config_path.is_file():
            raise BundleError(
                f"model folder {self.llm_dir.name!r} has no genai_config.json; export the model "
                "with `expert export` and rebuild the bundle"
            )
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        if prefix_cache_tokens < 0:
            raise ValueError(f"prefix_cache_tokens must be >= 0, got {prefix_cache_tokens}")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1 or None, got {prefill_chunk}")
        # `release_pages`: True (both), False (neither), or some of {"weights", "libraries"}.
        kinds = _release_kinds(release_pages)
        self.tuning = tuning or GenaiTuning.for_this_machine(threads)
        self.prefill_chunk = prefill_chunk
        try:
            genai_config = json.loads(config_path.read_text(encoding="utf-8"))
            self.context_length = int(genai_config["model"]["context_length"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(
                f"genai_config.json has no usable model.context_length: {exc}"
            ) from None
        try:
            config = og.Config(str(self.llm_dir))
            apply_tuning(config, self.tuning)
            self._model = og.Model(config)
        except Exception as exc:  # onnxruntime-genai raises plain RuntimeError/OgaError
            raise BundleError(
                f"onnxruntime-genai cannot load the model in {self.llm_dir.name!r}: {exc}; "
                "re-export it with `expert export`"
            ) from exc
        # The weight file's pages that loading read (to pack the weights) but decoding does not:
        # 17-21 MB of SmolLM2's peak RSS (benchmarks/results/latest.md, memory breakdown).
        # The libraries' code that only loading ran (graph optimisation, weight packing): 24 MB
        # of peak RSS (benchmarks/results/raw/memory_bench_2026-12-01.md). Given back before
        # the tokenizer loads, so that its ~21 MB does not stack on them: the load's peak is
        # the packed weights plus the pages the packing read (benchmarks/OPTIMISATION.md, "load order").
        weights = [p for p in self.llm_dir.iterdir() if p.is_file()] if "weights" in kinds else []
        released = release_load_only_pages(weights, libraries="libraries" in kinds) if kinds else {}
        self.released_pages = released.get("weights") if "weights" in kinds else None
        self.released_library_pages = released.get("libraries")
        try:
            self._tokenizer = og.Tokenizer(self._model)
        except Exception as exc:
            raise BundleError(
                f"onnxruntime-genai cannot load the tokenizer in {self.llm_dir.name!r}: {exc}; "
                "re-export it with `expert export`"
            ) from exc
        self.model_id = model_id or self.llm_dir.resolve().parent.name or "model"
        template, self._special = load_chat_template(self.llm_dir)
        self._template = compile_chat_template(template) if template else None
        self._adapters: og.Adapters | None = None
        self._adapter_names: tuple[str, ...] = ()
        if adapters_dir is not None and Path(adapters_dir).is_dir():
            self._load_adapters(og, Path(adapters_dir))
        self._lock = threading.Lock()
        self.active = 0
        cache_tokens = min(prefix_cache_tokens, self.context_length)
        self._prefix = PrefixCache(self._model, cache_tokens) if cache_tokens >= 2 else None

    def prefix_stats(self) -> dict | None:
        """Hits, misses and reused tokens of the prefix cache (None when it is off)."""
        return self._prefix.stats() if self._prefix is not None else None

    def drop_cache(self) -> None:
        """Free the prefix cache's KV now (the service calls this when a reload replaces the
        model; a request holding it keeps it until it ends)."""
        if self._prefix is not None:
            self._prefix.clear()

    def _load_adapters(self, og, adapters_dir: Path) -> None:
        files = sorted(adapters_dir.glob(f"*{ADAPTER_SUFFIX}"))
        if not files:
            return
        self._adapters = og.Adapters(self._model)
        names = []
        for path in files:
            name = path.name[: -len(ADAPTER_SUFFIX)]
            try:
                self._adapters.load(str(path), name)
            except Exception as exc:
                raise BundleError(
                    f"adapter {path.name!r} does not fit this model: {exc}; rebuild the bundle "
                    "with adapters exported from the same base model"
                ) from exc
            names.append(name)
        self._adapter_names = tuple(names)

    @property
    def adapters(self) -> Sequence[str]:
        return self._adapter_names

    def chat_prompt(self, messages: Sequence[dict]) -> str:
        """Render with the model's template; ValueError if the template refuses the messages."""
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self._template is None:
            return self._tokenizer.apply_chat_template(
                json.dumps(messages), add_generation_prompt=True
            )
        from jinja2 import TemplateError

        try:
            try:
                return self._render(messages)
            except TemplateError:
                # Some templates refuse a system role: fold it into the first user turn.
                if not messages or messages[0]["role"] != "system" or len(messages) < 2:
                    raise
                system, first, *rest = messages
                merged = {
                    "role": first["role"],
                    "content": f"{system['content']}\n\n{first['content']}",
                }
                return self._render([merged, *rest])
        except TemplateError as exc:
            # e.g. a template that insists on strictly alternating user/assistant turns
            raise ValueError(f"the model's chat template refuses these messages: {exc}") from None

    def _render(self, messages: list[dict]) -> str:
        return self._template.render(messages=messages, add_generation_prompt=True, **self._special)

    def encode(self, text: str):
        return self._tokenizer.encode(text)

    def count_tokens(self, text: str) -> int:
        return int(len(self._tokenizer.encode(text)))

    def generate(self, prompt: str, params: GenerationParams) -> GenerationStream:
        """Stream the completion of `prompt`. Raises ValueError before any work if the prompt
        and max_new_tokens do not fit the context or the adapter is unknown."""
        if params.adapter and params.adapter not in self._adapter_names:
            raise ValueError(
                f"unknown adapter {params.adapter!r}; this bundle has {list(self._adapter_names)}"
            )
        ids = self._tokenizer.encode(prompt)
        if len(ids) + params.max_new_tokens > self.context_length:
            raise ValueError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds "
                f"the model context ({self.context_length} tokens)"
            )
        stream = GenerationStream(prompt_tokens=int(len(ids)))
        stream._inner = self._run(ids, params, stream)
        return stream

    def _run(self, ids, params: GenerationParams, stream: GenerationStream) -> Iterator[str]:
        greedy = not params.temperature > 0
        lease = None
        if self._prefix is not None:
            lease = self._prefix.lease(
                ids, params.max_new_tokens, greedy=greedy, adapter=params.adapter
            )
        if lease is not None:
            generator, start = lease.generator, lease.reused
        else:
            generator, start = self._fresh_generator(ids, params, greedy), 0
        stream.reused_tokens = start
        with self._lock:
            self.active += 1
        failed = False
        try:
            if params.adapter:
                generator.set_active_adapter(self._adapters, params.adapter)
            chunk = self.prefill_chunk or len(ids)
            for i in range(start, len(ids), chunk):
                generator.append_tokens(ids[i : i + chunk])
            tokens = _decoded_tokens(generator, self._tokenizer.create_stream())
            try:
                yield from scan_tokens(tokens, params, stream)
            finally:
                tokens.close()  # drops its reference to the generator now
        except Exception:
            failed = True
            raise
        finally:
            if lease is not None:
                # A cancelled stream (GeneratorExit) leaves a valid cache; an error may not.
                lease.release(keep=not failed)
            del generator  # a fresh generator's KV is freed now, not at the next collection
            with self._lock:
                self.active -= 1

    def _fresh_generator(self, ids, params: GenerationParams, greedy: bool):
        import onnxruntime_genai as og

        options: dict = {"max_length": int(len(ids) + params.max_new_tokens)}
        if greedy:
            options["do_sample"] = False
        else:
            options.update(
                do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0
            )
        if params.seed is not None:
            options["random_seed"] = int(params.seed)
        gen_params = og.GeneratorParams(self._model)
        gen_params.set_search_options(**options)
        return og.Generator(self._model, gen_params)
