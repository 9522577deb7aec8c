"""What the service decides before a request body is read, and how long a request may take
to arrive.

Waitress reads a whole request (up to its body limit) before the app sees it, so an app-level
key check comes too late: anyone who can reach the port could make the service spool large
bodies, or hold connections open by trickling bytes (waitress's own timeout counts only idle
time). Here waitress's parser and channel are extended so that, as soon as the request line
and headers are in:

- a request to a protected route without a valid API key is answered 401 and its body is
  never read;
- a body over the route's limit (`max_body_bytes`; `max_document_bytes` for
  POST /v1/documents) is answered 413 before it is read;

and each connection must deliver a whole request within a deadline counted from when it
started waiting for one (`header_timeout_s` for the request line and headers,
`read_timeout_s` for the whole request), however slowly it trickles bytes. Refusals close the
connection. The Flask app checks keys and sizes again (defence in depth).

Test: .venv/bin/pytest tests/appliance/test_server_limits.py
"""

from __future__ import annotations

import copy
import json
import logging
import socket
import time

from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.utilities import Error, RequestEntityTooLarge

from appliance.server.config import ServeConfig, is_loopback
from appliance.server.validation import ApiError

log = logging.getLogger("appliance.server")

# Paths answered without a key (mirror of app.PUBLIC_ENDPOINTS, by path).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/"})
PUBLIC_PREFIXES = ("/ui/",)
DOCUMENTS_PATH = "/v1/documents"
# How long the body of a refused request is drained (unread) before the connection closes.
LINGER_S = 2.0


class JsonError(Error):
    """A waitress error answered with the API's JSON error body."""

    def __init__(self, err: ApiError) -> None:
        super().__init__(err.message)
        self.api_error = err
        self.code = err.status
        self.reason = {401: "Unauthorized", 413: "Content Too Large"}.get(err.status, "Error")

    def to_response(self, ident=None):
        body = json.dumps(self.api_error.body()).encode("utf-8")
        headers = [("Content-Type", "application/json"), *self.api_error.headers.items()]
        headers += [("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")]
        return f"{self.code} {self.reason}", headers, body


def too_large(limit: int, setting: str) -> ApiError:
    return ApiError(
        413,
        f"the request body is larger than {limit} bytes (setting {setting})",
        param="body",
        code="body_too_large",
    )


def body_limit(config: ServeConfig, method: str, path: str) -> tuple[int, str]:
    if method == "POST" and path == DOCUMENTS_PATH:
        return config.max_document_bytes, "max_document_bytes"
    return config.max_body_bytes, "max_body_bytes"


def preflight(svc, method: str, path: str, headers: dict[str, str]) -> ApiError | None:
    """The refusal for a request known only by its request line and headers, or None.

    `headers` uses waitress's keys (AUTHORIZATION, X_API_KEY, CONTENT_LENGTH, ...)."""
    config: ServeConfig = svc.config
    public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
    keys = svc.keys
    if not public and (keys.enabled or not is_loopback(config.host)):
        header = headers.get("AUTHORIZATION", "")
        presented = header[7:].strip() if header[:7].lower() == "bearer " else None
        presented = presented or headers.get("X_API_KEY")
        if keys.check(presented) is None:
            return ApiError(
                401,
                "a valid API key is required: send `Authorization: Bearer <key>`",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": 'Bearer realm="industry-expert"'},
            )
    limit, setting = body_limit(config, method, path)
    try:
        length = int(headers.get("CONTENT_LENGTH", "0") or 0)
    except ValueError:
        length = 0  # waitress answers a malformed length itself
    if length > limit:
        return too_large(limit, setting)
    return None


def make_channel_class(svc, config: ServeConfig) -> type[HTTPChannel]:
    """A waitress channel class bound to this service (keys and limits are read per request,
    so a reload's new keys apply at once)."""

    class GuardedParser(HTTPRequestParser):
        refused = False
        body_setting = "max_body_bytes"

        def parse_header(self, header_plus):
            super().parse_header(header_plus)
            path = self.path or ""
            err = preflight(svc, self.command or "", path, self.headers)
            if err is not None:
                self.refuse(err)
                return
            # The body limit of this route, for chunked bodies too (waitress counts them).
            limit, self.body_setting = body_limit(config, self.command or "", path)
            self.adj = copy.copy(self.adj)
            self.adj.max_request_body_size = limit + 1

        def refuse(self, err: ApiError) -> None:
            log.info(
                "refused %s %s before reading its body: %d %s",
                self.command,
                (self.path or "")[:200],
                err.status,
                err.code,
            )
            self.error = JsonError(err)
            self.refused = True
            self.connection_close = True
            self.expect_continue = False  # no "100 Continue": the body is not wanted
            # No body is read: the request ends with its headers.
            self.body_rcv = None
            self.content_length = 0
            self.chunked = False

        def received(self, data):
            n = super().received(data)
            if self.refused:
                return len(data)  # the rest of this read is body we will not look at
            if isinstance(self.error, RequestEntityTooLarge):
                limit = self.adj.max_request_body_size - 1
                self.error = JsonError(too_large(limit, self.body_setting))
                self.refused = True
            return n

    class GuardedChannel(HTTPChannel):
        parser_class = GuardedParser

        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.waiting_since = time.monotonic()  # start of the wait for the next request
            self.stop_reading = False
            self.linger_until: float | None = None

        def readable(self):
            if self.linger_until is not None:
                return True
            return not self.stop_reading and super().readable()

        def received(self, data):
            if self.stop_reading or self.linger_until is not None:
                return False  # a refused request's body: dropped unread
            result = super().received(data)
            if any(getattr(r, "refused", False) for r in self.requests):
                self.stop_reading = True
            return result

        def handle_close(self):
            """After a refusal, a lingering close: the answer is sent, the sending side shut,
            and whatever body the client still pushes is dropped for up to LINGER_S, so the
            client reads the 401/413 instead of a connection reset."""
            if self.stop_reading and self.linger_until is None and self.connected:
                try:
                    self.socket.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                else:
                    self.linger_until = time.monotonic() + LINGER_S
                    self.will_close = self.close_when_flushed = False
                    return
            super().handle_close()

        def service(self):
            try:
                super().service()
            finally:
                self.waiting_since = time.monotonic()

        def overdue(self, now: float) -> bool:
            """Reading one request has taken longer than its deadline."""
            if self.linger_until is not None:
                return now > self.linger_until
            if self.requests or self.total_outbufs_len:
                return False  # being answered: the request timeout governs that
            request = self.request
            limit = config.header_timeout_s
            if request is not None and request.headers_finished:
                limit = config.read_timeout_s
            return now - self.waiting_since > limit

    return GuardedChannel


def enforce_deadlines(server, interval_s: float = 0.5) -> None:
    """Make `server` close connections that are too slow to deliver a request (checked every
    `interval_s` from waitress's own loop)."""
    state = {"next": 0.0}

    def readable():
        mono = time.monotonic()
        if mono >= state["next"]:
            state["next"] = mono + interval_s
            closed = 0
            for channel in list(server.active_channels.values()):
                overdue = getattr(channel, "overdue", None)
                if overdue is not None and not channel.will_close and overdue(mono):
                    channel.will_close = True
                    closed += 1
            if closed:
                log.info("closed %d connection(s) that were too slow to send a request", closed)
        return type(server).readable(server)

    server.readable = readable
