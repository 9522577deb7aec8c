"""Memory bandwidth and the decode ceiling it allows: bytes of weights read per token (ONNX,
GGUF or safetensors), KV-cache bytes per token, and a measured copy bandwidth.

Test: .venv/bin/pytest tests/benchmarks/test_bench_schema.py
"""

from __future__ import annotations

import json
import logging
import math
import struct
import time
from pathlib import Path

log = logging.getLogger(__name__)


def measure_copy_bandwidth(threads: int = 1, size_mib: int = 256, repeats: int = 5) -> float:
    """Best copy bandwidth in bytes/s over `threads` threads, counting bytes read + written
    (the STREAM "copy" convention). The arrays are far larger than any cache here."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    n = size_mib * 1024 * 1024
    src = np.ones(n, dtype=np.uint8)
    dst = np.empty_like(src)
    bounds = [(i * n // threads, (i + 1) * n // threads) for i in range(threads)]

    def part(b):
        np.copyto(dst[b[0] : b[1]], src[b[0] : b[1]])  # numpy releases the GIL while copying

    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(part, bounds))  # fault the pages in
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(part, bounds))
            best = min(best, time.perf_counter() - t0)
    return 2 * n / best


def onnx_weight_bytes(model_dir: Path) -> int:
    """Bytes of initializers one decode step reads: everything except tables only looked up by
    row (embedding Gather, rotary cos/sin caches read by GroupQueryAttention)."""
    import onnx

    model = onnx.load(str(Path(model_dir) / "model.onnx"), load_external_data=False)
    graph = model.graph
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    lookup_only = {"Gather", "GatherBlockQuantized", "GroupQueryAttention"}
    total = 0
    for t in graph.initializer:
        ops = consumers.get(t.name, set())
        if ops and ops <= lookup_only:
            continue
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        total += math.prod(t.dims) * itemsize
    return total


def gguf_weight_bytes(gguf: Path) -> int:
    """Bytes of GGUF tensors one decode step reads: all but the input embedding, which counts
    only where it doubles as the output layer (tied embeddings, no `output.weight`)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    names = {t.name for t in reader.tensors}
    total = 0
    for t in reader.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue
        total += int(t.n_bytes)
    return total


def safetensors_weight_bytes(hf_dir: Path) -> int:
    """Bytes of fp32 weights transformers reads per token (tied embedding counted once)."""
    total = 0
    names: set[str] = set()
    sizes: dict[str, int] = {}
    for path in sorted(Path(hf_dir).glob("*.safetensors")):
        with path.open("rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            elems = math.prod(meta["shape"])
            sizes[name] = elems * 4  # loaded as float32 whatever the file stores
            names.add(name)
    for name, size in sizes.items():
        if name.endswith("embed_tokens.weight") and any(
            n.endswith("lm_head.weight") for n in names
        ):
            continue  # untied: the embedding is only looked up
        total += size
    return total


def kv_bytes_per_token(hf_config: dict, context: int, bytes_per_value: int) -> int:
    """KV-cache bytes one decode step reads at `context` tokens of history."""
    heads = hf_config["num_attention_heads"]
    head_dim = hf_config.get("head_dim") or hf_config["hidden_size"] // heads
    kv_heads = hf_config.get("num_key_value_heads") or heads
    return context * hf_config["num_hidden_layers"] * 2 * kv_heads * head_dim * bytes_per_value
