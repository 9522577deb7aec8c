"""What a request handler needs from the running service, apart from the app factory.

`service()` (the Service of the current app), `RequestInfo` and `record_request` (the access
log line and the request metrics) live here so that the blueprints (api.py, ops.py, ui.py)
import them without importing app.py, which imports the blueprints: no import cycle.

Test: .venv/bin/pytest tests/appliance/test_server.py
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from flask import current_app, g, request

from appliance.server.runtime import Service

log = logging.getLogger("appliance.server")

EXTENSION = "expert"  # the Service's key in app.extensions
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_for_log(value: object, limit: int = 2000) -> str:
    """One log line per event: control characters become visible escapes (\\n, \\x1b)."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class EscapingFilter(logging.Filter):
    """Escapes the formatted message of every record of the server's logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = escape_for_log(message, limit=8000), None
        return True


if not any(isinstance(f, EscapingFilter) for f in log.filters):
    log.addFilter(EscapingFilter())


def service() -> Service:
    """The Service of the app handling the current request."""
    return current_app.extensions[EXTENSION]


def route_label() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


@dataclass(frozen=True)
class RequestInfo:
    """What the access log and the metrics need, captured so a stream can log after the
    request context is gone."""

    method: str
    path: str
    route: str
    t_start: float
    key_name: str | None

    @classmethod
    def current(cls) -> RequestInfo:
        return cls(
            request.method,
            request.path,
            route_label(),
            getattr(g, "t_start", time.perf_counter()),
            getattr(g, "key_name", None),
        )


def record_request(
    svc: Service, status: int, info: RequestInfo | None = None, note: str = ""
) -> None:
    """Count a finished request and log one escaped access line."""
    info = info or RequestInfo.current()
    elapsed = time.perf_counter() - info.t_start
    svc.metrics.requests.inc(info.route, str(status))
    svc.metrics.latency.observe(elapsed, info.route)
    key = f" key={info.key_name}" if info.key_name else ""
    log.info("%s %s %s %.3fs%s%s", info.method, info.path, status, elapsed, key, note)
