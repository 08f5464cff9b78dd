"""Which training options pay? train.py runs that differ in one setting, same budget and seed, side by side.

Each option is a set of train.py settings on top of --config and the common budget flags
(`--epochs`, `--steps_per_epoch`); every run starts from the same seed and writes its own folder
under --output_dir. The table gives each run's last validation top-1, its train.py time and its
training images per second (both depend on what else runs on the machine: compare accuracies
freely, times only between runs that had the machine alone).

    python scripts/compare_recipes.py --config configs/bimlp_t14_fashion_mnist.yaml --epochs 1 \\
        --options "default;augment=false;lr=4e-3;teacher_checkpoint=checkpoints/BiMLP_T14_fashion_mnist_float.packed"

An option is "default" (the config as it is) or settings joined by "+", e.g. "lr=4e-3+batch_size=256".
"""
import argparse
import csv
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from src.config import DEFAULTS  # noqa: E402  (after the path set-up)
from src.context import check_output_argument  # noqa: E402
from src.files import write_text  # noqa: E402


def parse_option(text):
    """{setting: value} of one option ("default": none)."""
    if text == "default":
        return {}
    settings = {}
    for item in text.split("+"):
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULTS:
            raise ValueError(f"bad option {text!r}: expected default or setting=value[+setting=value], "
                             f"with settings of src/config.py")
        settings[key] = value
    return settings


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the recipe every option starts from (configs/*.yaml)")
    parser.add_argument("--options", default="default", help='";"-separated options (default: "default")')
    parser.add_argument("--epochs", type=int, required=True, help="the budget of every run")
    parser.add_argument("--steps_per_epoch", type=int, default=0, help="0: whole epochs (default)")
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "output", "recipes"),
                        help="one folder per option under it (default: output/recipes)")
    parser.add_argument("--json", default=os.path.join(ROOT, "fig", "recipes.json"),
                        help="where to write the results (default: fig/recipes.json)")
    args = parser.parse_args(argv)
    try:
        args.parsed = [(text, parse_option(text)) for text in args.options.split(";")]
    except ValueError as err:
        parser.error(str(err))
    check_output_argument(parser, args.json, "--json")
    return args


def folder_name(text):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]


def run_option(args, text, settings):
    out = os.path.join(args.output_dir, folder_name(text))
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--config", args.config, "--overwrite",
               "--epochs", str(args.epochs), "--steps_per_epoch", str(args.steps_per_epoch), "--output_dir", out]
    for key, value in settings.items():
        command += [f"--{key}", value]
    print(f"== {text}: {' '.join(command[1:])}", flush=True)
    start = time.time()
    proc = subprocess.run(command, cwd=ROOT)
    seconds = time.time() - start
    if proc.returncode:
        return {"option": text, "error": f"train.py exited with status {proc.returncode}"}
    with open(os.path.join(out, "log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    return {"option": text, "settings": settings, "val_top1": float(last["val_top1"]),
            "best_top1": max(float(row["val_top1"]) for row in rows), "train_loss": float(last["train_loss"]),
            "seconds": seconds, "train_img_per_s": sum(float(row["train_img_per_s"]) for row in rows) / len(rows),
            "load_end": os.getloadavg()[0]}


def markdown(meta, rows):
    lines = [f"Recipe options, {meta['date']}: --config {meta['config']}, {meta['epochs']} epoch(s)"
             + (f" of {meta['steps_per_epoch']} steps" if meta["steps_per_epoch"] else "")
             + f", load average {meta['load_start']:.1f} at start.", "",
             "| option | val top-1 | best | train loss | minutes | train img/s | load at end |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['option']} | {r['error']} | | | | | |")
        else:
            lines.append(f"| {r['option']} | {100 * r['val_top1']:.2f}% | {100 * r['best_top1']:.2f}% | "
                         f"{r['train_loss']:.4f} | {r['seconds'] / 60:.1f} | {r['train_img_per_s']:.1f} | "
                         f"{r['load_end']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    meta = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "config": args.config,
            "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "load_start": os.getloadavg()[0]}
    rows = []
    for text, settings in args.parsed:
        rows.append(run_option(args, text, settings))
        write_text(args.json, json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    print(markdown(meta, rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
