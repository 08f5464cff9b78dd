"""Which CPU settings make BiMLP training faster? Training throughput side by side, one run.

Each option runs train.py's training step (GRAPH mode, label-smoothed loss, forward + backward,
AdamW) on one random batch, repeatedly, in a fresh process, and reports images per second; the
data pipeline is left out (for Fashion-MNIST it is far faster than the step). The options are the
knobs a user of a small CPU machine would try:

    default     MindSpore's own thread count, batch 128 (what train.py does)
    threads=1   one operator thread; threads=2 one per core
    batch=32 / batch=64 / batch=256
    jit O1      jit_config={"jit_level": "O1"}, MindSpore's next compilation level
    msrun 2x1   data-parallel: two msrun workers of one thread and batch 64 each, averaged
                gradients (AllReduce on loopback); img/s is the sum over the workers

    python scripts/benchmark_train_options.py                     # BiMLP_T14, ~20 min on 2 cores
    python scripts/benchmark_train_options.py --model BiMLP_T --min_seconds 10
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from src.context import check_output_argument  # noqa: E402  (after the path set-up)
from src.files import write_text  # noqa: E402

RESULT_TAG = "OPTION_RESULT "
OPTIONS = {
    "default": {},
    "threads=1": {"threads": 1},
    "threads=2": {"threads": 2},
    "batch=32": {"batch": 32},
    "batch=64": {"batch": 64},
    "batch=256": {"batch": 256},
    "jit O1": {"jit_level": "O1"},
    "msrun 2x1": {"workers": 2, "threads": 1, "batch": 64},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="BiMLP_T14", help="a registered variant (default: BiMLP_T14)")
    parser.add_argument("--options", default=",".join(OPTIONS),
                        help=f"comma-separated subset of: {', '.join(OPTIONS)}")
    parser.add_argument("--min_seconds", type=float, default=30.0,
                        help="timed seconds per option after two warm-up steps (default: 30)")
    parser.add_argument("--json", default=os.path.join(ROOT, "fig", "benchmark_train_options.json"),
                        help="where to write the results (default: fig/benchmark_train_options.json)")
    parser.add_argument("--run_option", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [o for o in args.options.split(",") if o not in OPTIONS]
    if unknown:
        parser.error(f"unknown option(s) {', '.join(unknown)}; choose from {', '.join(OPTIONS)}")
    check_output_argument(parser, args.json, "--json")
    from src.wavemlp_20_3 import MODELS

    if args.model not in MODELS:
        parser.error(f"unknown model {args.model!r}; available: {', '.join(sorted(MODELS))}")
    return args


def worker(cfg):
    from src.context import setup_device

    setup_device("CPU")
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    from src.config import DEFAULTS
    from src.optim import create_optimizer, lr_schedule
    from benchmark import timed
    from src.wavemlp_20_3 import create_model, default_image_size
    from train import TrainLoss

    if cfg.get("threads"):
        ms.device_context.cpu.op_tuning.threads_num(cfg["threads"])
    if cfg.get("jit_level"):
        ms.set_context(jit_config={"jit_level": cfg["jit_level"]})
    rank, world = 0, 1
    if cfg.get("workers"):
        from mindspore.communication import get_group_size, get_rank, init

        init()
        rank, world = get_rank(), get_group_size()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=world)
    net = create_model(cfg["model"])
    size = default_image_size(cfg["model"])
    # The step train.py runs: label-smoothed loss, AdamW in two groups, a per-step learning-rate table.
    step = nn.TrainOneStepCell(TrainLoss(net, DEFAULTS["label_smoothing"]),
                               create_optimizer(net, DEFAULTS, lr_schedule(1e-3, 1e-5, 0, 1, 100_000)))
    step.set_train(True)
    rng = np.random.RandomState(rank)
    channels = net.patch_embed.proj.weight.shape[1]
    x = ms.Tensor(rng.standard_normal((cfg["batch"], channels, size, size)).astype(np.float32))
    y = ms.Tensor(rng.randint(0, net.num_classes, cfg["batch"]).astype(np.int32))
    # Two warm-up steps: compilation, then the first run of the compiled graph.
    step_s, _, calls, _ = timed(lambda: step(x, y).asnumpy(), cfg["min_seconds"], warmup=2)
    print(RESULT_TAG + json.dumps({"rank": rank, "img_s": cfg["batch"] * world / step_s, "steps": calls}),
          flush=True)


def results_in(text):
    return [json.loads(line[len(RESULT_TAG):]) for line in text.splitlines() if line.startswith(RESULT_TAG)]


def run_option(cfg):
    """One option in fresh processes: a plain subprocess, or msrun's workers."""
    command = [os.path.abspath(__file__), "--run_option", json.dumps(cfg)]
    if not cfg.get("workers"):
        proc = subprocess.run([sys.executable] + command, capture_output=True, text=True, cwd=ROOT)
        found, output = results_in(proc.stdout), proc.stderr
    else:
        log_dir = tempfile.mkdtemp(prefix="bimlp_msrun_")
        bin_dir = os.path.dirname(sys.executable)
        msrun = os.path.join(bin_dir, "msrun") if os.path.exists(os.path.join(bin_dir, "msrun")) else "msrun"
        env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        proc = subprocess.run([msrun, f"--worker_num={cfg['workers']}", f"--local_worker_num={cfg['workers']}",
                               f"--master_port={os.environ.get('MASTER_PORT', '8127')}", f"--log_dir={log_dir}",
                               "--join=True"] + command, capture_output=True, text=True, cwd=ROOT, env=env)
        output = ""
        for log in sorted(glob.glob(os.path.join(log_dir, "*.log"))):
            with open(log, errors="replace") as f:
                output += f.read()
        found = [r for r in results_in(output) if r["rank"] == 0]
        shutil.rmtree(log_dir, ignore_errors=True)
    if found:
        return found[0]
    errors = [line for line in output.splitlines() if "rror" in line] or ["no result"]
    return {"error": f"failed (exit {proc.returncode}): {errors[-1].strip()[:200]}"}


def main(argv=None):
    args = parse_args(argv)
    if args.run_option:
        return worker(json.loads(args.run_option))
    from benchmark import machine

    meta = machine()
    rows = []
    for name in args.options.split(","):
        cfg = {"model": args.model, "batch": 128, "min_seconds": args.min_seconds, **OPTIONS[name]}
        print(f"running {name}: {cfg}", file=sys.stderr, flush=True)
        rows.append({"option": name, **cfg, **run_option(cfg)})
        print(f"  -> {rows[-1]}", file=sys.stderr, flush=True)
    meta["load_end"] = os.getloadavg()[0]
    base = next((r["img_s"] for r in rows if r["option"] == "default" and "img_s" in r), None)
    print(f"{args.model} training throughput, {meta['date']}: {meta['cpu']}, {meta['cores']} cores, "
          f"MindSpore {meta['mindspore']}, load average {meta['load_start']:.1f} at start, "
          f"{meta['load_end']:.1f} at end.\n")
    print("| option | batch | img/s | x default |\n|---|---|---|---|")
    for r in rows:
        speed = (f"{r['img_s']:.1f} | {r['img_s'] / base:.2f}" if "img_s" in r and base
                 else f"{r['img_s']:.1f} | –" if "img_s" in r else f"{r['error']} | –")
        print(f"| {r['option']} | {r['batch'] * r.get('workers', 1)} | {speed} |")
    write_text(args.json, json.dumps({"meta": meta, "results": rows}, indent=1))
    print(f"\nresults written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
