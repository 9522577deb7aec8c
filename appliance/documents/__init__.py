"""Documents: loading files into structured text, and chunking it for retrieval."""

from appliance.documents.chunking import Chunk, ChunkingConfig, chunk_document, tokenizer_offsets
from appliance.documents.loaders import (
    SUPPORTED_SUFFIXES,
    LoaderError,
    is_supported,
    load_bytes,
    load_file,
    normalize_metadata,
)
from appliance.documents.model import Block, Document

__all__ = [
    "SUPPORTED_SUFFIXES",
    "Block",
    "Chunk",
    "ChunkingConfig",
    "Document",
    "LoaderError",
    "chunk_document",
    "is_supported",
    "load_bytes",
    "load_file",
    "normalize_metadata",
    "tokenizer_offsets",
]
