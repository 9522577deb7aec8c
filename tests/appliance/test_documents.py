# Run: .venv/bin/pytest tests/appliance/test_documents.py
"""Loaders (every format, structure kept, bad files named) and token-sized chunking."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from appliance.documents import (
    Block,
    ChunkingConfig,
    Document,
    LoaderError,
    chunk_document,
    load_bytes,
    load_file,
    tokenizer_offsets,
)
from appliance.documents.loaders import parse_front_matter


def make_pdf(pages: list[list[str]]) -> bytes:
    """A minimal valid PDF: one Helvetica text line per entry, one page per list."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objects = ["", "<< /Type /Catalog /Pages 2 0 R >>", "", "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]  # fmt: skip
    kids = []
    for lines in pages:
        stream = (
            "BT /F1 11 Tf 14 TL 72 760 Td " + " ".join(f"({esc(x)}) Tj T*" for x in lines) + " ET"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
        objects.append(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Contents {len(objects) - 1} 0 R /Resources << /Font << /F1 3 0 R >> >> >>"
        )
        kids.append(len(objects) - 1)
    objects[2] = (
        f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} >>"
    )
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objects[1:], start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects)}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects)} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def encrypt_pdf(data: bytes, password: str = "secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=password, owner_password=password, algorithm="AES-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def make_docx() -> bytes:
    import docx

    d = docx.Document()
    d.core_properties.title = "Filler manual"
    d.add_heading("Cleaning", level=1)
    d.add_paragraph("Rinse the filler FA-1 with hot water after every shift.")
    d.add_heading("Valves", level=2)
    d.add_paragraph("Replace the fill valve seal kit HX-8010-V every 2,000 hours.")
    table = d.add_table(rows=2, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "Code", "Meaning"
    table.rows[1].cells[0].text, table.rows[1].cells[1].text = "E-40", "Infeed bottle jam"
    d.add_heading("Lubrication", level=1)
    d.add_paragraph("Grease the capper CA-1 weekly.")
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def test_markdown_front_matter_headings_and_tables() -> None:
    md = (
        "---\ntitle: Pump manual\ndoc_type: manual\nline: [A, B]\nrevision: 'C'\n---\n"
        "# Pump manual\n\nIntro text.\n\n## 4. Seals\n\n### 4.1 Removal\n\nUndo the nut.\n\n"
        "| Tag | Torque |\n|---|---|\n| P-101 | 120 N·m |\n\n```\ncode stays\n```\n"
        "## 5. Bearings\n\nGrease them.\n"
    )
    doc = load_bytes(md.encode(), "manuals/pump.md")
    assert doc.title == "Pump manual"
    assert doc.metadata == {
        "title": "Pump manual", "doc_type": "manual", "line": ["A", "B"], "revision": "C"
    }  # fmt: skip
    by_text = {b.text: b for b in doc.blocks}
    assert by_text["Intro text."].section == ()
    assert by_text["Undo the nut."].section == ("4. Seals", "4.1 Removal")
    row = by_text["Tag: P-101; Torque: 120 N·m"]
    # A table row is an entry of its own, named by its first cell.
    assert row.kind == "table_row" and row.section == ("4. Seals", "4.1 Removal", "P-101")
    assert by_text["code stays"].kind == "code"
    assert by_text["Grease them."].section == ("5. Bearings",)


def test_front_matter_needs_closing_fence() -> None:
    assert parse_front_matter("---\ntitle: x\nno end") == ({}, "---\ntitle: x\nno end")


def test_text_and_csv() -> None:
    doc = load_bytes(b"First para.\n\nSecond para\nwith two lines.", "notes/shift-log.txt")
    assert [b.text for b in doc.blocks] == ["First para.", "Second para\nwith two lines."]
    assert doc.title == "shift log"
    csv_doc = load_bytes(b"code;meaning\nE-47;Vacuum low\nE-48;Glue cold\n", "codes.csv")
    assert [b.text for b in csv_doc.blocks] == ["code: E-47; meaning: Vacuum low", "code: E-48; meaning: Glue cold"]  # fmt: skip
    assert all(b.kind == "table_row" for b in csv_doc.blocks)
    latin = load_bytes("Temp 80 \xb0C".encode("cp1252"), "old.txt")
    assert latin.blocks[0].text == "Temp 80 °C"


def test_html_drops_boilerplate_and_keeps_headings() -> None:
    html = b"""<html><head><title>Capper guide</title><script>var x=1;</script></head><body>
    <nav><a href="/">Home</a> | <a href="/x">Menu link</a></nav>
    <div class="cookie-banner">We use cookies</div>
    <main><h1>Capper guide</h1><p>Set torque to <b>2.1 N&middot;m</b>.</p>
    <h2>Faults</h2><ul><li>E-41 cap chute empty</li><li>E-42 torque out of range</li></ul>
    <table><tr><th>Code</th><th>Action</th></tr><tr><td>E-41</td><td>Refill caps</td></tr></table>
    </main><footer>Copyright 2024</footer></body></html>"""
    doc = load_bytes(html, "capper.html")
    text = "\n".join(b.text for b in doc.blocks)
    assert doc.title == "Capper guide"
    assert "cookies" not in text and "Menu link" not in text and "Copyright" not in text
    assert "var x" not in text
    assert "Set torque to 2.1 N·m." in text
    faults = [b for b in doc.blocks if b.section[:1] == ("Faults",)]
    assert any("E-42 torque out of range" in b.text for b in faults)
    assert any(
        b.kind == "table_row"
        and b.text == "Code: E-41; Action: Refill caps"
        and b.section == ("Faults", "E-41")
        for b in faults
    )


def test_docx_headings_tables_title() -> None:
    doc = load_bytes(make_docx(), "filler.docx")
    assert doc.title == "Filler manual"
    by_text = {b.text: b for b in doc.blocks}
    assert by_text["Replace the fill valve seal kit HX-8010-V every 2,000 hours."].section == ("Cleaning", "Valves")  # fmt: skip
    assert by_text["Code: E-40; Meaning: Infeed bottle jam"].kind == "table_row"
    assert by_text["Grease the capper CA-1 weekly."].section == ("Lubrication",)


def test_pdf_pages_sections_and_running_headers() -> None:
    pages = [
        ["ACME plant - Booklet", "Page 1", "1. Permits", "A permit is valid for one shift."],
        [
            "ACME plant - Booklet",
            "Page 2",
            "2. Hot work",
            "2.1 Fire watch",
            "Stay 60 minutes after work.",
        ],  # fmt: skip
        ["ACME plant - Booklet", "Page 3", "Internal emergency number is 2222."],
    ]
    doc = load_bytes(make_pdf(pages), "booklet.pdf", metadata={"title": "Safety booklet"})
    assert doc.title == "Safety booklet"
    assert [b.page for b in doc.blocks] == [1, 2, 3]
    assert doc.blocks[1].section == ("2. Hot work", "2.1 Fire watch")
    assert doc.blocks[2].section == ("2. Hot work", "2.1 Fire watch")  # carries over pages
    assert all("ACME plant" not in b.text and "Page" not in b.text for b in doc.blocks)


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("broken.pdf", b"%PDF-1.4\n1 0 obj garbage", "corrupt"),
        ("locked.pdf", None, "encrypted"),
        ("broken.docx", b"PK\x03\x04 not really a zip", "corrupt"),
        ("tool.exe", b"MZ\x90\x00", "unsupported"),
        ("blob.txt", b"\x00\x01\x02binary", "binary"),
        ("empty.md", b"   \n\n", "no extractable text"),
    ],
)
def test_bad_files_raise_loader_error_naming_the_file(name: str, data: bytes | None, reason: str) -> None:  # fmt: skip
    if data is None:
        data = encrypt_pdf(make_pdf([["secret text"]]))
    with pytest.raises(LoaderError) as err:
        load_bytes(data, f"docs/{name}")
    assert err.value.name == f"docs/{name}"
    assert reason in str(err.value) and f"docs/{name}" in str(err.value)


def test_load_file_reports_unreadable(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="missing.md: cannot be read"):
        load_file(tmp_path / "missing.md", "missing.md")


def _word_offsets(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


def test_chunks_respect_sections_pages_rows_and_size() -> None:
    sentences = " ".join(f"Sentence number {i} has six words." for i in range(40))
    doc = Document(
        path="a.md",
        title="Manual",
        blocks=[
            Block(sentences, section=("1. Long",)),
            Block("Short section text.", section=("2. Short",)),
            Block("Tag: P-101; Torque: 120", section=("2. Short",), kind="table_row"),
            Block("Page two text.", page=2),
        ],
    )
    cfg = ChunkingConfig(max_tokens=30, overlap_tokens=6)
    chunks = chunk_document(doc, _word_offsets, cfg)
    full, _ = doc.full_text()
    long_chunks = [c for c in chunks if c.section == ("1. Long",)]
    assert len(long_chunks) > 5
    for c in chunks:
        assert len(_word_offsets(c.text)) <= cfg.max_tokens
        assert full[c.char_start : c.char_end].strip() == c.text
    # Overlap: each long chunk starts with the previous chunk's last sentence.
    for a, b in zip(long_chunks, long_chunks[1:], strict=False):
        last_sentence = a.text.rsplit("Sentence", 1)[1]
        assert b.text.startswith("Sentence" + last_sentence)
    kinds = [(c.section, c.kind, c.page) for c in chunks[len(long_chunks) :]]
    assert kinds == [
        (("2. Short",), "text", None),
        (("2. Short",), "table_row", None),
        ((), "text", 2),
    ]
    assert chunks[0].embed_text("Manual").startswith("Manual > 1. Long\n")
    assert [c.ord for c in chunks] == list(range(len(chunks)))


def test_overlong_sentence_is_cut_at_token_boundaries() -> None:
    words = " ".join(f"w{i}" for i in range(100))
    doc = Document(path="x.txt", title="", blocks=[Block(words)])
    chunks = chunk_document(doc, _word_offsets, ChunkingConfig(max_tokens=40, overlap_tokens=10))
    assert [len(c.text.split()) for c in chunks] == [40, 40, 40]
    assert chunks[1].text.split()[0] == "w30"  # 10 tokens of overlap
    assert chunks[-1].text.split()[-1] == "w99"


def test_chunking_with_the_embedder_tokenizer(embedder_onnx: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(embedder_onnx / "tokenizer.json"))
    md = "# T\n\n" + " ".join(f"Check valve V-{i} for leaks before start-up." for i in range(60))
    doc = load_bytes(md.encode(), "v.md")
    chunks = chunk_document(doc, tokenizer_offsets(tok), ChunkingConfig(max_tokens=64, overlap_tokens=12))  # fmt: skip
    sizes = [len(tok.encode(c.text, add_special_tokens=False).ids) for c in chunks]
    assert len(chunks) > 3 and max(sizes) <= 64


def test_chunking_config_validation() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        ChunkingConfig(max_tokens=4)
    with pytest.raises(ValueError, match="overlap_tokens"):
        ChunkingConfig(max_tokens=64, overlap_tokens=40)


# --- entry-level chunks on real documents ---------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
APACHE = REPO / "examples" / "apache" / "docs"
PLANT = REPO / "examples" / "plant" / "docs"


def _chunks(path: Path, max_tokens: int = 160):
    doc = load_file(path, path.name)
    cfg = ChunkingConfig(max_tokens=max_tokens, overlap_tokens=min(32, max_tokens // 4))
    return doc, chunk_document(doc, _word_offsets, cfg)


def test_html_directive_is_one_entry_with_its_fact_sheet() -> None:
    doc, chunks = _chunks(APACHE / "core.html")
    assert doc.title == "Apache Core Features"
    (first, *_rest) = [c for c in chunks if c.section[-1:] == ("KeepAliveTimeout Directive",)]
    assert first.header(doc.title) == "Apache Core Features > KeepAliveTimeout Directive"
    # The Description / Syntax / Default / Context table is one record, read with its text.
    assert first.text.startswith("Description: Amount of time the server will wait")
    assert "\nDefault: KeepAliveTimeout 5\n" in first.text
    assert "Context: server config, virtual host" in first.text
    assert "Timeout 60" not in first.text  # the neighbouring directive is another entry
    # No permalink marks, language bars or directive lists in the text or the headings.
    assert not any("¶" in c.header(doc.title) or "Available Languages" in c.text for c in chunks)


def test_long_entry_is_split_and_every_piece_keeps_its_name() -> None:
    doc, chunks = _chunks(APACHE / "core.html", max_tokens=48)
    pieces = [c for c in chunks if "ErrorDocument Directive" in c.section]
    assert len(pieces) >= 4
    assert all(c.embed_text(doc.title).startswith("Apache Core Features > ErrorDocument Directive")
               for c in pieces)  # fmt: skip


def test_html_table_rows_and_definition_lists_are_entries() -> None:
    doc, chunks = _chunks(APACHE / "mod_log_config.html")
    row = next(c for c in chunks if c.section[-1:] == ("%k",))
    assert row.kind == "table_row" and "keepalive requests" in row.text
    html = b"""<html><body><h1>Flags</h1><h2>Worker flags</h2><dl>
      <dt>N</dt><dd>Worker is in drain mode.</dd>
      <dt>D</dt><dd><p>Worker is disabled.</p><p>It takes no requests.</p></dd></dl>
      <div class="note"><h3>Note</h3><p>Boxed.</p></div><p>After the box.</p></body></html>"""
    doc = load_bytes(html, "flags.html")
    by_section = {b.section: b.text for b in doc.blocks}
    assert by_section[("Worker flags", "N")] == "N: Worker is in drain mode."
    assert by_section[("Worker flags", "D")] == "D: Worker is disabled.\nIt takes no requests."
    # A heading inside a note box titles the box only.
    assert by_section[("Worker flags", "Note")] == "Boxed."
    assert by_section[("Worker flags",)] == "After the box."


def test_docbook_contents_navigation_and_note_tables_are_not_entries() -> None:
    # DocBook HTML (the Debian Reference): a table of contents, navigation tables and note
    # boxes laid out as tables (icon cell, <th>Nota</th>, the text cell).
    html = """<html><body>
      <div class="navheader"><table summary="Navigation header"><tr><th colspan="3">Cap 5</th></tr>
        <tr><td><a href="ch04.html">Anterior</a></td><th></th><td>Siguiente</td></tr></table></div>
      <div class="chapter"><h1>Capítulo 5. Red</h1>
      <div class="toc"><p><strong>Tabla de contenidos</strong></p>
        <dl class="toc"><dt><span class="section"><a href="#a">5.1. Lo básico</a></span></dt></dl></div>
      <div class="section"><h2>5.1. Lo básico</h2><p>Texto de la sección.</p>
      <div class="note"><table border="0" summary="Note">
        <tr><td rowspan="2"><img alt="[Nota]" src="note.png"/></td><th>Nota</th></tr>
        <tr><td><p>El grupo «netdev» configura la red.</p><table><tr><th>a</th><th>b</th></tr>
          <tr><td>1</td><td>2</td></tr></table></td></tr></table></div>
      <p>Después de la nota.</p></div></div>
      <div class="navfooter"><table><tr><td>Capítulo 4</td><td>Capítulo 6</td></tr></table></div>
      </body></html>""".encode()
    doc = load_bytes(html, "ch05.html")
    text = "\n".join(b.text for b in doc.blocks)
    assert "Tabla de contenidos" not in text and "Anterior" not in text
    assert "Capítulo 4" not in text and "Capítulo 6" not in text
    by_section = {b.section: b.text for b in doc.blocks if b.kind == "text"}
    # The note's <th> titles the box like a heading inside it; its text is not a table row.
    assert by_section[("5.1. Lo básico", "Nota")] == "El grupo «netdev» configura la red."
    assert by_section[("5.1. Lo básico",)].endswith("Después de la nota.")
    assert not any(b.kind == "table_row" and b.text == "Nota" for b in doc.blocks)
    # A real table inside the note is still read as a table, once.
    rows = [b for b in doc.blocks if b.kind == "table_row"]
    assert [b.text for b in rows] == ["a: 1; b: 2"]


def test_csv_rows_carry_their_part_number_and_equipment_tag() -> None:
    doc, chunks = _chunks(PLANT / "spare-parts-list.csv")
    seal = next(c for c in chunks if "stock_location: MS-A2-04" in c.text)
    assert seal.header(doc.title) == "spare parts list > HX-4471-B / P-101"
    assert len(chunks) == len(doc.blocks)  # one row, one chunk


def test_markdown_code_table_and_defined_terms_are_entries() -> None:
    doc, chunks = _chunks(PLANT / "alarm-fault-codes.md")
    e47 = next(c for c in chunks if c.section and c.section[-1].startswith("E-47 "))
    # The code, with the equipment tag that stands beside it.
    assert e47.header(doc.title) == (
        "Alarm and Fault Code Reference > 2. Alarm code table > E-47 / LB-2"
    )
    assert e47.text.startswith("Code: E-47;")
    classes = [c.section[-1] for c in chunks if c.section[-2:-1] == ("1.1 Alarm classes",)]
    assert classes == ["Class W (warning)", "Class A (alarm)", "Class T (trip)"]


def test_docx_rows_and_bold_terms_are_entries() -> None:
    doc, chunks = _chunks(PLANT / "chiller-service-bulletin.docx")
    row = next(c for c in chunks if c.text.startswith("Setting: Minimum run time"))
    assert row.section[-1] == "Minimum run time" and "New value: 180 s" in row.text
    import docx

    d = docx.Document()
    d.add_heading("Terms", level=1)
    p = d.add_paragraph()
    p.add_run("Anti-recycle timer:").bold = True
    p.add_run(" the least time from one compressor start to the next.")
    d.add_paragraph("Plain paragraph.")
    buf = io.BytesIO()
    d.save(buf)
    blocks = load_bytes(buf.getvalue(), "terms.docx").blocks
    assert blocks[0].section == ("Terms", "Anti-recycle timer") and blocks[1].section == ("Terms",)


def test_pdf_chunks_are_headed_by_their_section_and_page() -> None:
    doc, chunks = _chunks(PLANT / "safety-data-and-permits.pdf")
    fire = next(c for c in chunks if "fire watch continues for 60 minutes" in c.text)
    assert fire.header(doc.title) == (
        "Safety Data and Permits Booklet > 2. Hot Work Permit (HWP-03) > 2.3 Fire watch"
    )
    assert fire.page == 1
