"""Learning curves from train.py's log.csv files: train loss and validation top-1 per epoch.

    python scripts/plot_log.py output/bimlp_t14_fashion_mnist/log.csv:binary \
        output/bimlp_t14_fashion_mnist_float/log.csv:float --title "BiMLP_T14 on Fashion-MNIST" \
        --output fig/BiMLP_T14_fashion_mnist_curve.png
"""
import argparse
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from src.files import save_figure  # noqa: E402  (after the path set-up)


def read_log(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} has no epochs yet")
    return ([int(r["epoch"]) for r in rows], [float(r["train_loss"]) for r in rows],
            [100 * float(r["val_top1"]) for r in rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", help="LOG.csv or LOG.csv:LABEL")
    parser.add_argument("--output", default="fig/learning_curve.png")
    parser.add_argument("--title", default="learning curves")
    args = parser.parse_args(argv)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for spec in args.logs:
        path, _, label = spec.partition(":")
        if not os.path.isfile(path):
            sys.exit(f"error: log not found: {path}")
        epochs, loss, top1 = read_log(path)
        label = label or os.path.basename(os.path.dirname(path))
        loss_ax.plot(epochs, loss, marker="o", label=label)
        acc_ax.plot(epochs, top1, marker="o", label=f"{label} (best {max(top1):.2f}%)")
    loss_ax.set(xlabel="epoch", ylabel="train loss (label-smoothed CE)", title="training loss")
    acc_ax.set(xlabel="epoch", ylabel="top-1 (%)", title="validation top-1")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.suptitle(args.title)
    fig.tight_layout()
    save_figure(fig, args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
