# Run: .venv/bin/pytest tests/benchmarks/test_multilingual_embedders.py
"""The keyword-weight sweep of the multilingual embedder benchmark, on a tiny real index."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.embedding import OnnxEmbedder
from appliance.retrieval import Retriever
from appliance.retrieval.ingest import ingest_folder
from benchmarks.multilingual_embedders import _MemoEmbedder, markdown, speed, weight_sweep

DOC = """# Teclas de aptitude

| tecla | función |
|---|---|
| + | marca el paquete para ser instalado |
| - | marca el paquete para ser eliminado |
| q | sale de la pantalla y guarda los cambios |

# Órdenes

La orden apt-get install instala un paquete. La orden apt-get remove lo elimina.
"""


def test_weight_sweep_scores_each_weight_and_restores_the_retriever(
    embedder_onnx: Path, tmp_path: Path
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "teclas.md").write_text(DOC, encoding="utf-8")
    emb = _MemoEmbedder(OnnxEmbedder(embedder_onnx, threads=1))
    ingest_folder(tmp_path / "docs", tmp_path / "index", emb, progress=False)
    r = Retriever.open(tmp_path / "index", emb)
    questions = [
        {"id": "a", "question": "¿Qué tecla sale y guarda los cambios?", "answerable": True,
         "expected_facts": ["guarda los cambios"], "source": "docs/teclas.md", "split": "dev"},
        {"id": "b", "question": "¿Qué orden elimina un paquete?", "answerable": True,
         "expected_facts": ["apt-get remove"], "source": "docs/teclas.md", "split": "dev"},
    ]  # fmt: skip
    try:
        sweep = weight_sweep(r, questions, [0.0, 0.5, 1.0])
        assert r.keyword_weight == 1.0
    finally:
        r.close()
    assert list(sweep) == ["0.0", "0.5", "1.0"]
    for row in sweep.values():
        assert row["graded"] == 2 and 0 <= row["recall@5_hits"] <= 2
        assert 0.0 <= row["mrr@10"] <= 1.0
    assert len(emb._memo) == 2  # each question embedded once for the whole sweep
    assert speed(emb._inner, [DOC], ["q"])["query_ms_p50"] > 0  # timed without the memo
    result = {
        "sets": [],
        "candidates": {
            "m": {"speed": {"passages_per_s": 1, "query_ms_p50": 2}, "size_mb": 3,
                  "sets": {}, "keyword_weight_sweep_dev": {"es": sweep}},
        },
    }  # fmt: skip
    table = markdown(json.loads(json.dumps(result)))
    assert "m: dev hybrid recall@5 hits / MRR@10 by keyword weight" in table
    assert "| es | " in table and "/2 " in table
