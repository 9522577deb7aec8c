# Run: .venv/bin/pytest tests/appliance/test_retrieval_faults.py
"""Fault tests: kill -9 during an update, crashes at the worst moment, corrupt index files,
queries during updates, path escapes and bad files in a batch."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from appliance.embedding import OnnxEmbedder
from appliance.errors import UserFacingError
from appliance.retrieval import (
    DocumentInput,
    IndexCorruptError,
    Retriever,
    add_documents,
    ingest_folder,
)
from appliance.retrieval import versions as V
from appliance.retrieval.writer import check_relative, resolve_inside

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def embedder(embedder_onnx: Path) -> OnnxEmbedder:
    return OnnxEmbedder(embedder_onnx)


def _generation_doc(i: int) -> DocumentInput:
    sections = "\n\n".join(
        f"## Part {p}\n\nGeneration {i} marker text for part {p}. " + "Filler words here. " * 30
        for p in range(4)
    )
    return DocumentInput(name="gen.md", text=f"# Gen\n\n{sections}", doc_id="gen")


@pytest.fixture()
def index(tmp_path: Path, embedder: OnnxEmbedder) -> Path:
    src = tmp_path / "docs"
    src.mkdir()
    (src / "base.md").write_text("# Base\n\nAlarm E-47 means vacuum drum vacuum low.")
    out = tmp_path / "index"
    ingest_folder(src, out, embedder, progress=False)
    add_documents(out, embedder, [_generation_doc(0)])
    return out


def _generations(passages) -> set[int]:
    out = set()
    for p in passages:
        if p.doc_id == "gen":
            out.add(int(p.text.split("Generation ", 1)[1].split()[0]))
    return out


WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from appliance.embedding import OnnxEmbedder
from appliance.retrieval import DocumentInput, add_documents
emb = OnnxEmbedder(Path(sys.argv[1]), threads=1)
print("ready", flush=True)
i = 1000
while True:
    i += 1
    text = "# Gen\\n\\n" + "\\n\\n".join(
        f"## Part {p}\\n\\nGeneration {i} marker text for part {p}. " + "Filler words here. " * 30
        for p in range(4))
    add_documents(Path(sys.argv[2]), emb, [DocumentInput(name="gen.md", text=text, doc_id="gen")])
    print("published", flush=True)
"""


def test_kill_9_during_updates_leaves_a_servable_index(
    index: Path, embedder_onnx: Path, embedder: OnnxEmbedder
) -> None:
    rng = random.Random(7)
    reader = Retriever.open(index, embedder)
    published = set()
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(embedder_onnx), str(index), str(REPO)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout.readline().strip() == "ready"
            # One update is published before the kill window opens, so every round kills a
            # writer in the middle of a later update however slow a loaded box makes it (a writer
            # that dies early closes stdout, and the readline returns "" and fails).
            assert proc.stdout.readline().strip() == "published"
            threading.Event().wait(rng.uniform(0.2, 1.5))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        # Whatever moment the kill hit, CURRENT names a complete, verified version.
        version = V.read_pointer(index)
        V.verify_version(V.version_dir(index, version))
        fresh = Retriever.open(index, embedder)
        gens = _generations(fresh.search("generation marker text", k=8))
        assert len(gens) == 1
        published.add(version)
        assert fresh.search("E-47", k=1)[0].path == "base.md"
        fresh.close()
        reader.refresh()  # a long-running reader follows along
        assert len(_generations(reader.search("generation marker text", k=8))) == 1
    # The next writer sweeps leftovers and works (the lock died with the process).
    add_documents(index, embedder, [DocumentInput(name="after.md", text="After the crash: ZX-5.")])
    assert not any(p.name.startswith(V.TMP_PREFIX) for p in (index / V.VERSIONS).iterdir())
    assert len(V.existing_versions(index)) <= 2
    assert Retriever.open(index, embedder).search("ZX-5", k=1)[0].path == "after.md"
    assert len(published) >= 2  # the kills landed while updates were being published
    reader.close()


@pytest.mark.parametrize("crash_at", ["rename_version", "swap_pointer"])
def test_crash_at_the_worst_moment_keeps_the_old_version(
    index: Path, embedder: OnnxEmbedder, monkeypatch, crash_at: str
) -> None:
    before = V.read_pointer(index)
    real_rename, real_replace = os.rename, os.replace

    def boom(*args, **kwargs):
        raise OSError("simulated power loss")

    if crash_at == "rename_version":
        monkeypatch.setattr(V.os, "rename", boom)
    else:
        monkeypatch.setattr(V.os, "replace", boom)
    with pytest.raises(OSError, match="power loss"):
        add_documents(index, embedder, [_generation_doc(1)])
    monkeypatch.setattr(V.os, "rename", real_rename)
    monkeypatch.setattr(V.os, "replace", real_replace)
    assert V.read_pointer(index) == before
    r = Retriever.open(index, embedder)
    assert _generations(r.search("generation marker text", k=8)) == {0}
    add_documents(index, embedder, [_generation_doc(2)])
    assert r.refresh() and _generations(r.search("generation marker text", k=8)) == {2}
    r.close()


def _current_file(index: Path, name: str) -> Path:
    return V.version_dir(index, V.read_pointer(index)) / name


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("vectors.hnsw", "flip"),
        ("vectors.hnsw", "truncate"),
        ("store.sqlite", "truncate"),
        ("store.sqlite", "flip"),
        ("manifest.json", "delete"),
    ],
)
def test_corrupt_index_files_are_refused_with_their_name(
    index: Path, embedder: OnnxEmbedder, name: str, damage: str
) -> None:
    path = _current_file(index, name)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 3]))
    else:
        path.unlink()
    with pytest.raises(IndexCorruptError) as err:
        Retriever.open(index, embedder)
    assert str(path) in str(err.value)
    # A writer refuses to build on a corrupt version too, with the same message.
    with pytest.raises(IndexCorruptError):
        add_documents(index, embedder, [DocumentInput(name="x.md", text="x")])


def test_corrupt_pointer_and_unknown_format(index: Path, embedder: OnnxEmbedder) -> None:
    (index / V.POINTER).write_text("{not json")
    with pytest.raises(IndexCorruptError, match="CURRENT"):
        Retriever.open(index, embedder)
    (index / V.POINTER).write_text(json.dumps({"format_version": 99, "version": "v000001"}))
    with pytest.raises(UserFacingError, match="format version 99"):
        Retriever.open(index, embedder)


def test_a_corrupt_new_version_is_not_served(index: Path, embedder: OnnxEmbedder, caplog) -> None:
    r = Retriever.open(index, embedder)
    old = r.version
    add_documents(index, embedder, [_generation_doc(5)])
    path = _current_file(index, "vectors.hnsw")
    path.write_bytes(path.read_bytes()[:100])
    assert r.refresh() is False
    assert r.version == old and "still serving" in caplog.text
    assert _generations(r.search("generation marker text", k=8)) == {0}
    r.close()


def test_queries_during_updates_see_one_whole_version(index: Path, embedder: OnnxEmbedder) -> None:
    r = Retriever.open(index, embedder)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(1, 7):
                add_documents(index, embedder, [_generation_doc(i)])
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            stop.set()

    t = threading.Thread(target=writer)
    t.start()
    seen: list[int] = []
    while not stop.is_set() or not seen:
        gens = _generations(r.search("generation marker text", k=8))
        assert len(gens) == 1, f"one query mixed versions: {gens}"
        seen.append(gens.pop())
    t.join()
    assert not errors, errors
    assert seen == sorted(seen)  # never goes back to an older version
    assert len(set(seen)) >= 2  # the queries really ran across updates
    assert _generations(r.search("generation marker text", k=8)) == {6}
    r.close()


def test_path_escapes_are_refused(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nThe password is hunter2.")
    src = tmp_path / "docs"
    (src / "sub").mkdir(parents=True)
    (src / "ok.md").write_text("# Ok\n\nA normal document.")
    (src / "link-out.md").symlink_to(outside / "secret.md")
    (src / "dir-out").symlink_to(outside, target_is_directory=True)
    (src / "sub" / "link-in.md").symlink_to(src / "ok.md")
    os.mkfifo(src / "pipe.txt")  # reading it would block forever
    report = ingest_folder(src, tmp_path / "idx", embedder, progress=False)
    skipped = dict(report.skipped)
    assert "outside" in skipped["link-out.md"] and "refused" in skipped["link-out.md"]
    assert "outside" in skipped["dir-out/"]
    assert skipped["pipe.txt"] == "not a regular file"
    assert sorted(report.added) == ["ok.md", "sub/link-in.md"]
    r = Retriever.open(tmp_path / "idx", embedder)
    assert all("hunter2" not in p.text for p in r.search("password", k=10))
    r.close()

    for bad in ("../secret.md", "/etc/passwd", "sub/../../secret.md", "C:\\x.md"):
        with pytest.raises(UserFacingError, match="refused"):
            check_relative(bad, "test")
        (src / "metadata.json").write_text(json.dumps({bad: {"line": "A"}}))
        with pytest.raises(UserFacingError, match="metadata.json"):
            ingest_folder(src, tmp_path / "idx", embedder, progress=False)
    with pytest.raises(UserFacingError, match="outside"):
        resolve_inside(src, "link-out.md")
    assert resolve_inside(src, "sub/link-in.md") == (src / "ok.md").resolve()


def _encrypted_pdf() -> bytes:
    from pypdf import PdfWriter

    w = PdfWriter()
    w.add_blank_page(612, 792)
    w.encrypt(user_password="secret", owner_password="secret", algorithm="AES-128")
    buf = io.BytesIO()
    w.write(buf)
    return buf.getvalue()


def test_bad_files_are_skipped_by_name_and_the_batch_goes_on(
    tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    (src / "good.md").write_text("# Good\n\nPump P-101 impeller nut torque is 120 N·m.")
    (src / "good.csv").write_text("code,meaning\nE-47,vacuum low\n")
    (src / "corrupt.pdf").write_bytes(b"%PDF-1.7\n%\xe2\xe3\n1 0 obj <<>> garbage trailer")
    (src / "locked.pdf").write_bytes(_encrypted_pdf())
    (src / "broken.docx").write_bytes(b"PK\x03\x04 this is not a docx")
    (src / "tool.exe").write_bytes(b"MZ\x90\x00")
    (src / "binary.txt").write_bytes(b"\x00\x01\x02\x03")
    (src / "empty.html").write_text("<html><body><nav>menu</nav></body></html>")
    report = ingest_folder(src, tmp_path / "idx", embedder, progress=False)
    assert sorted(report.added) == ["good.csv", "good.md"]
    skipped = dict(report.skipped)
    assert set(skipped) == {"corrupt.pdf", "locked.pdf", "broken.docx", "tool.exe", "binary.txt", "empty.html"}  # fmt: skip
    assert "encrypted" in skipped["locked.pdf"]
    assert "corrupt" in skipped["broken.docx"] and "corrupt" in skipped["corrupt.pdf"]
    assert "unsupported" in skipped["tool.exe"]
    assert "locked.pdf" in report.summary()
    r = Retriever.open(tmp_path / "idx", embedder)
    assert r.search("E-47", k=1)[0].path == "good.csv"
    r.close()


def test_second_writer_waits_then_gives_a_clear_error(index: Path, embedder: OnnxEmbedder) -> None:
    from appliance.retrieval import IndexLockedError, IndexWriter

    with V.write_lock(index):
        with pytest.raises(IndexLockedError, match="being updated"):
            with IndexWriter(index, embedder, lock_timeout_s=0.2):
                pass
