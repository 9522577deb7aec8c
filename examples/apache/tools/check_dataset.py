# Run from the repository root:  PYTHONPATH=. .venv/bin/python examples/apache/tools/check_dataset.py
"""Consistency checks for the Apache HTTP Server reference corpus and its questions.

- the committed pages match SOURCE.json (the pinned apache2-doc package; fetch_corpus.py)
- every line of qa/eval.jsonl parses, has the expected keys and a split ("dev" | "test")
- every expected fact occurs in its source page, read by the appliance's own HTML loader (the
  text that is indexed): as a substring (case and whitespace aside) and as the strict scorer
  matches it (build.eval_metrics.fact_present: word boundaries, citation markers removed)
- unanswerable questions have no facts and source null, and the near-miss names they ask about
  (tools/questions.py TRAPS) occur nowhere in the corpus
- at least 12 unanswerable questions, and both splits hold answerable and unanswerable ones
Exit status 1 on any failure, each one named.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
APACHE = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(APACHE.parent.parent))

import fetch_corpus  # noqa: E402
from questions import TRAPS  # noqa: E402

from appliance.documents.loaders import load_file  # noqa: E402
from build.eval_metrics import fact_present  # noqa: E402

KEYS = ("id", "question", "expected_facts", "source", "answerable", "reference_answer", "split")


def norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().lower()


def main() -> int:
    errors = list(fetch_corpus.check(fetch_corpus.CORPUS))
    pages = {}
    for path in sorted((APACHE / "docs").glob("*.html")):
        text, _ = load_file(path, path.name).full_text()
        pages[f"docs/{path.name}"] = text
    raw = " ".join(p.read_text(encoding="utf-8").lower() for p in (APACHE / "docs").glob("*"))

    rows = []
    lines = (APACHE / "qa" / "eval.jsonl").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            errors.append(f"eval.jsonl:{i}: {exc}")
    ids = Counter(r.get("id") for r in rows)
    errors += [f"duplicate id {k}" for k, n in ids.items() if n > 1]
    n_facts = 0
    for r in rows:
        rid = r.get("id")
        missing = [k for k in KEYS if k not in r]
        if missing:
            errors.append(f"{rid}: missing {missing}")
            continue
        if r["split"] not in ("dev", "test"):
            errors.append(f"{rid}: split {r['split']!r}")
        if not r["answerable"]:
            if r["expected_facts"] or r["source"] is not None:
                errors.append(f"{rid}: an unanswerable question has no facts and source null")
            trap = TRAPS.get(rid)
            if trap and trap.lower() in raw:
                errors.append(f"{rid}: the near-miss name {trap!r} occurs in the corpus")
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
            elif not fact_present(fact, text):
                errors.append(
                    f"{rid}: fact {fact!r} in {r['source']} but not as the scorer reads it"
                )
    n_un = sum(not r.get("answerable", True) for r in rows)
    if n_un < 12:
        errors.append(f"{n_un} unanswerable questions < 12")
    for split in ("dev", "test"):
        part = [r for r in rows if r.get("split") == split]
        kinds = {r.get("answerable") for r in part}
        if kinds != {True, False}:
            errors.append(f"split {split} lacks answerable or unanswerable questions")
        print(
            f"{split}: {len(part)} questions ({sum(bool(r.get('answerable')) for r in part)} "
            f"answerable, {sum(not r.get('answerable') for r in part)} unanswerable)"
        )
    print(
        f"{len(pages)} pages, {len(rows)} questions, {n_facts} facts checked, {n_un} unanswerable"
    )
    for e in errors:
        print("FAIL", e, file=sys.stderr)
    print("OK" if not errors else f"{len(errors)} failure(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
