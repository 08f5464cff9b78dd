"""Per-kernel A/B timing of the training kernels: this checkout's sources against a git revision's.

    python scripts/bench_kernels.py [--baseline HEAD] [--only Grad] [--batch 128] [--rounds 5]

Builds both kernel libraries with the flags of src/fused.py (the baseline from `git show
<revision>:src/...`), then calls each kernel through its C entry point on random inputs of
BiMLP_T14's stage-1 shapes (28x28 images: 14x14 maps, 32 channels), alternating the two
libraries round by round. Prints each library's best time per call, their ratio, and whether the
outputs are the same bits, which a change meant only for speed must keep. No MindSpore: the
kernels alone, so a change of a few percent in one kernel shows above the noise of a whole step.
"""
import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def cases(batch):
    """name -> (kernel, inputs, output shapes) for BiMLP_T14's first stage."""
    rng = np.random.default_rng(0)

    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def positive(*shape):  # a variance or a scale
        return np.abs(normal(*shape)) + 0.5

    def signs(*shape):  # a binarized activation
        return np.sign(normal(*shape))

    b, c, hidden, side = batch, 32, 128, 14
    x, wide = (b, c, side, side), (b, 2 * c, side, side)
    h = (b, hidden, side, side)

    def bn_inputs(channels, shortcut=None, next_bias=False):
        a = normal(b, channels, side, side)
        rprelu = [positive(channels), normal(channels), normal(channels), positive(channels), normal(channels)]
        return [a] + ([shortcut] if shortcut is not None else []) + rprelu + ([normal(channels)] if next_bias else [])

    def bn_grad(name, channels, shortcut=None, next_bias=False):
        inputs = bn_inputs(channels, shortcut, next_bias) + [normal(channels), positive(channels)]
        inputs += [normal(b, channels, side, side)] + ([normal(b, channels, side, side)] if next_bias else [])
        grads = [inputs[0].shape] + ([shortcut.shape] if shortcut is not None else [])
        return name, inputs, grads + [(channels,)] * (5 + next_bias)

    return {
        "BnActTrain": ("BnActTrain", bn_inputs(c), [x, (c,), (c,)]),
        "BnActAddTrain": ("BnActAddTrain", bn_inputs(c, normal(*x)), [x, (c,), (c,)]),
        "BnActAddBinarizeTrain (hidden)": ("BnActAddBinarizeTrain", bn_inputs(hidden, normal(*h), True),
                                           [h, (hidden,), (hidden,), h]),
        "BnActGroupMeanTrain": ("BnActGroupMeanTrain", bn_inputs(c, normal(b, 4 * c, side, side)), [x, (c,), (c,)]),
        "BnActTrainGrad": bn_grad("BnActTrainGrad", c),
        "BnActAddTrainGrad": bn_grad("BnActAddTrainGrad", c, normal(*x)),
        "BnActAddBinarizeTrainGrad (hidden)": bn_grad("BnActAddBinarizeTrainGrad", hidden, normal(*h), True),
        "BnActGroupMeanTrainGrad": bn_grad("BnActGroupMeanTrainGrad", c, normal(b, 4 * c, side, side)),
        "MoveBinarizeTrain": ("MoveBinarizeTrain", [normal(*x), normal(c)], [x, x]),
        "MoveBinarizeTrainGrad": ("MoveBinarizeTrainGrad", [normal(*x), normal(*x), normal(*x)], [x, (c,)]),
        "PhaseMoveTrain": ("PhaseMoveTrain", [normal(*x), normal(*x), normal(2 * c)], [wide, x, x, x]),
        "PhaseMoveTrainGrad": ("PhaseMoveTrainGrad", [normal(*x), normal(*x), normal(*x), normal(2 * c),
                                                      normal(*wide), normal(*x)], [x, x, (2 * c,)]),
        "WaveMixTrain": ("WaveMixTrain", [normal(*x), normal(*x), normal(*x), normal(*x), normal(2)], [x]),
        "WaveMixTrainGrad": ("WaveMixTrainGrad", [normal(*x), normal(*x), normal(*x), normal(2), normal(*x)],
                             [x, x, x, (2,)]),
        "Mix3Train": ("Mix3Train", [normal(*x), normal(*x), normal(*x), normal(*x), normal(3, b, c)], [x]),
        "Mix3TrainGrad": ("Mix3TrainGrad", [normal(*x), normal(*x), normal(*x), normal(3, b, c), normal(*x)],
                          [x, x, x, (3, b, c)]),
        "PointwiseConvTrain (fc1)": ("PointwiseConvTrain", [signs(*x), normal(hidden, c, 1, 1)], [h]),
        "PointwiseConvTrainInputGrad (fc1)": ("PointwiseConvTrainInputGrad", [normal(*h), normal(hidden, c, 1, 1)],
                                              [x]),
        "PointwiseConvTrainFilterGrad (fc1)": ("PointwiseConvTrainFilterGrad", [normal(*h), signs(*x)],
                                               [(hidden, c, 1, 1)]),
        "LineConv (1x7)": ("LineConv", [normal(*wide), normal(c, 2, 1, 7)], [x]),
        "LineConvGrad (1x7)": ("LineConvGrad", [normal(*wide), normal(c, 2, 1, 7), normal(*x)],
                               [wide, (c, 2, 1, 7)]),
        "LineConvGrad (7x1)": ("LineConvGrad", [normal(*wide), normal(c, 2, 7, 1), normal(*x)],
                               [wide, (c, 2, 7, 1)]),
        "Pool4Train": ("Pool4Train", [normal(*x)], [(b, c, 7, 7), (b, c, 4, 49)]),
    }


def build(source_dir, target):
    """Compile the kernel library from source_dir's copies of src/fused.py's sources."""
    from src import fused
    from src.context import UserError

    compiler = os.environ.get("CXX") or "g++"
    sources = [os.path.join(source_dir, os.path.basename(path)) for path in fused.SOURCES]
    try:
        result = subprocess.run([compiler, *fused.FLAGS, "-o", target, *sources], capture_output=True, text=True)
    except OSError as err:
        raise UserError(f"cannot run the C++ compiler {compiler}: {err}") from err
    if result.returncode:
        raise UserError(f"compiling the kernels of {source_dir} failed:\n{result.stderr.strip()}")


def export_revision(revision, folder):
    """Write src/'s kernel sources and headers at a git revision into folder."""
    from src import fused
    from src.context import UserError

    for path in fused.SOURCES + fused.HEADERS:
        name = os.path.basename(path)
        shown = subprocess.run(["git", "-C", ROOT, "show", f"{revision}:src/{name}"], capture_output=True)
        if shown.returncode:
            raise UserError(f"--baseline {revision}: no src/{name} there ({shown.stderr.decode().strip()})")
        with open(os.path.join(folder, name), "wb") as f:
            f.write(shown.stdout)


def caller(library, kernel, inputs, output_shapes):
    """A no-argument call of the kernel on inputs, and its outputs (fresh arrays)."""
    arrays = [np.ascontiguousarray(a) for a in inputs] + [np.zeros(s, np.float32) for s in output_shapes]
    if kernel == "Pool4Train":  # its argmax output is int32
        arrays[-1] = np.zeros(output_shapes[-1], np.int32)
    count = len(arrays)
    params = (ctypes.c_void_p * count)(*[a.ctypes.data for a in arrays])
    shape_arrays = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in arrays]
    shapes = (ctypes.POINTER(ctypes.c_int64) * count)(
        *[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64)) for s in shape_arrays])
    ndims = (ctypes.c_int * count)(*[a.ndim for a in arrays])
    function = getattr(library, kernel)

    def call():
        function(count, params, ndims, shapes, None, None, None)

    call.keep = (arrays, shape_arrays)  # the buffers the call points into
    return call, arrays[len(inputs):]


def seconds_per_call(call, seconds):
    """The mean time of calls repeated for `seconds`."""
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        call()
        calls += 1
    return (time.perf_counter() - start) / calls


def compare(baseline_src, current_src, selected, rounds, seconds, folder):
    """Yields (name, baseline seconds per call, current seconds per call, same bits) per selected case,
    for the libraries built from two folders of kernel sources (into folder)."""
    paths = [os.path.join(folder, "baseline.so"), os.path.join(folder, "current.so")]
    build(baseline_src, paths[0])
    build(current_src, paths[1])
    libraries = [ctypes.CDLL(path) for path in paths]
    for name, (kernel, inputs, output_shapes) in selected.items():
        calls = [caller(library, kernel, inputs, output_shapes) for library in libraries]
        for call, _ in calls:
            call()
        same = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(calls[0][1], calls[1][1]))
        best = [float("inf")] * 2
        for _ in range(rounds):
            best = [min(t, seconds_per_call(call, seconds)) for t, (call, _) in zip(best, calls)]
        yield name, best[0], best[1], same


def main():
    from src.context import UserError, run_cli

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare against (default: HEAD)")
    parser.add_argument("--only", default="", help="only the kernels whose name contains this text")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.2, help="timed per library and round")
    args = parser.parse_args()

    def run():
        if args.batch < 1 or args.rounds < 1 or args.seconds <= 0:
            raise UserError("--batch and --rounds must be at least 1, --seconds above 0")
        selected = {name: case for name, case in cases(args.batch).items() if args.only in name}
        if not selected:
            raise UserError(f"no kernel's name contains {args.only!r}")
        with tempfile.TemporaryDirectory() as folder:
            export_revision(args.baseline, folder)
            print(f"{'kernel (batch ' + str(args.batch) + ')':40s} {args.baseline + ' ms':>12s} "
                  f"{'this ms':>10s} {'this/base':>9s}  same bits", flush=True)
            rows = compare(folder, os.path.join(ROOT, "src"), selected, args.rounds, args.seconds, folder)
            for name, baseline, current, same in rows:
                print(f"{name:40s} {baseline * 1e3:12.3f} {current * 1e3:10.3f} {current / baseline:9.3f}  "
                      f"{'yes' if same else 'NO'}", flush=True)

    run_cli(run)


if __name__ == "__main__":
    main()
