# Run from the repository root:  PYTHONPATH=. python3 examples/apache/tools/make_eval.py
"""Write examples/apache/qa/eval.jsonl from tools/questions.py, with fixed dev/test splits.

Splits come from appliance.common.questions.stratified_split (seed SPLIT_SEED, strata:
answerable x source page), so both splits hold answerable and unanswerable questions from
every page. A question already in eval.jsonl keeps its split; new ones are assigned. Run
check_dataset.py afterwards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
APACHE = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(APACHE.parent.parent))

from questions import QUESTIONS  # noqa: E402

from appliance.common.questions import stratified_split  # noqa: E402

SPLIT_SEED = 20261130
OUT = APACHE / "qa" / "eval.jsonl"


def main() -> int:
    old = {}
    if OUT.is_file():
        for line in OUT.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                old[rec["id"]] = rec.get("split")
    records = []
    for qid, question, facts, page, reference in QUESTIONS:
        rec = {
            "id": qid,
            "question": question,
            "expected_facts": list(facts or []),
            "source": f"docs/{page}.html" if page else None,
            "answerable": facts is not None,
            "reference_answer": reference,
        }
        if old.get(qid):
            rec["split"] = old[qid]
        records.append(rec)
    splits = stratified_split(
        records, seed=SPLIT_SEED, strata=lambda r: (r["answerable"], r["source"] or "")
    )
    for rec in records:
        rec["split"] = splits[rec["id"]]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    for split in ("dev", "test"):
        part = [r for r in records if r["split"] == split]
        n_un = sum(not r["answerable"] for r in part)
        print(f"{split}: {len(part)} questions, {len(part) - n_un} answerable, {n_un} unanswerable")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
