# Run: .venv/bin/pytest tests/appliance/test_server_index_copy.py
"""The service's writable index copy never loses documents added through the API when the
bundle changes: the copy of the new bundle's index and the carried-over documents are one
temporary version, published once. A failure or a kill -9 after the copy leaves the old
version current, and the next start carries the documents over."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.retrieval import DocumentInput, Retriever, open_writable_copy, updates
from tests.appliance.server_harness import offline_env

NOTE = "Pump P-777 has a blue handle. The blue handle of P-777 opens the bypass valve V-777."


@pytest.fixture
def two_bundle_indexes(small_index: Path, embedder, tmp_path: Path) -> tuple[Path, Path]:
    """Bundle index A, and B: the same documents plus one more (a different base)."""
    a = tmp_path / "bundle-a" / "index"
    b = tmp_path / "bundle-b" / "index"
    shutil.copytree(small_index, a)
    shutil.copytree(small_index, b)
    for p in (a, b):
        for f in p.rglob("*"):
            if f.is_file():
                f.chmod(0o644)
    extra = DocumentInput(name="bundle-b-notes.md", text="Release notes of bundle B: filter F-2.")
    updates.add_documents(b, embedder, [extra])
    return a, b


def _state_with_api_doc(bundle_index: Path, state: Path, embedder) -> str:
    index = open_writable_copy(bundle_index, state, embedder)
    report = updates.add_documents(index, embedder, [DocumentInput(name="p777.md", text=NOTE)])
    return report.added[0]


def _assert_api_doc_kept(bundle_index: Path, state: Path, embedder, doc_id: str) -> None:
    index = open_writable_copy(bundle_index, state, embedder)  # "the next start"
    retr = Retriever.open(index, embedder)
    try:
        assert doc_id in {d["doc_id"] for d in retr.documents()}
        assert retr.search("P-777 blue handle", k=1)[0].doc_id == doc_id
        assert "bundle-b-notes.md" in {d["path"] for d in retr.documents()}
    finally:
        retr.close()


def test_a_failed_carry_over_loses_no_api_document(
    two_bundle_indexes, embedder, tmp_path: Path, monkeypatch
):
    a, b = two_bundle_indexes
    state = tmp_path / "state"
    doc_id = _state_with_api_doc(a, state, embedder)

    def fail(*_args, **_kw):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(updates.IndexWriter, "_carry_over", fail)
        with pytest.raises(OSError, match="No space left"):
            open_writable_copy(b, state, embedder)
    # The failed switch left the old version (bundle A + the API document) current.
    retr = Retriever.open(state / "index", embedder)
    try:
        assert doc_id in {d["doc_id"] for d in retr.documents()}
        assert "bundle-b-notes.md" not in {d["path"] for d in retr.documents()}
    finally:
        retr.close()
    _assert_api_doc_kept(b, state, embedder, doc_id)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import open_writable_copy, updates

    def die(*_a, **_k):
        os.kill(os.getpid(), signal.SIGKILL)  # power cut right after the copy

    updates.IndexWriter._carry_over = die
    open_writable_copy(Path(sys.argv[1]), Path(sys.argv[2]), OnnxEmbedder(Path(sys.argv[3])))
    """
)


def test_kill_9_during_a_bundle_switch_loses_no_api_document(
    two_bundle_indexes, embedder, embedder_onnx: Path, tmp_path: Path
):
    a, b = two_bundle_indexes
    state = tmp_path / "state"
    doc_id = _state_with_api_doc(a, state, embedder)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(b), str(state), str(embedder_onnx)],
        env=offline_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    _assert_api_doc_kept(b, state, embedder, doc_id)
    assert not [p for p in (state / "index" / "versions").iterdir() if p.name.startswith(".tmp")]


def test_the_copy_is_reused_while_the_bundle_index_is_the_same(
    two_bundle_indexes, embedder, tmp_path: Path
):
    a, _ = two_bundle_indexes
    state = tmp_path / "state"
    _state_with_api_doc(a, state, embedder)
    before = (state / "index" / "CURRENT").read_text()
    open_writable_copy(a, state, embedder)
    assert (state / "index" / "CURRENT").read_text() == before
    assert not os.path.exists(state / "index" / "base.json")
