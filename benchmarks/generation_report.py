"""The generation benchmark's report: the scaling plot, the sections of latest.md and the
side-by-side table of export variants.

Test: .venv/bin/pytest tests/benchmarks/test_bench_schema.py
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from benchmarks.generation_config import LLAMA_CPP, GenerationBenchConfig
from benchmarks.generation_measure import equal_quality_verdict, median_of, median_share

log = logging.getLogger(__name__)


def plot_scaling(raw: dict, names: Sequence[str], out: Path) -> Path | None:
    """TTFT and decode rate against prompt length, one line per engine."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        sizes = sorted(n for n, rs in raw["runs"].get(name, {}).items() if rs)
        if not sizes:
            continue
        xs = [raw["prompts"][n] for n in sizes]
        style = "-o" if name in raw.get("ours_names", ()) else "--."
        ax1.plot(xs, [median_of(raw["runs"][name][n], "ttft_s") for n in sizes], style, label=name)
        ax2.plot(
            xs, [median_of(raw["runs"][name][n], "decode_tok_s") for n in sizes], style, label=name
        )
    ax1.set(xlabel="prompt tokens", ylabel="time to first token (s)", title="Time to first token")
    ax2.set(xlabel="prompt tokens", ylabel="decode tokens/s", title="Decode speed")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def report_sections(config: GenerationBenchConfig, raw: dict, out_dir: Path | None) -> list[dict]:
    """Markdown sections for latest.md: peers at equal quality, the verdict, the curves."""
    from benchmarks.gguf_peers import quality_markdown

    ours = config.variants[0].name
    sections = []
    quality = raw.get("quality") or {}
    verdict = equal_quality_verdict(config, raw, ours)
    size = min(raw["prompts"], key=lambda n: abs(n - 800))
    lines = [
        "Perplexity on the quality gate's held-out text (reference: the F16 GGUF of the same "
        "checkpoint on llama.cpp) beside speed at the ~800-token prompt, every engine in the same "
        f"interleaved run (load average {raw.get('load_average')}).",
        "",
        "| model | perplexity | change vs F16 | top-1 vs F16 | TTFT s | decode tok/s | peak RSS MB "
        "| others' CPU share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in [ours, *config.peers]:
        q = quality.get(name) or {}
        rs = raw["runs"].get(name, {}).get(size) or []
        rss = (raw["engines"].get(name) or {}).get("peak_rss_kib")
        ppl = f"{q['perplexity']:.3f}" if "perplexity" in q else "–"
        change = f"{q['change_pct']:+.1f} %" if "change_pct" in q else "–"
        top1 = f"{q['top1_vs_f16']:.3f}" if "top1_vs_f16" in q else "–"
        ttft = f"{median_of(rs, 'ttft_s'):.3f}" if rs else "–"
        dec = f"{median_of(rs, 'decode_tok_s'):.1f}" if rs else "–"
        mem = f"{rss * 1024 / 1e6:.0f}" if rss else "–"
        lines.append(
            f"| {name} | {ppl} | {change} | {top1} | {ttft} | {dec} | {mem} | "
            f"{median_share(rs) if rs else '–'} |"
        )
    if f"{LLAMA_CPP} F16" in quality:
        lines += ["", "All models scored:", "", quality_markdown(quality)]
    if verdict and verdict.get("peer"):
        v = verdict
        lines += [
            "",
            f"**Verdict at equal or better quality**: the fastest llama.cpp quantization whose "
            f"perplexity is within ours ({v['ours_perplexity']:.3f}) is **{v['peer']}** "
            f"({v['peer_perplexity']:.3f}). Ours against it:",
            "",
            "| prompt | TTFT ratio (≤ 1 wins) | decode ratio (≥ 1 wins) |",
            "|---:|---:|---:|",
        ]
        for n, r in v["by_size"].items():
            lines.append(
                f"| {raw['prompts'][n]} | {r['ttft_ratio']:.2f} | {r['decode_ratio']:.2f} |"
            )
    elif verdict:
        lines += ["", "No llama.cpp quantization measured here has a perplexity within ours."]
    sections.append(
        {"title": "Generation: llama.cpp peers at equal quality", "markdown": "\n".join(lines)}
    )
    if out_dir is not None:
        names = [v.name for v in config.variants] + [p for p in config.peers if p in raw["runs"]]
        png = plot_scaling({**raw, "ours_names": [v.name for v in config.variants]}, names,
                           Path(out_dir) / "generation_scaling.png")  # fmt: skip
        if png is not None:
            text = "\n".join(
                [
                    "Time to first token and decode speed at ~100, ~800 and ~1,600-token prompts "
                    "(medians of the interleaved runs above).",
                    "",
                    f"![generation scaling]({png.name})",
                    "",
                    "| engine | "
                    + " | ".join(f"{raw['prompts'][n]} tok" for n in sorted(raw["prompts"]))
                    + " |",
                    "|---|" + "---:|" * len(raw["prompts"]),
                ]
            )
            rows = []
            for name in names:
                cells = []
                for n in sorted(raw["prompts"]):
                    rs = raw["runs"].get(name, {}).get(n) or []
                    cells.append(
                        f"{median_of(rs, 'ttft_s'):.3f} s / {median_of(rs, 'decode_tok_s'):.0f} tok/s"
                        if rs
                        else "–"
                    )
                rows.append(f"| {name} | " + " | ".join(cells) + " |")
            sections.append(
                {
                    "title": "Generation: scaling with prompt length",
                    "markdown": text + "\n" + "\n".join(rows),
                }
            )
    return sections


def comparison_table(config: GenerationBenchConfig, raw: dict) -> str:
    """Every variant and peer, one row per prompt size, with ratios against the first peer."""
    names = [v.name for v in config.variants] + [p for p in config.peers if p in raw["runs"]]
    ref = next((p for p in config.peers if p in raw["runs"]), None)
    lines = [
        f"| engine | prompt | TTFT s | decode tok/s | TTFT ratio vs {ref} (≤1 wins) | "
        f"decode ratio vs {ref} (≥1 wins) | peak RSS MB | others' CPU share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, n_prompt in sorted(raw["prompts"].items()):
        peer = raw["runs"].get(ref, {}).get(size) if ref else None
        pt = median_of(peer, "ttft_s") if peer else None
        pd = median_of(peer, "decode_tok_s") if peer else None
        for name in names:
            rs = raw["runs"].get(name, {}).get(size)
            if not rs:
                continue
            t, d = median_of(rs, "ttft_s"), median_of(rs, "decode_tok_s")
            rss = raw["engines"].get(name, {}).get("peak_rss_kib")
            lines.append(
                f"| {name} | {n_prompt} | {t:.3f} | {d:.1f} | "
                f"{(t / pt) if pt else float('nan'):.2f} | {(d / pd) if pd else float('nan'):.2f} | "
                f"{(rss * 1024 / 1e6) if rss else float('nan'):.0f} | {median_share(rs)} |"
            )
    reuse = raw.get("reuse") or {}
    if reuse.get("runs"):
        lines += [
            "",
            f"Follow-up request reusing the shared prefix ({reuse['shared_tokens']} of "
            f"{reuse['prompt_tokens']} tokens):",
            "",
            "| engine | TTFT s | decode tok/s |",
            "|---|---:|---:|",
        ]
        for name, rs in reuse["runs"].items():
            if rs:
                lines.append(
                    f"| {name} | {median_of(rs, 'ttft_s'):.3f} | {median_of(rs, 'decode_tok_s'):.1f} |"
                )
    return "\n".join(lines)
