# Run: .venv/bin/pytest tests/benchmarks/test_processes.py
"""The benchmarks' shared process helpers, on a real loopback server (python -m http.server),
and the suite runner's timeout, which must stop the suite and every process it started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import requests

from benchmarks.processes import (
    chat_events,
    child_env,
    evict_from_page_cache,
    free_port,
    group_members,
    status_kib,
    stop_group,
    wait_ready,
)


def test_wait_ready_on_a_real_server(tmp_path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env()
    )
    try:
        assert 0 <= wait_ready(proc, f"http://127.0.0.1:{port}", "/", timeout_s=30) < 30
        mem = status_kib(proc.pid)
        assert 0 < mem["VmRSS"] <= mem["VmHWM"]
    finally:
        proc.kill()
        proc.wait()
    assert status_kib(proc.pid) == {}  # gone


def test_wait_ready_reports_a_server_that_exits() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.exit('no port for me')"], stderr=subprocess.PIPE
    )
    with pytest.raises(RuntimeError, match="no port for me"):
        wait_ready(proc, f"http://127.0.0.1:{free_port()}", "/", timeout_s=30)


def test_status_of_this_process() -> None:
    mine = status_kib(os.getpid(), ("VmRSS", "VmHWM", "RssAnon", "NoSuchField"))
    assert set(mine) == {"VmRSS", "VmHWM", "RssAnon"} and mine["VmHWM"] >= mine["VmRSS"]


def _stopped(pid: int) -> bool:
    """Gone, or a zombie waiting for whichever parent it has now to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# A process that starts a grandchild ignoring SIGTERM, prints its pid, then waits.
STUBBORN = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); "
    "time.sleep(600)"], stdout=subprocess.PIPE)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(600)
"""


def test_stop_group_stops_every_member_even_one_that_ignores_sigterm() -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, process_group=0
    )
    try:
        grandchild = int(leader.stdout.readline())
        assert sorted(group_members(leader.pid)) == sorted([leader.pid, grandchild])
        t0 = time.monotonic()
        assert sorted(stop_group(leader.pid, grace_s=1.0)) == sorted([leader.pid, grandchild])
        assert time.monotonic() - t0 < 8  # SIGTERM, 1 s of grace, then SIGKILL
        leader.wait(timeout=5)
        assert _stopped(grandchild) and group_members(leader.pid) == []
    finally:
        leader.kill()
        leader.wait()


def test_stop_group_refuses_its_own_group() -> None:
    with pytest.raises(ValueError, match="own"):
        stop_group(os.getpgrp())


def test_a_timed_out_suite_stops_with_the_server_it_started(tmp_path: Path) -> None:
    """The suite (tests/benchmarks/hanging_suite.py) starts a loopback server and hangs; after
    the timeout neither the suite's process nor the server may still run."""
    from benchmarks.run import run_suite

    records, info = run_suite(
        "hanging_suite",
        quick=True,
        kwargs={"out": str(tmp_path)},
        timeout_s=20,
        package="tests.benchmarks",
    )
    assert info["status"] == "timeout"
    assert "did not finish within 20 s" in records[0]["skipped"]
    server = int((tmp_path / "server.pid").read_text())  # it got as far as starting it
    assert _stopped(server)


class _SSEHandler(BaseHTTPRequestHandler):
    """Streams two chunks, a keep-alive comment and [DONE], as the service does; 404 elsewhere."""

    def do_POST(self) -> None:  # noqa: N802 - the http.server name
        length = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(length))
        if self.path != "/v1/chat/completions" or not body.get("stream"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for part in ("Hel", "lo"):
            chunk = {"choices": [{"delta": {"content": part}}]}
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.write(b': keep-alive\n\ndata: [DONE]\n\ndata: {"after": 1}\n\n')

    def log_message(self, *args) -> None:
        pass


def test_chat_events_yields_each_event_until_done() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SSEHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        events = list(chat_events(url, {"stream": True}, timeout_s=10))
        assert [e["choices"][0]["delta"]["content"] for e in events] == ["Hel", "lo"]
        with pytest.raises(requests.HTTPError, match="404"):
            list(chat_events(url, {"stream": False}, timeout_s=10))
    finally:
        server.shutdown()
        server.server_close()


def _resident_pages(path: Path) -> int:
    """How many of `path`'s pages the page cache holds (mincore over a private mapping)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    with path.open("rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return sum(b & 1 for b in vec)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="posix_fadvise and mincore")
def test_evict_from_page_cache_leaves_the_model_files_cold(tmp_path) -> None:
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True)
    if fs.stdout.strip() in ("tmpfs", "ramfs"):
        pytest.skip("a tmpfs file lives in the page cache: nothing to evict")
    model = tmp_path / "llm"
    model.mkdir()
    data = model / "model.onnx.data"
    data.write_bytes(os.urandom(4 << 20))
    (model / "genai_config.json").write_text("{}")
    data.read_bytes()  # cached (and just written: the helper flushes it first)
    assert _resident_pages(data) > 0
    advised = evict_from_page_cache(model)
    assert advised == sorted(str(p) for p in model.iterdir())
    assert _resident_pages(data) == 0
    assert evict_from_page_cache(data) == [str(data)]  # a single file works too
