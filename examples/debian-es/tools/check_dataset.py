# Run from the repository root:  PYTHONPATH=. .venv/bin/python examples/debian-es/tools/check_dataset.py
"""Consistency checks for the Spanish corpus and its Spanish and mixed-language questions.

- the committed pages match SOURCE.json (the pinned debian-reference-es package; fetch_corpus.py)
- every line of qa/eval.jsonl, qa/mixed-en.jsonl and examples/plant/qa/eval-es.jsonl parses, has
  the expected keys and a split ("dev" | "test")
- every expected fact occurs in its source page, read by the appliance's own loaders (the text
  that is indexed): as a substring (case and whitespace aside) and as the strict scorer matches
  it (build.eval_metrics.fact_present); the plant-derived file's facts are the English plant
  set's own, so there only the substring check applies (the scorer form is that set's business)
- unanswerable questions have no facts and source null, and the near-miss words they hinge on
  (tools/questions.py TRAPS) occur nowhere in the corpus
- both splits of every file hold answerable and unanswerable questions
Exit status 1 on any failure, each one named.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent
ROOT = CORPUS.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import fetch_corpus  # noqa: E402
from questions import TRAPS  # noqa: E402

from appliance.documents.loaders import load_file  # noqa: E402
from build.eval_metrics import fact_present  # noqa: E402

KEYS = ("id", "question", "expected_facts", "source", "answerable", "reference_answer", "split")
SETS = (
    (CORPUS / "qa" / "eval.jsonl", CORPUS),
    (CORPUS / "qa" / "mixed-en.jsonl", CORPUS),
    (ROOT / "examples" / "plant" / "qa" / "eval-es.jsonl", ROOT / "examples" / "plant"),
)


def norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().lower()


def page_texts(base: Path) -> dict[str, str]:
    texts = {}
    for path in sorted((base / "docs").iterdir()):
        if path.suffix.lower() in (".html", ".md", ".pdf", ".docx", ".csv"):
            texts[f"docs/{path.name}"] = load_file(path, path.name).full_text()[0]
    return texts


def check_file(
    path: Path, pages: dict[str, str], raw: str, scorer_form: bool = True
) -> tuple[list[str], int]:
    errors: list[str] = []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            errors.append(f"{path.name}:{i}: {exc}")
    ids = Counter(r.get("id") for r in rows)
    errors += [f"{path.name}: duplicate id {k}" for k, n in ids.items() if n > 1]
    n_facts = 0
    for r in rows:
        rid = f"{path.name}:{r.get('id')}"
        missing = [k for k in KEYS if k not in r]
        if missing:
            errors.append(f"{rid}: missing {missing}")
            continue
        if r["split"] not in ("dev", "test"):
            errors.append(f"{rid}: split {r['split']!r}")
        if not r["answerable"]:
            if r["expected_facts"] or r["source"] is not None:
                errors.append(f"{rid}: an unanswerable question has no facts and source null")
            trap = TRAPS.get(r["id"])
            if trap and trap.lower() in raw:
                errors.append(f"{rid}: the near-miss word {trap!r} occurs in the corpus")
            continue
        text = pages.get(r["source"])
        if text is None:
            errors.append(f"{rid}: source {r['source']} is not a page of docs/")
            continue
        if not r["expected_facts"]:
            errors.append(f"{rid}: an answerable question needs expected facts")
        for fact in r["expected_facts"]:
            n_facts += 1
            if norm(fact) not in norm(text):
                errors.append(f"{rid}: fact {fact!r} not in {r['source']}")
            elif scorer_form and not fact_present(fact, text):
                errors.append(
                    f"{rid}: fact {fact!r} in {r['source']} but not as the scorer reads it"
                )
    for split in ("dev", "test"):
        part = [r for r in rows if r.get("split") == split]
        if {r.get("answerable") for r in part} != {True, False}:
            errors.append(f"{path.name}: split {split} lacks answerable or unanswerable questions")
        n_ans = sum(bool(r.get("answerable")) for r in part)
        print(f"{path.name} {split}: {len(part)} questions ({n_ans} answerable)")
    return errors, n_facts


def main() -> int:
    errors = list(fetch_corpus.check(fetch_corpus.CORPUS))
    raw = " ".join(p.read_text(encoding="utf-8").lower() for p in (CORPUS / "docs").glob("*"))
    total = 0
    for path, base in SETS:
        errs, n = check_file(path, page_texts(base), raw, scorer_form=base == CORPUS)
        errors += errs
        total += n
    print(f"{total} facts checked")
    for e in errors:
        print("FAIL", e, file=sys.stderr)
    print("OK" if not errors else f"{len(errors)} failure(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
