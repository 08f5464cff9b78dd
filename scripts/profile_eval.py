"""Where an eval forward spends its time: MindSpore's profiler, summed by operator kind.

    python scripts/profile_eval.py --model BiMLP_S --batch 8 [--fused false] [--size 224]

Runs one warm-up forward (compilation), then profiles one forward on random inputs and
prints each operator kind's share of the operator time. Convolutions are split into
the grouped 1xK/Kx1 layers, the other binary ones (1x1) and the float ones (stem,
downsampling). Timing comes from the profiler, so the total is above a plain run's.
"""
import argparse
import collections
import csv
import glob
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def operator_kind(row):
    kind, scope = row["op_type"], row["full_op_name"]
    if kind == "Custom":
        return "fused kernels (Custom)"
    if kind != "Conv2D":
        return kind
    if "GroupedLineConv" in scope:
        return "Conv2D grouped 1xK/Kx1"
    if "QuanConv" in scope:
        return "Conv2D binary 1x1"
    return "Conv2D float (stem, downsampling)"


def main():
    from src.config import parse_bool
    from src.context import run_cli, setup_device

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="BiMLP_S")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--fused", type=parse_bool, default=None, metavar="{true,false}",
                        help="fused CPU kernels (default: when available)")
    parser.add_argument("--fast", type=parse_bool, default=True, metavar="{true,false}")
    args = parser.parse_args()

    def run():
        setup_device("CPU", 0, "graph")
        import mindspore as ms
        import numpy as np

        from src.wavemlp_20_3 import create_model

        net = create_model(args.model, fast=args.fast, fused=args.fused)
        net.set_train(False)
        channels = net.patch_embed.proj.weight.shape[1]
        x = ms.Tensor(np.random.RandomState(0).standard_normal((args.batch, channels, args.size, args.size))
                      .astype(np.float32))
        net(x).asnumpy()
        start = time.perf_counter()
        net(x).asnumpy()
        plain = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as out:
            profiler = ms.Profiler(output_path=out)
            net(x).asnumpy()
            profiler.analyse()
            with open(glob.glob(os.path.join(out, "**", "cpu_op_detail_info_0.csv"), recursive=True)[0]) as f:
                rows = list(csv.DictReader(f))
        totals, counts = collections.Counter(), collections.Counter()
        for row in rows:
            totals[operator_kind(row)] += float(row["op_total_time(ms)"])
            counts[operator_kind(row)] += int(row["op_occurrences"])
        total = sum(totals.values())
        print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, fast={args.fast}, fused={net.fused}: "
              f"{args.batch / plain:.2f} img/s unprofiled; operator time {total:.0f} ms under the profiler\n")
        print("| operator | calls | ms | share |\n|---|---:|---:|---:|")
        for kind, ms_spent in totals.most_common():
            if ms_spent >= 0.005 * total:
                print(f"| {re.sub(r'[|]', '/', kind)} | {counts[kind]} | {ms_spent:.0f} | {ms_spent / total:.1%} |")

    run_cli(run)


if __name__ == "__main__":
    main()
