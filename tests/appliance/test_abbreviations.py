# Run: .venv/bin/pytest tests/appliance/test_abbreviations.py
"""Abbreviations a document defines, and the glossary lines of its chunks."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.documents import Block, Document, chunk_document
from appliance.documents.abbreviations import MAX_GLOSSARY_LINES, definitions, glossary


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The long form first, the short form in brackets; initials, camel case, hyphens.
        (
            "Each motor is fed by a Variable Frequency Drive (VFD).",
            {"VFD": "Variable Frequency Drive"},
        ),  # fmt: skip
        (
            "Debian can manage it with software such as NetworkManager (NM) (network-manager).",
            {"NM": "NetworkManager"},
        ),  # fmt: skip
        ("Use Secure Sockets Layer (SSL) here.", {"SSL": "Secure Sockets Layer"}),
        (
            "Wear personal protective equipment (PPE) at all times.",
            {"PPE": "personal protective equipment"},
        ),  # fmt: skip
        (
            "la dirección del servicio de Sistema de Nombres de Dominio (SND)",
            {"SND": "Sistema de Nombres de Dominio"},
        ),  # fmt: skip
        ("the unit authorityInfoAccess (AIA) extension", {"AIA": "authorityInfoAccess"}),
        (
            "Seal both ends: drive end (DE) and non-drive end (NDE).",
            {"DE": "drive end", "NDE": "non-drive end"},
        ),  # fmt: skip
        # The short form first, the long form in brackets: every letter at a word's start.
        ("Check the PRV (pressure relief valve) weekly.", {"PRV": "pressure relief valve"}),
        # Not definitions: letters that only occur inside words, a sentence end in between,
        # a long form starting with a small word, brackets that hold something else.
        ("On some environments, deadlock errors (EDEADLK) are returned.", {}),
        ("Run the pump. Then (VFD) shows nothing.", {}),
        ("GUI (GTK, Mozilla Thunderbird)", {}),
        ("IP (iproute2)", {}),
        ("the setpoint (4 bar) and the limit (E-47)", {}),
        ("o SMTPS SSL (SMTPS) en el puerto 465", {}),
    ],
)
def test_definitions(text: str, expected: dict) -> None:
    assert definitions(text) == expected


def test_definitions_keep_the_first_and_join_wrapped_lines() -> None:
    text = "normally sets the optimal Maximum\nTransmission Unit (MTU). Later: maximum transfer unit (MTU)."  # fmt: skip
    assert definitions(text) == {"MTU": "Maximum Transmission Unit"}


def test_glossary_lines_name_the_form_a_chunk_lacks() -> None:
    defined = {"NM": "NetworkManager", "MTU": "Maximum Transmission Unit", "DE": "drive end"}
    assert glossary("Restart NM by the following.", defined) == ["NM: NetworkManager"]
    # The long form alone gets the short form too, white space in it is any white space.
    assert glossary("Set the maximum\ntransmission unit to 1400.", defined) == [
        "MTU: Maximum Transmission Unit"
    ]
    # Both forms, or neither: nothing to add. Short forms match case and whole words only.
    assert glossary("NetworkManager (NM) manages it.", defined) == []
    assert glossary("The DEBUG level; the de-icer; nm is nanometres.", defined) == []
    # In order of first use, at most MAX_GLOSSARY_LINES.
    assert glossary("Bearing DE, then NM, then MTU.", defined) == [
        "DE: drive end", "NM: NetworkManager", "MTU: Maximum Transmission Unit"
    ]  # fmt: skip
    many = {f"A{c}": f"Alpha {c.lower()}ord" for c in "BCDEFG"}
    text = " ".join(many)
    assert len(glossary(text, many)) == MAX_GLOSSARY_LINES


def _word_offsets(text: str) -> list[tuple[int, int]]:
    import re

    return [m.span() for m in re.finditer(r"\S+", text)]


def test_a_chunk_is_embedded_with_its_glossary_and_quotes_only_its_text() -> None:
    doc = Document(
        path="net.md",
        title="Network",
        blocks=[
            Block("Debian uses NetworkManager (NM) on desktops.", section=("1. Intro",)),
            Block(
                "Restart NM by the following: systemctl restart network-manager",
                section=("2. Restart",),
            ),  # fmt: skip
        ],
    )
    first, second = chunk_document(doc, _word_offsets)
    assert first.glossary == () and second.glossary == ("NM: NetworkManager",)
    assert second.embed_text("Network") == (
        "Network > 2. Restart\nNM: NetworkManager\n" + second.text
    )
    assert "NetworkManager" not in second.text  # what a reader quotes is the page's own text


def test_the_long_form_finds_the_chunk_that_uses_the_short_form(
    embedder_onnx: Path, tmp_path: Path
) -> None:
    """Through the real ingest, keyword index and embedder: the glossary line is indexed, and
    a document carried over to a new index version keeps it."""
    from appliance.embedding import OnnxEmbedder
    from appliance.retrieval import DocumentInput, Retriever, ingest_folder
    from appliance.retrieval.store import Store
    from appliance.retrieval.versions import STORE_FILE, read_pointer, version_dir

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "drives.md").write_text(
        "# Drives\n\n## Overview\n\nEach conveyor motor runs on a variable frequency drive (VFD).\n\n"
        "## Fault reset\n\nTo clear a trip, hold the VFD reset key for 3 seconds.\n"
    )
    (docs / "other.md").write_text("# Other\n\nThe conveyor belt is cleaned every shift.\n")
    index = tmp_path / "index"
    embedder = OnnxEmbedder(embedder_onnx)
    ingest_folder(docs, index, embedder, progress=False)
    r = Retriever.open(index, embedder)
    try:
        hits = r.search("variable frequency drive reset", k=3, mode="keyword")
        assert "hold the VFD reset key" in hits[0].text
        assert "frequency" not in hits[0].text  # the passage is the page's text alone
        # An API document added later is carried into the next version as it was indexed.
        note = "# Note\n\n## Panel\n\nThe burner management system (BMS) panel.\n\n## Colour\n\nThe BMS panel is grey."  # fmt: skip
        r.add_documents([DocumentInput(name="note.md", text=note)])
        ingest_folder(docs, index, embedder, progress=False, rebuild=True)
        r.refresh()
        store = Store(version_dir(index, read_pointer(index)) / STORE_FILE, writable=False)
        try:
            note = next(d for d in store.documents().values() if d.path == "note.md")
            bodies = store.embed_texts(note.doc_id).values()
        finally:
            store.close()
        assert any("BMS: burner management system" in b for b in bodies)
    finally:
        r.close()
