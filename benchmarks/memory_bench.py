"""Where the generator's memory goes: resident memory by stage, ours against llama.cpp.

Run (all suites):  `expert bench --bundle var/bundles/bundle-plant-0.1.0 --work var/work`
Run (this suite):  .venv/bin/python -m benchmarks.memory_bench --onnx DIR --gguf FILE

Each configuration runs in a fresh process that reads its own /proc/self/status (VmRSS,
RssAnon, RssFile, VmHWM) after each stage of one ~800-token grounded request with 128 new
tokens: the interpreter with numpy, the runtime imported, the model loaded, the tokenizer,
the request's KV cache, after the prompt (peak), after decoding. Configurations:
- ours as served (GenaiGenerator: prompt in 256-token chunks, prefix cache sized to the request),
- ours with the prompt in one pass (prefill_chunk=None): the all-position logits buffer,
- ours with the KV buffer at the model's full context (genai_config's default max_length),
- llama.cpp (llama-cpp-python, flash attention on) on the GGUF given.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from pathlib import Path

SUITE = "generation"


def _status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = round(int(line.split()[1]) * 1024 / 1e6, 1)
    return out


def _ours(conn, model_dir: str, text: str, threads: int, options: dict, full_kv: bool) -> None:
    stages = [("interpreter + numpy", None)]
    import numpy  # noqa: F401

    stages[0] = ("interpreter + numpy", _status())
    import onnxruntime_genai  # noqa: F401

    from appliance.generation.base import GenerationParams
    from appliance.generation.genai import GenaiGenerator

    stages.append(("onnxruntime-genai + appliance imported", _status()))
    gen = GenaiGenerator(Path(model_dir), threads=threads, **options)
    stages.append(("model + tokenizer loaded", _status()))
    if full_kv:
        gen._prefix.max_length = gen.context_length
        gen._prefix.headroom = gen.context_length
    stream = gen.generate(text, GenerationParams(max_new_tokens=128))
    next(stream)
    stages.append(("prompt processed (first token)", _status()))
    for _ in stream:
        pass
    stages.append(("128 tokens decoded", _status()))
    stats = gen.prefix_stats() or {}
    conn.send({"stages": stages, "kv_tokens": stats.get("kv_length")})


def _llama(conn, gguf: str, ids: list[int], threads: int, passive: bool = False) -> None:
    import os

    if passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import numpy  # noqa: F401

    stages = [("interpreter + numpy", _status())]
    from llama_cpp import Llama

    stages.append(("llama-cpp-python imported", _status()))
    n_ctx = int(-(-(len(ids) + 128) // 256) * 256)
    llm = Llama(
        model_path=gguf,
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=True,
        verbose=False,
    )
    stages.append(("model loaded (KV cache for n_ctx allocated)", _status()))
    stream = llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True)
    next(stream)
    stages.append(("prompt processed (first token)", _status()))
    for i, _ in enumerate(stream):
        if i >= 126:
            break
    stream.close()
    stages.append(("128 tokens decoded", _status()))
    conn.send({"stages": stages, "kv_tokens": n_ctx})


def _in_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args))
    proc.start()
    child.close()
    try:
        if not parent.poll(900):
            raise TimeoutError("memory stage run took over 900 s")
        return parent.recv()
    except EOFError as exc:
        raise RuntimeError(f"the memory run died (exit code {proc.exitcode})") from exc
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def measure(
    onnx_dir: Path, gguf: Path | None, plant: Path | None, threads: int = 2, passive: bool = False
) -> dict:
    from benchmarks.generation_bench import build_prompt_texts

    text, ids = build_prompt_texts(onnx_dir, (800,), plant)[800]
    configs = {
        "ours as served": (_ours, str(onnx_dir), text, threads, {}, False),
        "ours, prompt in one pass": (
            _ours,
            str(onnx_dir),
            text,
            threads,
            {"prefill_chunk": None},
            False,
        ),
        "ours, KV for the full context": (_ours, str(onnx_dir), text, threads, {}, True),
    }
    if gguf is not None:
        configs[f"llama.cpp ({Path(gguf).name})"] = (_llama, str(gguf), ids, threads, passive)
    out = {}
    for name, (target, *args) in configs.items():
        try:
            out[name] = _in_child(target, *args)
        except (RuntimeError, TimeoutError) as exc:
            out[name] = {"error": str(exc)}
    return {"prompt_tokens": len(ids), "configs": out}


def section(result: dict) -> dict:
    lines = [
        f"Resident memory (MB) of one fresh process per configuration, after each stage of one "
        f"{result['prompt_tokens']}-token request with 128 new tokens "
        "(benchmarks/memory_bench.py). RSS = anonymous + file-backed (mapped libraries and "
        "model files); peak = VmHWM.",
        "",
        "| configuration | stage | RSS | anonymous | file-backed | peak so far |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in result["configs"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | |")
            continue
        for stage, st in r["stages"]:
            lines.append(
                f"| {name} | {stage} | {st.get('VmRSS')} | {st.get('RssAnon')} | "
                f"{st.get('RssFile')} | {st.get('VmHWM')} |"
            )
        if r.get("kv_tokens"):
            lines.append(f"| {name} | KV buffer length (tokens) | {r['kv_tokens']} | | | |")
    return {"title": "Generation: where the memory goes", "markdown": "\n".join(lines)}


def run(
    quick: bool = False,
    *,
    bundle: Path | None = None,
    work: Path | None = None,
    plant: Path | None = None,
    threads: int | None = None,
    gguf: Path | None = None,
    spinning: bool = True,
) -> dict:
    from benchmarks.generation_bench import default_paths, gguf_peers
    from benchmarks.machine import usable_cores

    threads = threads or usable_cores()
    paths = default_paths(bundle, work)
    if paths["onnx"] is None:
        return {"records": [], "sections": [{"title": "Generation: where the memory goes",
                                             "markdown": "Not run: no int4 model."}]}  # fmt: skip
    ggufs, _ = gguf_peers(gguf or paths["gguf"], Path(work or "var/work") / "gguf-peers", threads)
    peer = ggufs.get("llama.cpp Q4_0") or ggufs.get("llama.cpp Q4_1")
    result = measure(paths["onnx"], peer, plant, threads, passive=not spinning)
    return {"records": [], "sections": [section(result)], "raw": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--gguf", type=Path)
    parser.add_argument("--plant", type=Path, default=Path("examples/plant"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    result = measure(args.onnx, args.gguf, args.plant, args.threads)
    print(section(result)["markdown"])
    print(json.dumps(result)[:200])
    return 0


if __name__ == "__main__":
    sys.exit(main())
