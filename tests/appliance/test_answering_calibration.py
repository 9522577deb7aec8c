# Run: .venv/bin/pytest -m slow -s tests/appliance/test_answering_calibration.py
"""How DEFAULT_ABSTAIN_THRESHOLD was chosen, re-run on the example plant.

For every question of examples/plant/qa/eval.jsonl: the best dense score of the top 5
hybrid passages from the whole plant index; then `calibrate_abstain_threshold` (the highest
threshold that still answers >= 95% of the answerable questions). Prints the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.answering import (
    DEFAULT_ABSTAIN_THRESHOLD,
    best_dense_score,
    calibrate_abstain_threshold,
)
from tests.appliance import test_retrieval_eval

pytestmark = pytest.mark.slow
# The whole-plant index the retrieval tests build and cache (built once for both).
plant_retriever = test_retrieval_eval.plant_retriever


def test_default_threshold_matches_the_calibration(plant_retriever, plant_dir: Path):
    rows = [
        json.loads(line)
        for line in (plant_dir / "qa" / "eval.jsonl").read_text().splitlines()
        if line.strip()
    ]
    answerable, unanswerable = [], []
    for row in rows:
        best = best_dense_score(plant_retriever.search(row["question"], k=5))
        (answerable if row["answerable"] else unanswerable).append(best)
    cal = calibrate_abstain_threshold(answerable, unanswerable)
    at_default = type(cal)(
        DEFAULT_ABSTAIN_THRESHOLD,
        sum(s >= DEFAULT_ABSTAIN_THRESHOLD for s in answerable) / len(answerable),
        sum(s < DEFAULT_ABSTAIN_THRESHOLD for s in unanswerable) / len(unanswerable),
    )
    print(
        f"\nanswerable ({len(answerable)}): best dense {min(answerable):.3f}-{max(answerable):.3f}"
        f"\nunanswerable ({len(unanswerable)}): best dense {min(unanswerable):.3f}-{max(unanswerable):.3f}"
        f"\ncalibrated threshold {cal.threshold:.4f}: answers {cal.answerable_recall:.1%} of answerable, "
        f"refuses {cal.unanswerable_recall:.1%} of unanswerable"
        f"\ndefault {DEFAULT_ABSTAIN_THRESHOLD}: answers {at_default.answerable_recall:.1%}, "
        f"refuses {at_default.unanswerable_recall:.1%}"
    )
    assert len(answerable) >= 20 and len(unanswerable) >= 5
    assert abs(cal.threshold - DEFAULT_ABSTAIN_THRESHOLD) <= 0.03
    assert at_default.answerable_recall >= 0.95
    assert at_default.unanswerable_recall >= 0.3
