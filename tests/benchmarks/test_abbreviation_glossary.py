"""benchmarks/abbreviation_glossary.py: the switch it measures with, and its figures."""

from appliance.documents import Block, Document, chunk_document
from benchmarks.abbreviation_glossary import hybrid_figures, without_glossary


def _words(text: str) -> list[tuple[int, int]]:
    import re

    return [m.span() for m in re.finditer(r"\S+", text)]


def test_without_glossary_gives_the_chunks_of_the_previous_format():
    doc = Document(
        path="n.md",
        title="N",
        blocks=[
            Block("Debian uses NetworkManager (NM).", section=("1",)),
            Block("Restart NM now.", section=("2",)),
        ],
    )
    assert chunk_document(doc, _words)[1].glossary == ("NM: NetworkManager",)
    with without_glossary():
        assert chunk_document(doc, _words)[1].glossary == ()
    assert chunk_document(doc, _words)[1].glossary == ("NM: NetworkManager",)  # restored


def test_hybrid_figures():
    result = {"graded": 28, "modes": {"hybrid": {"recall@5": 0.9286, "mrr@10": 0.848}}}
    assert hybrid_figures(result) == (26, 28, 0.848)
