"""Prometheus metrics for the service, in the text exposition format, with no extra package.

A handful of counters, gauges and histograms is all the service needs; writing them here
keeps the device's dependency list short. Every metric is thread-safe.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RATE_BUCKETS = (1, 2, 5, 10, 20, 40, 60, 80, 100, 150, 200, 300)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._values: dict[tuple, float] = {}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + by

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [
            f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items
        ]


class Gauge(_Metric):
    """A gauge read from a callback at scrape time (queue depth, busy slots)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        super().__init__(name, help_text)
        self.read = read

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_num(self.read())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labels: Sequence[str] = (), buckets=LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self._data: dict[tuple, list] = {}  # labels -> [bucket counts..., sum, count]

    def observe(self, value: float, *labels: str) -> None:
        if not math.isfinite(value):
            return
        with self._lock:
            row = self._data.setdefault(labels, [0] * len(self.buckets) + [0.0, 0])
            for i, b in enumerate(self.buckets):
                if value <= b:
                    row[i] += 1
            row[-2] += value
            row[-1] += 1

    def count(self, *labels: str) -> int:
        with self._lock:
            row = self._data.get(labels)
            return row[-1] if row else 0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._data.items())
        out = self.header()
        for labels, row in items:
            for b, c in zip(self.buckets, row[: len(self.buckets)], strict=True):
                le = _labels(self.label_names, labels, f'le="{_num(b)}"')
                out.append(f"{self.name}_bucket{le} {c}")
            inf = _labels(self.label_names, labels, 'le="+Inf"')
            out.append(f"{self.name}_bucket{inf} {row[-1]}")
            plain = _labels(self.label_names, labels)
            out.append(f"{self.name}_sum{plain} {_num(row[-2])}")
            out.append(f"{self.name}_count{plain} {row[-1]}")
        return out


class ServiceMetrics:
    """The metrics `/metrics` exposes."""

    def __init__(self, queue_depth: Callable[[], float], busy_slots: Callable[[], float]) -> None:
        self.requests = Counter(
            "expert_requests_total", "HTTP requests by route and status.", ("route", "status")
        )
        self.latency = Histogram(
            "expert_request_duration_seconds",
            "Time from request to the end of the response, by route.",
            ("route",),
        )
        self.ttft = Histogram(
            "expert_time_to_first_token_seconds",
            "Time from a chat request's arrival to its first generated text.",
        )
        self.tokens_per_s = Histogram(
            "expert_generation_tokens_per_second",
            "Decode speed of each completed generation.",
            buckets=RATE_BUCKETS,
        )
        self.tokens = Counter("expert_tokens_total", "Tokens processed, by kind.", ("kind",))
        self.retrieval = Histogram(
            "expert_retrieval_duration_seconds", "Time spent retrieving passages."
        )
        self.queue_wait = Histogram(
            "expert_queue_wait_seconds", "Time a request waited for a generation slot."
        )
        self.rejected = Counter(
            "expert_rejected_total", "Requests refused for load, by reason.", ("reason",)
        )
        self.abstentions = Counter(
            "expert_abstentions_total", "Answers where the documents did not cover it.", ("reason",)
        )
        self.grounding = Counter(
            "expert_grounding_total",
            "Grounding-check decisions on answers: supported, quoted or abstained.",
            ("decision",),
        )
        self.disconnects = Counter(
            "expert_client_disconnects_total", "Streams the client closed before the end."
        )
        self.reloads = Counter("expert_reloads_total", "Bundle reloads, by result.", ("result",))
        self.queue_depth = Gauge(
            "expert_queue_depth", "Requests waiting for a generation slot.", queue_depth
        )
        self.busy = Gauge("expert_slots_busy", "Generation slots in use.", busy_slots)
        self._all = [
            self.requests,
            self.latency,
            self.ttft,
            self.tokens_per_s,
            self.tokens,
            self.retrieval,
            self.queue_wait,
            self.rejected,
            self.abstentions,
            self.grounding,
            self.disconnects,
            self.reloads,
            self.queue_depth,
            self.busy,
        ]
        self.info: dict[str, str] = {}

    def render(self) -> str:
        lines: list[str] = []
        for m in self._all:
            lines.extend(m.render())
        if self.info:
            lines += [
                "# HELP expert_bundle_info The bundle being served.",
                "# TYPE expert_bundle_info gauge",
                f"expert_bundle_info{_labels(list(self.info), list(self.info.values()))} 1",
            ]
        return "\n".join(lines) + "\n"
