"""Weight-only quantization of the genai builder's graph, one weight at a time.

Used by build/export_llm.py (`expert export --precision int4|int8`, algorithms rtn* / k_quant*).

Why this exists: onnxruntime-genai 0.15.2's builder quantizes by serialising the whole fp32 graph
into one ModelProto (a second full copy of the weights beside the loaded PyTorch model), handing it
to onnxruntime's MatMulNBitsQuantizer (k-quant holds a dozen full-size float temporaries of the
largest matrix), then parsing the result back: the 1.5B export peaked at 19.9 GB, about 2.8x its
fp32 weights. Here the builder's own `to_nbits` step is replaced, for the length of one export,
by a pass over its in-memory graph that quantizes one MatMul weight at a time in row chunks, with
the same onnxruntime routines (`quant_tensor_k_quant_cpu`, `quant_tensor`) and the same initializer
names and layout (MatMulNBits, and GatherBlockQuantized for a tied embedding), and drops each fp32
weight as soon as it is quantized. The loaded PyTorch model is released first, so its tensors die
with their last graph reference. The untied token embedding, which the builder leaves in fp32, is
quantized too (GatherBlockQuantized, 4 or 8 bits), so an int4 export is no larger than the GGUF it
came from.

Every weight is checked finite before quantization and every scale after it: a NaN or inf never
reaches a quantized weight silently (onnxruntime's k-quant search divides by zero on constant
blocks and warns; such candidates are rejected by its own comparison, and this check proves it).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import warnings

import numpy as np

from appliance.errors import UserFacingError

log = logging.getLogger(__name__)

# Rows of the transposed weight (output channels) quantized per call: bounds the float64
# temporaries of the k-quant search to a few hundred MB whatever the matrix size.
CHUNK_ELEMENTS = 8 * 1024 * 1024

EMBEDDING_NODE = "/model/embed_tokens/Gather"


def _pack_rows_4bit(q: np.ndarray) -> np.ndarray:
    """(rows, cols) of 0..15 -> (rows, ceil(cols/2)) uint8, low nibble first."""
    q = q.astype(np.uint8)
    if q.shape[1] % 2:
        q = np.concatenate([q, np.zeros((q.shape[0], 1), np.uint8)], axis=1)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def quantize_weight(
    weight: np.ndarray, *, bits: int, block_size: int, method: str, symmetric: bool, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A MatMul weight (K, N) -> MatMulNBits blobs: data (N, k_blocks, block*bits/8) uint8,
    scales (N, k_blocks) float32, zero points (N, ceil(k_blocks*bits/8)) uint8 or None.

    Same arithmetic as onnxruntime's `rtn_quantize` (neural_compressor/weight_only.py), row chunk
    by row chunk.
    """
    from onnxruntime.quantization.neural_compressor.weight_only import (
        quant_tensor,
        quant_tensor_k_quant_cpu,
    )

    k, n = weight.shape
    k_blocks = (k + block_size - 1) // block_size
    blob = block_size * bits // 8
    data = np.empty((n, k_blocks, blob), np.uint8)
    scales = np.empty((n, k_blocks), np.float32)
    with_zp = method == "k_quant" or not symmetric
    zp_cols = (k_blocks + 1) // 2 if bits == 4 else k_blocks
    zps = np.empty((n, zp_cols), np.uint8) if with_zp else None
    rows = max(1, CHUNK_ELEMENTS // max(k, 1))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        block = np.asarray(weight[:, r0:r1], dtype=np.float32).T  # (rows, K)
        if not np.isfinite(block).all():
            raise UserFacingError(
                f"weight {name} holds NaN or inf values (output rows {r0}-{r1}); the checkpoint "
                "is corrupt or was saved from a diverged training run. Re-import or re-merge it."
            )
        if k_blocks * block_size != k:
            block = np.pad(block, ((0, 0), (0, k_blocks * block_size - k)))
        with warnings.catch_warnings():
            # k-quant's scale search divides by zero on constant blocks; those candidates are
            # discarded by its own comparison (NaN < x is False) and the result is checked below.
            warnings.simplefilter("ignore", RuntimeWarning)
            if method == "k_quant":
                q, scale, zp = quant_tensor_k_quant_cpu(block, bits, block_size)
            else:
                scheme = "sym" if symmetric else "asym"
                q, scale, zp = quant_tensor(block, bits, block_size, scheme, "uint", 1.0)
        scale = np.asarray(scale, dtype=np.float32).reshape(r1 - r0, k_blocks)
        if not np.isfinite(scale).all():
            raise UserFacingError(
                f"quantizing {name} produced a non-finite scale (rows {r0}-{r1}); export with "
                "--int4-algo rtn_last or report the checkpoint."
            )
        q = np.asarray(q).reshape(r1 - r0, k_blocks * block_size)
        packed = _pack_rows_4bit(q) if bits == 4 else q.astype(np.uint8)
        data[r0:r1] = packed.reshape(r1 - r0, k_blocks, blob)
        scales[r0:r1] = scale
        if zps is not None:
            zp = np.asarray(zp).reshape(r1 - r0, k_blocks)
            zps[r0:r1] = _pack_rows_4bit(zp) if bits == 4 else zp.astype(np.uint8)
        del block, q, scale, zp, packed
    return data, scales, zps


def _initializer(builder, graph, name: str, array: np.ndarray):
    """Register `array` as initializer `name`, reusing a value of that name the graph already
    consumes (the builder's tied-embedding Reshape reads the LM head's quantized weight by name)."""
    import onnx_ir as ir

    value = builder.values.get(name) or ir.Value(name=name)
    builder.values[name] = value
    tensor = ir.tensor(array, name=name)
    value.const_value = tensor
    value.dtype = tensor.dtype
    value.shape = ir.Shape(array.shape)
    if name not in graph.initializers:
        graph.register_initializer(value)
    return value


def _release(graph, value) -> None:
    """Drop an initializer that nothing uses any more (its fp32 data dies with it)."""
    if value is None or value.uses():
        return
    if value.name in graph.initializers:
        graph.initializers.pop(value.name)
    value.const_value = None


def _quantized_initializers(
    builder, graph, value, weight: np.ndarray, bits: int, opts: dict, rows: int | None = None
) -> list:
    """Quantize `weight` (K x N, blocks along K) and register the results as initializers named
    after `value` as the builder names them: [data, scales] + [zero points] when asymmetric.
    `rows` lays the data out as (rows, -1) (a Gather table) instead of (N, K blocks, blob)."""
    bs = opts["block_size"]
    data, scales, zps = quantize_weight(
        weight, bits=bits, block_size=bs, method=opts["method"], symmetric=opts["symmetric"],
        name=value.name,
    )  # fmt: skip
    if rows is not None:
        data = data.reshape(rows, -1)
    base = value.name
    out = [
        _initializer(builder, graph, f"{base}_Q{bits}G{bs}", data),
        _initializer(builder, graph, f"{base}_scale", scales),
    ]
    if zps is not None:
        out.append(_initializer(builder, graph, f"{base}_zp", zps))
    return out


def _replace_node(graph, node, op_type: str, inputs: list, attrs: dict, name: str, weight) -> None:
    """Put a com.microsoft `op_type` node in `node`'s place and drop the fp32 `weight`."""
    import onnx_ir as ir

    new = ir.Node(
        "com.microsoft",
        op_type,
        inputs,
        ir.convenience.convert_attributes(attrs),
        num_outputs=1,
        name=name,
    )
    ir.convenience.replace_nodes_and_values(
        graph, node, [node], [new], list(node.outputs), list(new.outputs)
    )
    _release(graph, weight)


def _quantize_matmul(builder, graph, node, bits: int, opts: dict) -> None:
    weight_value = node.inputs[1]
    weight = weight_value.const_value.numpy()
    if weight.ndim != 2:
        return
    k, n = weight.shape
    quantized = _quantized_initializers(builder, graph, weight_value, weight, bits, opts)
    del weight
    attrs = {"K": k, "N": n, "bits": bits, "block_size": opts["block_size"]}
    if opts["accuracy_level"]:
        attrs["accuracy_level"] = opts["accuracy_level"]
    inputs = [node.inputs[0], *quantized]
    _replace_node(graph, node, "MatMulNBits", inputs, attrs, f"{node.name}_Q{bits}", weight_value)


def _quantize_embedding(builder, graph, node, bits: int, opts: dict) -> None:
    """An untied token embedding (Gather on an fp32 table) -> GatherBlockQuantized, laid out as
    the builder lays out a tied one (the table quantized like an LM head, axis 1 in blocks)."""
    table_value = node.inputs[0]
    table = table_value.const_value.numpy()  # (vocab, hidden)
    data, *scales_zps = _quantized_initializers(
        builder, graph, table_value, table.T, bits, opts, rows=table.shape[0]
    )
    del table
    attrs = {"bits": bits, "block_size": opts["block_size"], "gather_axis": 0, "quantize_axis": 1}
    inputs = [data, node.inputs[1], *scales_zps]
    name = f"{node.name}BlockQuantized"
    _replace_node(graph, node, "GatherBlockQuantized", inputs, attrs, name, table_value)


def streaming_to_nbits(builder, embedding_bits: int | None):
    """Replacement for the builder's `Model.to_nbits`: quantizes `builder.model` in place."""
    qa = builder.quant_attrs
    method = getattr(builder, "quantization_algo", "default")
    if method not in ("rtn", "k_quant"):
        raise UserFacingError(f"streaming quantization supports rtn and k_quant, not {method!r}")
    opts = {
        "block_size": int(qa["qdq_block_size"]),
        "method": method,
        "symmetric": bool(qa["is_symmetric"]),
        "accuracy_level": int(qa.get("accuracy_level") or 0),
    }
    custom = getattr(builder, "int4_customized_weight_config", {}) or {}
    exclude = set(qa.get("nodes_to_exclude") or ())
    default_bits = int(qa["bits"])
    # The loaded PyTorch model holds every weight a second time; from here on each weight lives
    # only as long as the graph needs it.
    builder.weights = None
    gc.collect()
    graph = builder.model.graph
    done = 0
    for node in list(graph):
        if node.op_type == "MatMul" and node.domain == "" and node.name not in exclude:
            w = node.inputs[1] if len(node.inputs) > 1 else None
            if w is None or w.const_value is None:
                continue
            bits = int(custom.get(node.name, {}).get("bits", default_bits))
            _quantize_matmul(builder, graph, node, bits, opts)
            done += 1
        elif (
            embedding_bits
            and node.op_type == "Gather"
            and node.name == EMBEDDING_NODE
            and node.inputs[0] is not None
            and node.inputs[0].const_value is not None
        ):
            _quantize_embedding(builder, graph, node, embedding_bits, opts)
            done += 1
        if done and done % 16 == 0:
            gc.collect()
    gc.collect()
    log.info("quantized %d weights one at a time (%s, block %d)", done, method, opts["block_size"])
    return builder.model


@contextlib.contextmanager
def streaming_quantization(embedding_bits: int | None):
    """While active, the genai builder quantizes through `streaming_to_nbits`."""
    import sys

    import onnxruntime_genai.models.builder  # noqa: F401 - puts `builders` on sys.path

    # builder.py imports its model classes as the top-level package `builders`, a second module
    # object beside `onnxruntime_genai.models.builders`: patch the one create_model uses (both).
    bases = {
        id(m): m
        for m in (
            sys.modules.get("builders.base"),
            sys.modules.get("onnxruntime_genai.models.builders.base"),
        )
        if m is not None
    }
    if not bases:
        raise UserFacingError(
            "the onnxruntime-genai model builder has no `builders.base` module; this export "
            "supports onnxruntime-genai 0.15.x (see pyproject.toml)."
        )

    def to_nbits(self):
        return streaming_to_nbits(self, embedding_bits)

    originals = [(m, m.Model.to_nbits) for m in bases.values()]
    for m, _ in originals:
        m.Model.to_nbits = to_nbits
    try:
        yield
    finally:
        for m, original in originals:
            m.Model.to_nbits = original
