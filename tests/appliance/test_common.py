# Run: .venv/bin/pytest tests/appliance/test_common.py
"""The shared statistics and package-version helpers (appliance/common)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from appliance.common.stats import percentile, wilson_interval
from appliance.common.versions import package_versions


def test_percentile_is_numpys_linear_convention() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (0, 5, 25, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5  # the mean of the middle two
    assert percentile([7], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)


def test_wilson_interval_known_values() -> None:
    assert wilson_interval(0, 0) is None
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 3) == 0.278


def test_package_versions_records_a_missing_package_as_none() -> None:
    got = package_versions(["numpy", "no-such-package-xyz"], python=True)
    assert list(got) == ["python", "numpy", "no-such-package-xyz"]
    assert got["python"] == sys.version.split()[0]
    assert got["numpy"] == np.__version__ and got["no-such-package-xyz"] is None
    assert package_versions([]) == {}
