"""int4 (and int8) weight-only quantization settings, shared by both export backends.

Tests: .venv/bin/pytest tests/build/test_export_llm.py

`Int4Options` is validated once at construction; build/export_llm.py (the genai builder and
the streaming quantizer) and build/export_optimum.py (onnxruntime's MatMulNBits quantizer)
read it, and export.json records it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BLOCK_SIZES = (16, 32, 64, 128, 256)
EMBEDDING_BITS = (0, 4, 8)

# Weight-only quantization algorithms (int4 body; the `_last` / `_mixed` variants keep the
# LM head, and for `_mixed` also the most sensitive layers' attention/MLP, in int8):
#   default  onnxruntime's built-in blockwise quantizer (round to nearest, MLAS)
#   rtn      round to nearest (neural-compressor style)
#   k_quant  llama.cpp-style k-quant scale search, no calibration data
#   hqq      half-quadratic quantization (optimum backend only). Near-lossless on SmolLM2, but
#            its float zero points take onnxruntime 1.32's slow MatMulNBits path (~5 tok/s
#            decode against ~170 for k_quant_mixed on 2 cores): for a GPU target or research.
GENAI_ALGOS = ("default", "rtn", "rtn_last", "k_quant", "k_quant_last", "k_quant_mixed")
OPTIMUM_ALGOS = GENAI_ALGOS + ("hqq",)
ALL_ALGOS = OPTIMUM_ALGOS

# Chosen from measurements on SmolLM2-135M (benchmarks/quantization_bench.py; 2,048 tokens of
# the plant documents; decode speed on 2 cores): perplexity change / top-1 agreement / decode
#   default (RTN)        +34% / 0.69 / 178 tok/s
#   k_quant_last         +24% / 0.73
#   k_quant_mixed        +10% / 0.80 / 163 tok/s   <- default
#   k_quant_mixed bs16   +7.5% / 0.81 / 118 tok/s (and 1.2x the prefill time)
# k_quant_mixed keeps the LM head and the most sensitive layers' V/down projections in int8.
DEFAULT_INT4_ALGO = "k_quant_mixed"
DEFAULT_BLOCK_SIZE = 32


@dataclass(frozen=True)
class Int4Options:
    """Weight-only quantization settings (used for int4 and, where the backend allows, int8)."""

    block_size: int = DEFAULT_BLOCK_SIZE
    algo: str = DEFAULT_INT4_ALGO
    symmetric: bool = True
    # MatMulNBits compute precision: 4 = int8 activations (fast on CPU), 1 = fp32. None means the
    # builder's default: 4 on CPU, 0 (unset) on CUDA.
    accuracy_level: int | None = None
    # Bits of the token embedding when the model does not tie it to the LM head (a tied one shares
    # the LM head's quantized matrix): 4 or 8 (GatherBlockQuantized), or 0 to keep it in fp32.
    # 4 by default: on Qwen2.5-Coder-0.5B the fp32 embedding alone was 545 MB of a 973 MB export.
    embedding_bits: int = 4

    def __post_init__(self) -> None:
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"block_size must be one of {BLOCK_SIZES}, got {self.block_size!r}")
        if self.algo not in ALL_ALGOS:
            raise ValueError(f"algo must be one of {ALL_ALGOS}, got {self.algo!r}")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"symmetric must be a bool, got {self.symmetric!r}")
        if self.accuracy_level is not None and self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy_level must be 0-4 or None, got {self.accuracy_level!r}")
        if self.embedding_bits not in EMBEDDING_BITS:
            raise ValueError(
                f"embedding_bits must be one of {EMBEDDING_BITS}, got {self.embedding_bits!r}"
            )

    @property
    def streams(self) -> bool:
        """Whether the genai export quantizes weight by weight (build/stream_quantize.py)."""
        return self.algo.startswith(("rtn", "k_quant"))

    def resolved_accuracy_level(self, execution_provider: str) -> int:
        if self.accuracy_level is not None:
            return self.accuracy_level
        return 4 if execution_provider == "cpu" else 0

    def to_dict(self) -> dict:
        return asdict(self)
