"""Retrieval: the versioned SQLite + FTS5 + hnswlib index, hybrid search, ingestion.

Reading:  `Retriever.open(index_dir, embedder).search(question, k, filters, mode)`.
Writing:  `ingest_folder(src, index_dir, embedder)` (expert ingest), `Retriever.add_documents`
          / `Retriever.delete_document` (the service), `open_writable_copy` (a bundle's
          read-only index -> a writable copy in the service's state directory).
Quality:  `appliance.retrieval.evaluation.evaluate_retrieval(retriever, questions)`.
"""

from appliance.retrieval.hybrid import MODES, Passage, Retriever
from appliance.retrieval.ingest import IngestReport, ingest_folder
from appliance.retrieval.updates import (
    AddReport,
    add_documents,
    delete_document,
    open_writable_copy,
)
from appliance.retrieval.versions import IndexCorruptError, IndexLockedError
from appliance.retrieval.writer import DocumentInput, IndexWriter

__all__ = [
    "MODES",
    "AddReport",
    "DocumentInput",
    "IndexCorruptError",
    "IndexLockedError",
    "IndexWriter",
    "IngestReport",
    "Passage",
    "Retriever",
    "add_documents",
    "delete_document",
    "ingest_folder",
    "open_writable_copy",
]
