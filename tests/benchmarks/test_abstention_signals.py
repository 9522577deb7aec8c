"""benchmarks/abstention_signals.py: the AUC and the signals (no bundle needed)."""

import pytest

from benchmarks.abstention_signals import auc, refused_at_score_rule, signals


def test_auc_counts_ranks_and_ties():
    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auc([0.1], [0.9]) == 0.0
    assert auc([0.5], [0.5]) == 0.5
    with pytest.raises(ValueError, match="at least one"):
        auc([], [0.1])


def test_signals_of_a_question():
    s = signals([0.9] + [0.5] * 9)
    assert s["best"] == 0.9 and s["best - 10th"] == pytest.approx(0.4)
    assert s["best - mean"] == pytest.approx(0.36) and s["z-score"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="10 neighbour"):
        signals([0.9, 0.8])


def test_refused_at_the_score_rule():
    # 20 answerable: the rule gives up the lowest one (95%); unanswerable under it are refused.
    answerable = [0.5] + [0.8] * 19
    assert refused_at_score_rule(answerable, [0.4, 0.6, 0.7, 0.9]) == "3/4"
