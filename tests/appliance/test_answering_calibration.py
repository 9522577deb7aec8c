# Run: .venv/bin/pytest -s tests/appliance/test_answering_calibration.py   (part of make test)
"""How DEFAULT_ABSTAIN_THRESHOLD was chosen, re-run on the example plant.

For every *dev* question of examples/plant/qa/eval.jsonl (the test split is never tuned on):
the best dense score of the top 5 hybrid passages from the whole plant index; then
`calibrate_abstain_threshold` (the highest threshold that still answers >= 95% of the
answerable questions). Prints the numbers, and what the default does on the test split, which
is reported and not asserted beyond sanity.
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

# Re-checks the README's threshold in every make test (seconds: the plant index is cached).
pytestmark = pytest.mark.claim


def test_default_threshold_matches_the_calibration(plant_retriever, plant_dir: Path):
    rows = [
        json.loads(line)
        for line in (plant_dir / "qa" / "eval.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert {row.get("split") for row in rows} == {"dev", "test"}
    scores: dict[str, tuple[list[float], list[float]]] = {"dev": ([], []), "test": ([], [])}
    refused = []
    for row in rows:
        best = best_dense_score(plant_retriever.search(row["question"], k=5))
        scores[row["split"]][0 if row["answerable"] else 1].append(best)
        if row["answerable"] and best < DEFAULT_ABSTAIN_THRESHOLD:
            refused.append(f"{row['id']} ({row['split']}, {best:.3f})")
    answerable, unanswerable = scores["dev"]
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
        f"refuses {at_default.unanswerable_recall:.1%} (dev)"
    )
    t_ans, t_un = scores["test"]
    print(
        f"test split, default {DEFAULT_ABSTAIN_THRESHOLD}: answers "
        f"{sum(s >= DEFAULT_ABSTAIN_THRESHOLD for s in t_ans)}/{len(t_ans)} answerable, refuses "
        f"{sum(s < DEFAULT_ABSTAIN_THRESHOLD for s in t_un)}/{len(t_un)} unanswerable"
        f"\nanswerable questions refused at the default: {', '.join(refused) or 'none'}"
    )
    assert len(answerable) >= 20 and len(unanswerable) >= 5
    assert abs(cal.threshold - DEFAULT_ABSTAIN_THRESHOLD) <= 0.03
    assert at_default.answerable_recall >= 0.95
    assert at_default.unanswerable_recall >= 0.3
