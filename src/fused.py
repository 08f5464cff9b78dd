"""Fused CPU kernels for BiMLP, as MindSpore "aot" custom operators: inference and training.

MindSpore 2.10 on CPU runs every element-wise operator as its own pass over memory,
and a BiMLP forward is mostly such chains (bias, batch norm, add, PReLU, bias,
binarize). `src/fused_cpu.cc` does each chain in one pass with the same float32
operations in the same order, so logits stay bit-identical; `src/xnor_cpu.cc` has the
xnor engine's binary convolutions on packed bits. The kernels split their work across
the cores (`src/cpu_threads.h`). One library is compiled from these sources with the
system C++ compiler on first use and cached; without a compiler the network simply runs
its unfused operators.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import warnings

import mindspore as ms
from mindspore import dtype as mstype
from mindspore import nn, ops

from src.context import UserError, cache_dir
from src.files import atomic_write

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(HERE, name) for name in ("fused_cpu.cc", "fused_train.cc", "xnor_cpu.cc")]
HEADERS = [os.path.join(HERE, name) for name in ("fused_common.h", "cpu_threads.h", "pointwise_gemm.h")]
# Built for this CPU's vector units; no -ffast-math and no contraction into fused
# multiply-adds, which would change rounding. -fno-trapping-math only lets GCC vectorize
# min/max chains (floating-point exception flags are not observed); values do not change.
FLAGS = ["-std=c++17", "-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math", "-shared", "-fPIC",
         "-pthread"]

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
    key = b"".join(_read(source) for source in SOURCES + HEADERS)
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


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class CompileError(Exception):
    pass


def _compile(compiler, target):
    """Build the library at target; the error text if that fails, else None."""

    def build(tmp):
        result = subprocess.run([compiler, *FLAGS, "-o", tmp, *SOURCES], capture_output=True, text=True)
        if result.returncode:
            raise CompileError(result.stderr.strip())

    try:
        atomic_write(target, build, suffix=".so")  # a concurrent process sees no library or the whole one
        return None
    except (CompileError, OSError, UserError) as err:  # OSError: no such compiler; UserError: unwritable cache
        return str(err)


def available():
    """True when the fused kernels can run: MindSpore runs on CPU and the library builds."""
    return ms.get_context("device_target") == "CPU" and library_path() is not None


def kernel_calls():
    """How many inference and training kernels have run in this process (the path taken)."""
    library = ctypes.CDLL(library_path())
    library.BimlpKernelCalls.restype = ctypes.c_int64
    return {"inference": library.BimlpKernelCalls(0), "training": library.BimlpKernelCalls(1)}


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

    inference = True

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


def _kernel_with_grad(name, out_shape, out_dtype, bprop):
    return ops.Custom(f"{library_path()}:{name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot",
                      bprop=bprop)


def _floats(count):
    return lambda *dtypes: (dtypes[0],) * count


def _channels_of(*shapes):
    return (shapes[0][1],)


def _bn_act_outputs(gamma):
    """y, mean and variance of a batch-norm chain whose gamma is input `gamma`: the input's shape with
    gamma's channels (a tiled input has fewer)."""
    def shapes_of(*shapes):
        n, _, h, w = shapes[0]
        channels = shapes[gamma]
        return (n, channels[0], h, w), channels, channels
    return shapes_of


def _bn_act_grads(inputs, gamma):
    """The gradients of a batch-norm chain: of its first `inputs` inputs, then five per channel."""
    return lambda *shapes: tuple(shapes[:inputs]) + (shapes[gamma],) * 5


def _bn_act_next_outputs(*shapes):
    """y, mean, variance of a batch-norm chain with a shortcut, then the next layer's input (y's shape)."""
    outputs = _bn_act_outputs(2)(*shapes)
    return outputs + (outputs[0],)


def _phase_outputs(*shapes):
    n, c, h, w = shapes[0]
    return (n, 2 * c, h, w), shapes[0], shapes[0], shapes[0]


def _pool4_outputs(*shapes):
    n, c, h, w = shapes[0]
    return (n, c, (h + 1) // 2, (w + 1) // 2), (n, c, 4, ((h + 1) // 2) * ((w + 1) // 2))


class TrainKernels(nn.Cell):
    """Fused training operators with their hand-written gradients (fused_train.cc).

    Each forward is an aot Custom operator whose `bprop` calls the matching *Grad operator,
    so MindSpore's autodiff runs two C++ passes where the unfused chain runs 10-40 operators.
    """

    inference = False

    def __init__(self):
        super().__init__()
        bn_act_grad = _kernel("BnActTrainGrad", _bn_act_grads(1, 1), _floats(6))
        bn_act_add_grad = _kernel("BnActAddTrainGrad", _bn_act_grads(2, 2), _floats(7))
        bn_act_group_mean_grad = _kernel("BnActGroupMeanTrainGrad", _bn_act_grads(2, 2), _floats(7))
        move_grad = _kernel("MoveBinarizeTrainGrad", lambda *s: (s[0], _channels_of(*s)), _floats(2))
        phase_grad = _kernel("PhaseMoveTrainGrad", lambda *s: (s[0], s[0], (2 * s[0][1],)), _floats(3))
        pool4_grad = _kernel("Pool4TrainGrad", lambda *s: s[0], _same_dtype)
        wave_mix_grad = _kernel("WaveMixTrainGrad", lambda *s: (s[0], s[0], s[0], s[3]), _floats(4))
        mix3_grad = _kernel("Mix3TrainGrad", lambda *s: (s[0], s[0], s[0], s[3]), _floats(4))

        def bn_act_bprop(a, gamma, beta, b1, w, b2, out, dout):
            da, dgamma, dbeta, db1, dw, db2 = bn_act_grad(a, gamma, beta, b1, w, b2, out[1], out[2], dout[0])
            return da, dgamma, dbeta, db1.reshape(b1.shape), dw.reshape(w.shape), db2.reshape(b2.shape)

        def shortcut_bprop(grad):
            def bprop(a, s, gamma, beta, b1, w, b2, out, dout):
                da, ds, dgamma, dbeta, db1, dw, db2 = grad(a, s, gamma, beta, b1, w, b2, out[1], out[2], dout[0])
                return da, ds, dgamma, dbeta, db1.reshape(b1.shape), dw.reshape(w.shape), db2.reshape(b2.shape)
            return bprop

        def next_input_kernel(name):
            """A batch-norm chain with a shortcut that also computes the next layer's input."""
            grad = _kernel(f"{name}Grad", lambda *s: _bn_act_grads(2, 2)(*s) + (s[2],), _floats(8))

            def bprop(a, s, gamma, beta, b1, w, b2, next_bias, out, dout):
                da, ds, dgamma, dbeta, db1, dw, db2, dnext = grad(a, s, gamma, beta, b1, w, b2, next_bias, out[1],
                                                                  out[2], dout[0], dout[3])
                return (da, ds, dgamma, dbeta, db1.reshape(b1.shape), dw.reshape(w.shape), db2.reshape(b2.shape),
                        dnext.reshape(next_bias.shape))
            return _kernel_with_grad(name, _bn_act_next_outputs, _floats(4), bprop)

        def move_bprop(x, bias, out, dout):
            dx, dbias = move_grad(out[0], dout[0], dout[1])
            return dx, dbias.reshape(bias.shape)

        def phase_bprop(x, theta, bias, out, dout):
            dx, dtheta, dbias = phase_grad(x, out[2], out[3], bias, dout[0], dout[1])
            return dx, dtheta, dbias.reshape(bias.shape)

        def pool4_bprop(x, out, dout):
            return (pool4_grad(x, out[1], dout[0]),)

        def wave_mix_bprop(x, a, b, c, weight, out, dout):
            return (dout,) + wave_mix_grad(a, b, c, weight, dout)

        def mix3_bprop(h, w, c, u, a, out, dout):
            dh, dw, dc, da = mix3_grad(h, w, c, a, dout)
            return dh, dw, dc, dout, da

        self.bn_act = _kernel_with_grad("BnActTrain", _bn_act_outputs(1), _floats(3), bn_act_bprop)
        self.bn_act_add = _kernel_with_grad("BnActAddTrain", _bn_act_outputs(2), _floats(3),
                                            shortcut_bprop(bn_act_add_grad))
        self.bn_act_group_mean = _kernel_with_grad("BnActGroupMeanTrain", _bn_act_outputs(2), _floats(3),
                                                   shortcut_bprop(bn_act_group_mean_grad))
        self.bn_act_add_move = next_input_kernel("BnActAddMoveTrain")
        self.bn_act_add_binarize = next_input_kernel("BnActAddBinarizeTrain")
        self.move_binarize = _kernel_with_grad("MoveBinarizeTrain", _same_shape_twice, _dtype_twice, move_bprop)
        self.phase_move = _kernel_with_grad("PhaseMoveTrain", _phase_outputs, _floats(4), phase_bprop)
        self.pool4 = _kernel_with_grad("Pool4Train", _pool4_outputs, lambda *d: (d[0], ms.int32), pool4_bprop)
        self.wave_mix = _kernel_with_grad("WaveMixTrain", _same_shape, _same_dtype, wave_mix_bprop)
        self.mix3 = _kernel_with_grad("Mix3Train", _same_shape, _same_dtype, mix3_bprop)
        self.sign_scale = _kernel("SignScale")
        self.line_conv = _kernel("LineConv", lambda x, w: (x[0], w[0], x[2], x[3]))
        self.line_conv_grad = _kernel("LineConvGrad", lambda *s: (s[0], s[1]), _floats(2))
        self.pointwise_conv = _kernel("PointwiseConvTrain", lambda x, w: (x[0], w[0], x[2], x[3]))
        self.pointwise_conv_input_grad = _kernel("PointwiseConvTrainInputGrad",
                                                 lambda dy, w: (dy[0], w[1], dy[2], dy[3]))
        self.pointwise_conv_filter_grad = _kernel("PointwiseConvTrainFilterGrad",
                                                  lambda dy, x: (dy[1], x[1], 1, 1))


def _update_moving_statistics(bn, mean, var, count):
    """BatchNorm2d's moving averages from the kernel's batch statistics, as MindSpore updates
    them in training: the unbiased variance, weight `bn.momentum` for the batch."""
    momentum = bn.momentum
    unbiased = var * (count / max(count - 1, 1))
    ops.assign(bn.moving_mean, bn.moving_mean * (1.0 - momentum) + ops.stop_gradient(mean) * momentum)
    ops.assign(bn.moving_variance, bn.moving_variance * (1.0 - momentum) + ops.stop_gradient(unbiased) * momentum)


# The chains below are what the network's cells compute around their convolutions. Each
# takes `kernels`: None (MindSpore's operators), the TrainKernels of a network in training or the
# inference Kernels of a network in eval mode, and the cells whose parameters it uses, so parameter
# names and checkpoints are the same whichever runs.

def inference(kernels):
    """True for the inference Kernels (eval mode), False for TrainKernels or None."""
    return kernels is not None and kernels.inference


def training(kernels):
    """True for the TrainKernels (training mode), False for the inference Kernels or None."""
    return kernels is not None and not kernels.inference


def norm_act(kernels, bn, act, a, shortcut=None):
    """act(bn(a) + shortcut): batch norm (training mode with kernels), optional shortcut, RPReLU."""
    if inference(kernels) and shortcut is None:
        return kernels.bn_act(a, *bn_act_params(bn, act))
    if not training(kernels):
        z = bn(a)
        return act(z if shortcut is None else z + shortcut)
    if shortcut is None:
        return _train_norm_act(kernels.bn_act, bn, act, a)
    return _train_norm_act(kernels.bn_act_add, bn, act, a, shortcut)


def _train_norm_act(kernel, bn, act, *inputs):
    return _train_norm_act_outputs(kernel, bn, act, inputs)[0]


def _train_norm_act_outputs(kernel, bn, act, inputs, extra=()):
    """The kernel's outputs (y, mean, var[, q]), the moving statistics updated from mean and var."""
    outputs = kernel(*inputs, bn.gamma, bn.beta, act.move1.bias, act.act.w, act.move2.bias, *extra)
    y = outputs[0]
    _update_moving_statistics(bn, outputs[1], outputs[2], y.shape[0] * y.shape[2] * y.shape[3])
    return outputs


def norm_act_fc(kernels, bn, act, move, conv, a, shortcut):
    """(h, conv(move(h))) for h = act(bn(a) + shortcut); in training the kernel computes move(h), binarized
    for a binary conv, where it computes h, and takes its gradient into h's."""
    if not training(kernels) or not (conv.binary_input or conv.float_input):
        h = norm_act(kernels, bn, act, a, shortcut)
        return h, binary_fc(kernels, move, conv, h)
    kernel = kernels.bn_act_add_binarize if conv.binary_input else kernels.bn_act_add_move
    outputs = _train_norm_act_outputs(kernel, bn, act, (a, shortcut), (move.bias,))
    return outputs[0], conv.convolve(outputs[3])


def norm_act_of_shortcut(kernels, bn, act, shortcut, x):
    """act(bn(shortcut(x))) for a uni-shortcut; in training the kernel reads a tiling one's input
    copies in place (the tiled tensor is never stored, its gradient summed in the kernel)."""
    if not training(kernels) or not shortcut.repeats:
        return norm_act(kernels, bn, act, shortcut(x))
    return _train_norm_act(kernels.bn_act, bn, act, x)


def norm_act_plus_shortcut(kernels, bn, act, shortcut, a, x):
    """act(bn(a) + shortcut(x)) for a uni-shortcut; in training the kernel averages an averaging
    one's channel groups itself. (The reweighting MLP's shortcuts go the other way, average then
    tile, on pooled 1x1 maps where MindSpore's operators cost little.)"""
    if not training(kernels) or shortcut.repeats:
        return norm_act(kernels, bn, act, a, shortcut(x))
    return _train_norm_act(kernels.bn_act_group_mean, bn, act, a, x)


def group_norm(kernels, norm, x):
    """GroupNorm(1, C) of x; one kernel in eval mode."""
    if inference(kernels):
        return kernels.group_norm(x, norm.gamma, norm.beta)
    return norm(x)


def move_conv(kernels, move, conv, x):
    """(t, conv(t)) for t = move(x); conv quantizes its input (the kernel binarizes t itself)."""
    if not training(kernels) or not conv.binary_input:
        t = move(x)
        return t, conv(t)
    t, q = kernels.move_binarize(x, move.bias)
    return t, conv.convolve(q)


def binary_fc(kernels, move, conv, x):
    """conv(move(x)), where the moved input itself is not needed (move_conv gives both)."""
    if not training(kernels) or not conv.binary_input:
        return conv(move(x))
    return conv.convolve(kernels.move_binarize(x, move.bias)[1])


def residual_fc(kernels, move, conv, bn, act, x):
    """act(bn(conv(t)) + t) for t = move(x): a binary layer with its shortcut."""
    if inference(kernels):
        params = bn_act_params(bn, act)
        if conv.group > 1:  # the 1x7/7x1 depthwise layers: the whole branch is one kernel
            return kernels.line_branch(x, move.bias, conv.fused_weight(kernels), *params)
        return kernels.bn_act_moved(conv.conv_binarized(x, move.bias, kernels), x, move.bias, *params)
    t, a = move_conv(kernels, move, conv, x)
    return norm_act(kernels, bn, act, a, t)


def phase_conv(kernels, move, conv, pair_mean, x, theta):
    """(pair_mean(p), conv(p)) for p = move(concat(x cos(theta), x sin(theta))); conv quantizes p."""
    if not training(kernels) or not conv.binary_input:
        p = move(ops.concat((x * ops.cos(theta), x * ops.sin(theta)), axis=1))
        return pair_mean(p), conv(p)
    q, m, _, _ = kernels.phase_move(x, theta, move.bias)
    return m, conv.convolve(q)


def phase_branch(kernels, move, conv, pair_mean, bn, act, x, theta):
    """act(bn(conv(p)) + pair_mean(p)) for PATM's phase input p (phase_conv)."""
    if inference(kernels):
        return kernels.phase_branch(x, theta, move.bias, conv.fused_weight(kernels), *bn_act_params(bn, act))
    m, a = phase_conv(kernels, move, conv, pair_mean, x, theta)
    return norm_act(kernels, bn, act, a, m)


def pool4(kernels, pools, x):
    """The mean of the four max-pools, summed in order."""
    if kernels is None:
        return (((pools[0](x) + pools[1](x)) + pools[2](x)) + pools[3](x)) / 4.0
    if kernels.inference:
        return kernels.pool4(x)
    return kernels.pool4(x)[0]


def sum4(kernels, h, w, c, u):
    """((h + w) + c) + u."""
    if inference(kernels):
        return kernels.sum4(h, w, c, u)
    return ((h + w) + c) + u


def channel_scale(x, scale):
    """x * scale for a scale of shape (1 or B, C, 1, 1), with the same products.

    MindSpore 2.10's CPU Mul broadcasting a (1, C, 1, 1) operand is 2x slower
    than a same-shape Mul and keeps a full-size workspace alive until the graph
    ends (1.3 GB per image over BiMLP_S); an explicit broadcast_to avoids both.
    """
    return x * ops.broadcast_to(scale, x.shape)


def mix3(kernels, fast, h, w, c, u, weights):
    """((h a0 + w a1) + c a2) + u for branch weights of shape (3, N, C), per sample and channel."""
    if kernels is not None:
        return kernels.mix3(h, w, c, u, weights)
    a = weights.reshape(3, weights.shape[1], weights.shape[2], 1, 1)
    if fast:
        return ((channel_scale(h, a[0]) + channel_scale(w, a[1])) + channel_scale(c, a[2])) + u
    return ((h * a[0] + w * a[1]) + c * a[2]) + u


def wave_mix(kernels, x, a, b, c, weight, drop_path):
    """x + drop_path((w0 b + w1 c) + (1 - w0 - w1) a), a kernel when no path is dropped (eval mode
    drops none)."""
    if kernels is not None and (kernels.inference or drop_path.keep == 1.0):
        return kernels.wave_mix(x, a, b, c, weight)
    w0, w1 = weight[0], weight[1]
    return x + drop_path((w0 * b + w1 * c) + (1 - w0 - w1) * a)
