# Run: .venv/bin/pytest tests/appliance/test_server_limits.py
"""Resource use before and around authentication (issue 12): idle and slow connections,
unauthenticated bodies, CPU-heavy endpoints. All against a real waitress on 127.0.0.1, with
bounded loops; every timing is checked against a generous bound and printed."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from appliance.generation.fake import FakeGenerator
from appliance.server.auth import add_key
from tests.appliance import server_harness


@pytest.fixture
def small_index_copy(small_index, embedder, tmp_path: Path):
    return server_harness.writable_retriever(small_index, embedder, tmp_path)


def _healthz_s(url: str) -> float:
    t0 = time.perf_counter()
    r = requests.get(url + "/healthz", timeout=10)
    assert r.status_code == 200
    return time.perf_counter() - t0


def _read_response(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_100_idle_sockets_do_not_block_health(serve):
    server = serve(generator=FakeGenerator())
    socks = []
    try:
        for i in range(100):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if i % 2:  # half of them start a request and stop mid-header
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks.append(s)
        time.sleep(0.5)
        worst = max(_healthz_s(server.url) for _ in range(5))
        print(f"\n/healthz with 100 idle sockets: worst of 5 = {worst * 1000:.0f} ms")
        assert worst < 2.0
    finally:
        for s in socks:
            s.close()


def test_a_request_must_arrive_within_the_read_deadline(serve):
    """Slowloris: one byte per 0.2 s keeps waitress's idle timer happy; the per-request
    deadline closes the connection anyway."""
    server = serve(generator=FakeGenerator(), header_timeout_s=1.0)
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        t0 = time.monotonic()
        closed_after = None
        for byte in head:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - t0
                break
            s.settimeout(0.2)
            try:
                if s.recv(1024) == b"":
                    closed_after = time.monotonic() - t0
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:
                # Closed while our bytes were still unread: the peer answers with a reset
                # (RST) instead of an orderly end of stream. Closed all the same.
                closed_after = time.monotonic() - t0
                break
            assert time.monotonic() - t0 < 10, "connection kept open past the deadline"
    print(f"\nslow request closed after {closed_after:.1f} s (header deadline 1 s)")
    assert closed_after is not None and closed_after < 4.0
    assert _healthz_s(server.url) < 2.0


def test_unauthenticated_bodies_are_refused_before_they_are_read(serve, tmp_path: Path):
    add_key(tmp_path / "state" / "api_keys.json", "t1")
    server = serve(generator=FakeGenerator())
    size = 30 << 20
    # curl and many clients ask `Expect: 100-continue` first: no 100 may come, only the 401.
    for path, expect in (
        ("/v1/documents", ""),
        ("/v1/chat/completions", ""),
        ("/v1/documents", "Expect: 100-continue\r\n"),
    ):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"{expect}Content-Length: {size}\r\n\r\n".encode()
            )
            t0 = time.monotonic()
            head = _read_response(s, timeout=3.0)  # no body byte sent yet
            elapsed = time.monotonic() - t0
        assert head.startswith(b"HTTP/1.1 401"), (path, head[:200])
        assert b"Connection: close" in head
        print(
            f"\nunauthenticated 30 MiB POST {path}: 401 after {elapsed * 1000:.0f} ms, body unread"
        )
    # Chunked: no length to check, the key is still checked on the headers alone.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/documents HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n100000\r\n" + b"x" * 4096
        )
        assert _read_response(s, timeout=3.0).startswith(b"HTTP/1.1 401")


def test_only_documents_take_large_bodies(serve, tmp_path: Path):
    key = add_key(tmp_path / "state" / "api_keys.json", "t1")
    server = serve(generator=FakeGenerator(), max_body_bytes=64 << 10)
    auth = f"Authorization: Bearer {key}\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(
            (
                "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth
                + "Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
            ).encode()
        )  # fmt: skip
        head = _read_response(s, timeout=3.0)
    assert head.startswith(b"HTTP/1.1 413"), head[:300]
    body = head.partition(b"\r\n\r\n")[2]
    if body:
        assert b"max_body_bytes" in body or b"larger than" in body
    # /v1/documents accepts a body over max_body_bytes (it has its own, larger limit).
    doc = json.dumps({"name": "big.md", "text": "word " * 40_000}).encode()
    r = requests.post(
        server.url + "/v1/documents",
        data=doc,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "unsupported"  # no index here


def test_cpu_heavy_endpoints_take_a_slot_and_health_stays_quick(serve, embedder):
    server = serve(generator=FakeGenerator(), embedder=embedder, slots=1)
    text = ("The pump P-101 impeller nut is torqued to 95 Nm after the seal is seated. " * 110)[
        :8000
    ]
    body = {"input": [text] * 64}
    statuses: list[int] = []

    def embed():
        r = requests.post(server.url + "/v1/embeddings", json=body, timeout=300)
        statuses.append(r.status_code)

    threads = [threading.Thread(target=embed) for _ in range(10)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    latencies = []
    deadline = time.monotonic() + 60
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        latencies.append(_healthz_s(server.url))
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=300)
    print(
        f"\n10 concurrent 64 x 8000-char embedding requests: statuses {sorted(statuses)}, "
        f"/healthz worst {max(latencies) * 1000:.0f} ms over {len(latencies)} probes"
    )
    # The bound is < 1 s; on a shared 2-core box under heavy load (other jobs), a single probe
    # can lose the CPU for longer, so the worst probe gets 2 s and 95% of them must meet 1 s.
    # Without the slots, the probes time out (10 s) while the 10 requests hold every thread.
    p95 = sorted(latencies)[int(0.95 * (len(latencies) - 1))]
    print(f"/healthz p95 {p95 * 1000:.0f} ms; load {open('/proc/loadavg').read().split()[0]}")
    assert latencies and p95 < 1.0 and max(latencies) < 2.0
    assert statuses.count(200) >= 1 and set(statuses) <= {200, 503}


# --- upload parse limits ---------------------------------------------------------------------


CONTENT_TYPES = (
    b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
    b'content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-'
    b'package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
    b'<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
    b'officedocument.wordprocessingml.document.main+xml"/></Types>'
)
RELS = (
    b'<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/'
    b'2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/'
    b'officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/>'
    b"</Relationships>"
)
DOC_HEAD = (
    b'<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/'
    b'wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>'
)


def zip_bomb_docx(inflated: int) -> bytes:
    """A real DOCX (content types, relationships, main part) whose word/document.xml
    inflates to about `inflated` bytes from ~1 KB per MiB: one deflate block of spaces,
    repeated (each ends on a full flush, so the copies chain into one valid stream)."""
    import struct
    import zlib

    mib = 1 << 20
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = head.compress(DOC_HEAD) + head.flush(zlib.Z_FULL_FLUSH)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    fill = b" " * mib
    block = comp.compress(fill) + comp.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    n = inflated // mib
    data = first + block * n + end
    crc = zlib.crc32(DOC_HEAD)
    for _ in range(n):
        crc = zlib.crc32(fill, crc)
    size = len(DOC_HEAD) + n * mib

    def stored(name: str, payload: bytes) -> tuple:
        return (name, 0, payload, zlib.crc32(payload), len(payload))

    entries = [stored("[Content_Types].xml", CONTENT_TYPES), stored("_rels/.rels", RELS),
               ("word/document.xml", 8, data, crc, size)]  # fmt: skip
    out, central = b"", b""
    for name, method, payload, c, usize in entries:
        raw = name.encode()
        offset = len(out)
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, c, len(payload), usize, len(raw), 0
        )
        out += raw + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, c,
                               len(payload), usize, len(raw), 0, 0, 0, 0, 0, offset) + raw  # fmt: skip
    eocd = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(out), 0
    )
    return out + central + eocd


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_zip_bomb_docx_is_refused_quickly_and_without_memory(
    serve, small_index_copy, embedder, tmp_path: Path
):
    import base64

    bomb = zip_bomb_docx(1 << 30)  # 1 GiB inflated
    assert len(bomb) < 2 << 20
    server = serve(generator=FakeGenerator(), retriever=small_index_copy, embedder=embedder)
    body = {"name": "manual.docx", "data_base64": base64.b64encode(bomb).decode()}
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    try:
        r = requests.post(server.url + "/v1/documents", json=body, timeout=120)
    finally:
        elapsed = time.perf_counter() - t0
        done.set()
        sampler.join()
    growth = (peak[0] - base) / (1 << 20)
    print(f"\nzip-bomb DOCX ({len(bomb)} bytes -> 1 GiB): {r.status_code} in {elapsed:.2f} s, "
          f"RSS growth {growth:.0f} MiB")  # fmt: skip
    assert r.status_code == 422, r.text[:300]
    err = r.json()["error"]
    assert err["code"] == "limit_exceeded" and "max_document_uncompressed_bytes" in err["message"]
    assert elapsed < 5.0 and growth < 200


def test_parse_limits_name_the_setting(serve, small_index_copy, embedder):
    server = serve(
        generator=FakeGenerator(),
        retriever=small_index_copy,
        embedder=embedder,
        max_document_chunks=3,
    )
    text = "\n\n".join(
        f"## Step {i}\n" + "Check the seal of pump P-101 carefully. " * 40 for i in range(20)
    )
    r = requests.post(
        server.url + "/v1/documents", json={"name": "long.md", "text": text}, timeout=120
    )
    assert r.status_code == 422, r.text[:300]
    err = r.json()["error"]
    assert err["code"] == "limit_exceeded" and "max_document_chunks" in err["message"]
    assert all(d["path"] != "long.md" for d in small_index_copy.documents())


def test_pdf_page_limit():
    from appliance.documents.limits import LimitExceeded, ParseLimits, check_limits

    pdf = _pdf_with_pages(5)
    check_limits(pdf, "ok.pdf", ParseLimits(max_pages=5))
    with pytest.raises(LimitExceeded, match="max_document_pages"):
        check_limits(pdf, "long.pdf", ParseLimits(max_pages=4))


def _pdf_with_pages(n: int) -> bytes:
    import io

    from pypdf import PdfWriter

    w = PdfWriter()
    for _ in range(n):
        w.add_blank_page(width=200, height=200)
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def test_uploads_are_parsed_before_the_index_lock_is_taken(serve, small_index_copy, embedder):
    """A refused upload is answered while another writer holds the index: it never waited
    for (or held) the lock."""
    import base64

    from appliance.retrieval import versions as V

    server = serve(generator=FakeGenerator(), retriever=small_index_copy, embedder=embedder)
    body = {"name": "manual.docx", "data_base64": base64.b64encode(zip_bomb_docx(1 << 30)).decode()}
    with V.write_lock(small_index_copy.index_dir):
        t0 = time.perf_counter()
        r = requests.post(server.url + "/v1/documents", json=body, timeout=60)
        elapsed = time.perf_counter() - t0
    assert r.status_code == 422 and r.json()["error"]["code"] == "limit_exceeded", r.text[:300]
    assert elapsed < 5.0, f"the refusal waited {elapsed:.1f} s for the lock"
