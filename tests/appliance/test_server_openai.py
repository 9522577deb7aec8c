# Run: .venv/bin/pytest tests/appliance/test_server_openai.py
"""The official `openai` Python client against the service: chat (streaming and not),
models, embeddings, error mapping, and the appliance's extra fields."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openai
import pytest

from appliance.generation.fake import FakeGenerator
from appliance.server.auth import add_key

QUESTION = "Explain alarm E-47."  # the fake model answers it from passage 1


@pytest.fixture
def client(serve, retriever, embedder, tmp_path: Path):
    key = add_key(tmp_path / "state" / "api_keys.json", "client")
    server = serve(
        generator=FakeGenerator(model_id="bundle-plant-1"), retriever=retriever, embedder=embedder
    )
    c = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)
    c.server = server
    return c


def test_chat_completion(client):
    r = client.chat.completions.create(
        model="bundle-plant-1", messages=[{"role": "user", "content": QUESTION}], temperature=0
    )
    assert r.choices[0].message.content.endswith("[1].")
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens > 0
    extra = r.model_extra
    assert extra["abstained"] is False and extra["sources"][0]["cited"] is True


def test_chat_streaming(client):
    stream = client.chat.completions.create(
        model="bundle-plant-1",
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, sources = "", None, None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
        sources = (chunk.model_extra or {}).get("sources", sources)
    assert "[1]" in text and finish == "stop"
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert sources and sources[0]["document"].endswith(".md")


def test_extra_body_controls_retrieval(client):
    r = client.chat.completions.create(
        model="bundle-plant-1",
        messages=[{"role": "user", "content": "Say hi"}],
        extra_body={"retrieval": False},
    )
    assert r.choices[0].message.content == "You asked: Say hi"
    assert r.model_extra["sources"] == []


def test_models_and_embeddings(client, embedder):
    assert [m.id for m in client.models.list()] == ["bundle-plant-1"]
    emb = client.embeddings.create(model=embedder.model_id, input=["seal leak", "alarm E-47"])
    assert len(emb.data) == 2
    got = np.array(emb.data[0].embedding, dtype=np.float32)  # the client asked for base64
    assert np.allclose(got, embedder.embed(["seal leak"])[0], atol=1e-5)


def test_errors_map_to_the_clients_exceptions(client):
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(
            model="bundle-plant-1", messages=[{"role": "user", "content": "x"}], top_p=3
        )
    assert err.value.body["param"] == "top_p"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="bundle-plant-1",
            messages=[{"role": "user", "content": QUESTION + " pump" * 3000}],
            max_tokens=1000,
        )
    assert err.value.body["code"] == "context_length_exceeded"
    bad = openai.OpenAI(base_url=client.base_url, api_key="ex-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
