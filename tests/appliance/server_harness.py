"""Shared pieces of the service tests: a real waitress server on loopback, a small real index.

Imported by tests/appliance/test_server*.py, test_ui*.py and test_answering*.py; the
fixtures defined here are imported into those modules by name.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.generation.fake import FakeGenerator
from appliance.server import ServeConfig, create_app
from appliance.server.app import EXTENSION
from tests.conftest import REPO, cached_dir

# Two manuals of the example plant: enough for grounded answers, quick to embed (~10 s once).
INDEX_DOCS = ("pump-maintenance-manual.md", "alarm-fault-codes.md")


@pytest.fixture(scope="session")
def small_index(embedder_onnx: Path, plant_dir: Path) -> Path:
    """A real hnswlib + SQLite index of INDEX_DOCS (read-only: copy it before writing)."""
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import ingest_folder

    def make(tmp: Path) -> None:
        src = tmp / "docs"
        src.mkdir(parents=True)
        for name in INDEX_DOCS:
            shutil.copy(plant_dir / "docs" / name, src / name)
        ingest_folder(src, tmp / "index", OnnxEmbedder(embedder_onnx), progress=False)

    sources = tuple(f"examples/plant/docs/{n}" for n in INDEX_DOCS) + (
        "build/export_embedder.py",
        "appliance/retrieval/ingest.py",
        "appliance/retrieval/store.py",
        "appliance/retrieval/versions.py",
        "appliance/documents/chunking.py",
    )
    return cached_dir("service-small-index", sources, make) / "index"


@pytest.fixture(scope="session")
def embedder(embedder_onnx: Path):
    from appliance.embedding import OnnxEmbedder

    return OnnxEmbedder(embedder_onnx)


@pytest.fixture(scope="session")
def retriever(small_index: Path, embedder):
    from appliance.retrieval import Retriever

    return Retriever.open(small_index, embedder)


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


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """serve(generator=..., retriever=..., **config) -> LiveServer; stopped after the test."""
    servers: list[LiveServer] = []

    def start(*, generator=None, retriever=None, embedder=None, loader=None, **kw) -> LiveServer:
        config = test_config(tmp_path, **kw)
        app = create_app(
            config,
            generator=generator or FakeGenerator(),
            retriever=retriever,
            embedder=embedder,
            loader=loader,
        )
        server = LiveServer(app, config)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


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
