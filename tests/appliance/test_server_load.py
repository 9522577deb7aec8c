# Run: .venv/bin/pytest tests/appliance/test_server_load.py
"""Load and faults against a real server: slots, bounded queue (503 + Retry-After), client
disconnects freeing their slot, request timeout, and probes that are never starved."""

from __future__ import annotations

import socket
import threading
import time

import requests

from appliance.generation.fake import FakeGenerator
from appliance.server.slots import SlotPool
from tests.appliance.server_harness import wait_until

LONG_REPLY = " ".join(f"word{i}" for i in range(200))  # 400 deltas


def ask(server, **body):
    body.setdefault("messages", [{"role": "user", "content": "hello"}])
    body.setdefault("retrieval", False)
    return requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)


def in_background(fn, *args, **kw) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, kwargs=kw, daemon=True)
    t.start()
    return t


def test_full_queue_is_refused_at_once_with_retry_after(serve):
    gen = FakeGenerator(reply=LONG_REPLY, token_delay_s=0.005)
    server = serve(generator=gen, slots=1, max_queue=1)
    slots = server.service.slots
    results = []
    threads = [in_background(lambda: results.append(ask(server).status_code))]
    assert wait_until(lambda: slots.busy == 1)
    threads.append(in_background(lambda: results.append(ask(server).status_code)))
    assert wait_until(lambda: slots.waiting == 1)
    t0 = time.monotonic()
    r = ask(server)
    assert time.monotonic() - t0 < 1.0
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "queue_full"
    for t in threads:
        t.join(timeout=30)
    assert results == [200, 200]
    assert (
        'expert_rejected_total{reason="queue_full"} 1' in requests.get(f"{server.url}/metrics").text
    )


def test_queue_wait_times_out_with_503(serve):
    gen = FakeGenerator(reply=LONG_REPLY, token_delay_s=0.005)
    server = serve(generator=gen, slots=1, max_queue=2, queue_timeout_s=0.3)
    t = in_background(ask, server)
    assert wait_until(lambda: server.service.slots.busy == 1)
    r = ask(server)
    assert r.status_code == 503 and r.json()["error"]["code"] == "queue_timeout"
    assert "Retry-After" in r.headers
    t.join(timeout=30)


def test_client_disconnect_mid_stream_frees_the_slot(serve):
    gen = FakeGenerator(reply=LONG_REPLY, token_delay_s=0.02)  # ~8 s if not cancelled
    server = serve(generator=gen, slots=1, max_queue=0)
    body = b'{"messages": [{"role": "user", "content": "hi"}], "retrieval": false, "stream": true}'
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    received = b""
    while received.count(b"data: ") < 3:
        received += sock.recv(4096)
    assert gen.active == 1 and server.service.slots.busy == 1
    t0 = time.monotonic()
    sock.close()
    assert wait_until(lambda: gen.active == 0, timeout=3), "the generation was not cancelled"
    assert server.wait_idle(timeout=3)
    assert time.monotonic() - t0 < 3
    assert gen.closed == 1
    # The slot is usable at once (max_queue=0: a still-busy slot would answer 503).
    assert ask(server, max_tokens=5).status_code == 200
    assert "expert_client_disconnects_total 1" in requests.get(f"{server.url}/metrics").text


def test_request_timeout_ends_generation(serve):
    gen = FakeGenerator(reply=LONG_REPLY, token_delay_s=0.01)
    server = serve(generator=gen, request_timeout_s=0.3, max_tokens_limit=2048)
    t0 = time.monotonic()
    r = ask(server, max_tokens=1000)
    assert time.monotonic() - t0 < 2.0
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    assert gen.active == 0


def test_probes_answer_while_every_slot_and_queue_place_is_taken(serve):
    gen = FakeGenerator(reply=LONG_REPLY, token_delay_s=0.01)
    server = serve(generator=gen, slots=1, max_queue=2)
    threads = [in_background(ask, server, max_tokens=100) for _ in range(3)]  # ~1 s each
    assert wait_until(lambda: server.service.slots.busy == 1 and server.service.slots.waiting == 2)
    flood = [in_background(ask, server) for _ in range(10)]  # all refused with 503
    worst = 0.0
    for _ in range(10):
        t0 = time.monotonic()
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
        assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 200
        worst = max(worst, time.monotonic() - t0)
    assert worst < 0.5, f"probes took {worst:.2f} s under load"
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    assert "expert_queue_depth 2" in metrics and "expert_slots_busy 1" in metrics
    for t in threads + flood:
        t.join(timeout=60)
    assert server.wait_idle()


def test_concurrent_requests_all_complete_correctly(serve):
    gen = FakeGenerator(token_delay_s=0.002)
    server = serve(generator=gen, slots=2, max_queue=8)
    results: dict[int, str] = {}

    def one(i: int) -> None:
        r = ask(server, messages=[{"role": "user", "content": f"question {i}"}])
        results[i] = r.json()["choices"][0]["message"]["content"]

    threads = [in_background(one, i) for i in range(8)]
    for t in threads:
        t.join(timeout=30)
    assert results == {i: f"You asked: question {i}" for i in range(8)}
    assert server.wait_idle()


def test_draining_refuses_new_work_but_stays_alive(serve):
    server = serve(generator=FakeGenerator())
    server.service.draining = True  # what SIGTERM sets before waiting for running generations
    r = ask(server)
    assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
    assert "Retry-After" in r.headers
    assert requests.get(f"{server.url}/readyz").status_code == 503
    assert requests.get(f"{server.url}/healthz").status_code == 200


def test_slots_go_to_waiters_in_arrival_order():
    pool = SlotPool(slots=1, max_queue=8)
    order: list[str] = []
    held = pool.acquire(timeout=1)

    def waiter(name: str) -> None:
        with pool.acquire(timeout=10):
            order.append(name)
            time.sleep(0.01)

    threads = []
    for n, name in enumerate("ABC", start=1):
        threads.append(in_background(waiter, name))
        assert wait_until(lambda n=n: pool.waiting == n)
    held.release()
    with pool.acquire(timeout=10):  # asking again at once must not jump the queue
        order.append("again")
    for t in threads:
        t.join(timeout=10)
    assert order == ["A", "B", "C", "again"]
    assert pool.busy == 0 and pool.waiting == 0
