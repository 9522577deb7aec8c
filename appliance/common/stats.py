"""The two statistics every report shares: a percentile and a Wilson score interval.

Percentile convention: numpy's default ("linear"), q in 0..100, interpolating between the two
closest ranks, so the 50th percentile of an even count is the mean of the middle two.

Test: .venv/bin/pytest tests/appliance/test_common.py
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (q in 0..100) of `values`, numpy's linear convention; raises
    ValueError on no values or q out of range (callers decide what an empty sample means)."""
    if len(values) == 0:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    return float(np.percentile(np.asarray(values, dtype=float), q))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion successes/n (95% with the default z); None
    for n = 0, where no interval exists."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
