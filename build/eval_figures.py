"""The evaluation report's figures: matplotlib (Agg), returned as base64 PNGs for inline use.

Quality by mode (grouped bars), latency by mode (means, p95 whiskers) and one outcome per
question and mode (a grid coloured by verdict).

Test: .venv/bin/pytest tests/build/test_eval_report.py
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping

from build.eval_stats import QUALITY_METRICS, VERDICT_COLORS


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_figures(report: Mapping) -> dict[str, str]:
    """{name: base64 PNG} for the quality, latency and per-question outcome figures."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    modes = report["modes"]
    names = [m["name"] for m in modes]
    labels = [m["label"] for m in modes]
    figs = report["figures"]
    colors = plt.get_cmap("tab10").colors
    out: dict[str, str] = {}

    # quality: grouped bars, one group per metric, one bar per mode
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(QUALITY_METRICS) + 0.4 * len(names)), 3.8))
    width = 0.8 / max(len(names), 1)
    for i, (name, label) in enumerate(zip(names, labels, strict=True)):
        vals = [figs["quality"][k][name] for k, _ in QUALITY_METRICS]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(QUALITY_METRICS))]
        bars = ax.bar(
            xs, [100 * (v or 0.0) for v in vals], width, label=label, color=colors[i % len(colors)]
        )
        for b, v in zip(bars, vals, strict=True):
            ax.annotate(
                "n/a" if v is None else f"{100 * v:.0f}",
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(range(len(QUALITY_METRICS)), [lbl for _, lbl in QUALITY_METRICS], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 110)
    ax.set_title("Answer quality by mode")
    ax.legend(fontsize=8, ncols=min(4, len(names)), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    out["quality"] = _png(fig)

    # latency: mean time to first token and total per answer, p95 as whiskers
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names) + 2), 3.6))
    lat = figs["latency"]
    xs = range(len(names))
    for offset, (mean_key, p95_key, lbl, color) in enumerate(
        (
            ("ttft_mean_s", "ttft_p95_s", "time to first token", "#1565c0"),
            ("total_mean_s", "total_p95_s", "total per answer", "#90a4ae"),
        )
    ):
        means = [lat[mean_key][n] or 0.0 for n in names]
        p95 = [lat[p95_key][n] or 0.0 for n in names]
        pos = [x + (offset - 0.5) * 0.38 for x in xs]
        ax.bar(
            pos,
            means,
            0.38,
            label=f"{lbl} (mean; whisker p95)",
            color=color,
            yerr=[[0] * len(means), [max(p - m, 0) for p, m in zip(p95, means, strict=True)]],
            capsize=3,
        )
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title("Latency by mode")
    ax.legend(fontsize=8, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    out["latency"] = _png(fig)

    # outcomes: one row per question, one column per mode, coloured by verdict
    qids = list(figs["outcomes"])
    verdicts = list(VERDICT_COLORS)
    grid = [
        [
            verdicts.index(figs["outcomes"][q][n])
            if figs["outcomes"][q][n] in verdicts
            else verdicts.index("error")
            for n in names
        ]
        for q in qids
    ]
    height = min(max(2.5, 0.22 * len(qids) + 1.2), 40.0)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(names) + 2.5), height))
    ax.imshow(
        grid,
        aspect="auto",
        interpolation="nearest",
        vmin=0,
        vmax=len(verdicts) - 1,
        cmap=ListedColormap([VERDICT_COLORS[v] for v in verdicts]),
    )
    ax.set_xticks(range(len(names)), labels, fontsize=8)
    ax.set_yticks(range(len(qids)), qids, fontsize=6 if len(qids) > 40 else 8)
    ax.tick_params(axis="x", top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.legend(
        handles=[Patch(color=VERDICT_COLORS[v], label=v) for v in verdicts],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
    )
    ax.set_title("Outcome per question")
    out["outcomes"] = _png(fig)
    return out
