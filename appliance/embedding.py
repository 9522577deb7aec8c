"""The ONNX sentence embedder the appliance runs: onnxruntime + tokenizers, no torch.

The same embedder embeds documents at ingest time (build box or device) and questions at
query time (device), so both sides must produce the same vectors; this module is the one
implementation of tokenisation, pooling and normalisation for both.

Folder layout (written by `expert export-embedder`, see build/export_embedder.py):
    model.onnx       a BERT-style encoder; first output = token embeddings (batch, seq, dim)
                     or a pooled sentence embedding (batch, dim)
    tokenizer.json   a `tokenizers` tokenizer (WordPiece for all-MiniLM-L6-v2)
    embedder.json    {format_version, model_id, dim, max_length, pooling, normalize,
                     query_prefix, passage_prefix, ...}

Some models (E5) were trained with a role prefix in front of every text ("query: " for
questions, "passage: " for documents); embedder.json carries them and `embed(texts, kind=...)`
applies them, so ingest and search cannot forget or mix them up.

Test: .venv/bin/pytest tests/appliance/test_embedding.py
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.errors import UserFacingError

EMBEDDER_FORMAT_VERSION = 1
EMBEDDER_CONFIG = "embedder.json"
POOLINGS = ("mean", "cls")
KINDS = ("passage", "query")
PAD_TOKENS = ("[PAD]", "<pad>")


@dataclass(frozen=True)
class EmbedderConfig:
    """The contents of embedder.json."""

    model_id: str
    dim: int
    max_length: int
    pooling: str = "mean"
    normalize: bool = True
    format_version: int = EMBEDDER_FORMAT_VERSION
    quantization: str = "none"
    query_prefix: str = ""
    passage_prefix: str = ""
    # How much hybrid search trusts the keyword side against this model's dense side
    # (appliance.retrieval.hybrid); 1.0 = equal votes. A strong multilingual model carries less.
    keyword_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.format_version != EMBEDDER_FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is not supported (this appliance reads "
                f"{EMBEDDER_FORMAT_VERSION}); re-export with `expert export-embedder`"
            )
        if not self.model_id:
            raise ValueError("model_id must not be empty")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("query_prefix", "passage_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        w = self.keyword_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= 4:
            raise ValueError(f"keyword_weight must be a number in [0, 4], got {w!r}")

    def prefix(self, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return self.query_prefix if kind == "query" else self.passage_prefix

    @classmethod
    def load(cls, path: Path) -> EmbedderConfig:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserFacingError(
                f"cannot read embedder config {path}: {exc}; re-export the embedder with "
                "`expert export-embedder --out DIR`"
            ) from exc
        known = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (TypeError, ValueError) as exc:
            raise UserFacingError(f"invalid embedder config {path}: {exc}") from exc

    def to_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


class OnnxEmbedder:
    """Embeds texts into L2-normalised float32 vectors with an ONNX encoder.

    Batches are sorted by length so that padding is small (the main cost on short chunks);
    results come back in the caller's order.
    """

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        model_path = self.folder / "model.onnx"
        tok_path = self.folder / "tokenizer.json"
        for needed in (model_path, tok_path, self.folder / EMBEDDER_CONFIG):
            if not needed.is_file():
                raise UserFacingError(
                    f"embedder folder {self.folder} has no {needed.name}; export one with "
                    f"`expert export-embedder --out {self.folder}`"
                )
        self.config = EmbedderConfig.load(self.folder / EMBEDDER_CONFIG)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")

        # `tokenizer` counts and splits (no truncation); `_batch_tok` feeds the model.
        self.tokenizer = Tokenizer.from_file(str(tok_path))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self._batch_tok = Tokenizer.from_file(str(tok_path))
        self._batch_tok.enable_truncation(max_length=self.config.max_length)
        self._batch_tok.no_padding()  # embed() pads each length-sorted batch itself
        pad_ids = [self._batch_tok.token_to_id(t) for t in PAD_TOKENS]
        self._pad_id = next((i for i in pad_ids if i is not None), 0)

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or 0
        opts.inter_op_num_threads = 1
        # Worker threads sleep between operators instead of spinning. Embedding runs beside other
        # work (the generator while serving, other jobs during ingest); on the shared 2-core box
        # spinning took ~10 % more CPU for the same chunks (6.1-6.5 vs 5.5-5.7 CPU-s for 165
        # synthetic chunks, 4 interleaved repetitions, load 4-9) and ran a median 1.16x slower
        # in wall time (13.5 vs 15.6 chunks/s).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserFacingError(
                f"cannot load embedder model {model_path}: {exc}; re-export it with "
                "`expert export-embedder`"
            ) from exc
        self._input_names = [i.name for i in self._session.get_inputs()]
        unknown = set(self._input_names) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise UserFacingError(f"embedder model {model_path} has unexpected inputs {unknown}")

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def model_id(self) -> str:
        return self.config.model_id

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` without special tokens and without truncation."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def embed(
        self, texts: Sequence[str], batch_size: int = 32, kind: str = "passage"
    ) -> np.ndarray:
        """Embed texts -> float32 array (len(texts), dim), each row L2-normalised.

        `kind` is "passage" for documents (ingest) and "query" for questions (search); it
        selects the model's role prefix, if it has one.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings; wrap a single text in a list")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        prefix = self.config.prefix(kind)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._batch_tok.encode_batch(
            [prefix + (t if isinstance(t, str) else str(t)) for t in texts],
            add_special_tokens=True,
        )
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(-lengths, kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            width = int(lengths[idx].max())
            ids = np.full((len(idx), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            types = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = int(lengths[i])
                enc = encodings[i]
                ids[row, :n] = enc.ids[:n]
                mask[row, :n] = 1
                types[row, :n] = enc.type_ids[:n]
            out[idx] = self._run(ids, mask, types)
        return out

    def _run(self, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden = self._session.run(None, {k: feeds[k] for k in self._input_names})[0]
        hidden = np.asarray(hidden, dtype=np.float32)
        if hidden.ndim == 3:
            if self.config.pooling == "cls":
                pooled = hidden[:, 0, :]
            else:
                m = mask[:, :, None].astype(np.float32)
                pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        elif hidden.ndim == 2:
            pooled = hidden
        else:
            raise UserFacingError(f"embedder output has rank {hidden.ndim}; expected 2 or 3")
        if pooled.shape[1] != self.dim:
            raise UserFacingError(
                f"embedder {self.folder} produced dim {pooled.shape[1]} but embedder.json says "
                f"{self.dim}; re-export it"
            )
        if self.config.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled


def default_threads() -> int | None:
    """Threads for embedding from EXPERT_EMBED_THREADS (unset = onnxruntime's default)."""
    raw = os.environ.get("EXPERT_EMBED_THREADS")
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError as exc:
        raise UserFacingError(f"EXPERT_EMBED_THREADS must be an integer, got {raw!r}") from exc
    if value < 1:
        raise UserFacingError(f"EXPERT_EMBED_THREADS must be >= 1, got {value}")
    return value
