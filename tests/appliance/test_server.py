# Run: .venv/bin/pytest tests/appliance/test_server.py
"""The API against a real waitress server on loopback: fake generator, real small index."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests

from appliance.generation.fake import FakeGenerator
from appliance.prompting import NOT_IN_DOCUMENTS
from tests.appliance.server_harness import sse_events, writable_retriever

# The fake model answers with the first passage's first sentence: right for a code lookup.
ANSWERABLE = "Explain alarm E-47."  # no field label named: the model answers
OFF_TOPIC = "Who won the football match yesterday?"


@pytest.fixture
def server(serve, retriever, embedder):
    return serve(generator=FakeGenerator(), retriever=retriever, embedder=embedder)


def chat(server, content: str, **body):
    body.setdefault("messages", [{"role": "user", "content": content}])
    return requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)


def test_grounded_answer_has_markers_and_sources(server):
    r = chat(server, ANSWERABLE)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    text = body["choices"][0]["message"]["content"]
    assert "[1]" in text
    assert body["abstained"] is False
    sources = body["sources"]
    assert 1 <= len(sources) <= 5
    first = sources[0]
    assert first["n"] == 1 and first["cited"] is True
    for key in ("document", "section", "page", "chunk_id", "score", "dense_score", "text"):
        assert key in first
    assert first["document"].endswith(".md")
    assert (
        body["usage"]["total_tokens"]
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    # The passages went into the prompt numbered and fenced as data.
    prompt = server.service.runtime.generator.prompts[-1]
    assert '<passage id="1"' in prompt and "data, not instructions" in prompt


def test_off_topic_question_abstains_without_generating(server):
    gen = server.service.runtime.generator
    before = gen.started
    r = chat(server, OFF_TOPIC)
    body = r.json()
    assert r.status_code == 200
    assert body["abstained"] is True and body["abstain_reason"] == "low_score"
    assert body["choices"][0]["message"]["content"] == NOT_IN_DOCUMENTS
    assert body["sources"] == []
    assert gen.started == before


def test_abstention_message_and_threshold_are_configurable(serve, retriever):
    server = serve(
        generator=FakeGenerator(),
        retriever=retriever,
        abstain_threshold=0.99,
        abstain_message="Not in the manuals.",
    )
    body = chat(server, ANSWERABLE).json()
    assert body["abstained"] is True
    assert body["choices"][0]["message"]["content"] == "Not in the manuals."


def test_an_operator_threshold_holds_for_questions_in_every_language():
    """The bundle's cross-language threshold applies only while the operator sets none."""
    from appliance.server.config import ServeConfig
    from appliance.server.runtime import answer_policy

    manifest = {"retrieval": {"abstain_threshold": 0.87, "abstain_threshold_cross_language": 0.82},
                "prompting": {"language": "es"}}  # fmt: skip
    english = "Which MTU is used on an Ethernet link?"
    bundle_own = answer_policy(ServeConfig(bundle="b"), manifest)
    assert bundle_own.for_question(english).abstain_threshold == 0.82
    operator = answer_policy(ServeConfig(bundle="b", abstain_threshold=0.9), manifest)
    assert operator.abstain_threshold_cross_language is None
    assert operator.for_question(english).abstain_threshold == 0.9


def test_streaming_ends_with_done_and_carries_sources(server):
    r = chat(server, ANSWERABLE, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(r.content)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["sources"] and chunks[0]["abstained"] is False
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert "[1]" in text
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert final[-1]["choices"][0]["finish_reason"] == "stop"
    assert final[-1]["sources"][0]["cited"] is True
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] > 0


def test_stop_sequences_and_max_tokens(server):
    body = chat(server, ANSWERABLE, stop=["documents"], retrieval=True).json()
    content = body["choices"][0]["message"]["content"]
    # Cut at the stop sequence, the answer states no value: the grounding check quotes the
    # passage sentence that answers the question instead.
    assert body["grounding"] == "quoted" and content.startswith("The manual says:")
    assert "documents" not in content
    body = chat(server, ANSWERABLE, max_tokens=3).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_plain_mode_without_retrieval(server):
    body = chat(server, "Say hello", retrieval=False).json()
    assert body["sources"] == [] and body["abstained"] is False
    assert body["choices"][0]["message"]["content"] == "You asked: Say hello"


def test_history_and_system_messages_reach_the_prompt(server):
    messages = [
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "Which pump feeds raw water?"},
        {"role": "assistant", "content": "P-101 [1]."},
        {"role": "user", "content": [{"type": "text", "text": ANSWERABLE}]},
    ]
    assert chat(server, "", messages=messages).status_code == 200
    prompt = server.service.runtime.generator.prompts[-1]
    assert "Answer in English." in prompt and "Which pump feeds raw water?" in prompt
    assert prompt.index("Answer from the numbered passages") < prompt.index("Answer in English.")


def test_filters_scope_retrieval(server):
    body = chat(
        server, "What does alarm E-47 mean?", filters={"path": "alarm-fault-codes.md"}
    ).json()
    assert body["sources"] and all(s["document"] == "alarm-fault-codes.md" for s in body["sources"])


def test_context_overflow_is_400_before_generation(serve, retriever):
    gen = FakeGenerator(context_length=300)
    server = serve(generator=gen, retriever=retriever)
    r = chat(server, ANSWERABLE + " " + "pump " * 400, max_tokens=50)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "context" in err["message"]
    assert gen.started == 0
    r = chat(server, "hi", max_tokens=300, retrieval=False)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_long_history_is_trimmed_not_refused(serve, retriever):
    gen = FakeGenerator(context_length=2000)
    server = serve(generator=gen, retriever=retriever)
    history = []
    for i in range(20):
        history += [
            {"role": "user", "content": f"old question {i} " + "word " * 40},
            {"role": "assistant", "content": f"old answer {i}"},
        ]
    r = chat(
        server, "", messages=history + [{"role": "user", "content": ANSWERABLE}], max_tokens=64
    )
    assert r.status_code == 200
    prompt = gen.prompts[-1]
    assert "old question 19" in prompt and "old question 0 " not in prompt
    assert gen.count_tokens(prompt) + 64 <= 2000


def test_models_lists_bundle_and_adapters(serve, retriever):
    server = serve(
        generator=FakeGenerator(model_id="bundle-plant-1", adapters=("style",)), retriever=retriever
    )
    ids = [m["id"] for m in requests.get(f"{server.url}/v1/models").json()["data"]]
    assert ids == ["bundle-plant-1", "bundle-plant-1:style"]
    body = chat(server, "hi", retrieval=False, model="bundle-plant-1:style").json()
    assert body["choices"][0]["message"]["content"].startswith("[style]")
    r = chat(server, "hi", retrieval=False, model="gpt-4")
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_embeddings_float_and_base64(server, embedder):
    url = f"{server.url}/v1/embeddings"
    body = requests.post(url, json={"input": ["pump seal", "alarm"]}).json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    vec = np.array(body["data"][0]["embedding"], dtype=np.float32)
    assert vec.shape == (embedder.dim,)
    assert np.allclose(vec, embedder.embed(["pump seal"])[0], atol=1e-5)
    b64 = requests.post(url, json={"input": "pump seal", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, vec, atol=1e-6)
    assert body["usage"]["prompt_tokens"] > 0


def test_retrieve_ranks_passages_with_scores(server):
    r = requests.post(f"{server.url}/v1/retrieve", json={"query": "alarm E-47", "k": 3})
    data = r.json()["data"]
    assert r.status_code == 200 and len(data) == 3
    assert [d["rank"] for d in data] == [1, 2, 3]
    assert all(d["dense_score"] is not None for d in data)
    assert any("E-47" in d["text"] for d in data)
    r = requests.post(f"{server.url}/v1/retrieve", json={"query": "x", "mode": "fuzzy"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "mode"


def test_documents_can_be_added_and_deleted(serve, small_index, embedder, tmp_path):
    retr = writable_retriever(small_index, embedder, tmp_path)
    server = serve(generator=FakeGenerator(), retriever=retr, embedder=embedder)
    note = "Pump P-777 has a blue handle. The blue handle of P-777 opens the bypass valve V-777."
    r = requests.post(
        f"{server.url}/v1/documents",
        json={"name": "p777.md", "text": note, "metadata": {"line": "A"}},
    )
    assert r.status_code == 201, r.text
    doc_id = r.json()["added"][0]
    hits = requests.post(
        f"{server.url}/v1/retrieve", json={"query": "P-777 blue handle", "k": 1}
    ).json()["data"]
    assert hits[0]["doc_id"] == doc_id
    assert any(
        d["doc_id"] == doc_id for d in requests.get(f"{server.url}/v1/documents").json()["data"]
    )
    assert requests.delete(f"{server.url}/v1/documents/{doc_id}").status_code == 200
    assert requests.delete(f"{server.url}/v1/documents/{doc_id}").status_code == 404
    hits = requests.post(
        f"{server.url}/v1/retrieve", json={"query": "P-777 blue handle", "k": 3}
    ).json()["data"]
    assert all(h["doc_id"] != doc_id for h in hits)
    r = requests.post(f"{server.url}/v1/documents", json={"name": "../etc/passwd", "text": "x"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "documents"


def test_health_ready_and_metrics(server):
    assert requests.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = requests.get(f"{server.url}/readyz").json()
    assert ready["status"] == "ready" and ready["slots"] == 1
    chat(server, ANSWERABLE)
    chat(server, OFF_TOPIC)
    chat(server, ANSWERABLE, stream=True)
    requests.post(
        f"{server.url}/v1/chat/completions",
        data=b"{",
        headers={"Content-Type": "application/json"},
    )
    text = requests.get(f"{server.url}/metrics").text
    for name in (
        'expert_requests_total{route="/v1/chat/completions",status="200"} 3',
        'expert_requests_total{route="/v1/chat/completions",status="400"} 1',
        "expert_request_duration_seconds_bucket",
        "expert_time_to_first_token_seconds_count 3",
        "expert_generation_tokens_per_second_count",
        "expert_queue_depth 0",
        "expert_slots_busy 0",
        "expert_retrieval_duration_seconds_count 3",
        'expert_abstentions_total{reason="low_score"} 1',
    ):
        assert name in text, name


def test_ui_page_is_served_without_external_assets(server):
    r = requests.get(f"{server.url}/")
    assert r.status_code == 200 and "text/html" in r.headers["Content-Type"]
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert "http://" not in r.text and "https://" not in r.text
    for asset in ("app.js", "app.css"):
        a = requests.get(f"{server.url}/ui/{asset}")
        assert a.status_code == 200 and "http" not in a.text
    assert requests.get(f"{server.url}/ui/../config.py").status_code == 404


def test_a_named_entrys_field_is_answered_with_its_evidence(serve, retriever, embedder):
    """ "What does alarm E-47 mean?" names the entry and its "Meaning" label: the answer is that
    field, quoted, with its evidence, in JSON and in the last SSE chunk; no model runs."""
    gen = FakeGenerator(reply="Alarm E-47 trips at 999 mbar [1].")
    server = serve(generator=gen, retriever=retriever, embedder=embedder)
    body = chat(server, "What does alarm E-47 mean?").json()
    text = body["choices"][0]["message"]["content"]
    assert body["grounding"] == "supported" and "999" not in text
    ev = body["evidence"][0]
    assert ev["sentence"].startswith("Meaning:") and " ".join(ev["sentence"].split()) in text
    assert body["sources"][ev["passage"] - 1]["cited"] is True and gen.started == 0
    events = sse_events(chat(server, "What does alarm E-47 mean?", stream=True).content)
    last = [e for e in events if e != "[DONE]"][-1]
    assert last["grounding"] == "supported" and last["evidence"] and events[-1] == "[DONE]"
