"""Give back the resident pages of a loaded model's weight file that the runtime no longer reads.

onnxruntime maps each external initializer of `model.onnx.data` into memory (a private file
mapping per tensor). MatMulNBits then copies its weights into a packed layout at load, but the
mappings stay, and every page the packing read stays resident: 21 MB for SmolLM2-135M (the
scales and zero points of 151 matrices), counted in the serving process's RSS although the
decode never reads them again (benchmarks/results/latest.md, "where the memory goes").

`release_weight_pages` asks the kernel to drop those pages from this process (madvise
MADV_DONTNEED). For a private file mapping whose pages were never written, that loses nothing:
a later read faults the page back in from the file (from the page cache, usually). A mapping
holding any written (copy-on-write) page is left alone, since dropping it would discard the
write. Only Linux has /proc/self/smaps and the advice; elsewhere this does nothing.

Test: .venv/bin/pytest tests/appliance/test_generation_genai.py -k residency
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

MADV_DONTNEED = 4  # linux/mman.h


def file_mappings(path: Path, smaps: str) -> list[tuple[int, int, int, int]]:
    """(start, end, resident KiB, anonymous KiB) of each mapping of `path` in an smaps text."""
    target = str(Path(path).resolve())
    out: list[tuple[int, int, int, int]] = []
    current: list | None = None
    for line in smaps.splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and ":" not in head[0]:
            current = None
            if len(head) > 5 and head[5] == target:
                start, end = (int(x, 16) for x in head[0].split("-"))
                current = [start, end, 0, 0]
                out.append(current)  # type: ignore[arg-type]
        elif current is not None and line.startswith("Rss:"):
            current[2] = int(head[1])
        elif current is not None and line.startswith("Anonymous:"):
            current[3] = int(head[1])
    return [tuple(m) for m in out]  # type: ignore[misc]


def release_weight_pages(paths) -> dict:
    """Drop the resident, never-written pages of this process's mappings of `paths`.

    Returns {"released_mb", "mappings", "kept_written"}; all zero where the platform offers no
    way to do it. Never raises: a failure leaves the pages resident, which is only memory."""
    report = {"released_mb": 0.0, "mappings": 0, "kept_written": 0}
    smaps_path = Path("/proc/self/smaps")
    if not sys.platform.startswith("linux") or not smaps_path.is_file():
        return report
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
        smaps = smaps_path.read_text()
    except (OSError, AttributeError) as exc:
        log.debug("cannot release weight pages: %s", exc)
        return report
    released_kib = 0
    for path in paths:
        for start, end, rss_kib, anon_kib in file_mappings(path, smaps):
            if anon_kib:  # a written copy-on-write page: dropping it would lose the write
                report["kept_written"] += 1
                continue
            if rss_kib and madvise(start, end - start, MADV_DONTNEED) == 0:
                released_kib += rss_kib
                report["mappings"] += 1
    report["released_mb"] = round(released_kib * 1024 / 1e6, 1)
    return report
