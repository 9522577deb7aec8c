# Run from examples/plant/:  PYTHONPATH=/tmp/docgen python3 tools/check_dataset.py   (pypdf and python-docx are needed for the PDF/DOCX checks)
"""Consistency checks for the example plant data set.

- every JSONL line parses and has the expected keys; counts
- Markdown word count and front matter
- every eval source exists and every expected fact occurs in the source text
  (PDF/DOCX text is extracted; whitespace is normalised); PDF facts are on the stated page
- no eval question duplicates (or nearly duplicates) a train question
- tags, part numbers, LOTO points and alarm codes quoted in QA answers exist in the corpus
- "trap" names used by unanswerable questions do not occur in the corpus
Exit status 1 on any failure.
"""

from __future__ import annotations

import csv
import difflib
import json
import re
import sys
from pathlib import Path

PLANT = Path(__file__).resolve().parent.parent
DOCS = PLANT / "docs"
FRONT_KEYS = ("title", "doc_type", "site", "line", "revision")
DOC_TYPES = {"manual", "sop", "alarm_table", "safety", "parts", "utilities"}

errors: list[str] = []


def fail(msg: str) -> None:
    errors.append(msg)


def norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def pdf_pages(path: Path) -> list[str]:
    from pypdf import PdfReader

    return [norm(p.extract_text() or "") for p in PdfReader(str(path)).pages]


def docx_text(path: Path) -> str:
    import docx

    d = docx.Document(str(path))
    parts = [p.text for p in d.paragraphs]
    for t in d.tables:
        for row in t.rows:
            parts.extend(c.text for c in row.cells)
    return norm("\n".join(parts))


def doc_text(rel: str) -> str:
    path = PLANT / rel
    if path.suffix == ".pdf":
        return " ".join(pdf_pages(path))
    if path.suffix == ".docx":
        return docx_text(path)
    return norm(path.read_text(encoding="utf-8").replace("**", ""))


def load_jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            fail(f"{path.name}:{i}: empty line")
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            fail(f"{path.name}:{i}: {exc}")
    return rows


def qnorm(q: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", q.lower()).strip()


def main() -> int:
    # ---- Markdown corpus
    md_files = sorted(DOCS.glob("*.md"))
    words = 0
    lines_seen = set()
    for f in md_files:
        text = f.read_text(encoding="utf-8")
        words += len(text.split())
        m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
        if not m:
            fail(f"{f.name}: no front matter")
            continue
        meta = dict(line.split(": ", 1) for line in m.group(1).splitlines())
        if tuple(meta) != FRONT_KEYS:
            fail(f"{f.name}: front matter keys {tuple(meta)}")
        if meta.get("doc_type") not in DOC_TYPES or meta.get("line") not in {"A", "B", "all"}:
            fail(f"{f.name}: bad doc_type/line {meta}")
        lines_seen.add(meta.get("line"))
    if words < 15000:
        fail(f"Markdown word count {words} < 15000")
    if not {"A", "B"} <= lines_seen:
        fail("need at least one line-A and one line-B document")

    meta_json = json.loads((DOCS / "metadata.json").read_text(encoding="utf-8"))
    for rel, meta in meta_json.items():
        if not (DOCS / rel).exists():
            fail(f"metadata.json: {rel} missing")
        if set(meta) != {"title", "doc_type", "site", "line"} or meta["doc_type"] not in DOC_TYPES:
            fail(f"metadata.json: bad entry {rel}")

    with open(DOCS / "spare-parts-list.csv", encoding="utf-8", newline="") as fh:
        parts = list(csv.DictReader(fh))
    if len(parts) < 40:
        fail(f"spare parts rows {len(parts)} < 40")

    pdf = DOCS / "safety-data-and-permits.pdf"
    pages = pdf_pages(pdf)
    if len(pages) < 3 or any(len(p) < 200 for p in pages):
        fail(f"PDF has {len(pages)} pages / too little text on a page")

    corpus = " ".join(doc_text(str(p.relative_to(PLANT))) for p in sorted(DOCS.iterdir()) if p.suffix in {".md", ".csv", ".pdf", ".docx"})

    # ---- QA files
    train = load_jsonl(PLANT / "qa" / "train.jsonl")
    evals = load_jsonl(PLANT / "qa" / "eval.jsonl")
    for i, r in enumerate(train, 1):
        msgs = r.get("messages", [])
        if [m.get("role") for m in msgs] != ["user", "assistant"] or not all(m.get("content") for m in msgs):
            fail(f"train:{i}: bad messages")
        if not (PLANT / r.get("source", "")).exists():
            fail(f"train:{i}: source {r.get('source')} missing")
    if len(train) < 160:
        fail(f"train has {len(train)} < 160 lines")

    ids = [r.get("id") for r in evals]
    if len(set(ids)) != len(ids):
        fail("duplicate eval ids")
    cache: dict[str, str] = {}
    n_binary = n_code = n_filter = n_unans = 0
    for r in evals:
        rid = r.get("id")
        for key in ("id", "question", "expected_facts", "source", "answerable", "reference_answer"):
            if key not in r:
                fail(f"eval {rid}: missing {key}")
        if not r["answerable"]:
            n_unans += 1
            if r["expected_facts"] or r["source"] is not None:
                fail(f"eval {rid}: unanswerable item must have no facts and source null")
            continue
        src = r["source"]
        if not (PLANT / src).exists():
            fail(f"eval {rid}: source {src} missing")
            continue
        if not r["expected_facts"]:
            fail(f"eval {rid}: no expected facts")
        text = cache.setdefault(src, doc_text(src))
        for fact in r["expected_facts"]:
            if fact not in text:
                fail(f"eval {rid}: fact {fact!r} not in {src}")
        if "page" in r:
            page_text = pages[r["page"] - 1]
            for fact in r["expected_facts"]:
                if fact not in page_text:
                    fail(f"eval {rid}: fact {fact!r} not on PDF page {r['page']}")
        if Path(src).suffix in {".pdf", ".docx", ".csv"}:
            n_binary += 1
        if re.search(r"\bE-\d\d\b", r["question"]):
            n_code += 1
        if "filters" in r:
            n_filter += 1
    for label, have, need in (("binary/CSV", n_binary, 6), ("code lookup", n_code, 5), ("filtered", n_filter, 2), ("unanswerable", n_unans, 12)):
        if have < need:
            fail(f"eval: {label} questions {have} < {need}")
    if len(evals) < 45:
        fail(f"eval has {len(evals)} < 45 lines")

    # ---- overlap between eval and train questions
    train_q = [qnorm(r["messages"][0]["content"]) for r in train]
    train_set = set(train_q)
    worst = (0.0, "", "")
    for r in evals:
        q = qnorm(r["question"])
        if q in train_set:
            fail(f"eval {r['id']}: question duplicates a train question")
        for tq in train_q:
            ratio = difflib.SequenceMatcher(None, q, tq).ratio()
            if ratio > worst[0]:
                worst = (ratio, r["id"], tq)
    if worst[0] > 0.85:
        fail(f"eval {worst[1]} nearly duplicates train question {worst[2]!r} ({worst[0]:.2f})")

    # ---- identifiers quoted in QA must exist in the corpus; traps must not
    ident = re.compile(r"\b(?:HX-\d{4}-[A-Z]{1,2}|LUB-\d{4}|BRG-\d{4}-\w+|LP-\d\d|E-\d\d|[A-Z]{1,3}-\d{3}[A-Z]?|QF-\d\d|[A-Z]{2,3}-0\d)\b")
    qa_text = [m["content"] for r in train for m in r["messages"]] + [r["reference_answer"] for r in evals if r["answerable"]]
    for t in qa_text:
        for tok in ident.findall(t):
            if tok not in corpus:
                fail(f"QA mentions {tok} which is not in the corpus: {t[:80]!r}")
    for trap in ("E-29", "P-105", "CH-402", "Line C"):
        if trap in corpus:
            fail(f"trap name {trap} occurs in the corpus")

    print(f"markdown words (wc -w): {words}")
    print(f"markdown files: {len(md_files)}; spare parts rows: {len(parts)}; PDF pages: {len(pages)}")
    print(f"train lines: {len(train)}; eval lines: {len(evals)} "
          f"(answerable {len(evals) - n_unans}, unanswerable {n_unans}, binary/CSV {n_binary}, code lookups {n_code}, filtered {n_filter})")
    print(f"closest eval/train question similarity: {worst[0]:.2f} ({worst[1]})")
    if errors:
        print("\nFAILURES:")
        for e in errors:
            print(" -", e)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
