# Run: .venv/bin/pytest tests/build/test_synth.py   (~1 min idle: round trips on the plant index)
"""`expert synth` on the example plant's real index: every kept pair verified, drops explained."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from appliance.grounding import check, value_spans
from build.synth import (
    Chunk,
    Holdout,
    Pair,
    entries_of,
    fake_entity,
    holdout_reason,
    load_holdout,
    parse_teacher_json,
    sentence_like,
    synthesize,
    write_outputs,
)

ABSTAIN = "The plant documents do not cover this question."


def test_entries_from_records_key_lines_definitions_and_rows() -> None:
    box = Chunk(
        "c#1",
        "core.html",
        "Apache Core Features",
        "KeepAliveTimeout Directive",
        "Description: Amount of time the server will wait for subsequent\nrequests on a "
        "persistent connection\nSyntax: KeepAliveTimeout num[ms]\nDefault: KeepAliveTimeout 5\n"
        "\nThis directive controls: how long.\n",
    )
    got = {(e.entity, e.field): e.value for e in entries_of(box)}
    assert got[("KeepAliveTimeout", "Default")] == "KeepAliveTimeout 5"
    # a wrapped value is joined; a sentence with a colon is not an entry
    assert got[("KeepAliveTimeout", "Description")].endswith("on a persistent connection")
    assert not any(f.startswith("This") for _, f in got)

    row = Chunk(
        "c#2", "a.md", "Alarm", "2. Alarm code table", "Code: E-25; Class: A; Setpoint: < 65 %"
    )
    assert {(e.entity, e.field, e.value) for e in entries_of(row)} == {
        ("E-25", "Class", "A"),
        ("E-25", "Setpoint", "< 65 %"),
    }
    item = Chunk(
        "c#3",
        "p.md",
        "Pump",
        "2. Technical data > 2.2 P-102 Line A pump",
        "Item: Duty point; Value: 40 m³/h",
    )
    assert [(e.entity, e.field, e.value) for e in entries_of(item)] == [
        ("P-102", "Duty point", "40 m³/h")
    ]
    term = Chunk(
        "c#4", "core.html", "Core", "AcceptPathInfo Directive > Off", "Off: A request is refused."
    )
    assert [(e.entity, e.field, e.kind) for e in entries_of(term)] == [
        ("AcceptPathInfo", "Off", "meaning")
    ]


def test_a_sentence_is_not_taken_for_an_entity_name() -> None:
    # Real headings of the Apache manual that made questions like "What is the parameter of
    # E: Worker is in an error state.?"; noun phrases (English, Spanish) stay names.
    for sentence in (
        "E: Worker is in an error state.",
        "Do not combine key and certificate in one file",
        "Warning: MaxRequestWorkers not a multiple of ThreadsPerChild",
        "La red no es accesible",
    ):
        assert sentence_like(sentence), sentence
    for name in (
        "KeepAliveTimeout",
        "Reverse Proxy Request Headers",
        "HTTP/0.9, HTTP/1.0, and HTTP/1.1",
        "Start-up of the cooling water pump",
        "Configuración de la red",
        "HTTP: headername",
        "ServerTokens Full (or not specified)",
    ):
        assert not sentence_like(name), name

    under_sentence = Chunk(
        "c#5",
        "mod_proxy_balancer.html",
        "mod_proxy_balancer",
        "Balancer Manager Support > E: Worker is in an error state.",
        "Parameter: E: Worker is in an error state.",
    )
    assert entries_of(under_sentence) == []
    advice = Chunk(
        "c#6",
        "ssl_howto.html",
        "SSL/TLS How-To",
        "Do not combine key and certificate in one file",
        "Maintenance: Separate files make it clear which file contains what.",
    )
    assert entries_of(advice) == []
    row = Chunk("c#7", "a.md", "Log", "Messages", "Message: It is not running; Level: warn")
    assert entries_of(row) == []


def test_teacher_json_schema() -> None:
    ok = parse_teacher_json(
        'Sure! {"question": "What is X?", "answer": "X is 5.", "evidence": "X: 5"}'
    )
    assert ok == {"question": "What is X?", "answer": "X is 5.", "evidence": "X: 5"}
    for bad, why in (
        ("no json here", "no JSON object"),
        ('{"question": "What is X?", "answer": "5"}', "missing or empty 'evidence'"),
        ('{"question": 3, "answer": "5", "evidence": "e"}', "missing or empty 'question'"),
        ('{"question": "What is X?" "answer"}', "bad JSON"),
    ):
        with pytest.raises(ValueError, match=re.escape(why)):
            parse_teacher_json(bad)


def test_fake_entities_do_not_exist() -> None:
    corpus = "codes e-47 and e-48 exist; keepalivetimeout and maxkeepaliverequests too"
    rng = random.Random(1)
    fake = fake_entity("E-47", [], corpus, rng)
    assert fake in ("E-46", "E-45", "E-49") and fake.lower() not in corpus
    name = fake_entity("KeepAliveTimeout", ["MaxKeepAliveRequests"], corpus, rng)
    assert name is not None and name != "KeepAliveTimeout" and name.lower() not in corpus


def test_holdout_catches_paraphrases_and_same_facts() -> None:
    h = load_holdout([Path("examples/plant/qa/eval.jsonl")])
    assert h and all(isinstance(x, Holdout) for x in h)
    q = next(x for x in h if x.answerable and x.names and x.facts)
    same = Pair("p", "structured", q.question, f"It is {q.facts[0]}.", "en", "x#1", "d.md", "e")
    assert holdout_reason(same, h)[0] == "near-duplicate"
    name = next(v.text for v in value_spans(q.question) if v.kind in ("code", "identifier"))
    other = Pair(
        "p", "structured", f"Tell me about {name} please", f"{q.facts[0]}", "en", "x#1", "d", "e"
    )
    assert holdout_reason(other, h)[0] == "same fact"


class ScriptedTeacher:
    """A teacher whose outputs are fixed: bad JSON first, then a real pair from the chunk."""

    def __init__(self) -> None:
        self.calls = 0

    def chat_prompt(self, messages) -> str:  # noqa: ANN001
        return messages[-1]["content"]

    def generate(self, prompt, params):  # noqa: ANN001
        self.calls += 1
        if self.calls % 2 == 1:
            return iter(["I think the answer is"])
        line = next(
            ln.strip()
            for ln in prompt.splitlines()
            if re.search(r"\d", ln) and len(ln.strip()) > 10 and not ln.startswith("Passage")
        )
        return iter([json.dumps({"question": "Which value does the passage give?",
                                 "answer": line, "evidence": line})])  # fmt: skip


@pytest.fixture(scope="module")
def synth_run(plant_index: Path, embedder_onnx: Path, tmp_path_factory) -> tuple:
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import Retriever

    retriever = Retriever.open(plant_index, OnnxEmbedder(embedder_onnx))
    teacher = ScriptedTeacher()
    holdout = load_holdout([Path("examples/plant/qa/eval.jsonl")])
    result = synthesize(
        retriever=retriever,
        abstain=ABSTAIN,
        holdout=holdout,
        generator=teacher,
        generative=4,
        retries=1,
        unanswerable=0.1,
        max_pairs=150,
        seed=3,
        progress=_quiet,
    )
    out = tmp_path_factory.mktemp("synth")
    paths = write_outputs(result, out)
    chunks = {}
    for doc in retriever.documents():
        for p in retriever.passages_of_path(doc["path"]):
            chunks[p.chunk_id] = p
    yield result, paths, chunks, holdout, teacher
    retriever.close()


def _quiet(iterable=None, **kw):  # noqa: ANN001
    class Bar:
        def update(self, n):  # noqa: ANN001
            pass

        def close(self):
            pass

    return iterable if iterable is not None else Bar()


def test_every_kept_pair_is_verified(synth_run) -> None:
    result, paths, chunks, holdout, _ = synth_run
    kept = [json.loads(x) for x in paths["pairs"].read_text().splitlines()]
    assert len(kept) == len(result.kept) >= 60
    kinds = {r["synth"]["kind"] for r in kept}
    assert {"structured", "unanswerable"} <= kinds
    corpus = "\n".join(p.section + "\n" + p.text for p in chunks.values()).lower()
    for r in kept:
        q, a = r["messages"][0]["content"], r["messages"][1]["content"]
        s = r["synth"]
        if s["kind"] == "unanswerable":
            assert a == ABSTAIN and s["entity"].lower() not in corpus
            assert "source" not in r
            continue
        chunk = chunks[s["chunk_id"]]
        seen = f"{chunk.title} > {chunk.section}\n{chunk.text}"
        assert check(a, [seen], focus=[1]).supported, (q, a)
        assert 1 <= s["round_trip_rank"] <= 5
        assert r["source"] == chunk.path
        if s["kind"] == "structured":
            assert s["value"] in a and s["value"] in chunk.text
            assert a.endswith(s["value"]) or a.endswith(s["value"] + ".")
            assert not a.endswith(s["value"] + "..")
        # held out: no kept question is a near-duplicate of an eval question
        assert holdout_reason(_pair(r), holdout) is None
    questions = [r["messages"][0]["content"] for r in kept]
    assert len(set(questions)) == len(questions)


def _pair(r: dict) -> Pair:
    s = r["synth"]
    return Pair(
        "x", s["kind"], r["messages"][0]["content"], r["messages"][1]["content"], s["lang"],
        s.get("chunk_id"), r.get("source"), s.get("evidence"),
    )  # fmt: skip


def test_dropped_pairs_say_why_and_the_report_adds_up(synth_run) -> None:
    result, paths, _, _, teacher = synth_run
    dropped = [json.loads(x) for x in paths["dropped"].read_text().splitlines()]
    assert dropped and all(r["reason"] for r in dropped)
    prefixes = ("grounding", "holdout", "near-duplicate", "round trip", "teacher")
    assert all(r["reason"].startswith(prefixes) for r in dropped)
    report = json.loads(paths["report_json"].read_text())
    assert report["kept"] == len(result.kept) and report["dropped"] == len(dropped)
    assert sum(row["candidates"] for row in report["kinds"]) == report["kept"] + report["dropped"]
    gen = next(row for row in report["kinds"] if row["kind"] == "generative")
    assert gen["candidates"] == 4 and report["teacher"]["invalid_json"] >= 4  # each retried once
    assert teacher.calls == 8
    md = paths["report_md"].read_text()
    assert "| kind | candidates | kept |" in md and "## Dropped (sample)" in md


def test_pairs_file_trains(synth_run) -> None:
    from trainer.data import load_chat_jsonl

    _, paths, _, _, _ = synth_run
    examples = load_chat_jsonl(paths["pairs"])
    assert examples and all(ex.answer for ex in examples)
