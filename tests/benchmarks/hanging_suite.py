"""A benchmark suite that starts a loopback server and then hangs, for the suite runner's
timeout test (tests/benchmarks/test_processes.py); not a real suite, it measures nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path


def run(out: str) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=out,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    Path(out, "server.pid").write_text(str(server.pid))
    time.sleep(3600)  # far past any timeout the test sets
    return []
