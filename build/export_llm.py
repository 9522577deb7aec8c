"""LLM export: an HF checkpoint becomes an ONNX model folder that onnxruntime-genai opens.

Run: `expert export --model DIR --out DIR [--backend genai|optimum] [--precision int4|int8|fp32]`
     `expert export --model DIR --out DIR --runtime-adapter NAME=LORA_DIR ...` (build/adapters.py)
Tests: `.venv/bin/pytest tests/build/test_export_llm.py` (slow ones: add `-m slow`).

Two backends produce the same kind of folder (model.onnx + .data, genai_config.json, tokenizer
files, chat template, export.json):
- `genai` (default): onnxruntime-genai's model builder. Fused attention (GroupQueryAttention),
  MatMulNBits int4/int8 weights, the fastest graph on the device.
- `optimum`: Optimum's ONNX export (text-generation-with-past), then onnxruntime's
  MatMulNBitsQuantizer, then a genai_config.json written from the exported graph's own
  input/output names (build/export_optimum.py). A second, independent path for architectures or
  checkpoints the builder does not handle, and a cross-check of the first; it decodes ~2.5-3x
  slower.
The quantization settings of both are build/int4_options.py's `Int4Options`.

The output is written to a sibling `.partial` folder, opened and run through onnxruntime-genai
(a few greedy tokens) and only then moved into place, so a finished folder is always a working
one; a finished folder is never overwritten without `--force`. export.json records what was done
(backend, precision, quantization options, source model, package versions); the bundle copies it
into its manifest.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from appliance.common.fsutil import atomic_dir, sha256_file
from appliance.common.versions import package_versions
from appliance.errors import UserFacingError
from build.export_optimum import OPTIMUM_ARCHITECTURES, export_optimum
from build.int4_options import GENAI_ALGOS, Int4Options
from build.tied_embedding import share_tied_embedding

log = logging.getLogger(__name__)

EXPORT_RECORD = "export.json"
EXPORT_FORMAT_VERSION = 1

BACKENDS = ("genai", "optimum")
PRECISIONS = ("int4", "int8", "fp32")
EXECUTION_PROVIDERS = ("cpu", "cuda")

# Text decoders the onnxruntime-genai 0.15.2 model builder converts (builder.py `create_model`),
# minus the vision/audio ones whose text part needs `inputs_embeds` and so cannot serve plain
# chat here, and PhiMoE (CUDA only). Tested in this project: LlamaForCausalLM (SmolLM2) and
# Phi3ForCausalLM (tiny Phi-3; real Phi-3-mini uses the same path).
GENAI_ARCHITECTURES = (
    "LlamaForCausalLM",
    "Phi3ForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "GraniteForCausalLM",
    "OlmoForCausalLM",
    "NemotronForCausalLM",
    "PhiForCausalLM",
    "Phi3SmallForCausalLM",
    "InternLM2ForCausalLM",
    "Ernie4_5ForCausalLM",
    "SmolLM3ForCausalLM",
    "HunYuanDenseV1ForCausalLM",
    "ChatGLMModel",
    "GptOssForCausalLM",
    "Lfm2ForCausalLM",
)

SMOKE_PROMPT = "Hello"
SMOKE_TOKENS = 4


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def read_hf_config(model_dir: Path) -> dict:
    config_path = Path(model_dir) / "config.json"
    if not Path(model_dir).is_dir():
        raise UserFacingError(
            f"model folder {model_dir} does not exist; pass an HF checkpoint folder "
            "(make one with `expert import-model` or `expert merge`)."
        )
    if not config_path.is_file():
        raise UserFacingError(
            f"{config_path} is missing: {model_dir} is not a Hugging Face checkpoint folder; "
            "import the model first with `expert import-model --gguf FILE|--hf DIR --out DIR`."
        )
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserFacingError(
            f"{config_path} is not valid JSON ({exc}); re-import the model."
        ) from exc


def architecture_of(config: dict, config_path: Path) -> str:
    archs = config.get("architectures") or []
    if not archs:
        raise UserFacingError(
            f'{config_path} names no `architectures`; add e.g. "architectures": '
            '["LlamaForCausalLM"] or re-save the checkpoint with transformers.'
        )
    return archs[0]


def check_architecture(arch: str, backend: str) -> None:
    supported = GENAI_ARCHITECTURES if backend == "genai" else tuple(OPTIMUM_ARCHITECTURES)
    if arch not in supported:
        other = "optimum" if backend == "genai" else "genai"
        other_ok = arch in (OPTIMUM_ARCHITECTURES if other == "optimum" else GENAI_ARCHITECTURES)
        hint = f" The {other} backend supports it: use --backend {other}." if other_ok else ""
        raise UserFacingError(
            f"architecture {arch} is not supported by the {backend} export backend; supported: "
            f"{', '.join(supported)}.{hint}"
        )


def has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        with contextlib.suppress(json.JSONDecodeError):
            return bool(json.loads(tc.read_text()).get("chat_template"))
    return False


def _check_tokenizer_files(model_dir: Path) -> None:
    if not (model_dir / "tokenizer.json").is_file():
        raise UserFacingError(
            f"{model_dir / 'tokenizer.json'} is missing: onnxruntime-genai needs a fast-tokenizer "
            "file; re-import the model with `expert import-model`, which writes one."
        )
    if not has_chat_template(model_dir):
        raise UserFacingError(
            f"{model_dir} has no chat template (neither chat_template.jinja nor a `chat_template` "
            "in tokenizer_config.json); the appliance needs one to format prompts. Add the "
            "template of the model's family to tokenizer_config.json and export again."
        )


# Peak resident memory of a genai export per byte of the checkpoint's fp32 weights, plus a fixed
# allowance. Weight-by-weight quantization (rtn*/k_quant*), `/usr/bin/time -v` (README "Models"):
# Qwen2.5-Coder-0.5B 3.29 GB for 2.52 GB of fp32 weights, -1.5B 4.56 GB for 7.11 GB (the weights
# are memory-mapped and each is dropped once quantized): about 0.28x + 2.6 GB; 0.6x + 3 GB leaves
# room. The builder's own quantizer (`--int4-algo default`, fp32, the optimum backend) holds
# whole-model copies: the 1.5B export peaked at 19.9 GB before, 2.8x its fp32 weights.
PEAK_PER_FP32_BYTE_STREAMED = 0.6
PEAK_PER_FP32_BYTE_WHOLE = 2.9
PEAK_FIXED_BYTES = 3 << 30


def checkpoint_parameters(model_dir: Path) -> int:
    """Parameter count from the safetensors headers (no tensor is read)."""
    import struct

    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, meta in header.items():
            if name != "__metadata__":
                n = 1
                for dim in meta["shape"]:
                    n *= dim
                total += n
    return total


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def export_memory_estimate(model_dir: Path, backend: str, precision: str, int4) -> int:
    fp32 = checkpoint_parameters(model_dir) * 4
    streamed = backend == "genai" and precision in ("int4", "int8") and int4.streams
    factor = PEAK_PER_FP32_BYTE_STREAMED if streamed else PEAK_PER_FP32_BYTE_WHOLE
    return int(fp32 * factor) + PEAK_FIXED_BYTES


def check_export_memory(
    model_dir: Path, backend: str, precision: str, int4, available: int | None = None
) -> None:
    """Refuse, before loading anything, an export the box cannot hold."""
    need = export_memory_estimate(model_dir, backend, precision, int4)
    available = available_memory_bytes() if available is None else available
    if available is not None and need > available:
        gb = 1 << 30
        raise UserFacingError(
            f"exporting {model_dir} needs about {need / gb:.1f} GB of memory and the box has "
            f"{available / gb:.1f} GB available: free memory (stop other jobs), export on a "
            "bigger build box, or pass --skip-memory-check to try anyway. (Weight-by-weight "
            "quantization, the default int4 algorithms, needs the least.)"
        )


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserFacingError(f"output {out_dir} exists and is not a folder; choose another --out.")
    if (out_dir / EXPORT_RECORD).is_file() and not force:
        raise UserFacingError(
            f"{out_dir} already holds a finished export ({EXPORT_RECORD}); choose another --out, "
            "or use --force to replace it."
        )
    if any(out_dir.iterdir()) and not force:
        raise UserFacingError(
            f"{out_dir} exists and is not empty (and is no finished export); remove it, choose "
            "another --out, or use --force to replace it."
        )


def _validate_choices(
    backend: str, precision: str, execution_provider: str, int4: Int4Options
) -> None:
    if backend not in BACKENDS:
        raise UserFacingError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if precision not in PRECISIONS:
        raise UserFacingError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if execution_provider not in EXECUTION_PROVIDERS:
        raise UserFacingError(
            f"execution provider must be one of {EXECUTION_PROVIDERS}, got {execution_provider!r}."
        )
    if backend == "genai" and int4.algo not in GENAI_ALGOS:
        raise UserFacingError(
            f"int4 algorithm {int4.algo!r} is not offered by the genai backend (choose one of "
            f"{', '.join(GENAI_ALGOS)}), or use --backend optimum."
        )
    if backend == "optimum" and precision == "int8" and int4.algo != "default":
        raise UserFacingError(
            f"the optimum backend quantizes int8 with the default algorithm only; drop "
            f"--int4-algo {int4.algo} or use --int4-algo default (or --backend genai)."
        )


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def export_llm(
    model_dir: Path,
    out_dir: Path,
    *,
    backend: str = "genai",
    precision: str = "int4",
    int4: Int4Options | None = None,
    execution_provider: str = "cpu",
    adapter_dir: Path | None = None,
    force: bool = False,
    verify: bool = True,
    memory_check: bool = True,
    prune_lm_head: bool = True,
) -> Path:
    """Export `model_dir` (an HF checkpoint) to `out_dir`, a folder onnxruntime-genai opens.

    `adapter_dir` (a peft LoRA folder) is merged into the weights before export; for adapters
    chosen per request at run time use `build.adapters.export_runtime_adapters` instead.
    `verify` opens the result with onnxruntime-genai and generates a few tokens (CPU only).
    `prune_lm_head` (genai backend): the LM head runs on the last prompt position only, so
    processing a prompt returns one row of logits, not one per position (see
    `genai_extra_options`). Returns `out_dir`.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    int4 = int4 or Int4Options()
    _validate_choices(backend, precision, execution_provider, int4)
    config = read_hf_config(model_dir)
    arch = architecture_of(config, model_dir / "config.json")
    check_architecture(arch, backend)
    _check_tokenizer_files(model_dir)
    if adapter_dir is not None:
        _check_adapter_dir(Path(adapter_dir))
    _check_out_dir(out_dir, force)
    if memory_check:
        check_export_memory(model_dir, backend, precision, int4)

    started = time.monotonic()
    # force was checked above; atomic_dir replaces the old export only after the new one is whole
    with atomic_dir(out_dir, overwrite=force) as work:
        with tempfile.TemporaryDirectory(prefix="expert-export-") as scratch:
            source = model_dir
            if adapter_dir is not None:
                source = merge_adapter(model_dir, Path(adapter_dir), Path(scratch) / "merged")
            if backend == "genai":
                _export_genai(
                    source,
                    work,
                    precision,
                    execution_provider,
                    int4,
                    Path(scratch),
                    prune_lm_head=prune_lm_head,
                )
            else:
                with _quiet_builder():
                    export_optimum(
                        source, work, precision, execution_provider, int4, arch, Path(scratch)
                    )
        _ensure_processing_files(model_dir, work)
        if verify and execution_provider == "cpu":
            smoke_test(work)
        record = _export_record(
            model_dir=model_dir,
            config=config,
            arch=arch,
            backend=backend,
            precision=precision,
            execution_provider=execution_provider,
            int4=int4,
            adapter_dir=adapter_dir,
            out=work,
            duration_s=time.monotonic() - started,
            lm_head_last_position_only=backend == "genai" and prune_lm_head,
        )
        (work / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        _normalise_permissions(work)
    log.info(
        "exported %s (%s, %s, %s) to %s in %.1f s",
        model_dir,
        backend,
        precision,
        execution_provider,
        out_dir,
        time.monotonic() - started,
    )
    return out_dir


def read_export_record(onnx_dir: Path) -> dict:
    path = Path(onnx_dir) / EXPORT_RECORD
    if not path.is_file():
        raise UserFacingError(
            f"{path} is missing: {onnx_dir} is not a finished `expert export` output."
        )
    return json.loads(path.read_text())


# --------------------------------------------------------------------------------------------
# genai backend
# --------------------------------------------------------------------------------------------


def genai_extra_options(
    precision: str, execution_provider: str, int4: Int4Options, *, prune_lm_head: bool = True
) -> dict[str, str]:
    """The builder's --extra_options (strings, as its CLI passes them) for these settings.

    `prune_lm_head`: the LM head (SmolLM2: 49,152 x 576) runs on the last prompt position only.
    The served path only ever reads the last position's logits, and they are bit-identical to
    the unpruned export's; what goes is the [prompt x vocabulary] fp32 logits buffer (157 MB for
    an 800-token SmolLM2 prompt in one pass, 50 MB per 256-token chunk) and the LM head's share
    of the prompt's compute. Measured in benchmarks/OPTIMISATION.md and results/latest.md (memory
    breakdown). The quality gate scores a pruned export position by position
    (build/quality_gate.py)."""
    opts = {"hf_token": "false"}
    if prune_lm_head:
        opts["prune_lm_head"] = "true"
    if precision in ("int4", "int8"):
        opts.update(
            block_size=str(int4.block_size),
            is_symmetric="true" if int4.symmetric else "false",
            accuracy_level=str(int4.resolved_accuracy_level(execution_provider)),
            algo_config=int4.algo,
        )
    return opts


@contextlib.contextmanager
def _quiet_builder():
    """The builder and the quantizer print per-node chatter; keep it out of the user's way."""
    buf = io.StringIO()
    chatty = [
        logging.getLogger(name)
        for name in [
            "onnxruntime.quantization",
            "neural_compressor",
            *logging.root.manager.loggerDict,
        ]
        if name.startswith(("onnxruntime.quantization", "neural_compressor"))
    ]
    old_levels = [lg.level for lg in chatty]
    for lg in chatty:
        lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(buf):
            yield buf
    except Exception:
        tail = buf.getvalue()[-3000:]
        if tail:
            log.error("exporter output before the failure:\n%s", tail)
        raise
    finally:
        for lg, level in zip(chatty, old_levels, strict=True):
            lg.setLevel(level)
        log.debug("exporter output:\n%s", buf.getvalue()[-20000:])


def _export_genai(
    model_dir: Path,
    out: Path,
    precision: str,
    execution_provider: str,
    int4: Int4Options,
    scratch: Path,
    *,
    prune_lm_head: bool = True,
) -> None:
    from onnxruntime_genai.models.builder import check_extra_options, create_model

    from build.stream_quantize import streaming_quantization

    opts = genai_extra_options(precision, execution_provider, int4, prune_lm_head=prune_lm_head)
    cache_dir = scratch / "builder-cache"
    log.info(
        "genai builder: %s -> %s (%s, %s, %s)", model_dir, out, precision, execution_provider, opts
    )
    streaming = (
        streaming_quantization(int4.embedding_bits or None)
        if precision in ("int4", "int8") and int4.streams
        else contextlib.nullcontext()
    )
    with _quiet_builder(), streaming:
        check_extra_options(
            None, str(model_dir), str(out), precision, execution_provider, str(cache_dir), opts
        )
        create_model(
            None, str(model_dir), str(out), precision, execution_provider, str(cache_dir), **opts
        )
    if (out / "model.onnx").is_file():
        share_tied_embedding(out / "model.onnx")


# --------------------------------------------------------------------------------------------
# Adapters merged at export time
# --------------------------------------------------------------------------------------------


def _check_adapter_dir(adapter_dir: Path) -> None:
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserFacingError(
            f"{adapter_dir / 'adapter_config.json'} is missing: --adapter must be a peft LoRA "
            "folder (adapter_config.json + adapter_model.safetensors) as `expert train` writes."
        )


def merge_adapter(model_dir: Path, adapter_dir: Path, out: Path) -> Path:
    """Merge a LoRA adapter into a full-precision (fp32) copy of the base for export.

    The trainer's merge does the work, so an adapter trained on another base is refused here too.
    """
    from trainer.merge import merge_adapter as merge_into_base

    log.info("merging adapter %s into %s", adapter_dir, model_dir)
    merge_into_base(model_dir, adapter_dir, out, dtype="fp32")
    return out


# --------------------------------------------------------------------------------------------
# Output checks and the export record
# --------------------------------------------------------------------------------------------


def _ensure_processing_files(model_dir: Path, out: Path) -> None:
    """The runtime needs tokenizer.json, tokenizer_config.json and the chat template beside the
    model; both exporters copy them, this makes sure (and copies what is missing)."""
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
    ):
        if (model_dir / name).is_file() and not (out / name).is_file():
            shutil.copy2(model_dir / name, out / name)
    missing = [
        n for n in ("model.onnx", "genai_config.json", "tokenizer.json") if not (out / n).is_file()
    ]
    if missing:
        raise UserFacingError(
            f"the export left no {', '.join(missing)} in {out}; see the log above."
        )
    if not has_chat_template(out):
        raise UserFacingError(f"the export left no chat template in {out}; see the log above.")


def _normalise_permissions(folder: Path) -> None:
    """mkdtemp and some writers create 0700/0600 entries; the device's service user reads these."""
    folder.chmod(0o755)
    for p in folder.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def smoke_test(onnx_dir: Path, prompt: str = SMOKE_PROMPT, tokens: int = SMOKE_TOKENS) -> list[int]:
    """Open the folder with onnxruntime-genai and generate a few greedy tokens."""
    import onnxruntime_genai as og

    try:
        model = og.Model(str(onnx_dir))
        tokenizer = og.Tokenizer(model)
        ids = tokenizer.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + tokens)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        out: list[int] = []
        while not generator.is_done():
            generator.generate_next_token()
            out.append(int(generator.get_next_tokens()[0]))
        del generator
    except Exception as exc:  # onnxruntime-genai raises plain RuntimeError/OrtException
        raise UserFacingError(
            f"the exported model in {onnx_dir} does not run on onnxruntime-genai: {exc}"
        ) from exc
    if not out:
        raise UserFacingError(f"the exported model in {onnx_dir} generated no tokens.")
    return out


# The packages an export record names (None: not installed).
RECORDED_PACKAGES = (
    "onnxruntime",
    "onnxruntime-genai",
    "onnx",
    "onnx-ir",
    "transformers",
    "torch",
    "optimum",
    "optimum-onnx",
    "peft",
)


def _export_record(
    *,
    model_dir: Path,
    config: dict,
    arch: str,
    backend: str,
    precision: str,
    execution_provider: str,
    int4: Int4Options,
    adapter_dir: Path | None,
    out: Path,
    duration_s: float,
    lm_head_last_position_only: bool = False,
) -> dict:
    source: dict = {
        "path": str(model_dir.resolve()),
        "architecture": arch,
        "model_type": config.get("model_type"),
        "name_or_path": config.get("_name_or_path"),
        "config_sha256": sha256_file(model_dir / "config.json"),
    }
    if (model_dir / "import.json").is_file():
        with contextlib.suppress(json.JSONDecodeError):
            source["import"] = json.loads((model_dir / "import.json").read_text())
    adapter = None
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        adapter = {
            "path": str(adapter_dir.resolve()),
            "mode": "merged",
            "config": json.loads((adapter_dir / "adapter_config.json").read_text()),
        }
    genai_cfg = json.loads((out / "genai_config.json").read_text())
    quant = None
    if precision in ("int4", "int8"):
        quant = int4.to_dict() | {
            "bits": 4 if precision == "int4" else 8,
            "accuracy_level": int4.resolved_accuracy_level(execution_provider),
            "weight_by_weight": backend == "genai" and int4.streams,
        }
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "backend": backend,
        "precision": precision,
        "execution_provider": execution_provider,
        "quantization": quant,
        "source": source,
        "adapter": adapter,
        "genai": {
            "model_type": genai_cfg["model"]["type"],
            "context_length": genai_cfg["model"]["context_length"],
            "lm_head_last_position_only": lm_head_last_position_only,
        },
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 2),
        "versions": package_versions(RECORDED_PACKAGES, python=True),
        "files": sorted(p.name for p in out.iterdir() if p.name != EXPORT_RECORD),
    }
