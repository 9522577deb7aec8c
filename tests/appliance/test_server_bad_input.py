# Run: .venv/bin/pytest tests/appliance/test_server_bad_input.py
"""Bad input against a real server on loopback: 400/413/422 with a JSON error naming the
field, never a 500, no file path or traceback in any error body, log lines escaped."""

from __future__ import annotations

import json
import logging
import re

import pytest
import requests

from appliance.generation.fake import FakeGenerator
from appliance.server.validation import MAX_MESSAGES
from tests.appliance.server_harness import post_raw, raw_request, sse_events

PATHLIKE = re.compile(r"(?<![\w.])/(?:[\w.-]+/)+[\w.-]+")
OK_MESSAGES = [{"role": "user", "content": "hello"}]


def body_with(**fields) -> bytes:
    return json.dumps({"messages": OK_MESSAGES, "retrieval": False, **fields}).encode()


CHAT_CASES = [
    # (name, raw body, expected status, expected param)
    ("truncated JSON", b'{"messages": [', 400, "body"),
    ("invalid UTF-8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "body"),
    ("not an object", b"[1, 2]", 400, "body"),
    ("empty body", b"", 400, "body"),
    (
        "NaN temperature",
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        400,
        "body",
    ),
    ("deep nesting", b"[" * 50_000 + b"]" * 50_000, 400, "body"),
    ("messages missing", b"{}", 422, "messages"),
    ("messages wrong type", b'{"messages": "hi"}', 422, "messages"),
    ("messages empty", b'{"messages": []}', 422, "messages"),
    (
        "unknown role",
        json.dumps({"messages": [{"role": "bot", "content": "x"}]}).encode(),
        422,
        "messages[0].role",
    ),
    (
        "role missing",
        json.dumps({"messages": [{"content": "x"}]}).encode(),
        422,
        "messages[0].role",
    ),
    (
        "content number",
        json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(),
        422,
        "messages[0].content",
    ),
    (
        "content null",
        json.dumps({"messages": [{"role": "user", "content": None}]}).encode(),
        422,
        "messages[0].content",
    ),
    (
        "image part",
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            }
        ).encode(),
        422,
        "messages[0].content[0]",
    ),
    ("message not object", b'{"messages": ["hi"]}', 422, "messages[0]"),
    (
        "too many messages",
        json.dumps({"messages": OK_MESSAGES * (MAX_MESSAGES + 1)}).encode(),
        422,
        "messages",
    ),
    (
        "last is assistant",
        json.dumps({"messages": [{"role": "assistant", "content": "x"}]}).encode(),
        422,
        "messages",
    ),
    (
        "unpaired surrogate",
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
        422,
        "messages[0].content",
    ),
    (
        "content too long",
        json.dumps({"messages": [{"role": "user", "content": "a" * 40_000}]}).encode(),
        422,
        "messages[0].content",
    ),
    ("max_tokens zero", body_with(max_tokens=0), 422, "max_tokens"),
    ("max_tokens negative", body_with(max_tokens=-5), 422, "max_tokens"),
    ("max_tokens huge", body_with(max_tokens=10**12), 422, "max_tokens"),
    ("max_tokens string", body_with(max_tokens="10"), 422, "max_tokens"),
    ("max_tokens bool", body_with(max_tokens=True), 422, "max_tokens"),
    ("max_tokens fraction", body_with(max_tokens=1.5), 422, "max_tokens"),
    ("temperature negative", body_with(temperature=-0.1), 422, "temperature"),
    ("temperature string", body_with(temperature="hot"), 422, "temperature"),
    (
        "temperature infinite",
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": 1e999}',
        422,
        "temperature",
    ),
    ("top_p above 1", body_with(top_p=1.5), 422, "top_p"),
    ("top_p negative", body_with(top_p=-0.1), 422, "top_p"),
    ("stop too many", body_with(stop=["a", "b", "c", "d", "e"]), 422, "stop"),
    ("stop wrong type", body_with(stop=12), 422, "stop"),
    ("seed negative", body_with(seed=-1), 422, "seed"),
    ("seed string", body_with(seed="x"), 422, "seed"),
    ("stream string", body_with(stream="yes"), 422, "stream"),
    ("n two", body_with(n=2), 422, "n"),
    ("k zero", body_with(k=0), 422, "k"),
    ("filters list", body_with(filters=["a"]), 422, "filters"),
    ("filters nested", body_with(filters={"line": {"a": 1}}), 422, "filters.line"),
    ("tools", body_with(tools=[{"type": "function"}]), 422, "tools"),
    ("model number", body_with(model=3), 422, "model"),
]


@pytest.fixture
def server(serve):
    return serve(generator=FakeGenerator(), max_tokens_limit=512)


def assert_clean_error(
    status: int, headers: dict, body: bytes, expected_status: int, param: str | None
):
    assert status == expected_status, body[:300]
    assert headers["content-type"].startswith("application/json")
    err = json.loads(body)["error"]
    assert err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param, err
    text = body.decode()
    assert "Traceback" not in text and not PATHLIKE.search(text), text


@pytest.mark.parametrize("name,raw,status,param", CHAT_CASES, ids=[c[0] for c in CHAT_CASES])
def test_chat_rejects_bad_input(server, name, raw, status, param):
    got_status, headers, body = post_raw(server.port, "/v1/chat/completions", raw)
    assert_clean_error(got_status, headers, body, status, param)


def test_huge_bodies_are_413(server):
    big = b'{"messages": [{"role": "user", "content": "' + b"a" * (2 << 20) + b'"}]}'
    assert_clean_error(*post_raw(server.port, "/v1/chat/completions", big), 413, "body")
    # Chunked upload without a Content-Length: the limit still holds.
    size = len(big)
    chunked = f"{size:x}\r\n".encode() + big + b"\r\n0\r\n\r\n"
    status, headers, body = post_raw(
        server.port, "/v1/chat/completions", chunked, {"Transfer-Encoding": "chunked"}
    )
    assert_clean_error(status, headers, body, 413, "body")


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/embeddings", {"input": []}, "input"),
        ("/v1/embeddings", {"input": [1, 2, 3]}, "input[0]"),
        ("/v1/embeddings", {"input": ["x"] * 65}, "input"),
        ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ("/v1/retrieve", {"query": ""}, "query"),
        ("/v1/retrieve", {}, "query"),
        ("/v1/retrieve", {"query": "x", "k": 1000}, "k"),
        ("/v1/documents", {"name": "a.md"}, "text"),
    ],
)
def test_other_routes_name_the_bad_field(server, path, body, param):
    status, headers, raw = post_raw(server.port, path, json.dumps(body).encode())
    assert status in (404, 422)  # 404: this server has no index/embedder, checked after the body
    if status == 422:
        assert_clean_error(status, headers, raw, 422, param)


def test_unknown_routes_and_methods_are_json(server):
    r = requests.get(f"{server.url}/v1/nothing/here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = requests.get(f"{server.url}/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


class ExplodingGenerator(FakeGenerator):
    """Fails after two deltas, with an error message that holds a file path."""

    def generate(self, prompt, params):
        inner = super().generate(prompt, params)

        def run():
            for i, piece in enumerate(inner):
                if i == 2:
                    raise RuntimeError("decoder failed in /opt/secret/model.onnx")
                yield piece

        return run()


def test_generator_failure_is_contained(serve):
    server = serve(generator=ExplodingGenerator())
    r = requests.post(
        f"{server.url}/v1/chat/completions", json={"messages": OK_MESSAGES, "retrieval": False}
    )
    assert r.status_code == 500
    assert "secret" not in r.text and "Traceback" not in r.text
    r = requests.post(
        f"{server.url}/v1/chat/completions",
        json={"messages": OK_MESSAGES, "retrieval": False, "stream": True},
    )
    events = sse_events(r.content)
    assert events[-1] == "[DONE]" and "error" in events[-2]
    assert "secret" not in r.text
    assert server.wait_idle()
    assert requests.get(f"{server.url}/healthz").status_code == 200


def test_log_lines_escape_control_characters(server, caplog):
    caplog.set_level(logging.INFO, logger="appliance.server")
    status, _, _ = raw_request(
        server.port,
        b"GET /v1/evil%0Aforged%20line%1B[31m HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    assert status == 404
    lines = [r.getMessage() for r in caplog.records if "evil" in r.getMessage()]
    assert lines, "the request was not logged"
    for line in lines:
        assert "\n" not in line and "\x1b" not in line
        assert "\\n" in line and "\\x1b" in line
