# Run: .venv/bin/pytest tests/benchmarks/test_processes.py
"""The benchmarks' shared process helpers, on a real loopback server (python -m http.server)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.processes import child_env, free_port, status_kib, wait_ready


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
