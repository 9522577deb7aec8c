# Run: .venv/bin/pytest tests/appliance/test_retrieval.py
"""End-to-end retrieval on a small real corpus: ingest, hybrid search, filters, incremental
re-ingest, live add/delete, bundle copies and the `expert ingest` command."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from appliance.embedding import OnnxEmbedder
from appliance.errors import UserFacingError
from appliance.retrieval import (
    DocumentInput,
    Passage,
    Retriever,
    add_documents,
    ingest_folder,
    open_writable_copy,
)

ALARMS = """---
title: Alarm codes
doc_type: alarm_table
line: all
---
# Alarm codes

## Code table

| Code | Meaning | Action |
|---|---|---|
| E-15 | P-102 dry run | Check tank T-110 level |
| E-47 | Vacuum drum vacuum low on LB-2 | Clean the vacuum filter |
| E-53 | Chiller freeze protection below 3.0 °C | Call maintenance |
"""
FILLER = """---
title: Line A filler SOP
doc_type: sop
line: A
---
# Line A filler SOP

## Speed

The filler FA-1 runs the 0.5 L format at a speed setpoint of 22,000 bottles per hour.

## CIP

After a CIP, discard the first 120 bottles before product is kept.
"""
LABELLER = """---
title: Line B labeller SOP
doc_type: sop
line: B
---
# Line B labeller SOP

## Speed

The labeller LB-2 runs at a speed setpoint of 18,000 bottles per hour.

## Glue

The hot-melt glue temperature setpoint is 165 °C.
"""
PARTS = "part_number,description,equipment\nHX-4471-B,Mechanical seal cartridge,P-101\nHX-8010-V,Fill valve seal kit,FA-1\n"
NOTES = "Shift handover uses form QF-12.\n\nThe compressed-air header normally runs at 7.0 bar."


def write_corpus(root: Path) -> Path:
    (root / "line-a").mkdir(parents=True)
    (root / "line-b").mkdir()
    (root / "alarms.md").write_text(ALARMS)
    (root / "line-a" / "filler.md").write_text(FILLER)
    (root / "line-b" / "labeller.md").write_text(LABELLER)
    (root / "parts.csv").write_text(PARTS)
    (root / "notes.txt").write_text(NOTES)
    (root / "metadata.json").write_text(
        json.dumps({"parts.csv": {"title": "Spare parts", "line": "all", "doc_type": "parts"}})
    )
    return root


@pytest.fixture(scope="module")
def embedder(embedder_onnx: Path) -> OnnxEmbedder:
    return OnnxEmbedder(embedder_onnx)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs")


@pytest.fixture(scope="module")
def index(corpus: Path, embedder: OnnxEmbedder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "index"
    report = ingest_folder(corpus, out, embedder, metadata={"site": "riverside"}, progress=False)
    assert sorted(report.added) == [
        "alarms.md", "line-a/filler.md", "line-b/labeller.md", "notes.txt", "parts.csv"
    ]  # fmt: skip
    assert report.skipped == [] and report.version == "v000001"
    return out


@pytest.fixture(scope="module")
def retriever(index: Path, embedder: OnnxEmbedder) -> Retriever:
    r = Retriever.open(index, embedder)
    yield r
    r.close()


@pytest.fixture()
def writable(index: Path, tmp_path: Path) -> Path:
    """A private copy of the module's index for tests that change it."""
    dest = tmp_path / "index"
    shutil.copytree(index, dest)
    return dest


def test_search_returns_complete_passages(retriever: Retriever, embedder: OnnxEmbedder) -> None:
    passages = retriever.search("What does alarm E-47 mean?", k=3)
    top = passages[0]
    assert isinstance(top, Passage)
    assert top.path == "alarms.md" and top.title == "Alarm codes"
    assert top.section == "Code table > E-47"  # a table row is an entry named by its code
    assert "Vacuum drum vacuum low" in top.text and top.page is None
    assert top.chunk_id.startswith(top.doc_id + "#")
    assert top.metadata["line"] == "all" and top.metadata["site"] == "riverside"
    assert top.keyword_score is not None and top.keyword_score > 0
    q = embedder.embed(["What does alarm E-47 mean?"])[0]
    direct = embedder.embed([f"Alarm codes > {top.section}\n{top.text}"])[0]
    assert top.dense_score == pytest.approx(float(q @ direct), abs=1e-4)
    prompt = top.to_prompt()
    assert (prompt.title, prompt.section, prompt.text) == (top.title, top.section, top.text)
    assert retriever.count() == retriever.stats()["chunks"] > 5
    assert retriever.document_count() == 5


@pytest.mark.parametrize("spelling", ["E-47", "e47", "E47", "what is e-47"])
def test_code_lookup_in_every_spelling(retriever: Retriever, spelling: str) -> None:
    for mode in ("hybrid", "keyword"):
        assert "E-47" in retriever.search(spelling, k=1, mode=mode)[0].text


def test_dense_score_is_filled_for_keyword_only_hits(retriever: Retriever) -> None:
    hits = retriever.search("HX-8010-V", k=5, mode="keyword")
    assert hits and "HX-8010-V" in hits[0].text
    assert all(-1.0 <= p.dense_score <= 1.0 and p.dense_score != 0.0 for p in hits)
    dense = retriever.search("paraphrase about bottles per hour", k=3, mode="dense")
    assert all(p.score == pytest.approx(p.dense_score) for p in dense)


def test_metadata_filters_apply_before_ranking(retriever: Retriever) -> None:
    q = "What is the speed setpoint in bottles per hour?"
    for mode in ("hybrid", "dense", "keyword"):
        line_a = retriever.search(q, k=10, filters={"line": "A"}, mode=mode)
        assert line_a, mode
        assert {p.metadata["line"] for p in line_a} <= {"A", "all"}, mode
        assert all("18,000" not in p.text for p in line_a), mode
    line_b = retriever.search(q, k=10, filters={"line": "B"})
    assert "18,000" in line_b[0].text
    both = retriever.search(q, k=10, filters={"line": ["A", "B"]})
    assert {"A", "B"} <= {p.metadata["line"] for p in both}
    # The notes file has no line: a scoped terminal never sees it; unscoped it does.
    assert all(
        p.path != "notes.txt" for p in retriever.search("QF-12", k=10, filters={"line": "A"})
    )
    assert retriever.search("QF-12", k=1)[0].path == "notes.txt"
    assert {p.metadata["line"] for p in retriever.search(q, k=5, filters={"line": "C"})} == {"all"}
    assert retriever.search(q, k=5, filters={"site": "elsewhere"}) == []
    parts = retriever.search("seal", k=5, filters={"doc_type": "parts", "site": "riverside"})
    assert parts and {p.path for p in parts} == {"parts.csv"}
    assert parts[0].title == "Spare parts"  # metadata.json title


def test_bad_queries_are_refused(retriever: Retriever) -> None:
    with pytest.raises(UserFacingError, match="mode"):
        retriever.search("x", mode="fuzzy")
    with pytest.raises(UserFacingError, match="empty"):
        retriever.search("   ")
    with pytest.raises(UserFacingError, match="k must be"):
        retriever.search("x", k=0)
    assert retriever.search("!!! ???", k=3, mode="keyword") == []


def test_incremental_reingest(
    corpus: Path, writable: Path, embedder: OnnxEmbedder, tmp_path: Path
) -> None:
    src = tmp_path / "docs"
    shutil.copytree(corpus, src)
    again = ingest_folder(src, writable, embedder, metadata={"site": "riverside"}, progress=False)
    assert len(again.unchanged) == 5 and again.version == "v000001" and again.chunks_embedded == 0

    (src / "notes.txt").write_text(NOTES + "\n\nNew paragraph: the nitrogen generator NG-1 runs at 8 bar.")  # fmt: skip
    (src / "line-b" / "labeller.md").unlink()
    (src / "new.md").write_text("# Boiler\n\nThe boiler B-1 blowdown is daily.")
    report = ingest_folder(src, writable, embedder, metadata={"site": "riverside"}, progress=False)
    assert report.added == ["new.md"] and report.updated == ["notes.txt"]
    assert report.removed == ["line-b/labeller.md"] and len(report.unchanged) == 3
    assert report.version == "v000002"
    assert report.chunks_embedded < 4  # unchanged chunks of notes.txt reuse their vectors
    r = Retriever.open(writable, embedder)
    assert r.search("NG-1 nitrogen", k=1)[0].path == "notes.txt"
    assert all(p.path != "line-b/labeller.md" for p in r.search("glue temperature", k=10))
    assert r.search("boiler blowdown", k=1)[0].path == "new.md"

    # Changing only metadata.json re-indexes that file's metadata.
    (src / "metadata.json").write_text(json.dumps({"parts.csv": {"line": "B"}}))
    report = ingest_folder(src, writable, embedder, metadata={"site": "riverside"}, progress=False)
    assert report.updated == ["parts.csv"]
    assert r.search("seal", k=3, filters={"line": "B"})[0].path == "parts.csv"  # r refreshed
    r.close()


def test_live_add_and_delete(writable: Path, embedder: OnnxEmbedder, corpus: Path) -> None:
    r = Retriever.open(writable, embedder)
    before = r.count()
    report = r.add_documents(
        [
            DocumentInput(
                name="bulletin.md",
                text="# Bulletin\n\nPump P-777 needs new impeller.",
                metadata={"line": "A"},
            ),  # fmt: skip
            DocumentInput(name="table.csv", data=b"tag,torque\nP-777,99 N m\n", doc_id="torques"),
            DocumentInput(name="bad.pdf", data=b"%PDF-1.4 broken"),
        ]
    )
    assert report.added == ["api-bulletin-md-" + report.added[0].rsplit("-", 1)[1], "torques"]
    assert report.skipped[0][0] == "bad.pdf" and "corrupt" in report.skipped[0][1]
    assert r.count() == before + 2
    hit = r.search("P-777 impeller", k=1, filters={"line": "A"})[0]
    assert hit.path == "bulletin.md" and hit.doc_id == report.added[0]
    assert {d["doc_id"]: d["source"] for d in r.documents()}["torques"] == "api"

    # A folder re-ingest leaves documents added through the API alone.
    ingest_folder(corpus, writable, embedder, metadata={"site": "riverside"}, progress=False)
    assert r.delete_document("torques") is True
    assert r.delete_document("torques") is False
    assert all(p.doc_id != "torques" for p in r.search("P-777 torque", k=10))
    assert r.search("P-777", k=1)[0].doc_id == report.added[0]
    with pytest.raises(UserFacingError, match="plain file name"):
        DocumentInput(name="../escape.md", text="x")
    with pytest.raises(UserFacingError, match="doc_id"):
        DocumentInput(name="a.md", text="x", doc_id="no/slashes")
    r.close()


def test_writable_copy_of_a_read_only_bundle_index(
    index: Path, embedder: OnnxEmbedder, tmp_path: Path
) -> None:
    bundle_index = tmp_path / "bundle" / "index"
    shutil.copytree(index, bundle_index)
    (tmp_path / "bundle" / "manifest.json").write_text(json.dumps({"bundle_version": "1"}))
    ro_plain = tmp_path / "plain"
    shutil.copytree(index, ro_plain)
    for p in [bundle_index, *bundle_index.rglob("*"), ro_plain, *ro_plain.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        ro = Retriever.open(bundle_index, embedder)  # a read-only bundle can be served
        assert ro.search("E-47", k=1)[0].path == "alarms.md"
        with pytest.raises(UserFacingError, match="belongs to a bundle"):
            ro.add_documents([DocumentInput(name="x.md", text="x")])
        if os.geteuid() != 0:  # root ignores permissions
            with pytest.raises(UserFacingError, match="read-only"):
                add_documents(ro_plain, embedder, [DocumentInput(name="x.md", text="x")])
        state = tmp_path / "state"
        live_dir = open_writable_copy(bundle_index, state)
        assert live_dir == state / "index"
        live = Retriever.open(live_dir, embedder)
        live.add_documents([DocumentInput(name="fresh.md", text="Fresh note about ZZ-9 valve.")])
        assert live.search("ZZ-9", k=1)[0].path == "fresh.md"
        assert open_writable_copy(bundle_index, state) == live_dir  # reused, not recopied
        assert live.search("ZZ-9", k=1)[0].path == "fresh.md"
        assert ro.search("ZZ-9", k=1)[0].path != "fresh.md"  # the bundle is untouched
    finally:
        for p in [bundle_index, *bundle_index.rglob("*"), ro_plain, *ro_plain.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    # A new bundle with a different index: fresh copy, API documents carried over.
    new_bundle = tmp_path / "bundle2" / "index"
    src = tmp_path / "docs2"
    src.mkdir()
    (src / "only.md").write_text("# Only\n\nThe only document of the new bundle mentions QQ-1.")
    ingest_folder(src, new_bundle, embedder, progress=False)
    open_writable_copy(bundle_index.parent.parent / "bundle2" / "index", state)
    live.refresh()
    paths = {d["path"] for d in live.documents()}
    assert paths == {"only.md", "fresh.md"}
    live.close()
    ro.close()


def test_embedder_mismatch_is_refused(index: Path, embedder: OnnxEmbedder) -> None:
    class Other:
        model_id, dim = "other-model", 384

    with pytest.raises(UserFacingError, match="built with embedder"):
        Retriever.open(index, Other())


def test_not_an_index(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    with pytest.raises(UserFacingError, match="not a retrieval index"):
        Retriever.open(tmp_path, embedder)
    with pytest.raises(UserFacingError, match="not a folder"):
        ingest_folder(tmp_path / "missing", tmp_path / "idx", embedder, progress=False)


def test_expert_ingest_command(corpus: Path, embedder_onnx: Path, tmp_path: Path, capsys) -> None:
    from appliance.cli import main

    out = tmp_path / "idx"
    rc = main(["ingest", str(corpus), "--index", str(out), "--embedder", str(embedder_onnx),
               "--quiet", "--metadata", "site=riverside", "--chunk-tokens", "96"])  # fmt: skip
    assert rc == 0
    assert "5 documents" in capsys.readouterr().out
    manifest = json.loads((out / "versions" / "v000001" / "manifest.json").read_text())
    assert manifest["chunking"]["max_tokens"] == 96
    rc = main(["ingest", str(corpus), "--index", str(out), "--embedder", str(tmp_path / "none")])
    assert rc == 2
    assert "export-embedder" in capsys.readouterr().err


def test_empty_folder_gives_an_empty_index(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    (tmp_path / "empty").mkdir()
    ingest_folder(tmp_path / "empty", tmp_path / "idx", embedder, progress=False)
    r = Retriever.open(tmp_path / "idx", embedder)
    assert r.count() == 0 and r.search("anything", k=5) == []
    r.close()


def test_vectors_match_the_store(index: Path, embedder: OnnxEmbedder) -> None:
    """The hnswlib graph and the SQLite embeddings hold the same vectors."""
    r = Retriever.open(index, embedder)
    snap = r._snap
    labels, mat = snap.store.embeddings()
    np.testing.assert_allclose(snap.vectors.vectors(labels), mat, atol=1e-6)
    r.close()


def test_mentions_looks_through_the_whole_index(retriever: Retriever) -> None:
    # A name in some chunk (any case, accents aside), and one no document holds.
    assert retriever.mentions("HX-4471-B") and retriever.mentions("hot-melt GLUE")
    assert not retriever.mentions("Kubernetes")
    # FTS5 syntax in the phrase is inert, never an error.
    assert not retriever.mentions('NEAR("x" OR') and not retriever.mentions('""')


def test_a_name_in_capitals_counts_where_it_is_run_together_with_a_number(
    corpus: Path, embedder: OnnxEmbedder, tmp_path: Path
) -> None:
    src = tmp_path / "docs"
    shutil.copytree(corpus, src)
    (src / "motor.md").write_text("# Motor\n\nThe terminal box is sealed to IP66.")
    ingest_folder(src, tmp_path / "idx", embedder, progress=False)
    r = Retriever.open(tmp_path / "idx", embedder)
    # "IP" stands only inside "IP66": the rating is named, as one word.
    assert r.mentions("IP") and not r.mentions("IPX")
    # Only where a number follows the name: "TERM" begins "terminal", which is a word.
    assert not r.mentions("TERM") and not r.mentions("IPS")
    r.close()


def test_a_new_chunker_rechunks_documents_an_older_one_cut(
    corpus: Path, writable: Path, embedder: OnnxEmbedder, monkeypatch
) -> None:
    import appliance.retrieval.writer as writer_module

    # The same bytes and settings, but chunks an older chunker made: not "unchanged".
    monkeypatch.setattr(writer_module, "CHUNK_FORMAT", writer_module.CHUNK_FORMAT + 1)
    report = ingest_folder(corpus, writable, embedder, metadata={"site": "riverside"},
                           progress=False)  # fmt: skip
    assert len(report.updated) == 5 and report.unchanged == []
    # Their texts did not change, so their vectors are reused, not embedded again.
    assert report.chunks_embedded == 0


def test_the_same_vectors_build_the_same_graph(tmp_path: Path) -> None:
    """An index is reproducible: the same vectors added in the same order give a byte-identical
    HNSW graph (inserting on several threads did not: two ingests of the example plant gave two
    graphs, and a figure measured on the index moved between builds)."""
    from appliance.retrieval.vectors import VectorIndex

    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    labels = np.arange(len(vectors), dtype=np.int64)
    digests = []
    for n in range(2):
        index = VectorIndex.create(dim=32, capacity=len(vectors))
        for start in range(0, len(vectors), 1000):
            index.add(labels[start : start + 1000], vectors[start : start + 1000])
        index.save(tmp_path / f"graph{n}.hnsw")
        digests.append((tmp_path / f"graph{n}.hnsw").read_bytes())
    assert digests[0] == digests[1]


def test_the_sentence_score_on_a_real_index(retriever: Retriever) -> None:
    """The abstention score the service uses, on a real index and embedder: the best sentence,
    embedded alone, matches a fact question better than its whole passage does, and the
    `passage+sentence` score is the mean of the two."""
    from appliance.answering import abstention_score, best_dense_score, best_sentence_score

    question = "What is the hot-melt glue temperature setpoint on line B?"
    passages = retriever.search(question, k=5)
    passage = best_dense_score(passages)
    sentence = best_sentence_score(question, passages, retriever)
    assert passage is not None and sentence is not None
    assert sentence > passage
    mixed = abstention_score(question, passages, retriever, "passage+sentence")
    assert mixed == pytest.approx((passage + sentence) / 2)
    assert abstention_score(question, passages, retriever, "passage") == passage


def test_the_answer_path_embeds_the_question_once(index: Path, embedder: OnnxEmbedder) -> None:
    """The abstention score takes the question's vector the search made, not a second one."""
    from appliance.answering import abstention_score

    kinds: list[str] = []

    class Counting:
        def __getattr__(self, name):
            return getattr(embedder, name)

        def embed(self, texts, batch_size=32, kind="passage"):
            kinds.append(kind)
            return embedder.embed(texts, batch_size=batch_size, kind=kind)

    r = Retriever.open(index, Counting())
    try:
        question = "What is the hot-melt glue temperature setpoint on line B?"
        passages = r.search(question, k=5)
        assert abstention_score(question, passages, r, "passage+sentence") is not None
        assert kinds == ["query", "passage"]
        r.search(question, k=5)  # asked again: the kept vector
        assert kinds == ["query", "passage"]
    finally:
        r.close()
