"""Versioned, crash-safe publication of an index folder.

    index_dir/
        CURRENT                       {"format_version": 1, "version": "v000003"}
        versions/v000003/
            store.sqlite              documents, chunks, embeddings, FTS5
            vectors.hnsw              the hnswlib graph
            manifest.json             sha256 + size of both, embedder id, counts, settings

A writer builds the next version in `versions/.tmp-*`, fsyncs it, renames it to its final
name, then swaps CURRENT by writing a temporary file and renaming it over the old one (and
fsyncs the folder). A `kill -9` at any moment leaves CURRENT naming a complete version;
leftovers are swept by the next writer. Readers resolve CURRENT once per snapshot, verify the
manifest checksums before anything is parsed, and keep that version for a whole query.
Writers take an exclusive flock on the index folder itself, so the service and the CLI never
write at the same time.

Test: .venv/bin/pytest tests/appliance/test_retrieval_faults.py
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from appliance.common.fsutil import atomic_write_text, fsync_path, partial_prefix, sha256_file
from appliance.errors import UserFacingError

INDEX_FORMAT_VERSION = 1
POINTER = "CURRENT"
VERSIONS = "versions"
MANIFEST = "manifest.json"
STORE_FILE = "store.sqlite"
VECTORS_FILE = "vectors.hnsw"
DATA_FILES = (STORE_FILE, VECTORS_FILE)
TMP_PREFIX = ".tmp-"
_VERSION_RE = re.compile(r"^v(\d{6,})$")


class IndexCorruptError(UserFacingError):
    """An index file is missing, truncated or altered. The message names the file."""


class IndexLockedError(UserFacingError):
    """Another process is writing this index."""


def is_index(index_dir: Path) -> bool:
    return (Path(index_dir) / POINTER).is_file()


def read_pointer(index_dir: Path) -> str:
    path = Path(index_dir) / POINTER
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserFacingError(
            f"{index_dir} is not a retrieval index (no {POINTER}); build one with "
            f"`expert ingest DOCS --index {index_dir}`"
        ) from exc
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"index pointer {path} is unreadable ({exc}); re-ingest") from exc
    if not isinstance(raw, dict) or raw.get("format_version") != INDEX_FORMAT_VERSION:
        fv = raw.get("format_version") if isinstance(raw, dict) else None
        raise UserFacingError(
            f"index {index_dir} has format version {fv}; this appliance reads "
            f"{INDEX_FORMAT_VERSION}. Re-ingest the documents with this version"
        )
    version = str(raw.get("version", ""))
    if not _VERSION_RE.match(version):
        raise IndexCorruptError(f"index pointer {path} names no valid version ({version!r})")
    return version


def pointer_stamp(index_dir: Path) -> tuple[int, int, int] | None:
    """A cheap identity of CURRENT (inode, mtime, size): it changes on every publication."""
    try:
        st = os.stat(Path(index_dir) / POINTER)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def version_dir(index_dir: Path, version: str) -> Path:
    return Path(index_dir) / VERSIONS / version


def verify_version(vdir: Path) -> dict:
    """Read and check a version's manifest; every data file must match size and sha256.

    Runs before SQLite or hnswlib touch a file: hnswlib trusts its input and would crash on a
    truncated graph.
    """
    mpath = vdir / MANIFEST
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IndexCorruptError(f"index manifest {mpath} is missing; re-ingest") from exc
    except (OSError, ValueError) as exc:
        raise IndexCorruptError(f"index manifest {mpath} is unreadable ({exc}); re-ingest") from exc
    if manifest.get("format_version") != INDEX_FORMAT_VERSION:
        raise UserFacingError(
            f"index version {vdir} has format {manifest.get('format_version')}; this appliance "
            f"reads {INDEX_FORMAT_VERSION}. Re-ingest the documents"
        )
    files = manifest.get("files", {})
    for name in DATA_FILES:
        path = vdir / name
        want = files.get(name)
        if not want:
            raise IndexCorruptError(f"index manifest {mpath} does not list {name}; re-ingest")
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise IndexCorruptError(
                f"index file {path} is missing; restore it or re-ingest"
            ) from exc
        if size != want["size"]:
            raise IndexCorruptError(
                f"index file {path} is {size} bytes, expected {want['size']} (truncated or "
                "altered); restore the bundle or re-ingest"
            )
        if sha256_file(path) != want["sha256"]:
            raise IndexCorruptError(
                f"index file {path} fails its sha256 check (corrupted or altered); restore the "
                "bundle or re-ingest"
            )
    return manifest


def write_manifest(vdir: Path, info: dict) -> dict:
    files = {}
    for name in DATA_FILES:
        path = vdir / name
        fsync_path(path)
        files[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    manifest = {"format_version": INDEX_FORMAT_VERSION, **info, "files": files}
    mpath = vdir / MANIFEST
    with open(mpath, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return manifest


def existing_versions(index_dir: Path) -> list[str]:
    vroot = Path(index_dir) / VERSIONS
    if not vroot.is_dir():
        return []
    return sorted(
        (p.name for p in vroot.iterdir() if _VERSION_RE.match(p.name)),
        key=lambda n: int(n[1:]),
    )


def next_version(index_dir: Path) -> str:
    names = existing_versions(index_dir)
    n = int(names[-1][1:]) + 1 if names else 1
    return f"v{n:06d}"


def new_tmp_dir(index_dir: Path) -> Path:
    vroot = Path(index_dir) / VERSIONS
    vroot.mkdir(parents=True, exist_ok=True)
    tmp = vroot / f"{TMP_PREFIX}{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    return tmp


def publish(index_dir: Path, tmp: Path, version: str) -> Path:
    """Make `tmp` (complete, manifest written) the current version, atomically."""
    index_dir = Path(index_dir)
    vroot = index_dir / VERSIONS
    final = vroot / version
    fsync_path(tmp)
    os.rename(tmp, final)
    fsync_path(vroot)
    pointer = {"format_version": INDEX_FORMAT_VERSION, "version": version}
    atomic_write_text(index_dir / POINTER, json.dumps(pointer) + "\n", overwrite=True)
    return final


def collect_garbage(index_dir: Path, keep: int = 2) -> None:
    """Remove unfinished writes and all but the newest `keep` versions (call under the lock).

    A reader still holding an older version keeps working: its SQLite file stays open and
    its graph is in memory.
    """
    index_dir = Path(index_dir)
    vroot = index_dir / VERSIONS
    if not vroot.is_dir():
        return
    current = read_pointer(index_dir) if is_index(index_dir) else None
    for p in vroot.iterdir():
        if p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
    for p in index_dir.glob(f"{POINTER}.tmp-*"):  # left by versions before the shared writer
        p.unlink(missing_ok=True)
    for p in index_dir.glob(partial_prefix(index_dir / POINTER) + "*"):
        p.unlink(missing_ok=True)
    names = existing_versions(index_dir)
    for name in names[:-keep] if keep > 0 else names:
        if name != current:
            shutil.rmtree(vroot / name, ignore_errors=True)


def inside_bundle(index_dir: Path) -> bool:
    """True for the `index/` folder of a bundle (its parent holds a bundle manifest.json)."""
    manifest = Path(index_dir).parent / "manifest.json"
    if Path(index_dir).name != "index" or not manifest.is_file():
        return False
    try:
        return "bundle_version" in json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def write_lock(index_dir: Path, timeout_s: float = 60.0) -> Iterator[None]:
    """Exclusive writer lock: flock on the index folder itself (no lock file to ship)."""
    index_dir = Path(index_dir)
    if inside_bundle(index_dir):
        raise UserFacingError(
            f"index {index_dir} belongs to a bundle, which is immutable; write to a writable "
            "copy (appliance.retrieval.open_writable_copy) or another --index"
        )
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserFacingError(
            f"cannot create index folder {index_dir} ({exc.strerror}); choose a writable --index"
        ) from exc
    if not os.access(index_dir, os.W_OK):
        raise UserFacingError(
            f"index {index_dir} is read-only (an index inside a bundle is); write to a "
            "writable copy (appliance.retrieval.open_writable_copy) or another --index"
        )
    fd = os.open(index_dir, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise IndexLockedError(
                        f"index {index_dir} is being updated by another process; try again "
                        "when it has finished"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock
