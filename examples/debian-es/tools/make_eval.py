# Run from the repository root:  PYTHONPATH=. python3 examples/debian-es/tools/make_eval.py
"""Write the Spanish and mixed-language question sets from tools/questions.py.

- examples/debian-es/qa/eval.jsonl      Spanish questions over the Spanish pages
- examples/debian-es/qa/mixed-en.jsonl  English questions over the Spanish pages
- examples/plant/qa/eval-es.jsonl       Spanish questions over the English example plant

Splits: within each stratum (answerable x page), questions sorted by id alternate dev, test,
starting with whichever split is behind overall, so both splits hold every kind of question. A
question already in its file keeps its split; one in questions.ADDED_TO_DEV (written after the
test split had been reported on) goes to dev. A Spanish plant question takes the split of the
English plant question it translates when that file has splits. Run check_dataset.py afterwards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent
ROOT = CORPUS.parent.parent
sys.path.insert(0, str(HERE))

from questions import (  # noqa: E402
    ADDED_TO_DEV,
    ENGLISH_OVER_SPANISH,
    QUESTIONS,
    SPANISH_OVER_PLANT,
)

PLANT_EVAL = ROOT / "examples" / "plant" / "qa" / "eval.jsonl"
OUTPUTS = {
    "es": CORPUS / "qa" / "eval.jsonl",
    "en-over-es": CORPUS / "qa" / "mixed-en.jsonl",
    "es-over-plant": ROOT / "examples" / "plant" / "qa" / "eval-es.jsonl",
}


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def assign_splits(records: list[dict]) -> None:
    """Give every record without a split one (see the module docstring)."""
    counts = {"dev": 0, "test": 0}
    for r in records:
        if r.get("split") in counts:
            counts[r["split"]] += 1
    strata: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("split") not in counts:
            strata.setdefault((r["answerable"], str(r["source"])), []).append(r)
    for key in sorted(strata):
        nxt = "dev" if counts["dev"] <= counts["test"] else "test"
        for r in sorted(strata[key], key=lambda r: r["id"]):
            r["split"] = nxt
            counts[nxt] += 1
            nxt = "test" if nxt == "dev" else "dev"


def from_table(rows, old: dict[str, str]) -> list[dict]:
    out = []
    for qid, question, facts, page, reference in rows:
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
        elif qid in ADDED_TO_DEV:
            rec["split"] = "dev"
        out.append(rec)
    return out


def plant_records(old: dict[str, str]) -> list[dict]:
    plant = {r["id"]: r for r in read_jsonl(PLANT_EVAL)}
    out = []
    for qid, question in SPANISH_OVER_PLANT:
        if qid not in plant:
            raise SystemExit(f"{qid} is not a question of {PLANT_EVAL}")
        src = plant[qid]
        rec = {
            "id": f"{qid}-es",
            "question": question,
            "expected_facts": src["expected_facts"],
            "source": src["source"],
            "answerable": src["answerable"],
            "reference_answer": src.get("reference_answer", ""),
        }
        split = src.get("split") or old.get(rec["id"])
        if split:
            rec["split"] = split
        out.append(rec)
    return out


def write(path: Path, records: list[dict]) -> None:
    assign_splits(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    for split in ("dev", "test"):
        part = [r for r in records if r["split"] == split]
        n_un = sum(not r["answerable"] for r in part)
        print(f"{path.relative_to(ROOT)} {split}: {len(part)} ({len(part) - n_un} answerable)")


def main() -> int:
    old = {
        name: {r["id"]: r.get("split") for r in read_jsonl(path)} for name, path in OUTPUTS.items()
    }
    write(OUTPUTS["es"], from_table(QUESTIONS, old["es"]))
    write(OUTPUTS["en-over-es"], from_table(ENGLISH_OVER_SPANISH, old["en-over-es"]))
    write(OUTPUTS["es-over-plant"], plant_records(old["es-over-plant"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
