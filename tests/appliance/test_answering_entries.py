# Run: .venv/bin/pytest tests/appliance/test_answering_entries.py
"""The reader over a real index of entry-level chunks: the entry a question names goes first,
with its head (name and fact sheet) when only a later piece of it was retrieved."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.answering import AnswerPolicy, answer, prepare
from appliance.generation.base import GenerationParams
from appliance.generation.fake import FakeGenerator
from appliance.grounding import occurs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def core_retriever(tmp_path_factory, embedder_onnx: Path):
    import shutil

    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import Retriever, ingest_folder

    src = tmp_path_factory.mktemp("docs")
    shutil.copy(REPO / "examples" / "apache" / "docs" / "core.html", src / "core.html")
    index = tmp_path_factory.mktemp("index") / "index"
    embedder = OnnxEmbedder(embedder_onnx)
    ingest_folder(src, index, embedder, progress=False)
    r = Retriever.open(index, embedder)
    yield r
    r.close()


def test_entry_head_of_a_later_piece(core_retriever):
    pieces = [p for p in core_retriever.passages_of_path("core.html")
              if p.section.endswith("ErrorDocument Directive")]  # fmt: skip
    assert len(pieces) > 2
    head = core_retriever.entry_head(pieces[2])
    assert head is not None and head.chunk_id == pieces[0].chunk_id
    assert head.text.startswith("Description:") and "Syntax: ErrorDocument" in head.text
    assert core_retriever.entry_head(pieces[0]) is None


def test_the_named_entry_and_its_fact_sheet_come_first(core_retriever):
    gen = FakeGenerator()
    params = GenerationParams(max_new_tokens=32)
    q = "What is the default value of the TimeOut directive?"
    prepared = prepare(q, generator=gen, retriever=core_retriever, params=params)
    first = prepared.sources[0]
    assert first.section.endswith("TimeOut Directive") and "Default: TimeOut 60" in first.text
    assert 1 in prepared.focus and len(prepared.sources) <= AnswerPolicy().max_passages
    # The question names the entry and its "Default" label: the field is the answer, quoted,
    # and the model is not asked (its reply here would be wrong).
    assert prepared.extracted is not None and prepared.extracted.sentence == "Default: TimeOut 60"
    wrong = FakeGenerator(reply="The default is 300 seconds [1].")
    x = answer(q, generator=wrong, retriever=core_retriever, params=params)
    assert x.extracted and x.grounding == "supported" and wrong.started == 0
    assert x.text == 'The manual says: "Default: TimeOut 60" [1]' and x.cited == [1]
    assert x.evidence[0].sentence == "Default: TimeOut 60" and x.prompt_tokens == 0
    # Without extraction, the model answers and the check stands behind it: a value that is
    # not in the passages is replaced by the entry's own Default line.
    model = AnswerPolicy(extract_fields=False)
    a = answer(q, generator=FakeGenerator(reply="The default is 300 seconds [1]."),
               retriever=core_retriever, params=params, policy=model)  # fmt: skip
    assert a.grounding == "quoted" and "300" not in a.text and not a.extracted
    assert a.text == 'The manual says: "Default: TimeOut 60" [1]'
    b = answer(q, generator=FakeGenerator(reply="The default is 60 seconds [1]."),
               retriever=core_retriever, params=params, policy=model)  # fmt: skip
    assert b.grounding == "supported" and b.evidence[0].sentence == "Default: TimeOut 60"


def test_a_named_entry_without_the_asked_field_goes_to_the_model(core_retriever):
    """ThreadLimit-like: "Default: See usage for details" points elsewhere; nor does a label
    the question does not name (Context) answer a question about the default."""
    params = GenerationParams(max_new_tokens=32)
    gen = FakeGenerator(reply="It is 60 [1].")
    q = "Which directive sets the time the server waits for certain events (TimeOut)?"
    a = answer(q, generator=gen, retriever=core_retriever, params=params)
    assert not a.extracted and gen.started == 1


@pytest.fixture(scope="module")
def mpm_retriever(tmp_path_factory, embedder_onnx: Path):
    import shutil

    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import Retriever, ingest_folder

    src = tmp_path_factory.mktemp("mpm-docs")
    shutil.copy(REPO / "examples" / "apache" / "docs" / "mpm_common.html", src)
    index = tmp_path_factory.mktemp("mpm-index") / "index"
    embedder = OnnxEmbedder(embedder_onnx)
    ingest_folder(src, index, embedder, progress=False)
    r = Retriever.open(index, embedder)
    yield r
    r.close()


@pytest.mark.parametrize(
    "question,value",
    [
        ("For the prefork MPM, what is the default MaxRequestWorkers?", "256"),
        ("What is the default ThreadLimit for the event MPM?", "64"),
    ],
)
def test_a_default_that_points_into_the_entrys_body_is_found_there(mpm_retriever, question, value):
    """ "Default: See usage for details": the entry's own sentence that names the default and
    states it is the answer, from whichever piece of the entry holds it (shown or not)."""
    params = GenerationParams(max_new_tokens=32)
    prepared = prepare(question, generator=FakeGenerator(), retriever=mpm_retriever, params=params)
    ev = prepared.extracted
    assert ev is not None and occurs(value, ev.sentence) and "default" in ev.sentence.lower()
    source = prepared.sources[ev.passage - 1]
    assert source.text[ev.start : ev.end] == ev.sentence
    assert source.section.split(" > ")[-1].split()[0] in question  # the entry asked about
    assert len(prepared.sources) <= AnswerPolicy().max_passages
