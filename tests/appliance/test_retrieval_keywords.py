# Run: .venv/bin/pytest tests/appliance/test_retrieval_keywords.py
"""Plant codes survive FTS5 tokenisation: E-47, e47 and E47 are the same term."""

from __future__ import annotations

import sqlite3

from appliance.retrieval.keywords import code_terms, codes_column, fts_query


def test_code_terms() -> None:
    assert code_terms("Alarm E-47 on P-101, seal HX-4471-B.") == [
        "e47",
        "p101",
        "hx4471",
        "hx4471b",
    ]
    assert code_terms("HX-4471-B", prefixes=False) == ["hx4471b"]
    assert code_terms("e47 and E47 and 6310C3") == ["e47", "6310c3"]
    # Words, numbers, dates and decimals are not codes; a sentence's full stop is not part of one.
    assert code_terms("well-known 2024-01-05 3.5 bar, ends with E-03.") == ["e03"]
    assert code_terms("P-101/P-102") == ["p101", "p102"]


def test_fts_query_quotes_terms_and_drops_stop_words() -> None:
    q = fts_query('What does "E-47" mean? OR NEAR(x)')
    assert q == '"e47" OR "47" OR "mean" OR "near"'
    assert fts_query("what is the") is None


def test_fts5_finds_codes_in_every_spelling() -> None:
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE VIRTUAL TABLE t USING fts5(body, codes, tokenize='unicode61 remove_diacritics 2')"
    )
    docs = {
        1: "Alarm E-47: vacuum drum vacuum low.",
        2: "Seal HX-4471-B fits P-101.",
        3: "Alarm E-4 is something else; so is 47 bar.",
    }
    for rowid, text in docs.items():
        db.execute(
            "INSERT INTO t(rowid, body, codes) VALUES (?,?,?)", (rowid, text, codes_column(text))
        )

    def hits(query: str) -> list[int]:
        rows = db.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t, 1.0, 2.0)", (fts_query(query),))  # fmt: skip
        return [r[0] for r in rows]

    for spelling in ("E-47", "e47", "E47", "e-47"):
        assert hits(spelling)[0] == 1, spelling
    assert hits("HX-4471")[0] == 2
    assert hits("hx4471b") == [2]
    assert hits("p101") == [2]
