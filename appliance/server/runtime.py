"""What the service serves, and how it is swapped for a new bundle without dropping requests.

A `Runtime` is everything loaded from one bundle: generator, embedder, retriever, the model
names and the answer policy. The `Service` holds the current runtime; a request takes a
reference to it once, at its start, and keeps using it to the end, so a reload (SIGHUP)
that loads a new bundle and swaps the reference never disturbs a request in flight. The
old runtime is freed when its last request lets go of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

from appliance.answering import DEFAULT_ABSTAIN_THRESHOLD, AnswerPolicy
from appliance.errors import UserFacingError
from appliance.generation.base import Generator
from appliance.quality_gate import describe as describe_gate
from appliance.quality_gate import gate_summary
from appliance.server.auth import KeyStore, require_keys_for_bind
from appliance.server.config import ServeConfig
from appliance.server.metrics import ServiceMetrics
from appliance.server.slots import SlotPool
from appliance.server.validation import ApiError

log = logging.getLogger("appliance.server")

ADAPTER_SEPARATOR = ":"


@dataclass
class Runtime:
    generator: Generator
    retriever: object | None  # appliance.retrieval.Retriever (search, and document writes)
    embedder: object | None  # appliance.embedding.OnnxEmbedder (embed, count_tokens)
    name: str  # the model name clients send: the bundle id
    policy: AnswerPolicy
    bundle: object | None = None  # appliance.bundle.Bundle
    created: int = 0
    fallback: str | None = None  # why `previous` is served instead of `current`, if it is

    def __post_init__(self) -> None:
        self.created = self.created or int(time.time())

    @cached_property
    def quality_gate(self) -> dict | None:
        """The bundle's quality-gate figures (appliance.quality_gate), None without a bundle."""
        manifest = getattr(self.bundle, "manifest", None)
        return gate_summary(manifest) if isinstance(manifest, dict) else None

    @property
    def model_ids(self) -> list[str]:
        return [self.name] + [f"{self.name}{ADAPTER_SEPARATOR}{a}" for a in self.generator.adapters]

    def adapter_for(self, model: str | None) -> str | None:
        """The runtime adapter a request's `model` names (`<bundle>` or `<bundle>:<adapter>`)."""
        if model is None or model == self.name:
            return None
        name, sep, adapter = model.partition(ADAPTER_SEPARATOR)
        if sep and name == self.name and adapter in self.generator.adapters:
            return adapter
        raise ApiError(
            404,
            f"model {model!r} is not served here; GET /v1/models lists: "
            + ", ".join(self.model_ids),
            param="model",
            code="model_not_found",
        )


def answer_policy(config: ServeConfig, manifest: dict | None) -> AnswerPolicy:
    """Threshold precedence: the operator's setting > the bundle's calibrated value > default.
    An operator's threshold holds for every question; otherwise a question in another language
    than the documents' takes the bundle's cross-language value, when it has one. The wording
    (system prompt, abstention sentence) is the bundle's; the operator's abstain_message wins
    over the bundle's sentence. A threshold is compared with the score the bundle's was
    calibrated on (`abstain_signal`; `AnswerPolicy.from_manifest` pairs the default threshold
    with the passage score)."""
    policy = AnswerPolicy.from_manifest(manifest)
    threshold = config.abstain_threshold
    cross = policy.abstain_threshold_cross_language if threshold is None else None
    if threshold is None:
        threshold = policy.abstain_threshold
    if threshold is None:
        threshold = DEFAULT_ABSTAIN_THRESHOLD
    return replace(
        policy,
        abstain_threshold=threshold,
        abstain_threshold_cross_language=cross,
        abstain_message=config.abstain_message,
    )


def load_runtime(config: ServeConfig) -> Runtime:
    """Verify and load the configured bundle (its `current` link is re-read every time)."""
    from appliance.bundle import CURRENT_LINK, load_current_or_previous, resolve_current
    from appliance.embedding import OnnxEmbedder
    from appliance.generation.genai import GenaiGenerator
    from appliance.retrieval import Retriever, open_writable_copy

    path = config.bundle
    if path is None:
        resolve_current(config.state_dir)  # a clear error when no bundle is active
        path = config.state_dir / CURRENT_LINK  # the link itself: `previous` is beside it
    t0 = time.perf_counter()
    bundle, fallback = load_current_or_previous(path)
    generator = GenaiGenerator(
        bundle.llm_dir,
        adapters_dir=bundle.adapters_dir,
        threads=config.threads,
        model_id=bundle.id,
        prefix_cache_tokens=config.prefix_cache_tokens,
    )
    embedder = OnnxEmbedder(bundle.embedder_dir)
    # The bundle's index is immutable; documents posted to the service go into a copy in
    # the state directory (made once per bundle index, API documents carried over).
    index_dir = open_writable_copy(bundle.index_dir, config.state_dir, embedder)
    retriever = Retriever.open(index_dir, embedder)
    log.info("loaded bundle %s in %.1f s", bundle.id, time.perf_counter() - t0)
    return Runtime(
        generator=generator,
        retriever=retriever,
        embedder=embedder,
        name=bundle.id,
        policy=answer_policy(config, bundle.manifest),
        bundle=bundle,
        fallback=fallback,
    )


class Service:
    """The app's shared state: config, current runtime, slots, metrics, keys."""

    def __init__(
        self,
        config: ServeConfig,
        runtime: Runtime | None,
        loader: Callable[[ServeConfig], Runtime] | None,
        keys: KeyStore,
    ) -> None:
        self.config = config
        self.loader = loader
        self.keys = keys
        self.slots = SlotPool(config.slots, config.queue_limit)
        # Embedding, retrieval and deletes: CPU work outside generation, with its own slots.
        self.cpu_slots = SlotPool(config.cpu_slot_count, config.cpu_slot_count)
        self.metrics = ServiceMetrics(lambda: self.slots.waiting, lambda: self.slots.busy)
        self._runtime = runtime
        self._reload_lock = threading.Lock()
        self.draining = False
        self.started = time.time()
        if runtime is not None:
            self._describe(runtime)

    @property
    def runtime(self) -> Runtime:
        rt = self._runtime
        if rt is None:
            raise ApiError(
                503,
                "the model is still loading; retry shortly",
                code="loading",
                type="server_busy",
                headers={"Retry-After": "5"},
            )
        return rt

    @property
    def ready(self) -> bool:
        return self._runtime is not None and not self.draining

    def _describe(self, rt: Runtime) -> None:
        info = {"bundle": rt.name, "model": rt.generator.model_id}
        bundle = rt.bundle
        if bundle is not None:
            info["version"] = str(getattr(bundle, "version", ""))
        self.metrics.info = info
        gate = rt.quality_gate
        if gate is not None:  # at load and at every reload
            level = logging.INFO if gate["status"] == "passed" else logging.WARNING
            log.log(level, "bundle %s: %s", rt.name, describe_gate(gate))

    def reload(self) -> bool:
        """Load the configured bundle again and switch to it; keep the old one on failure.

        Requests in flight finish on the runtime they started with. Returns success.
        """
        if self.loader is None:
            log.warning("reload asked for, but this service was given its components directly")
            return False
        if not self._reload_lock.acquire(blocking=False):
            log.info("reload already in progress; ignoring this one")
            return False
        try:
            t0 = time.perf_counter()
            try:
                keys = KeyStore.load(self.config.keys_path)
                # Revoking the last key (or losing the key file) must not open the service.
                require_keys_for_bind(self.config.host, keys, self.config.keys_path)
                new = self.loader(self.config)
            except (UserFacingError, OSError, ValueError) as exc:
                self.metrics.reloads.inc("failed")
                log.error("reload failed, still serving the previous bundle: %s", exc)
                return False
            except Exception:
                self.metrics.reloads.inc("failed")
                log.exception("reload failed, still serving the previous bundle")
                return False
            old, self._runtime = self._runtime, new
            self.keys = keys
            # The old model's prefix cache (its kept KV) must not outlive the swap.
            drop = getattr(old.generator, "drop_cache", None) if old else None
            if drop is not None:
                drop()
            self._describe(new)
            self.metrics.reloads.inc("ok")
            log.info(
                "reloaded in %.1f s: now serving %s (was %s)",
                time.perf_counter() - t0,
                new.name,
                old.name if old else "nothing",
            )
            return True
        finally:
            self._reload_lock.release()

    def models(self) -> Sequence[dict]:
        rt = self.runtime
        out = []
        for mid in rt.model_ids:
            out.append(
                {
                    "id": mid,
                    "object": "model",
                    "created": rt.created,
                    "owned_by": "industry-expert",
                    "context_length": rt.generator.context_length,
                    "adapter": mid.partition(ADAPTER_SEPARATOR)[2] or None,
                    # The gate measured the bundle's model, without runtime adapters.
                    "quality_gate": None if mid != rt.name else rt.quality_gate,
                }
            )
        return out
