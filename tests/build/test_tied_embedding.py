# Run: .venv/bin/pytest tests/build/test_tied_embedding.py
"""The tied token embedding gathers the LM head's 8-bit matrix in place, with equal output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from build.tied_embedding import share_tied_embedding

VOCAB, BLOCKS, BLOCK = 40, 3, 16


def _builder_like_model(path: Path, bits: int = 8, zero_points: bool = True) -> None:
    """The genai builder's tied-embedding pattern: Reshape(head weight) -> GatherBlockQuantized,
    with the weight in an external data file as the builder writes it."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(VOCAB, BLOCKS, BLOCK), dtype=np.uint8)
    scales = rng.random((VOCAB, BLOCKS), dtype=np.float32) + 0.01
    zp = rng.integers(100, 156, size=(VOCAB, BLOCKS), dtype=np.uint8)
    inits = [
        numpy_helper.from_array(data, "lm_head.weight_Q8"),
        numpy_helper.from_array(scales, "lm_head.weight_scale"),
        numpy_helper.from_array(np.array([VOCAB, BLOCKS * BLOCK], np.int64), "shape2d"),
    ]
    gather_inputs = ["embed/Reshape/output_0", "input_ids", "lm_head.weight_scale"]
    if zero_points:
        inits.append(numpy_helper.from_array(zp, "lm_head.weight_zp"))
        gather_inputs.append("lm_head.weight_zp")
    nodes = [
        helper.make_node(
            "Reshape", ["lm_head.weight_Q8", "shape2d"], ["embed/Reshape/output_0"], "embed/Reshape"
        ),
        helper.make_node(
            "GatherBlockQuantized",
            gather_inputs,
            ["embed/out"],
            "embed/GatherBlockQuantized",
            domain="com.microsoft",
            bits=bits,
            block_size=BLOCK,
            gather_axis=0,
            quantize_axis=1,
        ),
        helper.make_node("Relu", ["embed/out"], ["hidden"], "next_layer"),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", None])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=64,  # shapes inline, weights in the data file
    )


def _run(path: Path, ids: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids})[0]


@pytest.mark.parametrize("zero_points", [True, False])
def test_rewrite_gathers_in_place_with_identical_output(tmp_path: Path, zero_points: bool):
    path = tmp_path / "model.onnx"
    _builder_like_model(path, zero_points=zero_points)
    ids = np.array([[0, 7, 39, 7], [3, 2, 1, 38]], dtype=np.int64)
    before = _run(path, ids)
    data_before = (tmp_path / "model.onnx.data").read_bytes()

    assert share_tied_embedding(path) is True
    graph = onnx.load(str(path), load_external_data=False).graph
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    assert gather.input[0] == "lm_head.weight_Q8"  # the stored matrix itself, no Reshape copy
    assert not any(n.name == "embed/Reshape" for n in graph.node)
    assert (tmp_path / "model.onnx.data").read_bytes() == data_before  # weights untouched
    after = _run(path, ids)
    assert after.shape == before.shape == (2, 4, BLOCKS * BLOCK)
    np.testing.assert_array_equal(after, before)
    assert share_tied_embedding(path) is False  # already rewritten: nothing to do


def test_other_layouts_are_left_as_built(tmp_path: Path):
    path = tmp_path / "model.onnx"
    _builder_like_model(path, bits=4)
    text = path.read_bytes()
    assert share_tied_embedding(path) is False
    assert path.read_bytes() == text


def test_default_export_shares_the_tied_embedding(smollm2_onnx_int4: Path):
    graph = onnx.load(str(smollm2_onnx_int4 / "model.onnx"), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    assert gather.input[0] in inits
    matmuls = [n for n in graph.node if n.op_type == "MatMulNBits" and gather.input[0] in n.input]
    assert len(matmuls) == 1  # the LM head reads the same stored matrix
