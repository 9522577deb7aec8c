"""Live updates (the service's POST/DELETE /v1/documents) and the writable copy of a bundle's
read-only index in the service's state directory, which API documents survive across bundle
updates. Writes go through `IndexWriter` (writer.py).

Test: .venv/bin/pytest tests/appliance/test_server_index_copy.py tests/appliance/test_retrieval.py
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appliance.documents import (
    LoaderError,
)
from appliance.documents.limits import (
    LimitExceeded,
    check_deadline,
)
from appliance.errors import UserFacingError
from appliance.retrieval import versions as V
from appliance.retrieval.store import Store
from appliance.retrieval.writer import DocumentInput, IndexWriter

log = logging.getLogger(__name__)

# How long a live update waits for another writer, such as `expert ingest`, before it is
# answered 409 (try again).
API_LOCK_TIMEOUT_S = 10.0


# --- live updates and bundle copies -------------------------------------------------------


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)  # doc ids
    replaced: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    chunks: int = 0
    version: str = ""


def add_documents(index_dir: Path, embedder, inputs: Sequence[DocumentInput]) -> AddReport:
    """Add or replace documents (source 'api') and publish a new version.

    Documents are parsed before the index's writer lock is taken, so a slow or refused upload
    never holds up other writers. A document over its `limits` raises LimitExceeded and
    nothing is published; one that cannot be read is skipped and reported."""
    report = AddReport()
    loaded = []
    for item in inputs:
        started = time.monotonic()
        try:
            doc = item.load()
        except LimitExceeded:
            raise
        except LoaderError as exc:
            report.skipped.append((item.name, exc.reason))
            continue
        deadline = item.limits.deadline(started) if item.limits is not None else None
        if item.limits is not None:
            check_deadline(item.name, deadline, item.limits)
        loaded.append((item, doc, deadline))
    with IndexWriter(index_dir, embedder, lock_timeout_s=API_LOCK_TIMEOUT_S) as writer:
        for item, doc, deadline in loaded:
            doc_id = item.resolved_id
            existed = writer.store.document(doc_id) is not None
            report.chunks += writer.put(
                doc, doc_id, source="api", limits=item.limits, deadline=deadline
            )
            (report.replaced if existed else report.added).append(doc_id)
        report.version = writer.commit()
    return report


def delete_document(index_dir: Path, embedder, doc_id: str) -> bool:
    """Delete a document (any source); True if it existed. Publishes a new version."""
    with IndexWriter(index_dir, embedder, lock_timeout_s=API_LOCK_TIMEOUT_S) as writer:
        existed = writer.delete(doc_id)
        writer.commit()
    return existed


BASE_FILE = "base.json"


def open_writable_copy(bundle_index_dir: Path, state_dir: Path, embedder=None) -> Path:
    """A writable index for live updates, copied once from a bundle's read-only index.

    Returns `state_dir/index`. The copy is reused while the bundle's index is the same one it
    came from; when a new bundle brings a different index, a fresh copy is made and documents
    added through the API are carried over (re-embedded if the embedder changed and an
    `embedder` is given; dropped with a warning otherwise).

    The copy and the carried-over documents are built in one temporary version and published
    once, with the bundle index's id in its manifest: a crash, a full disk or an embedding
    error on the way leaves the previous version (with its API documents) current, and the
    next start simply tries again.
    """
    bundle_index_dir = Path(bundle_index_dir)
    dest = Path(state_dir) / "index"
    src_version = V.read_pointer(bundle_index_dir)
    src_vdir = V.version_dir(bundle_index_dir, src_version)
    src_manifest = V.verify_version(src_vdir)
    base_id = src_manifest["files"][V.STORE_FILE]["sha256"]
    if _copy_base_id(dest) == base_id:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    bundle_emb = src_manifest.get("embedder") or {}
    extra = {"base_id": base_id, "copied_from": str(src_vdir)}
    writer_emb = embedder if embedder is not None else _ManifestEmbedder(src_manifest)
    with IndexWriter(dest, writer_emb, base_from=src_vdir, manifest_extra=extra) as writer:
        if _copy_base_id(dest) == base_id:  # another process made it meanwhile
            return dest
        if V.is_index(dest):
            old_vdir = V.version_dir(dest, V.read_pointer(dest))
            old_emb = V.verify_version(old_vdir).get("embedder", {})
            same = old_emb == bundle_emb
            old_store = Store(old_vdir / V.STORE_FILE, writable=False)
            try:
                old_api = list(old_store.documents(source="api").values())
                if old_api and (same or embedder is not None):
                    for doc in old_api:
                        writer._carry_over(old_store, doc, reembed=not same)
                elif old_api:
                    log.warning(
                        "the new bundle's embedder differs; %d documents added through the API "
                        "were not carried over (pass an embedder to re-embed them)",
                        len(old_api),
                    )
            finally:
                old_store.close()
        writer.commit()
    (dest / BASE_FILE).unlink(missing_ok=True)  # the id now lives in the version's manifest
    return dest


def _copy_base_id(dest: Path) -> str | None:
    """The id of the bundle index the current version of `dest` was copied from, or None."""
    if not V.is_index(dest):
        return None
    try:
        vdir = V.version_dir(dest, V.read_pointer(dest))
        manifest = json.loads((vdir / V.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, UserFacingError):
        return None
    if "base_id" in manifest:
        return manifest["base_id"]
    legacy = dest / BASE_FILE  # copies made before the id moved into the manifest
    try:
        return json.loads(legacy.read_text()).get("base_id") if legacy.is_file() else None
    except (OSError, ValueError):
        return None


class _ManifestEmbedder:
    """Stands in for the embedder when documents are copied with their vectors unchanged."""

    def __init__(self, manifest: dict) -> None:
        self.model_id = manifest["embedder"]["model_id"]
        self.dim = int(manifest["embedder"]["dim"])
        self.tokenizer = None

    def embed(self, texts, batch_size: int = 32):
        raise UserFacingError("re-embedding needs the bundle's embedder")
