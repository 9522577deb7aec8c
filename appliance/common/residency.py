"""Give back the resident pages a loaded model no longer reads: its weight file's and the runtime
libraries' pages that only loading touched.

onnxruntime maps each external initializer of `model.onnx.data` into memory (a private file
mapping per tensor). MatMulNBits then copies its weights into a packed layout at load, but the
mappings stay, and every page the packing read stays resident: 21 MB for SmolLM2-135M (the
scales and zero points of 151 matrices), counted in the serving process's RSS although the
decode never reads them again (benchmarks/results/latest.md, "where the memory goes").

The same holds for the code of the shared libraries: loading a model runs graph
transformations, kernel registration and weight packing, whose code (in libonnxruntime.so and
libonnxruntime-genai.so) stays resident although a request never runs it again. After an 800-
and a 1,600-token request on SmolLM2, 50.2 MB of library pages are resident when they are kept
and 26.2 MB (what requests fault back) when they are dropped after the load
(benchmarks/results/raw/memory_bench_2026-12-01.md).

`release_load_only_pages` asks the kernel to drop those pages from this
process (madvise MADV_DONTNEED). For a private file mapping whose pages were never written,
that loses nothing: a later read faults the page back in from the file (from the page cache,
usually), exactly as after the kernel reclaimed it under memory pressure. A mapping holding any
written (copy-on-write) page, such as a library's relocated data, is left alone, since dropping
it would discard the write. Only Linux has /proc/self/smaps and the advice; elsewhere this does
nothing.

Test: .venv/bin/pytest tests/appliance/test_common_residency.py tests/appliance/test_generation_genai.py -k residency
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import re
import sys
from pathlib import Path

log = logging.getLogger(__name__)

MADV_DONTNEED = 4  # linux/mman.h
# A shared object's file name: libfoo.so, libfoo.so.1.32.0, module.cpython-311-x86_64-linux-gnu.so
_SHARED_OBJECT = re.compile(r"\.so(\.\d+)*$")


def _all_mappings(smaps: str) -> dict[str, list[tuple[int, int, int, int]]]:
    """path -> (start, end, resident KiB, anonymous KiB) of each of its mappings in an smaps
    text (file-backed mappings only)."""
    out: dict[str, list[list[int]]] = {}
    current: list[int] | None = None
    for line in smaps.splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and ":" not in head[0]:
            current = None
            if len(head) > 5 and head[5].startswith("/"):
                start, end = (int(x, 16) for x in head[0].split("-"))
                current = [start, end, 0, 0]
                out.setdefault(head[5], []).append(current)
        elif current is not None and line.startswith("Rss:"):
            current[2] = int(head[1])
        elif current is not None and line.startswith("Anonymous:"):
            current[3] = int(head[1])
    return {path: [tuple(m) for m in maps] for path, maps in out.items()}  # type: ignore[misc]


def file_mappings(path: Path, smaps: str) -> list[tuple[int, int, int, int]]:
    """(start, end, resident KiB, anonymous KiB) of each mapping of `path` in an smaps text."""
    return _all_mappings(smaps).get(str(Path(path).resolve()), [])


def shared_objects(smaps: str) -> list[str]:
    """The paths of the shared libraries (and extension modules) mapped in an smaps text."""
    return sorted(filter(_is_shared_object, _all_mappings(smaps)))


def _is_shared_object(path: str) -> bool:
    return _SHARED_OBJECT.search(path) is not None


def _release(mappings: dict, paths, madvise) -> dict:
    """Drop the resident, never-written pages of the mappings of `paths` (a parsed smaps)."""
    report = {"released_mb": 0.0, "mappings": 0, "kept_written": 0}
    released_kib = 0
    for path in paths:
        for start, end, rss_kib, anon_kib in mappings.get(path, ()):
            if anon_kib:  # a written copy-on-write page: dropping it would lose the write
                report["kept_written"] += 1
                continue
            if rss_kib and madvise(start, end - start, MADV_DONTNEED) == 0:
                released_kib += rss_kib
                report["mappings"] += 1
    report["released_mb"] = round(released_kib * 1024 / 1e6, 1)
    return report


def release_load_only_pages(weight_paths=(), *, libraries: bool = True) -> dict:
    """Drop the resident, never-written pages of this process's mappings of `weight_paths` and,
    with `libraries`, of every shared library it maps (the code a model load ran; what requests
    run faults back in). One read of /proc/self/smaps serves both.

    Returns {"weights": report, "libraries": report or None}, each report
    {"released_mb", "mappings", "kept_written"}; all zero where the platform offers no way to do
    it. Never raises: a failure leaves the pages resident, which is only memory."""
    empty = {"released_mb": 0.0, "mappings": 0, "kept_written": 0}
    out = {"weights": dict(empty), "libraries": dict(empty) if libraries else None}
    smaps_path = Path("/proc/self/smaps")
    if not sys.platform.startswith("linux") or not smaps_path.is_file():
        return out
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
        mappings = _all_mappings(smaps_path.read_text())
    except (OSError, AttributeError) as exc:
        log.debug("cannot release load-only pages: %s", exc)
        return out
    out["weights"] = _release(mappings, [str(Path(p).resolve()) for p in weight_paths], madvise)
    if libraries:
        out["libraries"] = _release(mappings, filter(_is_shared_object, mappings), madvise)
    return out
