"""Let the token embedding read a tied LM head's quantized matrix in place, without a copy.

With tied embeddings (SmolLM2) the genai builder quantizes the LM head as MatMulNBits, whose
weight is stored as [vocab, blocks, block_size] bytes, and feeds the token embedding's
GatherBlockQuantized from it through a Reshape to [vocab, hidden]. onnxruntime folds that
Reshape of a constant at load into a second, anonymous copy of the matrix (28 MB for
SmolLM2's 8-bit head), while MatMulNBits packs its own copy: three copies of one matrix in the
serving process.

`share_tied_embedding` rewrites the graph so GatherBlockQuantized gathers rows of the
[vocab, blocks, block_size] matrix directly (quantize_axis 2; the scales and zero points viewed
as [vocab, blocks, 1], a fold of 3.5 MB) and one Reshape of the gathered activations restores
[batch, sequence, hidden]. The values are the same bytes, scales and zero points, so the
embedding output is bit-identical. The mapped original then serves the embedding (only the
rows of tokens in use become resident once the load's pages are released, see
appliance/common/residency.py). Peak RSS before/after: benchmarks/results/latest.md.

Only the 8-bit case (the head k_quant_mixed keeps in int8) is rewritten: there every byte is
one value, so the 3-D view gathers exactly the 2-D rows. Any other layout is left as built.

Test: .venv/bin/pytest tests/build/test_tied_embedding.py
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def share_tied_embedding(model_path: Path) -> bool:
    """Rewrite `model_path` (an onnx file with external data) in place; True if it changed."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model_path = Path(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    gathers = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    if len(gathers) != 1:
        return False
    gather = gathers[0]
    reshape = producers.get(gather.input[0])
    if reshape is None or reshape.op_type != "Reshape" or reshape.input[0] not in inits:
        return False
    if len(consumers.get(reshape.output[0], [])) != 1:
        return False
    data = inits[reshape.input[0]]
    scales = inits.get(gather.input[2])
    zero_points = inits.get(gather.input[3]) if len(gather.input) > 3 and gather.input[3] else None
    bits = _attr(gather, "bits", 4)
    block_size = _attr(gather, "block_size", 128)
    if (
        bits != 8
        or _attr(gather, "gather_axis", 0) != 0
        or _attr(gather, "quantize_axis", 1) != 1
        or len(data.dims) != 3
        or data.dims[2] != block_size
        or scales is None
        or list(scales.dims) != list(data.dims[:2])
        or (zero_points is not None and list(zero_points.dims) != list(data.dims[:2]))
    ):
        log.info("tied embedding left as built: not the 8-bit [vocab, blocks, block] layout")
        return False

    vocab, blocks, block = (int(d) for d in data.dims)
    prefix = gather.name.rsplit("/", 1)[0] or "/tied_embedding"
    view_shape = f"{prefix}/scale_view_shape"
    out_shape = f"{prefix}/hidden_shape"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([vocab, blocks, 1], dtype=np.int64), view_shape),
            numpy_helper.from_array(np.array([0, 0, blocks * block], dtype=np.int64), out_shape),
        ]
    )
    new_nodes = []
    scale_view = f"{prefix}/scales_3d"
    new_nodes.append(
        helper.make_node(
            "Reshape", [scales.name, view_shape], [scale_view], name=f"{prefix}/ScaleView"
        )
    )
    zp_view = ""
    if zero_points is not None:
        zp_view = f"{prefix}/zero_points_3d"
        new_nodes.append(
            helper.make_node(
                "Reshape", [zero_points.name, view_shape], [zp_view], name=f"{prefix}/ZeroPointView"
            )
        )
    hidden = gather.output[0]
    gathered = f"{prefix}/gathered_blocks"
    gather.input[0] = data.name
    gather.input[2] = scale_view
    if len(gather.input) > 3:
        gather.input[3] = zp_view
    gather.output[0] = gathered
    for a in gather.attribute:
        if a.name == "quantize_axis":
            a.i = 2
    restore = helper.make_node(
        "Reshape", [gathered, out_shape], [hidden], name=f"{prefix}/HiddenView"
    )

    # Rebuild the node list in topological order: the views before the gather, the restore
    # right after it, the old Reshape gone.
    ordered = []
    for node in graph.node:
        if node is reshape:
            continue
        if node is gather:
            ordered.extend(new_nodes)
            ordered.append(node)
            ordered.append(restore)
        else:
            ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    tmp = model_path.with_name(model_path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(model_path)
    log.info(
        "token embedding gathers the tied LM head's %d x %d 8-bit matrix in place", vocab, blocks
    )
    return True
