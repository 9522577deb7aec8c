"""llama.cpp peers at equal quality: F16 GGUF of our checkpoint, llama.cpp's own quantizations,
and perplexity of every peer and of our int4 exports on the same held-out text.

Run: `.venv/bin/python -m benchmarks.gguf_peers --hf var/work/smollm2-hf \
        --ours default=var/work/smollm2-int4 --out var/bench/peers`
(`expert bench` calls `prepare_peers` and `quality_table` from its generation suite.)

The checkpoint: the appliance's default model is imported from a GGUF (Q4_1 body, Q8_0 embedding)
by dequantizing it (build/import_model.py), and our int4 exports are made from that dequantized
checkpoint. The F16 GGUF here is that same checkpoint: the source GGUF's tensors dequantized
(gguf.quants) and written as F16 (F32 for the 1-D norm weights, as llama.cpp's converter does),
with the source's metadata and tokenizer. llama.cpp then quantizes the F16 file itself
(`llama_cpp.llama_model_quantize`) to Q4_0, Q4_K_M and Q8_0, so every peer and every one of our
exports quantizes the very same weights. The source Q4_1 file stays as one more peer (its
weights *are* the checkpoint, so its quality equals the reference by construction).

Quality: perplexity on the quality gate's held-out text (build.quality_gate: the plant
documents, 2,048 tokens in 256-token windows taken round-robin over the documents), teacher
forced, with the same token ids for every engine; the F16 GGUF on llama.cpp is the reference.
Also the top-1 agreement with the reference (share of positions where the most likely next token
is the same). Test: .venv/bin/pytest tests/benchmarks/test_gguf_peers.py
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from appliance.common.fsutil import atomic_file

log = logging.getLogger(__name__)

# llama.cpp quantizations measured as peers (llama_ftype values from llama.h).
QUANTS: dict[str, int] = {"Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}
F16 = "F16"
SOURCE = "Q4_1"  # the GGUF the checkpoint was imported from


def make_f16_gguf(source: Path, out: Path) -> Path:
    """The source GGUF's tensors, dequantized, as an F16 GGUF with the same metadata."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize

    reader = GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    with atomic_file(out, overwrite=True) as tmp:
        writer = GGUFWriter(str(tmp), arch)
        skip = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture"}
        for name, field in reader.fields.items():
            if name in skip:
                continue
            value = field.contents()
            if name == "general.file_type":
                value = 1  # LLAMA_FTYPE_MOSTLY_F16
            vtype = field.types[0]
            sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
            writer.add_key_value(name, value, vtype, sub_type=sub)
        for t in reader.tensors:
            data = dequantize(t.data, t.tensor_type)
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # numpy order
            data = np.asarray(data, dtype=np.float32).reshape(shape)
            if data.ndim > 1:
                data = data.astype(np.float16)
            writer.add_tensor(t.name, data)
            del data
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    # Sanity: the file reads back with the source's tensor names and shapes.
    back = GGUFReader(str(out))
    src = {t.name: tuple(t.shape.tolist()) for t in reader.tensors}
    got = {t.name: tuple(t.shape.tolist()) for t in back.tensors}
    if src != got:
        raise RuntimeError(f"F16 GGUF {out} does not match the source's tensors")
    kinds = {t.tensor_type for t in back.tensors}
    if not kinds <= {GGMLQuantizationType.F16, GGMLQuantizationType.F32}:
        raise RuntimeError(f"F16 GGUF {out} holds quantized tensors: {kinds}")
    return out


def quantize(f16: Path, out: Path, ftype: int, threads: int = 2) -> Path:
    """llama.cpp's own quantizer (llama_model_quantize), default parameters but the type."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    with atomic_file(out, overwrite=True) as tmp:
        rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize({f16.name} -> ftype {ftype}) returned {rc}")
    return out


def prepare_peers(source: Path, out_dir: Path, threads: int = 2) -> dict[str, Path]:
    """{name: GGUF path} for F16, Q4_0, Q4_K_M, Q8_0 (made once, reused) and the source Q4_1."""
    out_dir = Path(out_dir)
    stamp = out_dir / "source.json"
    src_info = {"source": str(source), "size": Path(source).stat().st_size}
    if not stamp.is_file() or json.loads(stamp.read_text()) != src_info:
        for old in out_dir.glob("*.gguf"):
            old.unlink()
    f16 = out_dir / "model-F16.gguf"
    if not f16.is_file():
        t0 = time.monotonic()
        make_f16_gguf(Path(source), f16)
        log.info("F16 GGUF written in %.0f s", time.monotonic() - t0)
    paths = {F16: f16}
    for name, ftype in QUANTS.items():
        path = out_dir / f"model-{name}.gguf"
        if not path.is_file():
            t0 = time.monotonic()
            quantize(f16, path, ftype, threads)
            log.info("%s quantized in %.0f s", name, time.monotonic() - t0)
        paths[name] = path
    paths[SOURCE] = Path(source)
    stamp.write_text(json.dumps(src_info))
    return paths


# ------------------------------------------------------------------------------------------------
# Perplexity on the gate's held-out text
# ------------------------------------------------------------------------------------------------


def heldout_windows(tokenizer_json: Path, docs_dir: Path | None = None) -> list[list[int]]:
    """The quality gate's text windows (GateSettings defaults), as token ids."""
    from tokenizers import Tokenizer

    from build.quality_gate import DEFAULT_DOCS, GateSettings, load_texts, spread_windows

    settings = GateSettings()
    tok = Tokenizer.from_file(str(tokenizer_json))
    texts = [t for t in load_texts(docs_dir or DEFAULT_DOCS) if t.strip()]
    docs = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    return spread_windows(docs, settings.window, settings.max_tokens)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def score(logits_of, windows: Sequence[Sequence[int]]) -> dict:
    """Teacher-forced NLL and argmax per window from `logits_of(ids) -> [len(ids), vocab]`."""
    nll, n, argmax = 0.0, 0, []
    for w in windows:
        logits = np.asarray(logits_of(list(w)), dtype=np.float32)[: len(w)]
        target = np.asarray(w[1:])
        nll -= float(_log_softmax(logits[:-1])[np.arange(len(target)), target].sum())
        n += len(target)
        argmax.append(logits[:-1].argmax(-1))
    return {"nll": nll, "tokens": n, "perplexity": math.exp(nll / n), "argmax": argmax}


def gguf_logits(path: Path, threads: int, window: int):
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path),
        n_ctx=window,
        n_batch=window,
        n_ubatch=window,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=True,
        verbose=False,
    )

    def logits_of(ids: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)

    return logits_of


def onnx_logits(model_dir: Path, threads: int):
    import onnxruntime_genai as og

    from appliance.generation.tuning import GenaiTuning, apply_tuning

    config = og.Config(str(model_dir))
    apply_tuning(config, GenaiTuning.for_this_machine(threads))
    model = og.Model(config)

    def logits_of(ids: list[int]) -> np.ndarray:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + 1)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        out = np.asarray(gen.get_output("logits"))[0].astype(np.float32)
        del gen
        if out.shape[0] != len(ids):  # LM head pruned to the last position: one token a pass
            from build.quality_gate import last_position_logits

            return last_position_logits(og, model, ids, len(ids) + 1)
        return out

    return logits_of


def _quality_worker(conn, kind: str, path: str, threads: int, windows) -> None:
    # Scoring is not timed: llama.cpp's OpenMP threads sleep instead of spinning, so a busy
    # shared box does not stall them (it changes no logits).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        if kind == "gguf":
            fn = gguf_logits(Path(path), threads, max(len(w) for w in windows))
        else:
            fn = onnx_logits(Path(path), threads)
        t0 = time.monotonic()
        result = score(fn, windows)
        result["seconds"] = time.monotonic() - t0
        conn.send(("ok", result))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as a failed row
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _score_in_child(kind: str, path: Path, threads: int, windows, timeout_s: float) -> dict:
    """Each model in its own process: llama.cpp and onnxruntime never share one."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_quality_worker, args=(child, kind, str(path), threads, windows))
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout_s):
            raise TimeoutError(f"scoring {path} took over {timeout_s:.0f} s")
        status, payload = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    if status != "ok":
        raise RuntimeError(payload)
    return payload


def quality_table(
    ggufs: dict[str, Path],
    ours: dict[str, Path],
    tokenizer_json: Path,
    *,
    threads: int = 2,
    docs_dir: Path | None = None,
    timeout_s: float = 900.0,
    cache_dir: Path | None = None,
) -> dict[str, dict]:
    """{name: {perplexity, change_pct vs F16, top1 vs F16, tokens, engine}}; failures carry
    `error`. GGUF names are prefixed "llama.cpp "; ours keep their names.

    Scores are deterministic for a given model file and text, so with `cache_dir` each one is
    kept under a key of the model files' sizes and modification times and the text's tokens,
    and reused while none of them changes (`cached: true` in the row)."""
    windows = heldout_windows(tokenizer_json, docs_dir)
    jobs = [(f"llama.cpp {k}", "gguf", p) for k, p in ggufs.items()]
    jobs += [(k, "onnx", p) for k, p in ours.items()]
    scored: dict[str, dict] = {}
    for name, kind, path in jobs:
        cache = _cache_file(cache_dir, kind, Path(path), windows) if cache_dir else None
        if cache is not None and cache.is_file():
            hit = json.loads(cache.read_text())
            hit["argmax"] = [np.asarray(a) for a in hit["argmax"]]
            scored[name] = {**hit, "cached": True}
            continue
        try:
            scored[name] = _score_in_child(kind, path, threads, windows, timeout_s)
        except (RuntimeError, TimeoutError) as exc:
            scored[name] = {"error": str(exc)}
            log.warning("quality of %s: %s", name, exc)
            continue
        if cache is not None:
            keep = {**scored[name], "argmax": [a.tolist() for a in scored[name]["argmax"]]}
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(keep))
    ref = scored.get(f"llama.cpp {F16}")
    out: dict[str, dict] = {}
    for name, r in scored.items():
        if "error" in r:
            out[name] = {"error": r["error"]}
            continue
        row = {
            "perplexity": r["perplexity"],
            "tokens": r["tokens"],
            "engine": "llama.cpp" if name.startswith("llama.cpp") else "onnxruntime-genai",
            "seconds": round(r["seconds"], 1),
            "cached": bool(r.get("cached")),
        }
        if ref and "error" not in ref:
            row["change_pct"] = 100 * (r["perplexity"] / ref["perplexity"] - 1)
            same = sum(int((a == b).sum()) for a, b in zip(r["argmax"], ref["argmax"], strict=True))
            row["top1_vs_f16"] = same / sum(len(a) for a in ref["argmax"])
        out[name] = row
    return out


def _cache_file(cache_dir: Path, kind: str, path: Path, windows) -> Path:
    import hashlib

    files = [path] if kind == "gguf" else sorted(p for p in path.iterdir() if p.is_file())
    facts = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    key = hashlib.sha256(json.dumps([kind, facts, windows]).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"quality-{key}.json"


def equal_quality_peers(quality: dict[str, dict], ours: str, peers: Sequence[str]) -> list[str]:
    """Peers whose perplexity is at most ours (equal or better quality)."""
    mine = quality.get(ours, {}).get("perplexity")
    if mine is None:
        return []
    return [p for p in peers if quality.get(p, {}).get("perplexity", math.inf) <= mine]


def quality_markdown(quality: dict[str, dict]) -> str:
    lines = [
        "| model | engine | perplexity | change vs F16 | top-1 agreement with F16 |",
        "|---|---|---:|---:|---:|",
    ]
    for name, r in quality.items():
        if "error" in r:
            lines.append(f"| {name} | – | failed: {r['error']} | | |")
            continue
        change = f"{r['change_pct']:+.1f} %" if "change_pct" in r else "–"
        top1 = f"{r['top1_vs_f16']:.3f}" if "top1_vs_f16" in r else "–"
        engine = r.get("engine", "–")
        lines.append(f"| {name} | {engine} | {r['perplexity']:.3f} | {change} | {top1} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gguf_peers", description=__doc__)
    parser.add_argument("--gguf", type=Path, help="source GGUF (default: the embedded one)")
    parser.add_argument("--hf", type=Path, required=True, help="the imported HF checkpoint")
    parser.add_argument("--ours", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--out", type=Path, default=Path("var/bench/peers"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    source = args.gguf
    if source is None:
        from build.import_model import default_gguf

        source = default_gguf()
    ours = {}
    for item in args.ours:
        name, _, path = item.partition("=")
        ours[name] = Path(path)
    ggufs = prepare_peers(source, args.out, args.threads)
    quality = quality_table(ggufs, ours, args.hf / "tokenizer.json", threads=args.threads)
    print(quality_markdown(quality))
    if args.json:
        args.json.write_text(json.dumps(quality, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
