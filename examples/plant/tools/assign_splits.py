# Run from the repository root:  PYTHONPATH=. python3 examples/plant/tools/assign_splits.py
"""Give every question of qa/eval.jsonl a fixed "split": "dev" or "test".

dev is where tuned values are chosen (the abstention threshold, prompt variants, training
steps); test is only reported. appliance.common.questions.stratified_split does the cut (seed
SPLIT_SEED, strata: answerable x source document), so both splits hold answerable and unanswerable
questions. Questions that already have a split keep it; only new ones are assigned.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PLANT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PLANT.parent.parent))

from appliance.common.questions import stratified_split  # noqa: E402

SPLIT_SEED = 20261130
EVAL = PLANT / "qa" / "eval.jsonl"


def main() -> int:
    records = [json.loads(x) for x in EVAL.read_text(encoding="utf-8").splitlines() if x.strip()]
    splits = stratified_split(
        records,
        seed=SPLIT_SEED,
        strata=lambda r: (r["answerable"], r["source"] or "", bool(r.get("filters"))),
    )
    for rec in records:
        rec["split"] = splits[str(rec["id"])]
    EVAL.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    for split in ("dev", "test"):
        part = [r for r in records if r["split"] == split]
        n_un = sum(not r["answerable"] for r in part)
        print(f"{split}: {len(part)} questions, {len(part) - n_un} answerable, {n_un} unanswerable")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
