"""Process helpers the benchmark suites share: start a server on a free loopback port, wait
until it answers, and read a process's memory figures.

Memory: psutil has the current resident size but not the kernel's peak (VmHWM) nor the
anonymous/file split (RssAnon, RssFile) the memory suite reports, so those come from
/proc/<pid>/status, read here and nowhere else.

Test: .venv/bin/pytest tests/benchmarks/test_bench_schema.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a server started from the repository: it imports this checkout's
    code, never reaches a model hub."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", **extra}


def wait_ready(
    proc: subprocess.Popen, url: str, path: str, timeout_s: float = 300, poll_s: float = 0.1
) -> float:
    """Seconds until GET url+path answers 200; RuntimeError (with the server's last stderr)
    if the process exits first, and the process killed if it takes over `timeout_s`."""
    import requests

    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            raise RuntimeError(f"server exited before it was ready: {err}")
        try:
            if requests.get(url + path, timeout=1).status_code == 200:
                return time.perf_counter() - t0
        except requests.ConnectionError:
            pass
        if time.perf_counter() - t0 > timeout_s:
            proc.kill()
            raise RuntimeError(f"{url} was not ready within {timeout_s:.0f} s")
        time.sleep(poll_s)


def status_kib(pid: int | str = "self", fields: tuple[str, ...] = ("VmRSS", "VmHWM")) -> dict:
    """{field: KiB} from /proc/<pid>/status (VmRSS now, VmHWM the peak, RssAnon, RssFile);
    a field the kernel does not report, or a process that is gone, is left out."""
    out: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        key, _, value = line.partition(":")
        if key in fields:
            try:
                out[key] = int(value.split()[0])
            except (ValueError, IndexError):
                continue
    return out
