"""Helpers of the service tests: a real waitress server on loopback, raw HTTP, SSE parsing,
waiting for a condition or for an `expert serve` subprocess to be ready.

The fixtures built on them (`serve`, `small_index`, `embedder`, `retriever`) are in
tests/appliance/conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from appliance.server import ServeConfig
from appliance.server.context import EXTENSION
from tests.conftest import REPO


def writable_retriever(small_index: Path, embedder, tmp: Path):
    from appliance.retrieval import Retriever

    dest = tmp / "index"
    shutil.copytree(small_index, dest)
    return Retriever.open(dest, embedder)


class LiveServer:
    """The app under waitress (the production server) on 127.0.0.1, in a thread."""

    def __init__(self, app, config: ServeConfig) -> None:
        from appliance.server.serve import build_server

        self.app = app
        self.server = build_server(app, config)
        self.port = self.server.effective_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="waitress", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        # waitress's own run() loop, in slices, so that stop() can end it from this thread.
        from waitress import wasyncore

        while not self._stop.is_set():
            wasyncore.loop(timeout=0.05, map=self.server._map, count=1)
        self.server.task_dispatcher.shutdown(timeout=2)
        wasyncore.close_all(self.server._map)

    @property
    def service(self):
        return self.app.extensions[EXTENSION]

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once no slot is busy and nobody waits (a freed slot after a disconnect)."""
        deadline = time.monotonic() + timeout
        slots = self.service.slots
        while time.monotonic() < deadline:
            if slots.busy == 0 and slots.waiting == 0:
                return True
            time.sleep(0.02)
        return False


def test_config(tmp: Path, **kw) -> ServeConfig:
    kw.setdefault("state_dir", tmp / "state")
    kw.setdefault("port", 0)
    kw.setdefault("slots", 1)
    return ServeConfig(**kw)


test_config.__test__ = False  # a helper, not a test


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send raw bytes (a whole HTTP request) and read the response: status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return status, headers, body


def _unchunk(body: bytes) -> bytes:
    out, rest = [], body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)


def post_raw(
    port: int, path: str, body: bytes, headers: dict | None = None
) -> tuple[int, dict, bytes]:
    hdrs = {"Host": "127.0.0.1", "Content-Type": "application/json", "Connection": "close"}
    hdrs.update(headers or {})
    if "Transfer-Encoding" not in hdrs:
        hdrs["Content-Length"] = str(len(body))
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return raw_request(port, head.encode("latin-1") + b"\r\n" + body)


def sse_events(body: bytes) -> list:
    """The data payloads of an SSE body: dicts, and the string "[DONE]"."""
    out = []
    for block in body.decode("utf-8").split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env(**extra: str) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("INVOCATION_ID", None)
    env.update(extra)
    return env


def wait_until(cond: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll `cond` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def wait_served(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> float:
    """Seconds until an `expert serve` subprocess answers GET /readyz with 200; fails the test
    with the end of its log if it exits first, or when it is not ready within `timeout`."""
    import requests

    t0 = time.monotonic()
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(url + "/readyz", timeout=1).status_code == 200:
                return time.monotonic() - t0
        except requests.ConnectionError:
            pass
        assert time.monotonic() - t0 < timeout, f"server not ready in {timeout:.0f} s"
        time.sleep(0.1)
