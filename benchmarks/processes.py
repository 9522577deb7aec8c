"""Process helpers the benchmark suites share: start a server on a free loopback port, wait
until it answers, read its streamed chat answers, read a process's memory figures, drop model
files from the page cache before a memory measurement, and stop a process group with
everything in it (a timed-out suite and the servers it started).

Memory: psutil has the current resident size but not the kernel's peak (VmHWM) nor the
anonymous/file split (RssAnon, RssFile) the memory suite reports, so those come from
/proc/<pid>/status, read here and nowhere else.

Test: .venv/bin/pytest tests/benchmarks/test_processes.py tests/benchmarks/test_bench_schema.py
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
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


def chat_events(
    url: str, body: dict, headers: dict | None = None, timeout_s: float = 300
) -> Iterator[dict]:
    """POST a streaming /v1/chat/completions request and yield each server-sent event's JSON
    as it arrives, until `data: [DONE]` (an HTTP error status raises)."""
    import requests

    with requests.post(
        f"{url}/v1/chat/completions", json=body, stream=True, timeout=timeout_s, headers=headers
    ) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: "):
                continue  # blank separators, `: keep-alive` comments
            data = line[len(b"data: ") :]
            if data == b"[DONE]":
                return
            yield json.loads(data)


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


def evict_from_page_cache(path: Path) -> list[str]:
    """Drop the cached pages of `path` (a file, or every file under a folder) from the page
    cache, as after a reboot: the next process that maps it reads it cold. What a mapped model
    file keeps resident depends on that state (benchmarks/OPTIMISATION.md: a byte-identical
    export measured 10.5 or 27.2 MB of its file resident at the peak), so the memory suite starts
    every configuration from the same, cold one. Pages another process has mapped stay, and so
    does a file that was written and not yet flushed (it is flushed first). Returns the files
    it advised; does nothing where the platform has no posix_fadvise."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return []
    done = []
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            try:
                os.fsync(fd)  # dirty pages are not dropped
            except OSError:
                pass  # a read-only file system has none
            advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        done.append(str(f))
    return done


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (psutil; idle and iowait are
    not busy; guest time is already inside user and nice)."""
    import psutil

    t = psutil.cpu_times()
    total = sum(
        getattr(t, f, 0.0)
        for f in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    )
    return total - t.idle - getattr(t, "iowait", 0.0), total


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process, all its threads (0.0 once it is gone)."""
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def others_share(
    busy0: float, total0: float, busy1: float, total1: float, own: float = 0
) -> float | None:
    """Share of the machine's CPU time that other processes used between two samples."""
    if total1 <= total0:
        return None
    return max(0.0, min(1.0, (busy1 - busy0 - own) / (total1 - total0)))


def wait_for_quiet(max_wait_s: float, share: float, window_s: float = 0.5) -> float | None:
    """Sleep in short windows until other processes use less than `share` of the CPU, at most
    `max_wait_s`; returns the share seen in the last window."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, t0 = machine_cpu_s()
        time.sleep(window_s)
        b1, t1 = machine_cpu_s()
        seen = others_share(b0, t0, b1, t1)
        if seen is None or seen < share or time.monotonic() >= deadline:
            return seen


def group_members(pgid: int) -> list[int]:
    """The processes of process group `pgid` that still run (zombies, already stopped and
    waiting to be reaped, are left out)."""
    import psutil

    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (OSError, psutil.Error):
            continue  # gone meanwhile
    return members


def stop_group(pgid: int, grace_s: float = 10.0) -> list[int]:
    """Stop every process of group `pgid`: SIGTERM, then SIGKILL for whatever still runs after
    `grace_s` (a process that ignores SIGTERM, a server mid-request). Returns the pids that were
    running when it was called. Refuses this process's own group."""
    if pgid == os.getpgrp():
        raise ValueError(f"process group {pgid} is this process's own; refusing to stop it")
    found = group_members(pgid)
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not group_members(pgid):
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
    return found
