"""Fused CPU kernels for BiMLP inference, as MindSpore "aot" custom operators.

MindSpore 2.10 on CPU runs every element-wise operator as its own pass over memory,
and a BiMLP forward is mostly such chains (bias, batch norm, add, PReLU, bias,
binarize). `src/fused_cpu.cc` does each chain in one pass with the same float32
operations in the same order, so logits stay bit-identical. The library is compiled
with the system C++ compiler on first use and cached; without a compiler the
network simply runs its unfused operators.
"""
import hashlib
import os
import platform
import shutil
import subprocess
import warnings

from mindspore import nn, ops

from src.context import UserError, cache_dir
from src.files import atomic_write

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fused_cpu.cc")
# Built for this CPU's vector units; no -ffast-math and no contraction into fused
# multiply-adds, which would change rounding. -fno-trapping-math only lets GCC vectorize
# min/max chains (floating-point exception flags are not observed); values do not change.
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math", "-shared", "-fPIC"]

_library = {}


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return platform.processor()


def library_path():
    """The compiled kernel library, built on first call; None if no C++ compiler works."""
    if "path" in _library:
        return _library["path"]
    _library["path"] = None
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        warnings.warn("no C++ compiler found (install g++): BiMLP runs without its fused CPU kernels")
        return None
    with open(SOURCE, "rb") as f:
        # -march=native: the cache (maybe a shared home directory) holds one build per CPU model.
        key = f.read() + " ".join([compiler, *FLAGS, _cpu_model()]).encode()
    digest = hashlib.sha1(key).hexdigest()[:12]
    target = os.path.join(cache_dir(), f"fused_cpu_{digest}.so")
    if not os.path.isfile(target):
        error = _compile(compiler, target)
        if error is not None:
            warnings.warn(f"compiling {SOURCE} with {compiler} failed, BiMLP runs without its fused CPU "
                          f"kernels:\n{error}")
            return None
    _library["path"] = target
    return target


class CompileError(Exception):
    pass


def _compile(compiler, target):
    """Build the library at target; the error text if that fails, else None."""

    def build(tmp):
        result = subprocess.run([compiler, *FLAGS, "-o", tmp, SOURCE], capture_output=True, text=True)
        if result.returncode:
            raise CompileError(result.stderr.strip())

    try:
        atomic_write(target, build, suffix=".so")  # a concurrent process sees no library or the whole one
        return None
    except (CompileError, OSError, UserError) as err:  # OSError: no such compiler; UserError: unwritable cache
        return str(err)


def available():
    """True when the fused kernels can run: MindSpore runs on CPU and the library builds."""
    import mindspore as ms

    return ms.get_context("device_target") == "CPU" and library_path() is not None


def _same_shape(*shapes):
    return shapes[0]


def _same_dtype(*dtypes):
    return dtypes[0]


def _halved_map(*shapes):
    n, c, h, w = shapes[0]
    return n, c, (h + 1) // 2, (w + 1) // 2


def _same_shape_twice(*shapes):
    return shapes[0], shapes[0]


def _dtype_twice(*dtypes):
    return dtypes[0], dtypes[0]


def _kernel(name, out_shape=_same_shape, out_dtype=_same_dtype):
    return ops.Custom(f"{library_path()}:{name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot")


class Kernels(nn.Cell):
    """The fused operators (formulas in fused_cpu.cc), one instance shared by the network's cells.

    Per-channel parameters are passed as stored ((C,) or (1, C, 1, 1): the same memory).
    """

    def __init__(self):
        super().__init__()
        self.move_binarize = _kernel("MoveBinarize")
        self.bn_act = _kernel("BnAct")
        self.bn_act_moved = _kernel("BnActMoved")
        self.bn_act_group_mean = _kernel("BnActGroupMean")
        self.bn_act_tiled_binarize = _kernel("BnActTiledBinarize", _same_shape_twice, _dtype_twice)
        self.line_branch = _kernel("LineBranch")
        self.phase_branch = _kernel("PhaseBranch")
        self.sign_scale = _kernel("SignScale")
        self.sum4 = _kernel("Sum4")
        self.mix3 = _kernel("Mix3")
        self.wave_mix = _kernel("WaveMix")
        self.pool4 = _kernel("Pool4", _halved_map)
        self.group_norm = _kernel("GroupNorm1")


def bn_act_params(bn, act):
    """The parameters BnAct* kernels take for bn followed by the RPReLU act, in order."""
    return (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance, act.move1.bias, act.act.w, act.move2.bias)
