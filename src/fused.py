"""Fused CPU kernels for BiMLP inference, as MindSpore "aot" custom operators.

MindSpore 2.10 on CPU runs every element-wise operator as its own pass over memory,
and a BiMLP forward is mostly such chains (bias, batch norm, add, PReLU, bias,
binarize). `src/fused_cpu.cc` does each chain in one pass with the same float32
operations in the same order, so logits stay bit-identical; `src/xnor_cpu.cc` has the
xnor engine's binary convolutions on packed bits. The kernels split their work across
the cores (`src/cpu_threads.h`). One library is compiled from these sources with the
system C++ compiler on first use and cached; without a compiler the network simply runs
its unfused operators.
"""
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings

from mindspore import dtype as mstype
from mindspore import nn, ops

from src.context import cache_dir

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(HERE, name) for name in ("fused_cpu.cc", "xnor_cpu.cc")]
HEADERS = [os.path.join(HERE, "cpu_threads.h")]
# Built for this CPU's vector units; no -ffast-math and no contraction into fused
# multiply-adds, which would change rounding. -fno-trapping-math only lets GCC vectorize
# min/max chains (floating-point exception flags are not observed); values do not change.
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math", "-pthread", "-shared", "-fPIC"]

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
    key = b""
    for path in SOURCES + HEADERS:
        with open(path, "rb") as f:
            key += f.read()
    # -march=native: the cache (maybe a shared home directory) holds one build per CPU model.
    key += " ".join([compiler, *FLAGS, _cpu_model()]).encode()
    digest = hashlib.sha1(key).hexdigest()[:12]
    target = os.path.join(cache_dir(), f"fused_cpu_{digest}.so")
    if not os.path.isfile(target):
        error = _compile(compiler, target)
        if error is not None:
            warnings.warn(f"compiling {' '.join(SOURCES)} with {compiler} failed, BiMLP runs without its fused CPU "
                          f"kernels:\n{error}")
            return None
    _library["path"] = target
    return target


def _compile(compiler, target):
    """Build the library at target; the error text if that fails, else None."""
    temp = None
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, temp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(target))
        os.close(fd)
        result = subprocess.run([compiler, *FLAGS, "-o", temp, *SOURCES], capture_output=True, text=True)
        if result.returncode:
            return result.stderr.strip()
        os.replace(temp, target)  # atomic: a concurrent process sees no library or the whole one
        temp = None
        return None
    except OSError as err:  # no such compiler, or an unwritable cache directory
        return str(err)
    finally:
        if temp is not None and os.path.exists(temp):
            os.unlink(temp)


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


def _one_value(*shapes):
    return (1,)


def _float32(*dtypes):
    return mstype.float32


def _xnor_conv_shape(x, bias, bits, scale):
    return x[0], bits[0], x[2], x[3]


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
        self.weights_unchanged = _kernel("WeightsUnchanged", _one_value, _float32)
        self.xnor_conv1x1 = _kernel("XnorConv1x1", _xnor_conv_shape, _same_dtype)


def bn_act_params(bn, act):
    """The parameters BnAct* kernels take for bn followed by the RPReLU act, in order."""
    return (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance, act.move1.bias, act.act.w, act.move2.bias)
