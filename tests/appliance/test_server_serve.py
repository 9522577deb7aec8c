# Run: .venv/bin/pytest tests/appliance/test_server_serve.py
"""`expert serve` end to end: a real bundle (SmolLM2 int4 + MiniLM + a small plant index) in
a child process; the official client; SIGHUP to a second bundle; SIGTERM drains and exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import requests

from tests.appliance.server_harness import free_port, offline_env, wait_served
from tests.conftest import cached_dir

QUESTION = "What is the torque for the P-101 impeller nut?"


@pytest.fixture(scope="module")
def bundles(smollm2_onnx_int4: Path, embedder_onnx: Path, small_index: Path) -> tuple[Path, Path]:  # noqa: F811
    from build.bundle import build_bundle

    def make(tmp: Path) -> None:
        for version in ("1.0.0", "2.0.0"):
            build_bundle(
                tmp, name="plant", version=version, llm_dir=smollm2_onnx_int4,
                embedder_dir=embedder_onnx, index_dir=small_index,
                accept_quality_loss=True,  # reloads are tested here, not the gate
            )  # fmt: skip

    sources = (
        "build/bundle.py", "appliance/bundle.py", "build/export_llm.py", "build/import_model.py",
        "build/export_embedder.py", "appliance/retrieval/ingest.py", "appliance/retrieval/writer.py", "examples/plant/docs/pump-maintenance-manual.md",
    )  # fmt: skip
    root = cached_dir("service-bundles", sources, make)
    return root / "bundle-plant-1.0.0", root / "bundle-plant-2.0.0"


def point(link: Path, target: Path) -> None:
    tmp = link.with_name(link.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def test_serve_a_real_bundle_reload_and_stop(bundles, tmp_path: Path):
    v1, v2 = bundles
    current = tmp_path / "current"
    point(current, v1)
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "appliance.cli", "serve", "--bundle", str(current),
           "--state-dir", str(tmp_path / "state"), "--port", str(port), "--slots", "1"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=offline_env())
    url = f"http://127.0.0.1:{port}"
    try:
        print(f"\ncold start to ready: {wait_served(proc, url, log, timeout=90):.1f} s")

        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list()] == ["bundle-plant-1.0.0"]
        r = client.chat.completions.create(
            model="bundle-plant-1.0.0",
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=32,
            extra_body={"k": 2},
        )
        assert r.choices[0].message.content.strip()
        sources = r.model_extra["sources"]
        assert sources and sources[0]["document"] == "pump-maintenance-manual.md"
        assert r.usage.prompt_tokens > 50 and r.usage.completion_tokens > 0

        stream = client.chat.completions.create(
            model="bundle-plant-1.0.0",
            messages=[
                {"role": "user", "content": "Describe how to replace a pump seal, step by step."}
            ],
            max_tokens=60,
            stream=True,
            extra_body={"retrieval": False},
        )
        pieces = []
        for i, chunk in enumerate(stream):
            if i == 2:  # mid-stream: switch the link and ask for a reload
                point(current, v2)
                proc.send_signal(signal.SIGHUP)
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
        assert "".join(pieces).strip(), "the stream in flight was dropped"
        assert chunk.model == "bundle-plant-1.0.0"

        deadline = time.monotonic() + 60
        while [m.id for m in client.models.list()] != ["bundle-plant-2.0.0"]:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        r = client.chat.completions.create(
            model="bundle-plant-2.0.0",
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=4,
            extra_body={"k": 1},
        )
        assert r.system_fingerprint == "bundle-plant-2.0.0"

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        text = log.read_text()
        assert "reloaded" in text and "stopped" in text
        assert "Traceback" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _start_ignoring_sigint(bundle: Path, tmp_path: Path, drain_s: float):
    """`expert serve` as a background job or `nohup` starts it: SIGINT ignored."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "appliance.cli", "serve", "--bundle", str(bundle),
           "--state-dir", str(tmp_path / "state"), "--port", str(port), "--slots", "1",
           "--drain-timeout-s", str(drain_s)]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=offline_env(),
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url, log
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "not ready in 120 s"
        time.sleep(0.1)


def _busy_generation(url: str) -> None:
    """A long streaming answer in a thread, and wait until it holds the slot."""
    import threading

    def ask():
        try:
            requests.post(
                url + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "Describe every pump part."}],
                      "max_tokens": 1500, "stream": True, "retrieval": False},
                timeout=120,
            )  # fmt: skip
        except requests.RequestException:
            pass  # the server goes away mid-stream: expected

    threading.Thread(target=ask, daemon=True).start()
    deadline = time.monotonic() + 30
    while requests.get(url + "/readyz", timeout=5).json().get("slots_busy") != 1:
        assert time.monotonic() < deadline, "the generation never started"
        time.sleep(0.05)


def test_sigterm_stops_the_service_when_sigint_is_ignored(bundles, tmp_path: Path):
    v1, _ = bundles
    drain_s = 3.0
    proc, url, log = _start_ignoring_sigint(v1, tmp_path, drain_s)
    try:
        _busy_generation(url)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=drain_s + 5)
        elapsed = time.monotonic() - t0
        print(
            f"\nSIGTERM with SIGINT ignored: exited in {elapsed:.1f} s (drain timeout {drain_s} s)"
        )
        assert elapsed < drain_s + 5
        assert "stopping with 1 generation(s) still running" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_sigterm_exits_at_once(bundles, tmp_path: Path):
    v1, _ = bundles
    proc, url, log = _start_ignoring_sigint(v1, tmp_path, drain_s=120.0)
    try:
        _busy_generation(url)
        proc.send_signal(signal.SIGTERM)
        # Wait until the drain has begun (two signals sent before the process has handled
        # the first would arrive as one: POSIX does not queue them).
        deadline = time.monotonic() + 30
        while requests.get(url + "/readyz", timeout=5).json().get("status") != "draining":
            assert time.monotonic() < deadline, "the first SIGTERM did not start a drain"
            time.sleep(0.05)
        assert proc.poll() is None, "the first SIGTERM should drain, not exit"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=5)
        print(f"\nsecond SIGTERM: exited in {time.monotonic() - t0:.2f} s with status {rc}")
        assert rc != 0 and "second SIGTERM" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
