"""Small chat data sets for the trainer tests (imported by the tests and their conftest)."""

from __future__ import annotations

import json
from pathlib import Path

# Settings that make the tiny models learn visibly in a few steps.
TINY = {"batch_size": 8, "learning_rate": 5e-3, "logging_steps": 1, "early_stopping_patience": 0}

# A small but learnable chat data set: fixed facts in a fixed answer style.
FACTS = [
    ("P-101", "raw water feed pump", "85 m3/h", "LP-12"),
    ("P-102", "Line A product transfer pump", "40 m3/h", "LP-15"),
    ("P-201", "Line B product feed pump", "60 m3/h", "LP-21"),
    ("C-301", "screw compressor", "9.6 m3/min", "LP-31"),
    ("C-302", "reciprocating compressor", "2.7 m3/min", "LP-33"),
    ("R-304", "air receiver", "3000 L", "LP-35"),
    ("D-303", "air dryer", "PDP +3 C", "LP-36"),
    ("T-100", "raw water tank", "120 m3", "LP-40"),
]


def write_jsonl(path: Path, records: list) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def chat(question: str, answer: str, **extra) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        **extra,
    }


def qa_records() -> list[dict]:
    records = []
    for tag, what, rating, lock in FACTS:
        records.append(chat(f"What is {tag}?", f"{tag} is the {what}.", source="docs/facts.md"))
        records.append(chat(f"What is the rating of {tag}?", f"{tag} is rated {rating}."))
        records.append(chat(f"Which lock point isolates {tag}?", f"Isolate {tag} at {lock}."))
    return records
