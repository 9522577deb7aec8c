"""What machine a benchmark ran on: CPU model, cores, SIMD flags, memory, package versions.

A ratio against a peer only means something next to the machine it was measured on: int4
kernels take different paths with and without AVX-512 VNNI, and decode speed follows memory
bandwidth. Every results file carries this description (`machine` in the JSON).

Run: `.venv/bin/python -m benchmarks.machine` (prints the description as JSON).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from pathlib import Path

from appliance.common.versions import package_versions

# /proc/cpuinfo flag -> the name the summary shows. Only flags that change which kernels the
# engines benchmarked here (MLAS, ggml, oneDNN) take.
SIMD_FLAGS = {
    "sse4_2": "SSE4.2",
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
    "avx_vnni": "AVX-VNNI",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512vl": "AVX-512VL",
    "avx512_vnni": "AVX-512-VNNI",
    "avx512_bf16": "AVX-512-BF16",
    "avx512_fp16": "AVX-512-FP16",
    "amx_tile": "AMX-TILE",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "neon": "NEON",
    "asimd": "ASIMD",
    "asimddp": "ASIMD-DOTPROD",
    "i8mm": "I8MM",
    "sve": "SVE",
}

PACKAGES = (
    "numpy",
    "onnxruntime",
    "onnxruntime-genai",
    "onnx",
    "tokenizers",
    "torch",
    "transformers",
    "sentence-transformers",
    "peft",
    "hnswlib",
    "flask",
    "waitress",
    "llama-cpp-python",
    "faiss-cpu",
    "rank-bm25",
)


def parse_cpuinfo(text: str) -> dict:
    """CPU model name and SIMD flags from the text of /proc/cpuinfo (x86 or ARM). psutil, used
    for cores and memory below, reports neither, and the flags decide which kernels run."""
    model = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "hardware", "cpu model") and model is None and value:
            model = value
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return {
        "model": model,
        "flags": [name for flag, name in SIMD_FLAGS.items() if flag in flags],
    }


def _cpuinfo() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {"model": platform.processor() or None, "flags": []}
    return parse_cpuinfo(text)


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _physical_cores() -> int | None:
    """Physical cores (psutil; None where the platform does not say)."""
    import psutil

    return psutil.cpu_count(logical=False)


def _memory_gib() -> float:
    import psutil

    return round(psutil.virtual_memory().total / 1024**3, 1)


def _cache_kib() -> dict[str, int]:
    """Per-level cache sizes of cpu0 in KiB (L1d, L2, L3), from sysfs."""
    out: dict[str, int] = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        name = f"L{level}" + ("d" if kind == "Data" else "")
        mult = {"K": 1, "M": 1024, "G": 1024**2}.get(size[-1:], None)
        try:
            out[name] = int(size[:-1]) * mult if mult else int(size) // 1024
        except ValueError:
            continue
    return out


def describe_machine() -> dict:
    """The `machine` object of a results file."""
    cpu = _cpuinfo()
    return {
        "host": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "cpu_model": cpu["model"],
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "cpu_flags": cpu["flags"],
        "cache_kib": _cache_kib(),
        "memory_gib": _memory_gib(),
        "load_average": [round(x, 2) for x in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "packages": package_versions(PACKAGES, python=True),
    }


def main() -> int:
    print(json.dumps(describe_machine(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
