"""Where an eval forward or a train step spends its time: MindSpore's profiler, summed by operator kind.

    python scripts/profile_ops.py --model BiMLP_S --batch 8 [--fused false] [--engine xnor] [--size 224]
    python scripts/profile_ops.py --model BiMLP_T14 --batch 128 --train [--binary false] [--fused false]

Runs one warm-up call (compilation), then profiles one call on random inputs and prints
each operator kind's share of the operator time. Convolutions are split into the grouped
1xK/Kx1 layers, the other binary ones (1x1) and the float ones (stem, downsampling); a
train step also has their backward kernels (Conv2DBackpropInput/Filter). A train step is
train.py's: label-smoothed cross-entropy and AdamW. Timing comes from the profiler, so
the total is above a plain run's.
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
    if not kind.startswith("Conv2D"):
        return kind
    if "GroupedLineConv" in scope:
        return f"{kind} grouped 1xK/Kx1"
    if "QuanConv" in scope:
        return f"{kind} binary 1x1"
    return f"{kind} float (stem, downsampling)"


def build_call(args, net, x):
    """The profiled call: an eval forward, or one train.py optimizer step."""
    if not args.train:
        net.set_train(False)
        return lambda: net(x).asnumpy()
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    from src.config import load_config
    from src.optim import create_optimizer, lr_schedule
    from train import TrainLoss

    config = load_config(None, {"model": args.model})
    optimizer = create_optimizer(net, config, lr_schedule(1e-3, 1e-6, 1.0, 10, 100))
    step = nn.TrainOneStepCell(TrainLoss(net, config["label_smoothing"]), optimizer)
    step.set_train(True)
    labels = ms.Tensor(np.random.RandomState(1).randint(0, net.num_classes, x.shape[0]).astype(np.int32))
    return lambda: step(x, labels).asnumpy()


def main():
    from src.config import parse_bool
    from src.context import run_cli, setup_device
    from src.wavemlp_20_3 import MODELS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="BiMLP_S", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, help="input height = width (default: the variant's data, 224 or 28)")
    parser.add_argument("--train", action="store_true", help="profile a train step instead of an eval forward")
    parser.add_argument("--binary", type=parse_bool, default=True, metavar="{true,false}",
                        help="false: the float twin")
    parser.add_argument("--fused", type=parse_bool, default=None, metavar="{true,false}",
                        help="fused CPU kernels (default: when available; in training as train.py uses them)")
    parser.add_argument("--fast", type=parse_bool, default=True, metavar="{true,false}")
    parser.add_argument("--engine", default="exact", choices=("exact", "xnor"),
                        help="eval engine (default: exact; xnor: binary 1x1 layers on packed bits)")
    args = parser.parse_args()

    def run():
        setup_device("CPU", 0, "graph")
        import mindspore as ms
        import numpy as np

        from src.wavemlp_20_3 import create_model, default_image_size

        from src import fused as fused_kernels

        use = fused_kernels.available() if args.fused is None else args.fused
        if args.train:
            net = create_model(args.model, binary=args.binary, fast=args.fast, fused=False, fused_training=use)
        else:
            net = create_model(args.model, binary=args.binary, fast=args.fast, fused=use and args.binary,
                               engine=args.engine)
        size = args.size or default_image_size(args.model)
        channels = net.patch_embed.proj.weight.shape[1]
        x = ms.Tensor(np.random.RandomState(0).standard_normal((args.batch, channels, size, size))
                      .astype(np.float32))
        call = build_call(args, net, x)
        call()
        start = time.perf_counter()
        call()
        plain = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as out:
            profiler = ms.Profiler(output_path=out)
            call()
            profiler.analyse()
            with open(glob.glob(os.path.join(out, "**", "cpu_op_detail_info_0.csv"), recursive=True)[0]) as f:
                rows = list(csv.DictReader(f))
        totals, counts = collections.Counter(), collections.Counter()
        for row in rows:
            totals[operator_kind(row)] += float(row["op_total_time(ms)"])
            counts[operator_kind(row)] += int(row["op_occurrences"])
        total = sum(totals.values())
        what = "train step" if args.train else "eval forward"
        print(f"{args.model} ({'binary' if args.binary else 'float twin'}) {what}, batch {args.batch}, "
              f"{size}x{size}, fast={args.fast}, fused={net.fused_training if args.train else net.fused}, "
              f"engine={net.engine}: {args.batch / plain:.2f} img/s unprofiled; "
              f"operator time {total:.0f} ms under the profiler\n")
        print("| operator | calls | ms | share |\n|---|---:|---:|---:|")
        for kind, ms_spent in totals.most_common():
            if ms_spent >= 0.005 * total:
                print(f"| {re.sub(r'[|]', '/', kind)} | {counts[kind]} | {ms_spent:.0f} | {ms_spent / total:.1%} |")

    run_cli(run)


if __name__ == "__main__":
    main()
