"""Limits on what one uploaded document may cost to parse, chunk and embed.

A small upload can be expensive: a 1 MB DOCX can inflate to gigabytes (a zip bomb), a PDF can
hold tens of thousands of pages, a long text can make tens of thousands of chunks to embed.
`check_limits` runs before any parser touches the bytes and refuses, from the archive's
directory and the PDF's page tree alone:

- a DOCX whose members inflate to more than `max_uncompressed_bytes` in all (the sizes the
  zip declares are also the most Python's zipfile will ever inflate, so a lying header
  cannot get more through);
- a PDF with more than `max_pages` pages.

The writer refuses a document of more than `max_chunks` chunks before embedding any, and
stops when parsing plus embedding has taken more than `max_seconds` (checked after parsing
and between embedding batches). Each refusal is a `LimitExceeded` naming its setting; the
service answers it 422. pypdf>=6 bounds what one FlateDecode stream may inflate to.

Settings of `expert serve` (flags or EXPERT_*): max_document_uncompressed_bytes,
max_document_pages, max_document_chunks, max_document_seconds.

Test: .venv/bin/pytest tests/appliance/test_server_limits.py
"""

from __future__ import annotations

import io
import time
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from appliance.documents.loaders import LoaderError

ZIP_SUFFIXES = frozenset({".docx"})
PDF_SUFFIXES = frozenset({".pdf"})
MAX_ZIP_MEMBERS = 10_000


@dataclass(frozen=True)
class ParseLimits:
    """Per-document limits (the service's max_document_* settings)."""

    # All members of a DOCX, inflated; real manuals with their images stay well under this.
    max_uncompressed_bytes: int = 128 << 20
    max_pages: int = 2000
    max_chunks: int = 5000
    max_seconds: float = 120.0

    def deadline(self, started: float | None = None) -> float:
        return (time.monotonic() if started is None else started) + self.max_seconds


class LimitExceeded(LoaderError):
    """A document over one of the parse limits; `setting` names the limit."""

    def __init__(self, name: str, setting: str, reason: str) -> None:
        self.setting = setting
        super().__init__(
            name, f"{reason} (limit max_document_{setting}; raise it if the document is genuine)"
        )


def check_limits(data: bytes, name: str, limits: ParseLimits) -> None:
    """Refuse a document over the size or page limits, before it is parsed."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in ZIP_SUFFIXES:
        _check_zip(data, name, limits)
    elif suffix in PDF_SUFFIXES:
        _check_pdf(data, name, limits)


def _check_zip(data: bytes, name: str, limits: ParseLimits) -> None:
    try:
        infos = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a readable zip: the loader reports it as corrupt
    if len(infos) > MAX_ZIP_MEMBERS:
        raise LimitExceeded(
            name, "uncompressed_bytes", f"holds {len(infos)} archive members (at most "
            f"{MAX_ZIP_MEMBERS})"
        )  # fmt: skip
    total = sum(max(0, i.file_size) for i in infos)
    if total > limits.max_uncompressed_bytes:
        raise LimitExceeded(
            name,
            "uncompressed_bytes",
            f"inflates to {total} bytes, over the {limits.max_uncompressed_bytes}-byte limit",
        )


def _check_pdf(data: bytes, name: str, limits: ParseLimits) -> None:
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        pages = len(PdfReader(io.BytesIO(data)).pages)
    except Exception:  # encrypted or corrupt: the loader reports it
        return
    if pages > limits.max_pages:
        raise LimitExceeded(
            name, "pages", f"has {pages} pages, over the {limits.max_pages}-page limit"
        )


def check_chunks(name: str, n_chunks: int, limits: ParseLimits) -> None:
    if n_chunks > limits.max_chunks:
        raise LimitExceeded(
            name, "chunks", f"makes {n_chunks} chunks, over the {limits.max_chunks}-chunk limit"
        )


def check_deadline(name: str, deadline: float | None, limits: ParseLimits) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise LimitExceeded(
            name,
            "seconds",
            f"took more than {limits.max_seconds:g} s to parse and embed",
        )
