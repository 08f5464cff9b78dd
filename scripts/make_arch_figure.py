"""Draw the BiMLP architecture from the model definition: fig/architecture.png.

    python scripts/make_arch_figure.py [--model BiMLP_S] [--image_size 224] [--output fig/architecture.png]

Everything in the figure is read from create_model(...)'s cells and the analytic
counts of src/summary.py: the stages and their blocks, channels and resolutions,
and for one MLP building block (MBB) every convolution, coloured by what it
computes (1-bit x 1-bit, 1-bit activations x float weights, or float).
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import matplotlib  # noqa: E402  (after the path set-up, like the imports below)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Patch  # noqa: E402

from src.files import save_figure  # noqa: E402
from src.summary import (KIND_BINARY, KIND_DENSE, KIND_DEPTHWISE, KIND_FLOAT_CONV,  # noqa: E402
                         layer_counts, stage_labels, stage_rows, total)
from src.wavemlp_20_3 import MODELS, Downsample, create_model  # noqa: E402

COLORS = {KIND_BINARY: "#4C8ED9", KIND_DEPTHWISE: "#F2A541", KIND_FLOAT_CONV: "#B8B8B8", KIND_DENSE: "#B8B8B8"}
LEGEND = [(KIND_BINARY, "binary conv: 1-bit weights x 1-bit activations (BOPs)"),
          (KIND_DEPTHWISE, "depthwise conv: 1-bit activations x float weights (xnor scale = |W|)"),
          (KIND_FLOAT_CONV, "float conv / dense")]
GROUP_TITLES = {"attn": "PATM: spatial (token) Bi-MLP", "mlp": "channel Bi-MLP (mlp)", "": "depthwise branches"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="BiMLP_S", choices=sorted(MODELS))
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--output", default=os.path.join(ROOT, "fig", "architecture.png"))
    return parser.parse_args(argv)


def box(ax, x, y, width, height, text, color, fontsize=9):
    ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0,rounding_size=0.006",
                                facecolor=color, edgecolor="#333333", linewidth=1))
    ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=fontsize)


def arrow(ax, x0, x1, y):
    ax.annotate("", xy=(x1, y), xytext=(x0, y), arrowprops=dict(arrowstyle="->", color="#333333"))


def flops(count):
    return f"{count.flops / 1e6:.1f}M FLOPs"


def stage_boxes(net, counts, image_size):
    """(title, body, colour) per box of the network's main path, input to head."""
    convs = {count.name: count for count in counts}
    stages = {row.name: row for row in stage_rows(net, counts)}
    stem = convs["patch_embed.proj"]
    proj = net.patch_embed.proj
    labels = stage_labels(net)
    boxes = [("input", f"{proj.in_channels}x{image_size}x{image_size}", "white"),
             ("stem", f"float conv {proj.kernel_size[0]}x{proj.kernel_size[1]}, s{proj.stride[0]}\n"
                      f"-> {stem.output}\n\n{flops(stages[labels['patch_embed']])}", COLORS[KIND_FLOAT_CONV])]
    for index, cell in enumerate(net.network):
        name = f"network.{index}"
        if isinstance(cell, Downsample):
            out = convs[f"{name}.proj"].output.split("x")[0]
            body = f"float conv 1x1\n-> {out} ch\n4 max-pools, /2\n\n{flops(stages[labels[name]])}"
            boxes.append(("downsample", body, COLORS[KIND_FLOAT_CONV]))
        else:
            shape = convs[f"{name}.0.attn.proj"].output
            stage = stages[labels[name]]
            boxes.append((labels[name].split(":")[0], f"{len(cell)} x MBB\n{shape}\n\n"
                          f"{stage.params_1bit / 1e6:.2f}M 1-bit w\n{stage.bops / 1e6:.0f}M BOPs\n"
                          f"{flops(stage)}", COLORS[KIND_BINARY]))
    head = convs["head"]
    boxes.append(("head", f"norm, avg pool\nfloat dense\n-> {head.output} classes\n\n{flops(stages[labels['head']])}",
                  COLORS[KIND_DENSE]))
    return boxes


def draw_main_path(ax, boxes, y):
    width, gap = 0.082, 0.0155
    x = 0.01
    for index, (title, body, color) in enumerate(boxes):
        box(ax, x, y, width, 0.22, f"{title}\n\n{body}", color, fontsize=8.5)
        if index + 1 < len(boxes):
            arrow(ax, x + width, x + width + gap, y + 0.11)
        x += width + gap


def block_groups(counts, block):
    """{group ("attn", "mlp" or "" for the block's own convs): [conv Count]} of one MBB block."""
    groups = {"attn": [], "mlp": [], "": []}
    for count in counts:
        if count.name.startswith(block + ".") and count.output:
            rest = count.name[len(block) + 1:].split(".")
            groups[rest[0] if len(rest) > 1 else ""].append(count)
    return groups


def conv_text(count, cell):
    kh, kw = cell.kernel_size
    group = f", {cell.group} groups" if cell.group > 1 else ""
    name = count.name.split(".", 4)[-1]
    return f"{name}: {kh}x{kw} {cell.in_channels}->{cell.out_channels}{group}  [{count.output}]"


def draw_block(ax, net, counts, block, top):
    cells = dict(net.cells_and_names())
    columns = [(0.01, 0.40), (0.43, 0.30), (0.75, 0.24)]
    for (x, width), (group, members) in zip(columns, block_groups(counts, block).items()):
        ax.text(x, top, GROUP_TITLES[group], fontsize=10, fontweight="bold", va="bottom")
        row_height = 0.045
        for row, count in enumerate(members):
            y = top - 0.01 - (row + 1) * row_height
            box(ax, x, y, width, row_height * 0.85, conv_text(count, cells[count.name]), COLORS[count.kind], 8)


def draw(model, image_size, output):
    net = create_model(model)
    counts = layer_counts(net, image_size)
    whole = total(counts)
    block = "network.0.0"
    fig = plt.figure(figsize=(16, 9.5), dpi=110)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.text(0.01, 0.965, f"{model} at {image_size}x{image_size}: {whole.params_1bit:,} 1-bit + "
            f"{whole.params_32bit:,} 32-bit parameters, {whole.bops / 1e9:.2f}G BOPs, "
            f"{whole.flops / 1e6:.0f}M FLOPs (MACs), OPs = BOPs/64 + FLOPs = {whole.ops / 1e8:.2f}e8",
            fontsize=12, fontweight="bold")
    draw_main_path(ax, stage_boxes(net, counts, image_size), 0.70)
    ax.text(0.01, 0.64, f"one MLP building block (MBB), {block}; every block also has BatchNorm, "
            f"RPReLU and learnable biases (float) around each conv, and norm1/norm2 ({type(net.norm).__name__})",
            fontsize=10.5, style="italic")
    draw_block(ax, net, counts, block, 0.585)
    ax.legend(handles=[Patch(facecolor=COLORS[kind], edgecolor="#333333", label=label) for kind, label in LEGEND],
              loc="lower right", fontsize=9.5, frameon=False, bbox_to_anchor=(0.99, 0.02))
    save_figure(fig, output)
    plt.close(fig)
    return output


def main(argv=None):
    args = parse_args(argv)
    print(f"wrote {draw(args.model, args.image_size, args.output)}")


if __name__ == "__main__":
    main()
