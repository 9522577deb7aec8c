"""Fixtures the appliance tests share: a small real index, the ONNX embedder, a live service.

Session fixtures come from tests/conftest.py (`embedder_onnx`, `plant_index`, `plant_dir`);
the helpers the fixtures use are in tests/appliance/server_harness.py. A test module that
defines a fixture of the same name (test_retrieval.py's `embedder`) uses its own.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.generation.fake import FakeGenerator
from appliance.server import create_app
from tests.appliance.server_harness import LiveServer, test_config
from tests.conftest import cached_dir

# Two manuals of the example plant: enough for grounded answers, quick to embed (~10 s once).
INDEX_DOCS = ("pump-maintenance-manual.md", "alarm-fault-codes.md")


@pytest.fixture(scope="session")
def small_index(embedder_onnx: Path, plant_dir: Path) -> Path:
    """A real hnswlib + SQLite index of INDEX_DOCS (read-only: copy it before writing)."""
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import ingest_folder

    def make(tmp: Path) -> None:
        src = tmp / "docs"
        src.mkdir(parents=True)
        for name in INDEX_DOCS:
            shutil.copy(plant_dir / "docs" / name, src / name)
        ingest_folder(src, tmp / "index", OnnxEmbedder(embedder_onnx), progress=False)

    sources = tuple(f"examples/plant/docs/{n}" for n in INDEX_DOCS) + (
        "build/export_embedder.py",
        "appliance/retrieval/ingest.py",
        "appliance/retrieval/writer.py",
        "appliance/retrieval/store.py",
        "appliance/retrieval/versions.py",
        "appliance/documents/chunking.py",
        "appliance/documents/abbreviations.py",
    )
    return cached_dir("service-small-index", sources, make) / "index"


@pytest.fixture(scope="session")
def embedder(embedder_onnx: Path):
    from appliance.embedding import OnnxEmbedder

    return OnnxEmbedder(embedder_onnx)


@pytest.fixture(scope="session")
def retriever(small_index: Path, embedder):
    from appliance.retrieval import Retriever

    return Retriever.open(small_index, embedder)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """serve(generator=..., retriever=..., **config) -> LiveServer; stopped after the test."""
    servers: list[LiveServer] = []

    def start(*, generator=None, retriever=None, embedder=None, loader=None, **kw) -> LiveServer:
        config = test_config(tmp_path, **kw)
        app = create_app(
            config,
            generator=generator or FakeGenerator(),
            retriever=retriever,
            embedder=embedder,
            loader=loader,
        )
        server = LiveServer(app, config)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def plant_retriever(plant_index: Path, embedder_onnx: Path):
    """The whole example plant's index (built once, cached), for retrieval and calibration."""
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import Retriever

    r = Retriever.open(plant_index, OnnxEmbedder(embedder_onnx))
    yield r
    r.close()
