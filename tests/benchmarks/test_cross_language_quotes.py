"""benchmarks/cross_language_quotes.py: the tally of what quoting by meaning would do (no
bundle needed)."""

from benchmarks.cross_language_quotes import tally


def test_the_tally_counts_only_quotes_at_the_threshold():
    rows = [
        {"set": "a", "answerable": True, "threshold": 0.8, "score": 0.85, "right": True},
        {"set": "a", "answerable": True, "threshold": 0.8, "score": 0.81, "right": False},
        {"set": "a", "answerable": True, "threshold": 0.8, "score": 0.79, "right": True},
        {"set": "a", "answerable": False, "threshold": 0.8, "score": 0.9, "right": False},
        {"set": "a", "answerable": True, "threshold": 0.8},  # no quotable sentence
        {"set": "b", "answerable": True, "threshold": 0.8, "score": 0.95, "right": True},
    ]
    assert tally(rows, "a") == {
        "refusals": 5,
        "quoted": 3,
        "right": 1,
        "wrong": 1,
        "unanswerable": 1,
    }
    assert tally(rows, "c")["refusals"] == 0
