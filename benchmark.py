"""Side-by-side CPU benchmark of BiMLP: eval throughput and memory, train steps, data pipeline.

Every configuration runs in a fresh subprocess, so its peak RSS is its own
(it includes graph compilation). All configurations of one run share the
machine's conditions; compare within a run, and look at the load in the header.

    python benchmark.py                       # everything (~1 hour on 2 cores)
    python benchmark.py --quick               # BiMLP_S at batch 1 and 8, BiMLP_T/T14 training, data
    python benchmark.py --only eval --model BiMLP_S --batches 1,8 --paths fast,upstream
    python benchmark.py --only train --model BiMLP_S --train_paths fast,fused
    python scripts/plot_benchmark.py          # fig/benchmark.json -> fig/benchmark.png

Paths: "upstream" is the straightforward computation (fast=False: broadcasting
Add/Mul, comparison-based quantizer, strided-slice shortcuts), "fast" the faster
MindSpore operators alone (fast=True, fused=False), "fused" the default network
(fast=True plus the fused CPU kernels of src/fused_cpu.cc and cached binarized weights,
eval only; logits bit-identical), "fused_1thread" the same with the kernels on one
thread (BIMLP_KERNEL_THREADS=1), "fused_nocache_1thread" the fused path as it was
before the kernel threads and the weight cache (one thread, binarized weights computed
in the graph at every call; the eval table's ratios are against it), "xnor" the
opt-in xnor engine (binary 1x1 layers on packed bits, src/xnor_cpu.cc; eval only),
"float" the float twin (binary=False, fast=True). In training "fused" runs the kernels of
src/fused_train.cc and "float_fused" the float twin with them; train speeds are compared with
the same network on MindSpore's operators ("fast", or "float"). All paths run in GRAPH mode
with ONEDNN_MAX_CPU_ISA=AVX2 unless the environment sets it (see src/context.py).

Thread settings, not run unless named in --paths (docs/performance_eval.md):
"fused_runtime1" / "xnor_runtime1" with MindSpore's operator threads set to one
(runtime_num_threads=1; the kernels still use every core), "fused_affinity" with
mindspore.runtime.set_cpu_affinity(True). In training, --train_paths takes
"fused_1thread", "fused_runtime1" and "fused_affinity" (the training kernels' threads).

    python benchmark.py --only train --model BiMLP_T14 --train_paths fast,fused,fused_1thread,fused_runtime1
"""
import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

from src.files import write_text

ROOT = os.path.dirname(os.path.abspath(__file__))
RESULT_TAG = "BENCH_RESULT "
PATHS = {
    "upstream": {"binary": True, "fast": False, "fused": False},
    "fast": {"binary": True, "fast": True, "fused": False},
    "fused_nocache_1thread": {"binary": True, "fast": True, "fused": True},
    "fused_1thread": {"binary": True, "fast": True, "fused": True, "fused_training": True},
    "fused": {"binary": True, "fast": True, "fused": True, "fused_training": True},
    "xnor": {"binary": True, "fast": True, "engine": "xnor"},
    "float": {"binary": False, "fast": True},
    "float_fused": {"binary": False, "fast": True, "fused_training": True},
}
TRAIN_PATHS = ("upstream", "fast", "fused", "float", "float_fused")
# Also measurable in training (--train_paths): the kernels' thread settings.
TRAIN_THREAD_PATHS = ("fused_1thread", "fused_runtime1", "fused_affinity")
PATH_ENVIRONMENT = {"fused_1thread": {"BIMLP_KERNEL_THREADS": "1"},
                    "fused_nocache_1thread": {"BIMLP_KERNEL_THREADS": "1"}}
THREAD_SETTINGS = {
    "fused_runtime1": ("fused", {"runtime_num_threads": 1}),
    "xnor_runtime1": ("xnor", {"runtime_num_threads": 1}),
    "fused_affinity": ("fused", {"cpu_affinity": True}),
}
# Measured peak RSS in GB: a base (framework + compilation) plus a slope per image.
# Used to skip runs that cannot fit, e.g. the upstream-style BiMLP_S at batch 64
# (~80 GB), before they exhaust the machine's memory.
BASE_GB = 2.0
GB_PER_IMAGE = {("BiMLP_S", "upstream"): 1.3, ("BiMLP_M", "upstream"): 2.2,
                ("BiMLP_S", "fast"): 0.14, ("BiMLP_M", "fast"): 0.2,
                # The fused kernels free their intermediates: ~0.015 GB per image at batch 16.
                ("BiMLP_S", "fused"): 0.03, ("BiMLP_M", "fused"): 0.06}
ESTIMATED_LIKE = {path: "fused" for path in ("fused_1thread", "fused_nocache_1thread", "xnor", "fused_runtime1",
                                             "xnor_runtime1", "fused_affinity")}
EVAL_BATCH_DEFAULT = 64  # eval.py's default --batch_size
# The variants each part measures unless --model names others: (eval, train).
DEFAULT_MODELS = ("BiMLP_S,BiMLP_M", "BiMLP_T,BiMLP_T14,BiMLP_S")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="eval,train,data",
                        help="comma-separated parts to run: eval, train, data (default: all)")
    parser.add_argument("--model", help="comma-separated variants for every part (default: BiMLP_S,BiMLP_M "
                        "for eval; BiMLP_T,BiMLP_T14,BiMLP_S for train, only the 28x28 ones with --quick)")
    parser.add_argument("--batches", default=f"1,8,{EVAL_BATCH_DEFAULT}", help="eval batch sizes (default: 1,8,64)")
    parser.add_argument("--paths", default=",".join(path for path in PATHS if path != "float_fused"),
                        help=f"eval paths (default: all but float_fused; also: {','.join(THREAD_SETTINGS)})")
    parser.add_argument("--train_paths", default=",".join(TRAIN_PATHS),
                        help=f"train paths (default: {','.join(TRAIN_PATHS)}; also: {','.join(TRAIN_THREAD_PATHS)})")
    parser.add_argument("--train_batch_224", type=int, default=8, help="BiMLP_S/M train batch at 224 (default: 8)")
    parser.add_argument("--data_images", type=int, default=200, help="JPEGs for the data benchmark (default: 200)")
    parser.add_argument("--min_seconds", type=float, default=20.0,
                        help="time each config for at least this long after warm-up (default: 20)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every config this many times, round-robin, and report each config's "
                             "median round (default: 1): the machine's speed drifts between processes")
    parser.add_argument("--max_gb", type=float, default=16.0,
                        help="skip upstream-style runs estimated to need more memory (default: 16); any run "
                             "is skipped if its estimate exceeds the memory available when it starts")
    parser.add_argument("--quick", action="store_true", help="a small subset, one timed step each")
    parser.add_argument("--json", default=os.path.join(ROOT, "fig", "benchmark.json"),
                        help="where to write the results (default: fig/benchmark.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for what, given, known in (("path", args.paths, [*PATHS, *THREAD_SETTINGS]),
                               ("train path", args.train_paths, TRAIN_PATHS + TRAIN_THREAD_PATHS)):
        unknown = [path for path in given.split(",") if path not in known]
        if unknown:
            parser.error(f"unknown {what}(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    from src.context import check_output_argument

    check_output_argument(parser, args.json, "--json")
    eval_models, train_models = DEFAULT_MODELS
    if args.quick:
        eval_models, args.batches, args.min_seconds, args.data_images = "BiMLP_S", "1,8", 0.0, 64
        train_models = ",".join(m for m in train_models.split(",") if is_small(m))
    args.eval_models = (args.model or eval_models).split(",")
    args.train_models = (args.model or train_models).split(",")
    from src.wavemlp_20_3 import MODELS

    unknown = sorted(set(args.eval_models + args.train_models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return args


def is_small(model):
    """Fashion-MNIST variants train at 28x28, batch 128."""
    from src.wavemlp_20_3 import models_for

    return model in models_for("fashion_mnist")


def configs(args):
    parts = args.only.split(",")
    out = []
    if "eval" in parts:
        for model in args.eval_models:
            for batch in [int(b) for b in args.batches.split(",")]:
                for path in args.paths.split(","):
                    out.append({"kind": "eval", "model": model, "batch": batch,
                                "size": 28 if is_small(model) else 224, "path": path})
    if "train" in parts:
        for model in args.train_models:
            small = is_small(model)
            for path in args.train_paths.split(","):
                out.append({"kind": "train", "model": model, "batch": 128 if small else args.train_batch_224,
                            "size": 28 if small else 224, "path": path})
    if "data" in parts:
        out.append({"kind": "data", "images": args.data_images, "batch": EVAL_BATCH_DEFAULT, "size": 224})
    for cfg in out:
        cfg["min_seconds"] = args.min_seconds
    return out


def available_gb():
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 1e6


def too_big(cfg, max_gb):
    if cfg["kind"] == "data":
        return None
    path = ESTIMATED_LIKE.get(cfg["path"], cfg["path"])
    if cfg["kind"] == "train":  # backward keeps every activation, whichever path
        path = "upstream"
    slope = GB_PER_IMAGE.get((cfg["model"], path), GB_PER_IMAGE.get((cfg["model"], "fast"), 0.0))
    need = BASE_GB + slope * cfg["batch"]
    if path == "upstream" and need > max_gb:
        return f"skipped: needs ~{need:.0f} GB"
    if os.path.exists("/proc/meminfo") and need > available_gb() - 1.0:
        return f"skipped: needs ~{need:.0f} GB, {available_gb():.0f} GB available"
    return None


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def timed(step, min_seconds, warmup=1):
    """Seconds per call of step(): `warmup` untimed calls (the first compiles), then >= 1 call and
    >= min_seconds. Returns (seconds per call, seconds of the warm-up calls, timed calls, CPU
    seconds per call). The CPU seconds (all threads) hardly depend on what else runs on the
    machine, so they compare paths even on a busy one; the wall seconds need it alone."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    compile_s = time.perf_counter() - start
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while calls == 0 or time.perf_counter() - start < min_seconds:
        step()
        calls += 1
    return (time.perf_counter() - start) / calls, compile_s, calls, (time.process_time() - cpu_start) / calls


def build(cfg):
    from src.wavemlp_20_3 import create_model

    path = THREAD_SETTINGS[cfg["path"]][0] if cfg["path"] in THREAD_SETTINGS else cfg["path"]
    net = create_model(cfg["model"], **PATHS[path])
    if path == "fused_nocache_1thread":
        without_weight_cache(net)
    return net


def without_weight_cache(net):
    """The fused path as it was before src/weight_cache.py: wb computed in the graph at every call."""
    for layer in net.binarized_weights.layers:
        object.__setattr__(layer, "binarized_weight", None)
    net.binarized_weights = None


def apply_thread_settings(path):
    import mindspore as ms

    settings = THREAD_SETTINGS.get(path, (None, {}))[1]
    if "runtime_num_threads" in settings:
        ms.set_context(runtime_num_threads=settings["runtime_num_threads"])
    if settings.get("cpu_affinity"):
        ms.runtime.set_cpu_affinity(True)


def run_eval(cfg):
    import mindspore as ms
    import numpy as np

    net = build(cfg)
    net.set_train(False)
    channels = net.patch_embed.proj.weight.shape[1]
    x = ms.Tensor(np.random.RandomState(0).standard_normal((cfg["batch"], channels, cfg["size"], cfg["size"]))
                  .astype(np.float32))
    step_s, compile_s, calls, cpu_s = timed(lambda: net(x).asnumpy(), cfg["min_seconds"])
    return {"step_s": step_s, "compile_s": compile_s, "calls": calls, "cpu_s": cpu_s}


def run_train(cfg):
    import mindspore as ms
    import numpy as np
    from mindspore import nn

    net = build(cfg)
    channels = net.patch_embed.proj.weight.shape[1]
    classes = net.num_classes
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    opt = nn.AdamWeightDecay(net.trainable_params(), learning_rate=1e-3, weight_decay=0.05)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, loss), opt)
    step.set_train(True)
    rng = np.random.RandomState(0)
    x = ms.Tensor(rng.standard_normal((cfg["batch"], channels, cfg["size"], cfg["size"])).astype(np.float32))
    y = ms.Tensor(rng.randint(0, classes, cfg["batch"]).astype(np.int32))
    step_s, compile_s, calls, cpu_s = timed(lambda: step(x, y).asnumpy(), cfg["min_seconds"])
    return {"step_s": step_s, "compile_s": compile_s, "calls": calls, "cpu_s": cpu_s}


def write_jpegs(folder, count):
    """ImageNet-like JPEGs (500x375 or 375x500, smooth noise) in two class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(0)
    for i in range(count):
        w, h = (500, 375) if i % 2 else (375, 500)
        small = rng.randint(0, 256, (h // 8, w // 8, 3)).astype(np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        os.makedirs(os.path.join(folder, f"class{i % 2}"), exist_ok=True)
        image.save(os.path.join(folder, f"class{i % 2}", f"{i:05d}.JPEG"), quality=90)


def run_data(cfg):
    from src.dataset import create_dataset

    with tempfile.TemporaryDirectory() as folder:
        write_jpegs(folder, cfg["images"])
        dataset = create_dataset("imagefolder", folder, "val", cfg["batch"], cfg["size"])
        start = time.perf_counter()
        seen = sum(batch[0].shape[0] for batch in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1))
        seconds = time.perf_counter() - start
    return {"step_s": seconds * cfg["batch"] / seen, "compile_s": 0.0, "calls": 1, "images_seen": seen}


def worker(cfg):
    sys.path.insert(0, ROOT)
    from src.context import setup_device

    setup_device("CPU", 0, "graph")
    apply_thread_settings(cfg.get("path"))
    result = {"eval": run_eval, "train": run_train, "data": run_data}[cfg["kind"]](cfg)
    result["img_s"] = cfg["batch"] / result["step_s"]
    result["peak_rss_gb"] = peak_rss_gb()
    result["load_end"] = os.getloadavg()[0]
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_worker(cfg):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **PATH_ENVIRONMENT.get(cfg.get("path"), {})})
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[WARNING")]
    reasons = [line for line in lines if "Error" in line or "error" in line] or lines or ["no output"]
    return {"error": f"failed (exit {proc.returncode}): {reasons[-1].strip()[:200]}"}


def run_config(cfg, max_gb):
    """One config in a fresh process; one retry, because MindSpore parses the model's source
    files when it compiles and fails if they are edited meanwhile (a shared checkout)."""
    skip = too_big(cfg, max_gb)
    if skip:
        return {"error": skip}
    result = run_worker(cfg)
    return run_worker(cfg) if "error" in result else result


def median_round(measured):
    """The round with the median speed (the lower middle one of an even count), with every round's
    img/s; the first error if no round measured."""
    done = sorted((r for r in measured if "img_s" in r), key=lambda r: r["img_s"])
    if not done:
        return measured[0]
    return {**done[(len(done) - 1) // 2], "img_s_rounds": [r["img_s"] for r in done]}


def machine():
    cpu = "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    import mindspore as ms

    return {"date": datetime.datetime.now().isoformat(timespec="minutes"), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(), "mindspore": ms.__version__,
            "onednn_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "AVX2 (set by src/context.py)"),
            "kernel_threads": os.environ.get("BIMLP_KERNEL_THREADS", "one per core"),
            "load_start": os.getloadavg()[0]}


def baseline(row):
    """What a row's speed is compared with: eval, the upstream-style network; training, the same
    network on MindSpore's own operators (fast, or float for the float twin)."""
    if row["kind"] == "eval":
        return "upstream"
    return "float" if row["path"].startswith("float") else "fast"


def speedup(row, rows, path=None):
    """This row's img/s over the `path` (default: its baseline) row's for the same model, batch and kind."""
    for other in rows:
        if (other["kind"], other.get("model"), other["batch"], other.get("path")) == \
                (row["kind"], row.get("model"), row["batch"], path or baseline(row)) and "img_s" in other:
            return row["img_s"] / other["img_s"]
    return None


def fmt(value, spec):
    return "–" if value is None else format(value, spec)


def markdown(meta, rows):
    lines = [f"BiMLP CPU benchmark, {meta['date']}: {meta['cpu']}, {meta['cores']} cores, "
             f"MindSpore {meta['mindspore']}, ONEDNN_MAX_CPU_ISA={meta['onednn_isa']}, GRAPH mode, "
             f"fused kernels' threads: {meta.get('kernel_threads', 'one per core')}, "
             f"load average {meta['load_start']:.1f} at start, {meta['load_end']:.1f} at end"
             + (f"; each config's median of {meta['rounds']} rounds, run round-robin." if meta["rounds"] > 1 else "."),
             ""]
    for kind, title in (("eval", "Eval forward, random inputs"),
                        ("train", "Train step (forward + backward + AdamWeightDecay)")):
        chosen = [r for r in rows if r["kind"] == kind]
        if not chosen:
            continue
        lines += [f"**{title}**", "",
                  f"| model | input | batch | path | img/s | x {'upstream' if kind == 'eval' else 'MindSpore ops'} "
                  "| x fused_nocache_1thread | CPU s/step | peak RSS GB | GB/img | compile s | load |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in chosen:
            ok = "img_s" in r
            lines.append(
                f"| {r['model']} | {r['size']}x{r['size']} | {r['batch']} | {r['path']} | "
                + (f"{r['img_s']:.2f} | {fmt(speedup(r, rows), '.2f')} | "
                   f"{fmt(speedup(r, rows, 'fused_nocache_1thread'), '.2f')} | {fmt(r.get('cpu_s'), '.3f')} | "
                   f"{r['peak_rss_gb']:.2f} | "
                   f"{r['peak_rss_gb'] / r['batch']:.3f} | {r['compile_s']:.0f} | {r['load_end']:.1f} |" if ok
                   else f"{r['error']} | | | | | | | |"))
        lines.append("")
    for r in rows:
        if r["kind"] == "data":
            lines.append(f"**Data pipeline** (src/dataset.py, decode + resize 256 + crop 224 + normalize, "
                         f"{r['images']} JPEGs of 500x375, batch {r['batch']}): "
                         + (f"{r['img_s']:.0f} img/s, peak RSS {r['peak_rss_gb']:.2f} GB."
                            if "img_s" in r else r["error"]))
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    meta = machine()
    meta["rounds"] = args.rounds
    chosen = configs(args)
    results = [[] for _ in chosen]
    for round_number in range(1, args.rounds + 1):
        for cfg, measured in zip(chosen, results):
            print(f"running {cfg}" + (f", round {round_number}/{args.rounds}" if args.rounds > 1 else ""),
                  file=sys.stderr, flush=True)
            measured.append(run_config(cfg, args.max_gb))
            print(f"  -> {measured[-1]}", file=sys.stderr, flush=True)
    rows = [{**cfg, **median_round(measured)} for cfg, measured in zip(chosen, results)]
    meta["load_end"] = os.getloadavg()[0]
    write_text(args.json, json.dumps({"meta": meta, "results": rows}, indent=1))
    print(markdown(meta, rows))
    print(f"\nresults written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
