"""Print a BiMLP model summary: 1-bit / 32-bit parameters, memory, BOPs, FLOPs and OPs.

    python summary.py --model BiMLP_S --image_size 224 [--per_layer] [--markdown]

Counts are analytic (no forward pass); the conventions are in src/summary.py.
"""
import argparse

from src.context import UserError, run_cli
from src.dataset import check_image_size
from src.summary import layer_counts, per_layer_rows, stage_rows, total
from src.wavemlp_20_3 import MODELS, create_model, default_image_size

LAYER_COLUMNS = ("layer", "type", "output")
COUNT_COLUMNS = ("1-bit params", "32-bit params", "fp32 KiB", "packed KiB", "BOPs (M)", "FLOPs (M MACs)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="BiMLP_S", choices=sorted(MODELS))
    parser.add_argument("--image_size", type=int, default=None,
                        help="input height = width (default: 224 for BiMLP_S/M, 28 for BiMLP_T/T14)")
    parser.add_argument("--num_classes", type=int, default=None, help="classes of the head (default: the variant's)")
    parser.add_argument("--per_layer", action="store_true", help="one row per conv/dense layer instead of per stage")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    return parser.parse_args(argv)


def count_cells(count):
    return [f"{count.params_1bit:,}", f"{count.params_32bit:,}",
            f"{count.float32_bytes / 1024:,.1f}", f"{count.packed_bytes / 1024:,.1f}",
            f"{count.bops / 1e6:,.2f}", f"{count.flops / 1e6:,.2f}"]


def layer_table(counts, markdown):
    rows = [[row.name, row.kind, row.output, *count_cells(row)] for row in per_layer_rows(counts)]
    return format_table((*LAYER_COLUMNS, *COUNT_COLUMNS), rows, markdown)


def stage_table(net, counts, markdown):
    rows = [[row.name, *count_cells(row)] for row in stage_rows(net, counts)]
    return format_table(("stage", *COUNT_COLUMNS), rows, markdown)


def totals(counts):
    """(label, value) lines of the totals table."""
    whole = total(counts)
    params = whole.params_1bit + whole.params_32bit
    return [
        ("parameters", f"{params:,}"),
        ("1-bit parameters", f"{whole.params_1bit:,}"),
        ("32-bit parameters", f"{whole.params_32bit:,}"),
        ("xnor scales (float32, in packed memory)", f"{whole.scales:,}"),
        ("memory float32", f"{whole.float32_bytes / 2**20:,.2f} MiB"),
        ("memory packed", f"{whole.packed_bytes / 2**20:,.2f} MiB "
                          f"({whole.float32_bytes / whole.packed_bytes:.2f}x smaller)"),
        ("BOPs (1-bit x 1-bit MACs)", f"{whole.bops:,} ({whole.bops:.3e})"),
        ("FLOPs (float MACs of conv/dense)", f"{whole.flops:,} ({whole.flops:.3e})"),
        ("OPs = BOPs/64 + FLOPs", f"{whole.ops:,.0f} ({whole.ops:.3e})"),
    ]


def is_numeric(text):
    return text.replace(",", "").replace(".", "").isdigit()


def format_table(header, rows, markdown):
    if markdown:
        align = ["---:" if rows and is_numeric(rows[0][i]) else "---" for i in range(len(header))]
        lines = [header, align, *rows]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]

    def fmt(line):
        return "  ".join(cell.rjust(width) if is_numeric(cell) else cell.ljust(width)
                         for cell, width in zip(line, widths)).rstrip()
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def main(argv=None):
    args = parse_args(argv)
    check_image_size(args.image_size)
    image_size = args.image_size or default_image_size(args.model)
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num_classes must be at least 1, got {args.num_classes}")
    net = create_model(args.model, **({"num_classes": args.num_classes} if args.num_classes else {}))
    counts = layer_counts(net, image_size)
    title = f"{args.model}, {image_size}x{image_size} input, {net.num_classes} classes, per image"
    print(f"## {title}\n" if args.markdown else f"{title}\n")
    print(layer_table(counts, args.markdown) if args.per_layer else stage_table(net, counts, args.markdown))
    print()
    print(format_table(("total", "value"), [list(line) for line in totals(counts)], args.markdown))


if __name__ == "__main__":
    run_cli(main)
