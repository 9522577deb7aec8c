# Run: .venv/bin/pytest tests/appliance/test_server_reload.py
"""SIGHUP switches to a newly loaded bundle while requests in flight finish on the old one;
a bundle that fails to load leaves the old one serving."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import requests

from appliance.errors import BundleError
from appliance.generation.fake import FakeGenerator
from appliance.server.runtime import Runtime, answer_policy
from appliance.server.serve import install_signal_handlers
from tests.appliance.server_harness import sse_events, wait_until

LONG_REPLY = " ".join(f"w{i}" for i in range(100))  # 200 deltas


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_sighup_swaps_bundle_without_dropping_a_stream(serve, restore_signals):
    versions = iter(range(1, 100))
    fail = {"next": False}

    def loader(config):
        if fail["next"]:
            raise BundleError("manifest.json: sha256 does not match")
        gen = FakeGenerator(model_id=f"bundle-v{next(versions)}")
        return Runtime(gen, None, None, gen.model_id, answer_policy(config, None))

    old_gen = FakeGenerator(model_id="bundle-v0", reply=LONG_REPLY, token_delay_s=0.01)
    server = serve(generator=old_gen, loader=loader, slots=2)
    svc = server.service
    install_signal_handlers(svc, drain_timeout_s=5)

    result = {}

    def long_stream():
        r = requests.post(
            f"{server.url}/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "x"}],
                "retrieval": False,
                "stream": True,
            },
            timeout=60,
        )
        result["events"] = sse_events(r.content)

    t = threading.Thread(target=long_stream)
    t.start()
    assert wait_until(lambda: old_gen.active == 1)
    os.kill(os.getpid(), signal.SIGHUP)
    assert wait_until(lambda: svc.runtime.name == "bundle-v1"), "reload did not happen"
    assert old_gen.active == 1, "the stream should still be running on the old bundle"
    models = requests.get(f"{server.url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["bundle-v1"]
    r = requests.post(
        f"{server.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "new"}], "retrieval": False},
    )
    assert r.json()["system_fingerprint"] == "bundle-v1"
    t.join(timeout=30)
    events = result["events"]
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert text == LONG_REPLY
    assert {e["system_fingerprint"] for e in events[:-1]} == {"bundle-v0"}

    # A broken bundle: the reload fails, the current one keeps serving.
    fail["next"] = True
    os.kill(os.getpid(), signal.SIGHUP)
    assert wait_until(lambda: 'expert_reloads_total{result="failed"} 1' in svc.metrics.render())
    assert svc.runtime.name == "bundle-v1"
    assert requests.get(f"{server.url}/readyz").json()["model"] == "bundle-v1"


def test_reload_without_a_loader_is_refused_politely(serve):
    server = serve(generator=FakeGenerator())
    assert server.service.reload() is False
    assert requests.get(f"{server.url}/healthz").status_code == 200
