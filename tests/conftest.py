"""Shared, session-scoped fixtures: the embedded models, imported/exported once and cached.

Run: `make test` (or `.venv/bin/pytest`); slow tests: `.venv/bin/pytest -m slow`.

Expensive artefacts (the SmolLM2 import, its int4 export, the ONNX embedder, the tiny Phi-3) are
built once into var/test-cache/<name>-<key>/, where the key hashes the code that builds them, so
a second run reuses them and a code change rebuilds them. A build holds a lock on its name, so two
test runs sharing the cache build an artefact once and never remove each other's half-built one.
Everything runs offline.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EXPERT_TEST_CACHE", REPO / "var" / "test-cache"))
DONE = ".complete"


def _key(*sources: str) -> str:
    h = hashlib.sha256()
    for rel in sources:
        p = REPO / rel
        h.update(rel.encode())
        h.update(p.read_bytes() if p.is_file() else b"-")
    return h.hexdigest()[:12]


def cached_dir(name: str, sources: tuple[str, ...], make: Callable[[Path], object]) -> Path:
    """`make(tmp)` fills a folder once; later calls with unchanged `sources` reuse it."""
    out = CACHE / f"{name}-{_key(*sources)}"
    if (out / DONE).is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        # Another test run building the same artefact finishes first; then it is reused.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / DONE).is_file():
            return out
        for stale in CACHE.glob(f"{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = CACHE / f".{name}.partial"
        shutil.rmtree(work, ignore_errors=True)
        make(work)
        (work / DONE).write_text("ok\n")
        os.replace(work, out)
    return out


@pytest.fixture(scope="session")
def plant_dir() -> Path:
    return REPO / "examples" / "plant"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from build.import_model import default_gguf

    return default_gguf()


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf: Path) -> Path:
    from build.import_model import import_model

    def make(tmp: Path) -> None:
        import_model(gguf=smollm2_gguf, out=tmp / "model", force=True)

    return cached_dir("smollm2-hf", ("build/import_model.py",), make) / "model"


@pytest.fixture(scope="session")
def tiny_phi3_hf() -> Path:
    from tests.tiny_models import make_tiny_phi3

    def make(tmp: Path) -> None:
        make_tiny_phi3(tmp / "model")

    return (
        cached_dir("tiny-phi3-hf", ("tests/tiny_models.py", "build/import_model.py"), make)
        / "model"
    )


@pytest.fixture(scope="session")
def smollm2_onnx_int4(smollm2_hf: Path) -> Path:
    from build.export_llm import export_llm

    def make(tmp: Path) -> None:
        export_llm(smollm2_hf, tmp / "model", backend="genai", precision="int4")

    sources = ("build/import_model.py", "build/export_llm.py", "build/tied_embedding.py")
    return cached_dir("smollm2-onnx-int4", sources, make) / "model"


@pytest.fixture(scope="session")
def embedder_onnx() -> Path:
    from build.export_embedder import export_embedder

    def make(tmp: Path) -> None:
        export_embedder(tmp / "embedder")

    return cached_dir("embedder-onnx", ("build/export_embedder.py",), make) / "embedder"


PLANT_INDEX_CODE = (
    "appliance/documents/loaders.py",
    "appliance/documents/chunking.py",
    "appliance/documents/abbreviations.py",
    "appliance/retrieval/ingest.py",
    "appliance/retrieval/writer.py",
    "appliance/retrieval/store.py",
    "appliance/retrieval/keywords.py",
    "appliance/retrieval/vectors.py",
    "appliance/retrieval/versions.py",
    "build/export_embedder.py",
)


@pytest.fixture(scope="session")
def plant_index(plant_dir: Path, embedder_onnx: Path) -> Path:
    """The example plant's documents ingested once (read-only: tests copy it before writing)."""
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import ingest_folder

    docs = plant_dir / "docs"
    sources = PLANT_INDEX_CODE + tuple(
        str(p.relative_to(REPO)) for p in sorted(docs.rglob("*")) if p.is_file()
    )

    def make(tmp: Path) -> None:
        ingest_folder(docs, tmp / "index", OnnxEmbedder(embedder_onnx), progress=False)

    return cached_dir("plant-index", sources, make) / "index"
