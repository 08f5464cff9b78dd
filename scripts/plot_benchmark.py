"""Draw benchmark.py's JSON results: eval img/s and memory per image, and train img/s.

    python scripts/plot_benchmark.py [--json fig/benchmark.json] [--out fig/benchmark.png]
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from src.files import save_figure  # noqa: E402  (after the path set-up)

COLORS = {"upstream": "#bbbbbb", "fast": "#9ecae1", "fused_nocache_1thread": "#c6dbef", "fused_1thread": "#6baed6",
          "fused": "#1f77b4",
          "xnor": "#2ca02c", "float": "#ff7f0e"}
LABELS = {"upstream": "upstream-style (fast=False)", "fast": "fast=True, fused=False",
          "fused_nocache_1thread": "fused kernels on one thread, weights binarized per call",
          "fused_1thread": "fused kernels on one thread", "fused": "fast + fused kernels (eval.py default, exact)",
          "xnor": "xnor engine (--engine xnor)", "float": "float twin"}


def grouped_bars(ax, rows, value, ylabel, title):
    """One group of bars per (model, batch), one bar per path; failed/skipped runs leave a gap."""
    groups = []
    for r in rows:
        key = (r["model"], r["size"], r["batch"])
        if key not in groups:
            groups.append(key)
    paths = [p for p in COLORS if any(r["path"] == p for r in rows)]
    width = 0.8 / max(len(paths), 1)
    for j, path in enumerate(paths):
        xs, ys = [], []
        for i, key in enumerate(groups):
            match = [r for r in rows if (r["model"], r["size"], r["batch"]) == key and r["path"] == path]
            if match and "img_s" in match[0]:
                xs.append(i + (j - (len(paths) - 1) / 2) * width)
                ys.append(value(match[0]))
        if not xs:
            continue
        bars = ax.bar(xs, ys, width, color=COLORS[path], label=LABELS[path])
        ax.bar_label(bars, fmt="%.2g", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{m}\n{s}px, batch {b}" for m, s, b in groups], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=os.path.join(ROOT, "fig", "benchmark.json"))
    parser.add_argument("--out", default=os.path.join(ROOT, "fig", "benchmark.png"))
    args = parser.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    meta, rows = data["meta"], data["results"]
    evals = [r for r in rows if r["kind"] == "eval"]
    trains = [r for r in rows if r["kind"] == "train"]
    panels = [p for p in ("eval", "memory", "train") if (trains if p == "train" else evals)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        if panel == "eval":
            grouped_bars(ax, evals, lambda r: r["img_s"], "images / s", "Eval forward throughput (higher is better)")
        elif panel == "memory":
            grouped_bars(ax, evals, lambda r: r["peak_rss_gb"] / r["batch"], "peak RSS GB / image",
                         "Eval peak memory per image, incl. compilation (lower is better)")
        else:
            grouped_bars(ax, trains, lambda r: r["img_s"], "images / s",
                         "Train step: forward + backward + AdamWeightDecay (higher is better)")
    fig.suptitle(f"BiMLP on CPU, MindSpore {meta['mindspore']}, {meta['cores']} cores ({meta['cpu']}), "
                 f"GRAPH mode, {meta['date']}, load {meta['load_start']:.1f}-{meta['load_end']:.1f}"
                 + (f"\n{meta['note']}" if meta.get("note") else ""), fontsize=10)
    fig.tight_layout()
    save_figure(fig, args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
