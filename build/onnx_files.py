"""Writing an ONNX model the way every export of this project ships it: the graph in `NAME`,
every tensor over 1 KiB in `NAME.data` beside it (onnxruntime maps that file instead of parsing
the weights into memory), readable by the service's user.

Test: .venv/bin/pytest tests/build/test_export_embedder.py
"""

from __future__ import annotations

from pathlib import Path


def save_with_external_data(model, path: Path) -> None:
    """Write `model` (an onnx.ModelProto) to `path` and its tensors to `path.name + '.data'`."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.name + ".data"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data,
        size_threshold=1024,
    )
    # onnx creates the data file private to its owner; the service may run as another user.
    (path.parent / data).chmod(0o644)
