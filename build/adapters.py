"""Runtime LoRA adapters: one int4 base, several peft adapters chosen per request.

Run (Python): `export_runtime_adapters(BASE_HF_DIR, {"maintenance": DIR, "quality": DIR}, OUT)`
Tests: `.venv/bin/pytest tests/build/test_adapters.py`

Merging an adapter bakes it into one exported model. To serve several departments from one
base, the base is exported once (int4, as `expert export` does) and then given a LoRA path at
every adapted projection whose weights are *graph inputs*:

    y = MatMulNBits(x, W_int4)  ->  y = MatMulNBits(x, W_int4) + (x @ A) @ B

A and B are inputs with a symbolic rank dimension and an empty default (rank 0), so with no
adapter active the extra path adds zeros and the base model's output is unchanged. Each adapter
becomes a `<name>.onnx_adapter` file (onnxruntime's AdapterFormat) holding A and B for every
site; onnxruntime-genai feeds them per request (`og.Adapters`, `generator.set_active_adapter`).
The LoRA weights stay in full precision (only the base is quantized), and peft's scaling
(alpha / r, or alpha / sqrt(r) for rsLoRA) is folded into B.

The builder fuses Q/K/V into one `qkv_proj` MatMul (and Phi-3 checkpoints fuse gate/up in the
checkpoint while the builder splits them). A site therefore gathers the LoRA pairs that write
into its output columns: A_site = [A_q | A_k | A_v] and B_site is block-diagonal, which gives
exactly x@A_q@B_q in the Q columns, x@A_k@B_k in the K columns, and so on.

Why not the builder's `adapter_path`: it writes the LoRA weights as initializers and quantizes
them with the base, i.e. one merged model per adapter, not runtime adapters.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.common.fsutil import atomic_dir
from appliance.errors import UserFacingError
from build.export_llm import (
    EXPORT_RECORD,
    Int4Options,
    _normalise_permissions,
    export_llm,
    smoke_test,
)

log = logging.getLogger(__name__)

ADAPTERS_DIR = "adapters"
ADAPTERS_INDEX = "adapters.json"
ADAPTER_SUFFIX = ".onnx_adapter"
ADAPTER_FORMAT_VERSION = 1
LLM_DIR = "llm"

# HF projection names (per decoder layer) an adapter may target.
ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "gate_up_proj", "down_proj")
SUPPORTED_MODULES = ATTN_MODULES + MLP_MODULES
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KEY_RE = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$")


@dataclass
class _Part:
    module: str  # peft module path without the lora suffix, e.g. model.layers.0.self_attn.q_proj
    src: tuple[int, int]  # rows of the module's B (output features) used
    dst: int  # first output column of the site these rows land in


@dataclass
class Site:
    """One base MatMul whose output gets a LoRA path."""

    value: str  # name of the MatMul's output in the graph
    param: str  # prefix of the two graph inputs: <param>.lora_A, <param>.lora_B
    in_features: int
    out_features: int
    parts: list[_Part] = field(default_factory=list)

    @property
    def a_name(self) -> str:
        return f"{self.param}.lora_A"

    @property
    def b_name(self) -> str:
        return f"{self.param}.lora_B"


@dataclass
class LoraAdapter:
    name: str
    path: Path
    config: dict
    # module path -> (A^T [in, r], B^T * scale [r, out]), float32
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------------------------
# Reading peft adapters
# --------------------------------------------------------------------------------------------


def read_peft_adapter(name: str, path: Path) -> LoraAdapter:
    """A peft LoRA folder as (A^T, scaled B^T) pairs per module, with clear errors."""
    path = Path(path)
    if not _NAME_RE.match(name):
        raise UserFacingError(
            f"adapter name {name!r} is not usable as a model name: use letters, digits, '.', "
            "'_' or '-' (at most 64), starting with a letter or digit."
        )
    cfg_path = path / "adapter_config.json"
    if not cfg_path.is_file():
        raise UserFacingError(
            f"{cfg_path} is missing: adapter {name!r} must be a peft LoRA folder "
            "(adapter_config.json + adapter_model.safetensors) as `expert train` writes."
        )
    config = json.loads(cfg_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise UserFacingError(f"{cfg_path}: peft_type {config.get('peft_type')!r} is not LORA.")
    if config.get("use_dora"):
        raise UserFacingError(
            f"{cfg_path}: DoRA adapters cannot run as runtime adapters; merge it."
        )
    if config.get("bias", "none") != "none":
        raise UserFacingError(
            f"{cfg_path}: adapters with trained biases (bias={config['bias']!r}) "
            "cannot run as runtime adapters; retrain with bias='none' or merge it."
        )
    weights = _read_adapter_weights(path)
    raw: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in weights.items():
        m = _KEY_RE.match(key)
        if not m:
            raise UserFacingError(
                f"{path}: tensor {key!r} is not a LoRA A/B weight; only LoRA on linear "
                f"projections ({', '.join(SUPPORTED_MODULES)}) can run as a runtime adapter."
            )
        raw.setdefault(m.group(1), {})[m.group(2)] = tensor
    if not raw:
        raise UserFacingError(f"{path}: the adapter holds no LoRA weights.")
    alpha = float(config.get("lora_alpha", config.get("r", 8)))
    rank_pattern, alpha_pattern = (
        config.get("rank_pattern") or {},
        config.get("alpha_pattern") or {},
    )
    pairs = {}
    for module, ab in sorted(raw.items()):
        if set(ab) != {"A", "B"}:
            raise UserFacingError(f"{path}: module {module} has only lora_{''.join(ab)}.")
        leaf = module.rsplit(".", 1)[-1]
        if leaf not in SUPPORTED_MODULES:
            raise UserFacingError(
                f"{path}: LoRA on {module} is not supported at run time; supported projections: "
                f"{', '.join(SUPPORTED_MODULES)} (merge the adapter instead)."
            )
        a, b = ab["A"].astype(np.float32), ab["B"].astype(np.float32)  # a: [r, in], b: [out, r]
        r = a.shape[0]
        a_alpha = _pattern_value(alpha_pattern, module, alpha)
        _pattern_value(rank_pattern, module, r)  # the tensors themselves carry the rank
        scale = a_alpha / (r**0.5) if config.get("use_rslora") else a_alpha / r
        pairs[module] = (np.ascontiguousarray(a.T), np.ascontiguousarray(b.T * scale))
    return LoraAdapter(name=name, path=path, config=config, pairs=pairs)


def _pattern_value(pattern: dict, module: str, default: float) -> float:
    for key, value in pattern.items():
        if module == key or module.endswith("." + key) or re.search(key, module):
            return float(value)
    return default


def _read_adapter_weights(path: Path) -> dict[str, np.ndarray]:
    st = path / "adapter_model.safetensors"
    if st.is_file():
        from safetensors.numpy import load_file

        try:
            return load_file(str(st))
        except Exception:  # bf16 tensors cannot be read by the numpy loader
            from safetensors.torch import load_file as load_torch

            return {k: v.float().numpy() for k, v in load_torch(str(st)).items()}
    binf = path / "adapter_model.bin"
    if binf.is_file():
        import torch

        return {k: v.float().numpy() for k, v in torch.load(str(binf), map_location="cpu").items()}
    raise UserFacingError(f"{path}: no adapter_model.safetensors (or .bin) found.")


# --------------------------------------------------------------------------------------------
# Finding the LoRA sites in an exported graph
# --------------------------------------------------------------------------------------------


def _site_value_names(layer: int, group: str, leaf: str) -> list[str]:
    # genai builder: /model/layers.0/attn/qkv_proj/MatMul/output_0
    # Optimum (torch.onnx): /model/layers.0/self_attn/q_proj/MatMul_output_0
    builder_group = "attn" if group == "self_attn" else group
    return [
        f"/model/layers.{layer}/{builder_group}/{leaf}/MatMul/output_0",
        f"/model/layers.{layer}/{group}/{leaf}/MatMul_output_0",
    ]


def find_sites(graph, hf_config: dict, modules: set[str]) -> list[Site]:
    """The graph MatMuls that `modules` (peft module paths) write into, with column layout."""
    producers = {out.name: node for node in graph for out in node.outputs}
    heads = hf_config["num_attention_heads"]
    kv_heads = hf_config.get("num_key_value_heads") or heads
    head_dim = hf_config.get("head_dim") or hf_config["hidden_size"] // heads
    inter = hf_config["intermediate_size"]
    nq, nkv = heads * head_dim, kv_heads * head_dim
    widths = {"q_proj": nq, "k_proj": nkv, "v_proj": nkv, "gate_proj": inter, "up_proj": inter}
    layers = sorted(
        {int(m.group(1)) for mod in modules if (m := re.search(r"layers\.(\d+)\.", mod))}
    )
    prefix_of = {}
    for mod in modules:
        m = re.match(r"^(.*layers\.(\d+))\.(self_attn|mlp)\.(\w+)$", mod)
        if not m:
            raise UserFacingError(f"LoRA module {mod} is not a decoder-layer projection.")
        prefix_of[(int(m.group(2)), m.group(3), m.group(4))] = mod

    sites: list[Site] = []

    def add(layer: int, group: str, leaf: str, parts: list[_Part]) -> bool:
        for name in _site_value_names(layer, group, leaf):
            if name in producers:
                k, n = _matmul_dims(producers[name], graph)
                sites.append(
                    Site(
                        value=name,
                        param=f"model.layers.{layer}.{group}.{leaf}",
                        in_features=k,
                        out_features=n,
                        parts=parts,
                    )
                )
                return True
        return False

    for i in layers:

        def mod(group: str, leaf: str, layer: int = i) -> str | None:
            return prefix_of.get((layer, group, leaf))

        # Attention input projections: separate, or fused into qkv_proj by the builder/checkpoint.
        qkv = [(leaf, mod("self_attn", leaf)) for leaf in ("q_proj", "k_proj", "v_proj")]
        if mod("self_attn", "qkv_proj"):
            ok = add(
                i,
                "self_attn",
                "qkv_proj",
                [_Part(mod("self_attn", "qkv_proj"), (0, nq + 2 * nkv), 0)],
            )
            _require(ok, mod("self_attn", "qkv_proj"))
        elif any(m for _, m in qkv):
            remaining = []
            for leaf, m in qkv:
                if m and not add(i, "self_attn", leaf, [_Part(m, (0, widths[leaf]), 0)]):
                    remaining.append((leaf, m))
            if remaining:
                offsets = {"q_proj": 0, "k_proj": nq, "v_proj": nq + nkv}
                parts = [_Part(m, (0, widths[leaf]), offsets[leaf]) for leaf, m in remaining]
                _require(add(i, "self_attn", "qkv_proj", parts), remaining[0][1])
        if mod("self_attn", "o_proj"):
            _require(
                add(
                    i,
                    "self_attn",
                    "o_proj",
                    [_Part(mod("self_attn", "o_proj"), (0, hf_config["hidden_size"]), 0)],
                ),
                mod("self_attn", "o_proj"),
            )
        # MLP: gate/up separate, or fused gate_up_proj (Phi-3) that the builder splits.
        gu = mod("mlp", "gate_up_proj")
        if gu:
            if not add(i, "mlp", "gate_up_proj", [_Part(gu, (0, 2 * inter), 0)]):
                _require(add(i, "mlp", "gate_proj", [_Part(gu, (0, inter), 0)]), gu)
                _require(add(i, "mlp", "up_proj", [_Part(gu, (inter, 2 * inter), 0)]), gu)
        for leaf in ("gate_proj", "up_proj"):
            if mod("mlp", leaf):
                _require(
                    add(i, "mlp", leaf, [_Part(mod("mlp", leaf), (0, inter), 0)]), mod("mlp", leaf)
                )
        if mod("mlp", "down_proj"):
            _require(
                add(
                    i,
                    "mlp",
                    "down_proj",
                    [_Part(mod("mlp", "down_proj"), (0, hf_config["hidden_size"]), 0)],
                ),
                mod("mlp", "down_proj"),
            )
    # Merge sites that several modules feed (q/k/v into one qkv_proj site were built together;
    # this only guards against duplicates).
    merged: dict[str, Site] = {}
    for s in sites:
        if s.value in merged:
            merged[s.value].parts.extend(s.parts)
        else:
            merged[s.value] = s
    return list(merged.values())


def _require(ok: bool, module: str | None) -> None:
    if not ok:
        raise UserFacingError(
            f"found no MatMul for LoRA module {module} in the exported graph; runtime adapters "
            "support the genai and optimum export graphs of llama- and phi3-style models."
        )


def _matmul_dims(node, graph) -> tuple[int, int]:
    if node.op_type == "MatMulNBits":
        return int(node.attributes["K"].value), int(node.attributes["N"].value)
    if node.op_type == "MatMul":
        w = node.inputs[1]
        if w is not None and w.const_value is not None:
            k, n = w.const_value.shape
            return int(k), int(n)
    raise UserFacingError(f"cannot attach LoRA to node {node.name} ({node.op_type}).")


# --------------------------------------------------------------------------------------------
# Graph surgery and adapter files
# --------------------------------------------------------------------------------------------


def add_lora_inputs(src_dir: Path, dst_dir: Path, sites: list[Site]) -> dict:
    """Copy the model folder `src_dir` to `dst_dir` with LoRA inputs at `sites`."""
    import onnx_ir as ir

    model = ir.load(str(src_dir / "model.onnx"))
    graph = model.graph
    io_dtype = graph.outputs[0].dtype  # logits: float32 on CPU int4, float16 on CUDA
    producers = {out.name: node for node in graph for out in node.outputs}
    for site in sites:
        y = producers[site.value].outputs[0]
        node = producers[site.value]
        x = node.inputs[0]
        rank_dim = f"lora_r.{site.param}"
        a = ir.Value(
            name=site.a_name,
            type=ir.TensorType(io_dtype),
            shape=ir.Shape([site.in_features, rank_dim]),
        )
        b = ir.Value(
            name=site.b_name,
            type=ir.TensorType(io_dtype),
            shape=ir.Shape([rank_dim, site.out_features]),
        )
        np_dtype = io_dtype.numpy()
        a.const_value = ir.tensor(np.zeros((site.in_features, 0), np_dtype), name=site.a_name)
        b.const_value = ir.tensor(np.zeros((0, site.out_features), np_dtype), name=site.b_name)
        graph.inputs.extend([a, b])
        graph.register_initializer(a)
        graph.register_initializer(b)
        uses = list(y.uses())
        base = (
            site.value.rsplit("/", 2)[0]
            if "/MatMul/" in site.value
            else site.value.rsplit("/", 1)[0]
        )
        mm_a = ir.node("MatMul", [x, a], name=f"{base}/lora_A/MatMul")
        mm_a.outputs[0].name = f"{base}/lora_A/MatMul/output_0"
        mm_b = ir.node("MatMul", [mm_a.outputs[0], b], name=f"{base}/lora_B/MatMul")
        mm_b.outputs[0].name = f"{base}/lora_B/MatMul/output_0"
        add = ir.node("Add", [y, mm_b.outputs[0]], name=f"{base}/lora/Add")
        add.outputs[0].name = f"{base}/lora/Add/output_0"
        for user, index in uses:
            user.replace_input_with(index, add.outputs[0])
        if y.is_graph_output():
            raise UserFacingError(f"LoRA site {site.value} is a graph output; cannot adapt it.")
        graph.insert_after(node, [mm_a, mm_b, add])
    graph.sort()
    dst_dir.mkdir(parents=True, exist_ok=True)
    ir.save(model, str(dst_dir / "model.onnx"), external_data="model.onnx.data")
    for p in src_dir.iterdir():
        if p.name not in ("model.onnx", "model.onnx.data") and p.is_file():
            shutil.copy2(p, dst_dir / p.name)
    return {"io_dtype": io_dtype.name.lower(), "sites": len(sites)}


def adapter_tensors(adapter: LoraAdapter, sites: list[Site], np_dtype) -> dict[str, np.ndarray]:
    """A and B for every site (zeros of rank 1 where the adapter does not touch a site)."""
    out = {}
    for site in sites:
        parts = [(p, adapter.pairs[p.module]) for p in site.parts if p.module in adapter.pairs]
        if not parts:
            a = np.zeros((site.in_features, 1), np.float32)
            b = np.zeros((1, site.out_features), np.float32)
        else:
            rank = sum(ab[0].shape[1] for _, ab in parts)
            a = np.zeros((site.in_features, rank), np.float32)
            b = np.zeros((rank, site.out_features), np.float32)
            off = 0
            for part, (at, bt) in parts:
                if at.shape[0] != site.in_features:
                    raise UserFacingError(
                        f"adapter {adapter.name!r}: {part.module} expects {at.shape[0]} input "
                        f"features, the base has {site.in_features}: it was trained on another base."
                    )
                r = at.shape[1]
                lo, hi = part.src
                if bt.shape[1] < hi:
                    raise UserFacingError(
                        f"adapter {adapter.name!r}: {part.module} has {bt.shape[1]} output "
                        f"features, the base needs {hi}: it was trained on another base."
                    )
                a[:, off : off + r] = at
                b[off : off + r, part.dst : part.dst + (hi - lo)] = bt[:, lo:hi]
                off += r
        out[site.a_name] = np.ascontiguousarray(a.astype(np_dtype))
        out[site.b_name] = np.ascontiguousarray(b.astype(np_dtype))
    return out


def write_onnx_adapter(tensors: dict[str, np.ndarray], path: Path) -> None:
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(ADAPTER_FORMAT_VERSION)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in tensors.items()})
    fmt.export_adapter(str(path))


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def export_runtime_adapters(
    base_model_dir: Path,
    adapters: dict[str, Path],
    out_dir: Path,
    *,
    backend: str = "genai",
    precision: str = "int4",
    int4: Int4Options | None = None,
    execution_provider: str = "cpu",
    force: bool = False,
) -> Path:
    """Export the base once with LoRA inputs, plus one `.onnx_adapter` per adapter.

    `out_dir` gets `llm/` (an onnxruntime-genai folder whose LoRA inputs default to zero, so it
    serves the plain base) and `adapters/<name>.onnx_adapter` + `adapters/adapters.json`, the
    layout of a bundle. Every adapter must be a LoRA of `base_model_dir`. Returns `out_dir`.
    """
    from build.export_llm import read_hf_config

    base_model_dir, out_dir = Path(base_model_dir), Path(out_dir)
    if not adapters:
        raise UserFacingError("no adapters given; pass at least one NAME=DIR.")
    loaded = [read_peft_adapter(name, Path(path)) for name, path in adapters.items()]
    hf_config = read_hf_config(base_model_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise UserFacingError(
            f"{out_dir} exists and is not empty; choose another output or use --force."
        )
    modules = set().union(*(a.pairs for a in loaded))

    with atomic_dir(out_dir, overwrite=force) as work:  # force was checked above
        with tempfile.TemporaryDirectory(prefix="expert-adapters-") as scratch:
            base_onnx = export_llm(
                base_model_dir,
                Path(scratch) / "base",
                backend=backend,
                precision=precision,
                int4=int4,
                execution_provider=execution_provider,
                verify=False,
            )
            import onnx_ir as ir

            graph = ir.load(str(base_onnx / "model.onnx")).graph
            sites = find_sites(graph, hf_config, modules)
            del graph
            info = add_lora_inputs(base_onnx, work / LLM_DIR, sites)
        np_dtype = np.float16 if info["io_dtype"] == "float16" else np.float32
        (work / ADAPTERS_DIR).mkdir()
        index = {
            "format_version": ADAPTER_FORMAT_VERSION,
            "base": str(base_model_dir.resolve()),
            "io_dtype": info["io_dtype"],
            "sites": [s.param for s in sites],
            "adapters": {},
        }
        for adapter in loaded:
            file = work / ADAPTERS_DIR / f"{adapter.name}{ADAPTER_SUFFIX}"
            write_onnx_adapter(adapter_tensors(adapter, sites, np_dtype), file)
            cfg = adapter.config
            index["adapters"][adapter.name] = {
                "file": file.name,
                "source": str(adapter.path.resolve()),
                "r": cfg.get("r"),
                "lora_alpha": cfg.get("lora_alpha"),
                "target_modules": sorted({m.rsplit(".", 1)[-1] for m in adapter.pairs}),
                "base_model_name_or_path": cfg.get("base_model_name_or_path"),
            }
        (work / ADAPTERS_DIR / ADAPTERS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        record_path = work / LLM_DIR / EXPORT_RECORD
        record = json.loads(record_path.read_text())
        record["runtime_adapters"] = {
            "sites": len(sites),
            "io_dtype": info["io_dtype"],
            "adapters": sorted(index["adapters"]),
        }
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        if execution_provider == "cpu":
            smoke_test(work / LLM_DIR)
            for adapter in loaded:
                run_with_adapter_smoke(work, adapter.name)
        _normalise_permissions(work)
    log.info(
        "exported base %s with %d LoRA sites and adapters %s to %s",
        base_model_dir,
        len(sites),
        ", ".join(adapters),
        out_dir,
    )
    return out_dir


def run_with_adapter_smoke(out_dir: Path, name: str) -> None:
    """Load `<out>/adapters/<name>.onnx_adapter` on `<out>/llm` and generate two tokens."""
    import onnxruntime_genai as og

    try:
        model = og.Model(str(out_dir / LLM_DIR))
        adapters = og.Adapters(model)
        adapters.load(str(out_dir / ADAPTERS_DIR / f"{name}{ADAPTER_SUFFIX}"), name)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=4)
        gen = og.Generator(model, params)
        gen.set_active_adapter(adapters, name)
        gen.append_tokens([1, 2])
        gen.generate_next_token()
        del gen
    except Exception as exc:
        raise UserFacingError(f"adapter {name!r} does not run on the exported base: {exc}") from exc
