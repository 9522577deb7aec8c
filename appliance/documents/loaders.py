"""Loaders: PDF, DOCX, HTML, Markdown, TXT and CSV files become structured `Document`s.

Plant documents arrive as whatever the plant has. Each loader keeps the structure retrieval
needs to cite a passage: PDF page numbers (and the outline as sections), DOCX and HTML and
Markdown headings as the section path, CSV rows as records that carry their header. A file
that cannot be read (corrupt, encrypted, unsupported, empty) raises `LoaderError` naming the
file and the reason, so a batch can report it and go on.

Test: .venv/bin/pytest tests/appliance/test_documents.py
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path, PurePosixPath

from appliance.documents.model import Block, Document, sha256_bytes
from appliance.errors import UserFacingError

SUPPORTED_SUFFIXES: dict[str, str] = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".csv": "csv",
}
MAX_FILE_BYTES = 256 * 1024 * 1024
METADATA_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class LoaderError(UserFacingError):
    """A file could not be loaded. `name` is the file, `reason` says why and what to do."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def is_supported(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in SUPPORTED_SUFFIXES


def normalize_metadata(raw: dict | None, where: str) -> dict[str, object]:
    """Metadata values become strings or lists of strings; keys must be identifiers."""
    out: dict[str, object] = {}
    for key, value in (raw or {}).items():
        if not isinstance(key, str) or not METADATA_KEY_RE.match(key):
            raise UserFacingError(
                f"{where}: metadata key {key!r} is not valid; use letters, digits and _"
            )
        if value is None:
            continue
        if isinstance(value, list | tuple):
            vals = [str(v).strip() for v in value if v is not None and str(v).strip()]
            if vals:
                out[key.lower()] = vals
        elif isinstance(value, str | int | float | bool):
            text = str(value).strip()
            if text:
                out[key.lower()] = text
        else:
            raise UserFacingError(
                f"{where}: metadata {key!r} must be a string, number or list, got "
                f"{type(value).__name__}"
            )
    return out


def load_file(file: Path, rel: str, metadata: dict | None = None) -> Document:
    """Load a file from disk. `rel` is the path recorded in the index (relative, POSIX)."""
    file = Path(file)
    try:
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            raise LoaderError(rel, f"is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
        data = file.read_bytes()
    except OSError as exc:
        raise LoaderError(rel, f"cannot be read ({exc.strerror or exc})") from exc
    return load_bytes(data, rel, metadata=metadata)


def load_bytes(data: bytes, name: str, *, metadata: dict | None = None) -> Document:
    """Load a document from its bytes; the loader is chosen by the suffix of `name`.

    Metadata precedence: the file's own (Markdown front matter) < `metadata` (metadata.json,
    the caller). A `title` in the merged metadata becomes the document title.
    """
    suffix = PurePosixPath(name).suffix.lower()
    kind = SUPPORTED_SUFFIXES.get(suffix)
    if kind is None:
        raise LoaderError(
            name,
            f"unsupported file type {suffix or '(no suffix)'!r}; supported: "
            f"{', '.join(sorted(SUPPORTED_SUFFIXES))}",
        )
    if len(data) > MAX_FILE_BYTES:
        raise LoaderError(name, f"is {len(data)} bytes, over the {MAX_FILE_BYTES}-byte limit")
    stem = PurePosixPath(name).stem.replace("_", " ").replace("-", " ").strip() or name
    try:
        title, blocks, own_meta = _LOADERS[kind](data, name)
    except LoaderError:
        raise
    except Exception as exc:  # parsers raise many types on corrupt input
        raise LoaderError(name, f"is corrupt or not a valid {kind} file ({exc})") from exc
    meta = normalize_metadata(own_meta, name)
    meta.update(normalize_metadata(metadata, name))
    blocks = [b for b in blocks if b.text.strip()]
    if not blocks:
        raise LoaderError(name, "contains no extractable text (scanned image or empty file?)")
    doc_title = str(meta.get("title") or title or stem).strip()
    return Document(
        path=name, title=doc_title, blocks=blocks, metadata=meta, content_hash=sha256_bytes(data)
    )


# --- text helpers -------------------------------------------------------------------------

_WS_RE = re.compile(r"[ \t\r\f\v]+")


def _clean(text: str) -> str:
    lines = [_WS_RE.sub(" ", line).strip() for line in text.replace("\x00", "").splitlines()]
    return "\n".join(line for line in lines if line)


def decode_text(data: bytes, name: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if b"\x00" in data[:4096]:
        raise LoaderError(name, "looks binary, not text; save it as UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _row_record(header: list[str], cells: list[str]) -> str:
    """A table row as a self-describing record: 'Tag: P-101; Duty: raw water feed'."""
    cells = [_clean(c).replace("\n", " ") for c in cells]
    if header and len(header) >= len(cells) and any(header):
        parts = [f"{h}: {c}" if h else c for h, c in zip(header, cells, strict=False) if c]
        return "; ".join(parts)
    return " | ".join(c for c in cells if c)


# Entry-level structure: a table row, a definition-list entry or a list item that defines one
# thing ("**Class W (warning):** ...") gets its own block whose section path ends with the
# entry's name, so it becomes its own chunk headed "Document > Section > Name" (appliance.
# documents.chunking) and the reader can put the entry a question names first.
MAX_ENTRY_NAME = 80
_CODE_CELL_RE = re.compile(r"[^\W\d_]{1,6}-?\d+(?:[-/.][^\W_]+)*")


def _entry_name(text: str) -> str:
    name = " ".join(_clean(text).split()).rstrip(":").strip()
    return name if len(name) <= MAX_ENTRY_NAME else name[: MAX_ENTRY_NAME - 1].rstrip() + "…"


def _row_name(cells: list[str]) -> str:
    """A row's name: its first cell, with any code-like cell of the next two (an equipment
    tag beside a part number: 'HX-4471-B / P-101')."""
    cells = [" ".join(_clean(c).split()) for c in cells]
    first = next((c for c in cells if c), "")
    codes = [c for c in cells[1:3] if c and c != first and _CODE_CELL_RE.fullmatch(c)]
    return _entry_name(" / ".join([first, *codes])) if first else ""


def _row_block(
    header: list[str], cells: list[str], section: tuple[str, ...], page: int | None = None
) -> Block | None:
    record = _row_record(header, cells)
    if not record:
        return None
    name = _row_name(cells)
    return Block(record, (*section, name) if name else section, page, "table_row")


# A list item or paragraph that opens with a bold or code term and a colon or dash.
_MD_LEAD_RE = re.compile(r"^\s*(?:[-*+]|\d{1,2}[.)])?\s*(\*\*|__|`)(.+?)\1\s*(?:[:–—-]\s*|(?=\S))")
_MD_ITEM_RE = re.compile(r"^\s*(?:[-*+]|\d{1,2}[.)])\s+")


# --- Markdown -----------------------------------------------------------------------------

_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE_RE = re.compile(r"^(```|~~~)")
_TABLE_SEP_RE = re.compile(r"^\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_LINK_RE = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_EMPH_RE = re.compile(r"(\*\*|__|`)")


def _md_inline(text: str) -> str:
    return _EMPH_RE.sub("", _LINK_RE.sub(r"\1", text))


def parse_front_matter(text: str) -> tuple[dict[str, object], str]:
    """`---\\nkey: value\\n---` at the top of a file -> (metadata, rest of the text)."""
    if not text.startswith("---"):
        return {}, text
    lines = text.split("\n")
    if lines[0].strip() != "---":
        return {}, text
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            break
    else:
        return {}, text
    meta: dict[str, object] = {}
    for line in lines[1:end]:
        if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):
            meta[key.strip()] = [
                v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()
            ]
        else:
            meta[key.strip()] = value.strip("'\"")
    return meta, "\n".join(lines[end + 1 :])


def _split_cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [_md_inline(c.strip()) for c in line.split("|")]


def _load_markdown(data: bytes, name: str) -> tuple[str, list[Block], dict]:
    meta, body = parse_front_matter(decode_text(data, name).replace("\r\n", "\n"))
    title = str(meta.get("title") or "")
    stack: list[tuple[int, str]] = []
    blocks: list[Block] = []
    para: list[str] = []
    lines = body.split("\n")

    def section() -> tuple[str, ...]:
        return tuple(t for _, t in stack)

    def flush() -> None:
        if not para:
            return
        # A list whose items open with a bold or code term: one entry per item.
        items: list[list[str]] = []
        for line in para:
            if _MD_ITEM_RE.match(line) or not items:
                items.append([line])
            else:
                items[-1].append(line)
        if len(items) > 1 and all(_MD_LEAD_RE.match(it[0]) for it in items):
            for it in items:
                name = _entry_name(_md_inline(_MD_LEAD_RE.match(it[0]).group(2)))
                text = _clean(_md_inline("\n".join(it)))
                if text:
                    blocks.append(Block(text=text, section=(*section(), name)))
        else:
            text = _clean(_md_inline("\n".join(para)))
            if text:
                blocks.append(Block(text=text, section=section()))
        para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if _FENCE_RE.match(line.strip()):
            flush()
            fence = line.strip()[:3]
            code = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                code.append(lines[i])
                i += 1
            if "\n".join(code).strip():
                blocks.append(Block(text="\n".join(code).strip(), section=section(), kind="code"))
            i += 1
            continue
        m = _HEADING_RE.match(line)
        if m:
            flush()
            level, text = len(m.group(1)), _md_inline(m.group(2)).strip()
            if level == 1 and ((not blocks and not stack) or text.lower() == title.lower()):
                # The title heading at the top is the document's title, not a section.
                title = title or text
                stack.clear()
            else:
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, text))
            i += 1
            continue
        if (
            line.lstrip().startswith("|")
            and i + 1 < len(lines)
            and _TABLE_SEP_RE.match(lines[i + 1].strip())
        ):
            flush()
            header = _split_cells(line)
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block = _row_block(header, _split_cells(lines[i]), section())
                if block is not None:
                    blocks.append(block)
                i += 1
            continue
        if not line.strip():
            flush()
        else:
            para.append(line)
        i += 1
    flush()
    return title, blocks, meta


# --- plain text and CSV -------------------------------------------------------------------


def _load_text(data: bytes, name: str) -> tuple[str, list[Block], dict]:
    text = decode_text(data, name).replace("\r\n", "\n")
    paras = re.split(r"\n\s*\n", text)
    return "", [Block(text=_clean(p)) for p in paras if p.strip()], {}


def _load_csv(data: bytes, name: str) -> tuple[str, list[Block], dict]:
    text = decode_text(data, name)
    sample = text[:8192]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = [r for r in csv.reader(io.StringIO(text), dialect) if any(c.strip() for c in r)]
    if not rows:
        return "", [], {}
    header = [h.strip() for h in rows[0]]
    blocks = [b for r in rows[1:] if (b := _row_block(header, r, ())) is not None]
    if len(rows) == 1:
        blocks = [Block(text=" | ".join(header), kind="table_row")]
    return "", blocks, {}


# --- HTML ---------------------------------------------------------------------------------

_BOILERPLATE_TAGS = [
    "script", "style", "noscript", "template", "svg", "iframe", "form", "nav", "header",
    "footer", "aside", "button", "select", "input", "link", "meta",
]  # fmt: skip
_BOILERPLATE_ATTR_RE = re.compile(
    r"(^|[\s_-])(nav|navbar|menu|footer|header|sidebar|breadcrumbs?|cookie|banner|social|share|"
    r"advert|ads|skip-link|toc-sidebar|toplang|bottomlang|quickview|toc|navheader|navfooter)"
    r"([\s_-]|$)",
    re.I,
)
_BOX_ATTR_RE = re.compile(
    r"(^|[\s_-])(note|notes|warning|example|tip|caution|important|admonition|callout)([\s_-]|$)",
    re.I,
)
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCK_TAGS = {
    "p", "div", "li", "ul", "ol", "section", "article", "main", "pre", "blockquote", "dl", "dt",
    "dd", "figure", "figcaption", "address", "details", "summary", "body", "html", "tbody",
}  # fmt: skip


def _load_html(data: bytes, name: str) -> tuple[str, list[Block], dict]:
    from bs4 import BeautifulSoup, NavigableString, Tag

    try:
        soup = BeautifulSoup(data, "lxml")
    except Exception:  # lxml missing: the stdlib parser is slower but fine
        soup = BeautifulSoup(data, "html.parser")
    head_title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(_BOILERPLATE_TAGS):
        tag.decompose()
    for tag in soup.find_all(True):
        if tag.decomposed or tag.name in ("html", "body", "main", "article"):
            continue
        attrs = " ".join([*(tag.get("class") or []), tag.get("id") or "", tag.get("role") or ""])
        if attrs.strip() and _BOILERPLATE_ATTR_RE.search(attrs):
            tag.decompose()
    root = soup.find("main") or soup.find("article") or soup.body or soup
    for tag in root.find_all("a", class_="permalink"):
        tag.decompose()
    h1 = root.find("h1")
    # The page's own heading names it better than <title> ("Apache Module mod_ssl" rather
    # than "mod_ssl - Apache HTTP Server Version 2.4").
    title = _heading_text(h1) if h1 else head_title
    stack: list[tuple[int, str]] = []
    blocks: list[Block] = []
    buf: list[str] = []

    def section() -> tuple[str, ...]:
        return tuple(t for _, t in stack)

    def flush() -> None:
        text = _clean("".join(buf))
        buf.clear()
        if text:
            blocks.append(Block(text=text, section=section()))

    def table(node: Tag) -> None:
        rows = [tr.find_all(["th", "td"]) for tr in node.find_all("tr")]
        rows = [r for r in rows if r]
        # A key-value table (each row: one <th> key, then its value): one record, the entry's
        # own fact sheet (a directive's Description / Syntax / Default / Context ...).
        if rows and all(
            len(r) >= 2 and r[0].name == "th" and all(c.name == "td" for c in r[1:]) for r in rows
        ):
            lines = []
            for r in rows:
                key = r[0].get_text(" ", strip=True).rstrip(":").strip()
                value = " ".join(c.get_text(" ", strip=True) for c in r[1:])
                if value:
                    lines.append(f"{key}: {value}" if key else value)
            if lines:
                blocks.append(Block(text=_clean("\n".join(lines)), section=section()))
            return
        header: list[str] = []
        for cells in rows:
            texts = [c.get_text(" ", strip=True) for c in cells]
            if not header and all(c.name == "th" for c in cells):
                header = texts
                continue
            block = _row_block(header, texts, section())
            if block is not None:
                blocks.append(block)

    def definitions(node: Tag) -> None:
        """<dl>: each <dt> with its <dd>s is one entry named by the <dt>."""
        name, parts = "", []

        def emit() -> None:
            text = _clean("\n".join(parts))
            if name or text:
                body = f"{name}: {text}" if name and text else (name or text)
                sec = (*section(), _entry_name(name)) if name else section()
                blocks.append(Block(text=body, section=sec))

        for child in node.find_all(["dt", "dd"], recursive=False):
            if child.name == "dt":
                if parts or name:
                    emit()
                name, parts = " ".join(child.get_text(" ", strip=True).split()), []
            else:
                parts.append(child.get_text("\n", strip=True))
        if parts or name:
            emit()

    def box_table(node: Tag) -> None:
        """A note box laid out as a table (DocBook: icon cell, <th>Nota</th>, the text cell):
        the <th> titles the box like a heading inside it, the other cells are its text."""
        for cell in node.find_all(["th", "td"]):
            if cell.find_parent("table") is not node:
                continue  # a nested table's cells: walk(cell) reads them
            if cell.name == "th":
                flush()
                text = " ".join(cell.get_text(" ", strip=True).split())
                if text:
                    stack.append((len(_HEADINGS) + 1, text))
            else:
                walk(cell)
                flush()

    def walk(node: Tag) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # not comments, doctype, CDATA
                    buf.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            if child.name in _HEADINGS:
                flush()
                level, text = _HEADINGS[child.name], _heading_text(child)
                if level == 1 and ((not blocks and not stack) or text.lower() == title.lower()):
                    stack.clear()
                elif text:
                    while stack and stack[-1][0] >= level:
                        stack.pop()
                    stack.append((level, text))
            elif child.name == "table" and _is_box_layout(child):
                flush()
                box_table(child)
            elif child.name == "table":
                flush()
                table(child)
            elif child.name == "dl" and child.find("dt", recursive=False) is not None:
                flush()
                definitions(child)
            elif child.name == "br":
                buf.append("\n")
            elif child.name in _BLOCK_TAGS:
                flush()
                # A heading inside a note or an example box titles that box only.
                boxed = _BOX_ATTR_RE.search(" ".join(child.get("class") or []))
                saved = list(stack)
                walk(child)
                flush()
                if boxed:
                    stack[:] = saved
            else:
                walk(child)

    walk(root)
    flush()
    return title, blocks, {}


def _is_box_layout(table) -> bool:
    """A table that only lays out a note box (DocBook's admonitions: an icon, the word "Note"
    as its one <th>, the text): the table is the box's own child and has no column headers."""
    parent = table.parent
    classes = " ".join(parent.get("class") or []) if parent is not None else ""
    own_th = [th for th in table.find_all("th") if th.find_parent("table") is table]
    return bool(_BOX_ATTR_RE.search(classes)) and len(own_th) <= 1


def _heading_text(tag) -> str:
    """A heading's words, without permalink marks (¶, #) some generators append."""
    return " ".join(tag.get_text(" ", strip=True).replace("¶", " ").split()).rstrip("#").strip()


# --- DOCX ---------------------------------------------------------------------------------


def _load_docx(data: bytes, name: str) -> tuple[str, list[Block], dict]:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    d = docx.Document(io.BytesIO(data))
    title = (d.core_properties.title or "").strip()
    stack: list[tuple[int, str]] = []
    blocks: list[Block] = []

    def section() -> tuple[str, ...]:
        return tuple(t for _, t in stack)

    for el in d.element.body.iterchildren():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "p":
            p = Paragraph(el, d)
            text = _clean(p.text)
            if not text:
                continue
            style = (p.style.name if p.style is not None else "") or ""
            if style == "Title":
                title = title or text
                continue
            m = re.match(r"Heading (\d)", style)
            if m:
                level = int(m.group(1))
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, text))
                continue
            lead = _docx_lead(p)
            sec = (*section(), _entry_name(lead)) if lead else section()
            blocks.append(Block(text=text, section=sec))
        elif tag == "tbl":
            rows = Table(el, d).rows
            header: list[str] = []
            for r_i, row in enumerate(rows):
                texts = [c.text for c in row.cells]
                if r_i == 0:
                    header = [_clean(t) for t in texts]
                    continue
                block = _row_block(header, texts, section())
                if block is not None:
                    blocks.append(block)
            if len(rows) == 1:
                blocks.append(Block(text=" | ".join(header), section=section(), kind="table_row"))
    return title, blocks, {}


def _docx_lead(p) -> str:
    """The bold term a paragraph opens with ("Anti-recycle timer: ..."), or ""."""
    lead = []
    for run in p.runs:
        if not run.text.strip() and not lead:
            continue
        if run.bold:
            lead.append(run.text)
        else:
            break
    term = "".join(lead).strip()
    rest = p.text.strip()[len(term) :] if p.text.strip().startswith(term) else ""
    if not term or not rest.strip(" :–—-") or len(term) > MAX_ENTRY_NAME:
        return ""
    return term.rstrip(":–—- ").strip()


# --- PDF ----------------------------------------------------------------------------------


def _pdf_sections(reader) -> dict[int, tuple[str, ...]]:
    """Page index -> outline path at the start of that page (empty if no outline)."""
    starts: list[tuple[int, tuple[str, ...]]] = []

    def visit(items, path: tuple[str, ...]) -> None:
        last: tuple[str, ...] = path
        for item in items:
            if isinstance(item, list):
                visit(item, last)
                continue
            try:
                page = reader.get_destination_page_number(item)
            except Exception:
                continue
            last = (*path, str(item.title).strip())
            if page is not None and page >= 0:
                starts.append((page, last))

    try:
        visit(reader.outline, ())
    except Exception:
        return {}
    starts.sort(key=lambda s: s[0])
    out: dict[int, tuple[str, ...]] = {}
    current: tuple[str, ...] = ()
    j = 0
    for page in range(len(reader.pages)):
        while j < len(starts) and starts[j][0] <= page:
            current = starts[j][1]
            j += 1
        out[page] = current
    return out


def _load_pdf(data: bytes, name: str) -> tuple[str, list[Block], dict]:
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        try:
            opened = reader.decrypt("")
        except Exception:
            opened = 0
        if not opened:
            raise LoaderError(
                name, "is encrypted (password protected); save an unprotected copy and ingest it"
            )
    title = ""
    try:
        title = str((reader.metadata or {}).get("/Title") or "").strip()
    except Exception:
        pass
    outline = _pdf_sections(reader)
    pages = [_clean(page.extract_text() or "").split("\n") for page in reader.pages]
    repeated = _running_lines(pages)
    has_outline = any(outline.values())
    blocks: list[Block] = []
    stack: list[tuple[int, str]] = []
    for i, lines in enumerate(pages):
        if outline.get(i):
            stack = [(n, t) for n, t in enumerate(outline[i], start=1)]
        buf: list[str] = []
        for line in lines:
            if not line or _digits_masked(line) in repeated:
                continue
            m = None if has_outline else _PDF_HEADING_RE.match(line)
            if m and len(line.split()) <= 12:
                if buf:
                    blocks.append(Block("\n".join(buf), tuple(t for _, t in stack), i + 1))
                    buf = []
                level = m.group(1).rstrip(".").count(".") + 1
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, line))
                continue
            buf.append(line)
        if buf:
            blocks.append(Block("\n".join(buf), tuple(t for _, t in stack), i + 1))
    return title, blocks, {}


# A numbered heading line: "3. Confined Space Entry Permit (CSE-04)", "3.1 Designated spaces";
# not a numbered step, which ends with punctuation.
_PDF_HEADING_RE = re.compile(r"^(\d{1,2}(?:\.\d{1,2}){0,3}\.?)\s+[A-Z][^.:;!?]*[^.:;!?,\s]$")


def _digits_masked(line: str) -> str:
    return re.sub(r"\d+", "#", line.strip().lower())


def _running_lines(pages: list[list[str]]) -> set[str]:
    """Header/footer lines (page numbers masked) that repeat on most pages."""
    if len(pages) < 3:
        return set()
    counts: dict[str, int] = {}
    for lines in pages:
        edge = {_digits_masked(x) for x in lines[:3] + lines[-3:] if x.strip()}
        for key in edge:
            counts[key] = counts.get(key, 0) + 1
    return {key for key, n in counts.items() if n > len(pages) / 2}


_LOADERS = {
    "markdown": _load_markdown,
    "text": _load_text,
    "csv": _load_csv,
    "html": _load_html,
    "docx": _load_docx,
    "pdf": _load_pdf,
}
