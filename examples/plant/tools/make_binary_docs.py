# Run from examples/plant/:  PYTHONPATH=/tmp/docgen python3 tools/make_binary_docs.py   (needs: python3 -m pip install --target /tmp/docgen reportlab python-docx)
"""Build the binary corpus documents of the example plant from Markdown sources.

tools/sources/safety-data-and-permits.md  ->  docs/safety-data-and-permits.pdf
tools/sources/chiller-service-bulletin.md ->  docs/chiller-service-bulletin.docx

The sources use a small Markdown subset: YAML-like front matter, '#', '##', '###'
headings, paragraphs, '- ' bullets, '1. ' numbered items, pipe tables, **bold**,
and '<!-- pagebreak -->' (PDF only: forces a new page, so that facts land on a
known page). The sources live outside docs/ so their text is not indexed twice.
"""

from __future__ import annotations

import datetime as _dt
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLANT = HERE.parent
SOURCES = HERE / "sources"
DOCS = PLANT / "docs"

PAGEBREAK = "<!-- pagebreak -->"


# --------------------------------------------------------------------------- parsing


def parse(path: Path) -> tuple[dict, list[tuple]]:
    """Return (front_matter, blocks). Block kinds: h1, h2, h3, p, ul, ol, table, pagebreak."""
    text = path.read_text(encoding="utf-8")
    meta: dict = {}
    if text.startswith("---\n"):
        head, _, text = text[4:].partition("\n---\n")
        for line in head.splitlines():
            key, _, value = line.partition(":")
            meta[key.strip()] = value.strip()
    blocks: list[tuple] = []
    para: list[str] = []
    items: list[str] = []
    item_kind = ""
    rows: list[list[str]] = []

    def flush() -> None:
        nonlocal para, items, rows, item_kind
        if para:
            blocks.append(("p", " ".join(para)))
            para = []
        if items:
            blocks.append((item_kind, items))
            items = []
        if rows:
            blocks.append(("table", rows))
            rows = []

    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip():
            flush()
            continue
        if line.strip() == PAGEBREAK:
            flush()
            blocks.append(("pagebreak", None))
            continue
        m = re.match(r"^(#{1,3}) (.*)$", line)
        if m:
            flush()
            blocks.append((f"h{len(m.group(1))}", m.group(2).strip()))
            continue
        if line.startswith("|"):
            if para or items:
                flush()
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                continue  # separator row
            rows.append(cells)
            continue
        m = re.match(r"^(- |\d+\. )(.*)$", line)
        if m:
            kind = "ul" if m.group(1) == "- " else "ol"
            if para or rows or (items and kind != item_kind):
                flush()
            item_kind = kind
            items.append(m.group(2).strip())
            continue
        if items and line.startswith("  "):
            items[-1] += " " + line.strip()
            continue
        if items or rows:
            flush()
        para.append(line.strip())
    flush()
    return meta, blocks


def split_bold(text: str) -> list[tuple[str, bool]]:
    parts = re.split(r"(\*\*[^*]+\*\*)", text)
    out = []
    for part in parts:
        if not part:
            continue
        if part.startswith("**") and part.endswith("**"):
            out.append((part[2:-2], True))
        else:
            out.append((part, False))
    return out


# --------------------------------------------------------------------------- PDF

# Standard PDF fonts only cover cp1252; keep the sources inside it.
PDF_REPLACE = {"\u2212": "-", "\u2264": "<=", "\u2265": ">=", "\u2192": "->", "\u2009": " "}


def pdf_text(text: str) -> str:
    for a, b in PDF_REPLACE.items():
        text = text.replace(a, b)
    try:
        text.encode("cp1252")
    except UnicodeEncodeError as exc:  # fail loudly instead of printing black boxes
        raise SystemExit(f"character not printable with the standard PDF fonts: {exc}") from exc
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "".join(f"<b>{t}</b>" if b else t for t, b in split_bold(text))


def build_pdf(src: Path, dst: Path) -> int:
    from reportlab import rl_config

    rl_config.invariant = 1  # reproducible output (no timestamps / random ids)
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import (
        ListFlowable,
        ListItem,
        PageBreak,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    meta, blocks = parse(src)
    title = meta.get("title", src.stem)
    ss = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=ss["BodyText"], fontName="Helvetica", fontSize=9.5, leading=12.5, spaceAfter=4)
    cell = ParagraphStyle("cell", parent=body, fontSize=8.5, leading=10.5, spaceAfter=0)
    cell_b = ParagraphStyle("cellb", parent=cell, fontName="Helvetica-Bold")
    h1 = ParagraphStyle("h1", parent=ss["Heading1"], fontName="Helvetica-Bold", fontSize=16, leading=20, spaceAfter=8)
    h2 = ParagraphStyle("h2", parent=ss["Heading2"], fontName="Helvetica-Bold", fontSize=12.5, leading=16, spaceBefore=8, spaceAfter=4)
    h3 = ParagraphStyle("h3", parent=ss["Heading3"], fontName="Helvetica-Bold", fontSize=10.5, leading=13, spaceBefore=6, spaceAfter=3)

    story = []
    for kind, val in blocks:
        if kind == "h1":
            story.append(Paragraph(pdf_text(val), h1))
        elif kind == "h2":
            story.append(Paragraph(pdf_text(val), h2))
        elif kind == "h3":
            story.append(Paragraph(pdf_text(val), h3))
        elif kind == "p":
            story.append(Paragraph(pdf_text(val), body))
        elif kind in ("ul", "ol"):
            story.append(
                ListFlowable(
                    [ListItem(Paragraph(pdf_text(i), body), leftIndent=12) for i in val],
                    bulletType="bullet" if kind == "ul" else "1",
                    start=None if kind == "ol" else "\u2022",
                    leftIndent=12,
                    bulletFontSize=8,
                )
            )
        elif kind == "table":
            data = [[Paragraph(pdf_text(c), cell_b if r == 0 else cell) for c in row] for r, row in enumerate(val)]
            ncol = len(val[0])
            width = A4[0] - 36 * mm
            t = Table(data, colWidths=[width / ncol] * ncol, repeatRows=1)
            t.setStyle(
                TableStyle(
                    [
                        ("GRID", (0, 0), (-1, -1), 0.4, colors.grey),
                        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dde4ee")),
                        ("VALIGN", (0, 0), (-1, -1), "TOP"),
                        ("TOPPADDING", (0, 0), (-1, -1), 2),
                        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                    ]
                )
            )
            story.append(t)
            story.append(Spacer(1, 5))
        elif kind == "pagebreak":
            story.append(PageBreak())

    footer = f"Halden Water Treatment & Bottling - Riverside - {title} - Rev {meta.get('revision', '-')}"

    def on_page(canvas, doc):
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.drawString(18 * mm, 10 * mm, footer)
        canvas.drawRightString(A4[0] - 18 * mm, 10 * mm, f"Page {doc.page}")
        canvas.restoreState()

    doc = SimpleDocTemplate(
        str(dst),
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=18 * mm,
        title=title,
        author="Halden Water Treatment & Bottling (fictional example)",
        subject=meta.get("doc_type", ""),
    )
    doc.build(story, onFirstPage=on_page, onLaterPages=on_page)
    return doc.page


# --------------------------------------------------------------------------- DOCX


def add_runs(par, text: str) -> None:
    for t, bold in split_bold(text):
        run = par.add_run(t)
        run.bold = bold or None


def build_docx(src: Path, dst: Path) -> None:
    import docx
    from docx.shared import Pt

    meta, blocks = parse(src)
    d = docx.Document()
    d.styles["Normal"].font.name = "Calibri"
    d.styles["Normal"].font.size = Pt(10.5)
    cp = d.core_properties
    cp.title = meta.get("title", src.stem)
    cp.author = "Halden Water Treatment & Bottling (fictional example)"
    cp.subject = meta.get("doc_type", "")
    fixed = _dt.datetime(2024, 3, 15, 8, 0, 0)
    cp.created = fixed
    cp.modified = fixed
    cp.last_modified_by = "make_binary_docs.py"
    cp.revision = 1

    # '#' -> Title, '##' -> Heading 1, '###' -> Heading 2
    for kind, val in blocks:
        if kind == "h1":
            d.add_heading(val, level=0)
        elif kind == "h2":
            d.add_heading(val, level=1)
        elif kind == "h3":
            d.add_heading(val, level=2)
        elif kind == "p":
            add_runs(d.add_paragraph(), val)
        elif kind in ("ul", "ol"):
            style = "List Bullet" if kind == "ul" else "List Number"
            for item in val:
                add_runs(d.add_paragraph(style=style), item)
        elif kind == "table":
            table = d.add_table(rows=len(val), cols=len(val[0]))
            table.style = "Table Grid"
            for r, row in enumerate(val):
                for c, text in enumerate(row):
                    cell_par = table.cell(r, c).paragraphs[0]
                    add_runs(cell_par, f"**{text}**" if r == 0 else text)
            d.add_paragraph()
        elif kind == "pagebreak":
            d.add_page_break()
    d.save(str(dst))
    _normalise_zip(dst)


def _normalise_zip(path: Path) -> None:
    """Rewrite the .docx zip with fixed entry timestamps so rebuilds are byte-identical."""
    import zipfile

    with zipfile.ZipFile(path) as zin:
        entries = [(info, zin.read(info.filename)) for info in zin.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for info, data in entries:
            fixed = zipfile.ZipInfo(info.filename, date_time=(2024, 3, 15, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            zout.writestr(fixed, data)


def main() -> int:
    DOCS.mkdir(exist_ok=True)
    pdf_dst = DOCS / "safety-data-and-permits.pdf"
    pages = build_pdf(SOURCES / "safety-data-and-permits.md", pdf_dst)
    print(f"wrote {pdf_dst.relative_to(PLANT)} ({pages} pages)")
    docx_dst = DOCS / "chiller-service-bulletin.docx"
    build_docx(SOURCES / "chiller-service-bulletin.md", docx_dst)
    print(f"wrote {docx_dst.relative_to(PLANT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
