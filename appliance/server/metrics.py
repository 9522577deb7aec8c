"""Prometheus metrics for the service, written by prometheus-client.

One `CollectorRegistry` per app (not the library's global one), so that several apps in one
process (the tests start many) keep separate counts. The metric names, labels and buckets are
the service's contract with its dashboards; tests/appliance/test_server*.py pin them.

Test: .venv/bin/pytest tests/appliance/test_server.py -k metrics
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

# No `_created` series: the dashboards do not use them, and they double the output.
prometheus_client.disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RATE_BUCKETS = (1, 2, 5, 10, 20, 40, 60, 80, 100, 150, 200, 300)


class Counter:
    """A counter whose label values are given positionally: `inc("/v1/models", "200")`."""

    def __init__(
        self, registry: CollectorRegistry, name: str, help_text: str, labels: Sequence[str] = ()
    ) -> None:
        self._metric = prometheus_client.Counter(name, help_text, tuple(labels), registry=registry)
        self._labelled = bool(labels)

    def _child(self, labels: tuple[str, ...]):
        return self._metric.labels(*labels) if self._labelled else self._metric

    def inc(self, *labels: str, by: float = 1.0) -> None:
        self._child(labels).inc(by)


class Histogram:
    """A histogram whose label values follow the observed value: `observe(0.2, "/v1/models")`.
    Non-finite values (a clock glitch) are dropped rather than poisoning the sum."""

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self._metric = prometheus_client.Histogram(
            name, help_text, tuple(labels), registry=registry, buckets=tuple(buckets)
        )
        self._labelled = bool(labels)

    def observe(self, value: float, *labels: str) -> None:
        if not math.isfinite(value):
            return
        (self._metric.labels(*labels) if self._labelled else self._metric).observe(value)


class _BundleInfo:
    """`expert_bundle_info{...} 1`: the served bundle, its labels set at (re)load."""

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}

    def collect(self):
        if not self.labels:
            return []
        family = GaugeMetricFamily(
            "expert_bundle_info", "The bundle being served.", labels=list(self.labels)
        )
        family.add_metric(list(self.labels.values()), 1)
        return [family]


class ServiceMetrics:
    """The metrics `/metrics` exposes."""

    def __init__(self, queue_depth: Callable[[], float], busy_slots: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            r, "expert_requests_total", "HTTP requests by route and status.", ("route", "status")
        )
        self.latency = Histogram(
            r,
            "expert_request_duration_seconds",
            "Time from request to the end of the response, by route.",
            ("route",),
        )
        self.ttft = Histogram(
            r,
            "expert_time_to_first_token_seconds",
            "Time from a chat request's arrival to its first generated text.",
        )
        self.tokens_per_s = Histogram(
            r,
            "expert_generation_tokens_per_second",
            "Decode speed of each completed generation.",
            buckets=RATE_BUCKETS,
        )
        self.tokens = Counter(r, "expert_tokens_total", "Tokens processed, by kind.", ("kind",))
        self.retrieval = Histogram(
            r, "expert_retrieval_duration_seconds", "Time spent retrieving passages."
        )
        self.queue_wait = Histogram(
            r, "expert_queue_wait_seconds", "Time a request waited for a generation slot."
        )
        self.rejected = Counter(
            r, "expert_rejected_total", "Requests refused for load, by reason.", ("reason",)
        )
        self.abstentions = Counter(
            r,
            "expert_abstentions_total",
            "Answers where the documents did not cover it.",
            ("reason",),
        )
        self.grounding = Counter(
            r,
            "expert_grounding_total",
            "Grounding-check decisions on answers: supported, quoted or abstained.",
            ("decision",),
        )
        self.disconnects = Counter(
            r, "expert_client_disconnects_total", "Streams the client closed before the end."
        )
        self.reloads = Counter(r, "expert_reloads_total", "Bundle reloads, by result.", ("result",))
        prometheus_client.Gauge(
            "expert_queue_depth", "Requests waiting for a generation slot.", registry=r
        ).set_function(queue_depth)
        prometheus_client.Gauge(
            "expert_slots_busy", "Generation slots in use.", registry=r
        ).set_function(busy_slots)
        self._info = _BundleInfo()
        r.register(self._info)

    @property
    def info(self) -> dict[str, str]:
        return self._info.labels

    @info.setter
    def info(self, labels: Mapping[str, str]) -> None:
        self._info.labels = {str(k): str(v) for k, v in labels.items()}

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        return generate_latest(self.registry).decode("utf-8")
