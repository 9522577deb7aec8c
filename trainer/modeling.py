"""Loading a base model for LoRA or QLoRA training, and measuring what its frozen weights cost.

LoRA keeps the frozen base in the compute precision (bf16 on a CUDA device that supports it,
else fp32). QLoRA stores every frozen linear layer in 4-bit NF4 with double quantization
(bitsandbytes), computes in the same precision, and trains LoRA matrices on top. Small models
spend a large share of their weights on the vocabulary (SmolLM2-135M: a fifth), so QLoRA here
also stores the frozen input embedding and LM head in NF4 (`quantize_embeddings`, on by
default; tied weights stay shared). The merge step never uses these 4-bit weights: it merges
the adapter into the full-precision base.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from appliance.errors import UserFacingError
from trainer.config import ALL_LINEAR, TrainConfig

log = logging.getLogger(__name__)


def check_base_dir(base: Path) -> None:
    if not (Path(base) / "config.json").is_file():
        raise UserFacingError(
            f"{base} is not a Hugging Face checkpoint folder (no config.json); import one with "
            "`expert import-model --gguf FILE --out DIR` or point --base at a folder with "
            "config.json, weights and tokenizer"
        )


def device_and_dtype(config: TrainConfig) -> tuple[str, Any]:
    """('cuda'|'cpu', torch dtype) for training, from `config.precision`."""
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if config.precision == "fp32":
        return device, torch.float32
    if config.precision == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise UserFacingError("precision: this GPU has no bf16; use --precision fp16 or fp32")
        return device, torch.bfloat16
    if config.precision == "fp16":
        if not cuda:
            raise UserFacingError(
                "precision: fp16 training needs a CUDA device; use fp32 on the CPU"
            )
        return device, torch.float16
    if cuda and torch.cuda.is_bf16_supported():
        return device, torch.bfloat16
    return device, torch.float32


def load_tokenizer(base: Path) -> Any:
    from transformers import AutoTokenizer

    check_base_dir(base)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_context_length(base: Path) -> int:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(base))
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _local_device_index() -> int:
    # Under `accelerate launch` / torchrun every process owns the GPU of its local rank.
    return int(os.environ.get("LOCAL_RANK", "0"))


def _fsdp_launch() -> bool:
    # Set by `accelerate launch` with an FSDP config. FSDP flattens each unit's parameters into
    # one tensor of one dtype and, with mixed precision, keeps trainable ones in fp32 itself.
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def _dtype_kwarg() -> str:
    """from_pretrained's dtype argument: `dtype` from transformers 4.56 on, `torch_dtype` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def load_model_for_training(config: TrainConfig) -> Any:
    """The base model with a fresh LoRA adapter attached (a peft PeftModel), ready for Trainer."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    check_base_dir(config.base)
    device, dtype = device_and_dtype(config)
    kwargs: dict[str, Any] = {_dtype_kwarg(): dtype}
    if config.qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=config.quant_type,
            bnb_4bit_use_double_quant=config.double_quant,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=torch.uint8,
        )
        kwargs["device_map"] = {"": _local_device_index() if device == "cuda" else "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(config.base), **kwargs)
    except (OSError, ValueError) as exc:
        raise UserFacingError(f"cannot load the base model from {config.base}: {exc}") from exc
    model.config.use_cache = False  # the KV cache only costs memory while training
    if config.qlora:
        keep_trainable_cpu_layout(model)
        if config.quantize_embeddings:
            quantize_embeddings_4bit(model, dtype, config.quant_type, config.double_quant)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        # prepare_model_for_kbit_training upcasts the (small) unquantized weights to fp32; the
        # norms may stay so, the compute precision stays `dtype` through bnb's compute dtype.
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=ALL_LINEAR
        if config.target_modules == ALL_LINEAR
        else list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise UserFacingError(f"target_modules: {exc}") from exc
    if not config.qlora and dtype != torch.float32 and not _fsdp_launch():
        # Trainable LoRA weights in fp32 keep small updates from vanishing in bf16 rounding.
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return model


def keep_trainable_cpu_layout(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference during evaluation.

    On CPUs with AVX512-BF16, Linear4bit converts its weight in place to an inference layout the
    first time it runs in eval mode. Trainer evaluates before and between training epochs, and
    the converted layer computes in bf16 and has no backward, so training after an evaluation
    would silently lose the gradient through every frozen layer.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def quantize_embeddings_4bit(
    model: Any, compute_dtype: Any, quant_type: str, double_quant: bool
) -> None:
    """Store the frozen input embedding and LM head in 4 bit, sharing one copy when tied."""
    import bitsandbytes as bnb
    import torch

    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if not isinstance(emb, torch.nn.Embedding):
        return
    device = emb.weight.device
    tied = head is not None and head.weight is emb.weight

    def params4bit(weight: torch.Tensor, nested: bool) -> Any:
        p = bnb.nn.Params4bit(
            weight.detach().to(torch.float32).contiguous(),
            requires_grad=False,
            compress_statistics=nested,
            quant_type=quant_type,
            quant_storage=torch.uint8,
        )
        return p.to(device)  # bitsandbytes quantizes when the parameter moves to its device

    qemb = _embedding4bit_class()(emb.num_embeddings, emb.embedding_dim, compute_dtype, quant_type)
    qemb.padding_idx = emb.padding_idx
    # bitsandbytes' row-wise embedding lookup reads absmax per row, which double quantization
    # (absmax quantized in blocks of 256) breaks; single quantization costs 0.5 bit per weight.
    qemb.weight = params4bit(emb.weight, nested=False)
    qemb.weight.module = qemb
    model.set_input_embeddings(qemb)
    if (
        head is not None
        and isinstance(head, torch.nn.Linear)
        and not isinstance(head, bnb.nn.Linear4bit)
    ):
        qhead = bnb.nn.Linear4bit(
            head.in_features,
            head.out_features,
            bias=head.bias is not None,
            compute_dtype=compute_dtype,
            quant_type=quant_type,
            quant_storage=torch.uint8,
            device="meta",
        )
        qhead.support_avx512bf16_for_cpu = False  # see keep_trainable_cpu_layout
        qhead.weight = qemb.weight if tied else params4bit(head.weight, nested=double_quant)
        if not tied:
            qhead.weight.module = qhead
        if head.bias is not None:
            qhead.bias = torch.nn.Parameter(head.bias.detach().clone(), requires_grad=False)
        model.set_output_embeddings(qhead)
    if tied:
        # Keep later tie_weights() calls from re-creating a full-precision head.
        model.config.tie_word_embeddings = False
        if hasattr(model, "_tied_weights_keys"):
            model._tied_weights_keys = []


@functools.cache
def _embedding4bit_class() -> Any:
    """Defined on first use: bitsandbytes is imported only by QLoRA runs."""
    import bitsandbytes as bnb
    import torch

    class FrozenEmbedding4bit(bnb.nn.Embedding4bit):
        """bitsandbytes' 4-bit embedding, with a state_dict (peft reads one to save adapters)."""

        def __init__(self, num: int, dim: int, dtype: Any, quant_type: str) -> None:
            torch.nn.Module.__init__(self)
            self.num_embeddings, self.embedding_dim = num, dim
            self.padding_idx, self.max_norm, self.norm_type = None, None, 2.0
            self.scale_grad_by_freq, self.sparse = False, False
            self.dtype = dtype

        def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001
            torch.nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)

    return FrozenEmbedding4bit


def frozen_weight_bytes(model: Any) -> int:
    """Bytes held by frozen (non-trainable) weights and buffers, each storage counted once.

    4-bit weights count their packed data plus quantization statistics (absmax, and with double
    quantization the nested absmax and code book).
    """
    import torch

    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor | None) -> None:
        nonlocal total
        if t is None or not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            return
        seen.add(ptr)
        total += t.numel() * t.element_size()

    for p in model.parameters():
        if p.requires_grad:
            continue
        add(p)
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            add(getattr(qs, "absmax", None))
            add(getattr(qs, "code", None))
            nested = getattr(qs, "state2", None)
            if nested is not None:
                add(getattr(nested, "absmax", None))
                add(getattr(nested, "code", None))
            add(getattr(qs, "offset", None))
    for b in model.buffers():
        add(b)
    return total


def trainable_parameter_count(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
