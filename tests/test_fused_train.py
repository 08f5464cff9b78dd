"""The fused training kernels (src/fused_train.cc): their values and gradients are MindSpore's
autodiff of the operator chains they replace, and a network trains the same with them."""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from conftest import ROOT
from src import fused
from src.grouped_conv import GroupedLineConv
from src.quan_conv import PointwiseConv, QuanConv, XnorWeight
from src.wavemlp_20_3 import DropPath, LearnableBias, RPReLU, UniShortcut, create_model
from tests.test_fused import randomize

pytestmark = pytest.mark.skipif(fused.library_path() is None, reason="no C++ compiler for the fused kernels")

# Values where the quantizer and its straight-through gradient change: the rounding ties at
# +-0.5, the clipping edges at +-1 (where the STE still passes), zero, and just past them.
THRESHOLDS = np.array([-1.5, -1.0, -1.0 + 1e-7, -0.5, -0.5 + 1e-7, 0.0, 0.5, 0.5 - 1e-7, 1.0, 1.0 - 1e-7, 1.5],
                      np.float32)


@pytest.fixture(autouse=True)
def pynative_mode():
    ms.set_context(mode=ms.PYNATIVE_MODE)


def data(shape, seed, scale=1.5, thresholds=False):
    values = np.random.RandomState(seed).standard_normal(shape).astype(np.float32) * scale
    if thresholds:
        flat = values.reshape(-1)
        flat[: flat.size // 2] = np.resize(THRESHOLDS, flat.size // 2)
        np.random.RandomState(seed + 1).shuffle(flat)
    return Tensor(values)


class Weighted(nn.Cell):
    """sum_i(outputs_i * g_i) of chain(kernels, *inputs): its gradients are the chain's
    vector-Jacobian products with random cotangents g_i."""

    def __init__(self, chain, kernels, cells, cotangents):
        super().__init__()
        self.chain, self.kernels, self.parts = chain, kernels, nn.CellList(cells)
        self.cotangents = [Tensor(g) for g in cotangents]

    def construct(self, *inputs):
        outputs = self.chain(self.kernels, *self.parts, *inputs)
        if not isinstance(outputs, tuple):
            outputs = (outputs,)
        total = 0.0
        for out, g in zip(outputs, self.cotangents):
            total = total + (out * g).sum()
        return total


def outputs_and_gradients(chain, kernels, make_cells, inputs, output_shapes):
    """The chain's outputs and its gradients for every input and parameter, fresh cells each call."""
    cells = make_cells()
    rng = np.random.RandomState(99)
    cotangents = [rng.standard_normal(shape).astype(np.float32) for shape in output_shapes]
    net = Weighted(chain, kernels, cells, cotangents)
    net.set_train(True)
    params = net.trainable_params()
    outputs = chain(kernels, *cells, *inputs)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    _, (input_grads, param_grads) = ms.value_and_grad(net, tuple(range(len(inputs))), params)(*inputs)
    grads = {f"input {i}": g.asnumpy() for i, g in enumerate(input_grads)}
    grads.update({p.name: g.asnumpy() for p, g in zip(params, param_grads)})
    state = {p.name: p.asnumpy() for cell in cells for p in cell.get_parameters() if "moving" in p.name}
    return [o.asnumpy() for o in outputs], grads, state


def assert_close(got, expected, rel, what, floor=1e-6):
    """|got - expected| <= rel * max|expected| (sum-order differences only)."""
    scale = max(float(np.abs(expected).max()), floor)
    worst = float(np.abs(got - expected).max())
    assert worst <= rel * scale, f"{what}: max |diff| {worst:.3g} > {rel} x {scale:.3g}"


def check_chain(chain, make_cells, inputs, output_shapes, exact_outputs=()):
    before = fused.kernel_calls()["training"]
    got = outputs_and_gradients(chain, fused.TrainKernels(), make_cells, inputs, output_shapes)
    assert fused.kernel_calls()["training"] > before, "the kernels did not run"
    expected = outputs_and_gradients(chain, None, make_cells, inputs, output_shapes)
    for i, (g, e) in enumerate(zip(got[0], expected[0])):
        if i in exact_outputs:
            np.testing.assert_array_equal(g, e, err_msg=f"output {i}")
        else:
            assert_close(g, e, 1e-6, f"output {i}")
    assert got[1].keys() == expected[1].keys()
    for name in expected[1]:
        assert_close(got[1][name], expected[1][name], 1e-5, f"gradient of {name}")
    for name in expected[2]:
        assert_close(got[2][name], expected[2][name], 1e-6, name)


def bn_and_act(channels, seed):
    bn, act = nn.BatchNorm2d(channels, eps=1e-5, momentum=0.9), RPReLU(channels)
    randomize(bn, seed)
    randomize(act, seed + 1)
    return [bn, act]


@pytest.mark.parametrize("shortcut", [False, True])
@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (8, 6, 2, 2), (40, 3, 7, 7)])
def test_batch_norm_shortcut_and_rprelu(shortcut, shape):
    inputs = [data(shape, 1, 2.0)] + ([data(shape, 2)] if shortcut else [])
    check_chain(fused.norm_act, lambda: bn_and_act(shape[1], 3), inputs, [shape])


@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (40, 2, 2, 2)])
def test_batch_norm_of_a_tiling_shortcut(shape):
    """act(bn(tile(x))): the kernel reads the copies in place and sums their gradients."""
    channels = 4 * shape[1]
    check_chain(fused.norm_act_of_shortcut,
                lambda: bn_and_act(channels, 3) + [UniShortcut(shape[1], channels)], [data(shape, 1, 2.0)],
                [(shape[0], channels, *shape[2:])])


@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (40, 2, 2, 2)])
def test_batch_norm_plus_an_averaging_shortcut(shape):
    """act(bn(a) + mean of channel groups of h): the kernel averages the groups itself."""
    wide = (shape[0], 4 * shape[1], *shape[2:])
    check_chain(fused.norm_act_plus_shortcut, lambda: bn_and_act(shape[1], 3) + [UniShortcut(wide[1], shape[1])],
                [data(shape, 1, 2.0), data(wide, 2)], [shape])


@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (40, 3, 2, 2)])
@pytest.mark.parametrize("binary", [True, False])
def test_batch_norm_then_the_next_layer(shape, binary):
    """(h, fc(move(h))) for h = act(bn(a) + s): the kernel computes move(h), binarized for a binary fc,
    where it computes h and adds its gradient (through the quantizer's straight-through estimator)
    to h's."""
    scheme = "xnor" if binary else "fp"

    def cells():
        move = LearnableBias(shape[1])
        move.bias.set_data(data((1, shape[1], 1, 1), 5, 0.3))
        conv = QuanConv(shape[1], 4, 1, quan_name_w=scheme, quan_name_a=scheme)
        conv.weight.set_data(data(conv.weight.shape, 30, 0.5))
        return bn_and_act(shape[1], 3) + [move, conv]

    inputs = [data(shape, 1, 2.0), data(shape, 2)]
    check_chain(fused.norm_act_fc, cells, inputs, [shape, (shape[0], 4, *shape[2:])])
    before = fused.kernel_calls()["training"]
    fused.norm_act_fc(fused.TrainKernels(), *cells(), *inputs)
    assert fused.kernel_calls()["training"] == before + 1, "not one kernel for the batch norm and the next input"


class ConstantSignScale(nn.Cell):
    """Training kernels whose sign_scale gives 7 everywhere: shows which path ran."""

    inference = False

    def sign_scale(self, w, scale):
        return ops.ones_like(w) * 7.0


def test_the_weight_quantizer_signs_and_scales_in_one_kernel():
    """In training with the kernels, sign(W) * mean(|W|) comes from one kernel: the operators' values bit
    for bit (zeros included), and the kernel is what ran (in eval mode the operators still do)."""
    w = data((6, 4, 1, 7), 3)
    w[0, 1, 0, 2] = 0.0
    quantizer = XnorWeight()
    quantizer.set_train(True)
    expected = quantizer(w).asnumpy()
    quantizer.train_kernels = fused.TrainKernels()
    np.testing.assert_array_equal(quantizer(w).asnumpy(), expected)
    quantizer.train_kernels = ConstantSignScale()
    assert (quantizer(w).asnumpy() == 7.0).all()
    quantizer.set_train(False)
    np.testing.assert_array_equal(quantizer(w).asnumpy(), expected)
    assert create_model("BiMLP_T14", fused_training=True).network[0][0].mlp.fc1.quantize_weight.train_kernels is not None


class UnusedShortcut(UniShortcut):
    def construct(self, x):
        raise AssertionError("the uni-shortcut ran as MindSpore operators")


class RecordingKernels:
    """Training kernels that record which one ran on which inputs (zeros out)."""

    inference = False

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def kernel(*inputs):
            self.calls.append((name, [tuple(x.shape) for x in inputs[:-5]]))
            n, _, h, w = inputs[0].shape
            channels = inputs[-5].shape[0]  # gamma's
            zeros = np.zeros((channels,), np.float32)
            return Tensor(np.zeros((n, channels, h, w), np.float32)), Tensor(zeros), Tensor(zeros)
        return kernel


def test_the_shortcut_helpers_hand_the_uni_shortcut_to_one_kernel():
    """Equal values cannot tell whether the shortcut ran as operators first: the path is asserted."""
    x, wide = data((2, 3, 4, 4), 1), data((2, 12, 4, 4), 2)
    kernels = RecordingKernels()
    tiled = fused.norm_act_of_shortcut(kernels, *bn_and_act(12, 3), UnusedShortcut(3, 12), x)
    averaged = fused.norm_act_plus_shortcut(kernels, *bn_and_act(3, 3), UnusedShortcut(12, 3), x, wide)
    assert kernels.calls == [("bn_act", [(2, 3, 4, 4)]), ("bn_act_group_mean", [(2, 3, 4, 4), (2, 12, 4, 4)])]
    assert tiled.shape == (2, 12, 4, 4) and averaged.shape == (2, 3, 4, 4)


@pytest.mark.parametrize("chain, outputs", [(fused.move_conv, 2), (fused.binary_fc, 1)])
def test_move_and_binarize_at_the_thresholds(chain, outputs):
    def cells():
        move = LearnableBias(6)
        bias = np.random.RandomState(5).standard_normal((1, 6, 1, 1)).astype(np.float32) * 0.3
        bias[0, :3] = 0.0  # these channels quantize the threshold values themselves
        move.bias.set_data(Tensor(bias))
        conv = QuanConv(6, 6, 1)
        conv.weight.set_data(data(conv.weight.shape, 30, 0.5))
        return [move, conv]

    shape = (3, 6, 4, 5)
    check_chain(chain, cells, [data(shape, 4, thresholds=True)], [shape] * outputs, exact_outputs=(0,))


def test_phase_input_with_its_angle_gradient():
    def cells():
        move = LearnableBias(12)
        move.bias.set_data(data((1, 12, 1, 1), 6, 0.3))
        conv = QuanConv(12, 6, (1, 7), padding=(0, 0, 3, 3), group=6)
        conv.weight.set_data(data(conv.weight.shape, 31, 0.5))
        return [move, conv, UniShortcut(12, 6)]

    x, theta = data((3, 6, 4, 5), 7, thresholds=True), data((3, 6, 4, 5), 8, 3.0)
    check_chain(fused.phase_conv, cells, [x, theta], [(3, 6, 4, 5), (3, 6, 4, 5)], exact_outputs=(0,))


@pytest.mark.parametrize("size", [(14, 14), (7, 7), (5, 6), (2, 2), (1, 1)])
@pytest.mark.parametrize("values", ["random", "ties", "minus_inf"])
def test_downsampling_pools(size, values):
    """With ties (values rounded to integers) the gradient goes to each window's first maximum; a
    window of -inf alone (a whole plane, or its first rows) routes it as MaxPool's gradient does."""
    def cells():
        return [nn.MaxPool2d(kernel_size=k, stride=2, pad_mode="same") for k in (2, 3, 5, 7)]

    def chain(kernels, *args):
        *pools, x = args
        return fused.pool4(kernels, pools, x)

    out = ((size[0] + 1) // 2, (size[1] + 1) // 2)
    x = data((3, 7, *size), 9)  # 21 planes: more than one block of Pool4Planes, the last one partly filled
    if values == "ties":
        x = Tensor(np.round(x.asnumpy()))
    if values == "minus_inf":
        x = x.asnumpy()
        x[0, 1] = -np.inf
        x[1:, :, :2] = -np.inf
        x = Tensor(x)
    check_chain(chain, cells, [x], [(3, 7, *out)], exact_outputs=(0,))


@pytest.mark.parametrize("kernel", [(1, 7), (7, 1)])
@pytest.mark.parametrize("per_group", [1, 2])
@pytest.mark.parametrize("size", [(14, 14), (2, 2), (1, 1)])
@pytest.mark.parametrize("binary", [True, False])
def test_line_convolutions(kernel, per_group, size, binary):
    """On binarized inputs (the binary network) the products are exact and the kernel sums in
    oneDNN's order: bit for bit. On float inputs (the float twin) the rounding may differ."""
    padding = (3, 3, 0, 0) if kernel[0] == 7 else (0, 0, 3, 3)

    def chain(kernels, layer, x, w):
        layer.train_kernels = kernels
        return layer(x, w)

    def cells():
        layer = GroupedLineConv(5 * per_group, 5, kernel, padding, 5)
        layer.set_train(True)
        return [layer]

    x, w = data((3, 5 * per_group, *size), 10, thresholds=True), data((5, per_group, *kernel), 11, 0.5)
    if binary:
        x = Tensor(np.rint(np.clip(x.asnumpy(), -1, 1)))
    check_chain(chain, cells, [x, w], [(3, 5, *size)], exact_outputs=(0,) if binary else ())


@pytest.mark.parametrize("shape, channels", [((3, 5, 14, 14), 7), ((5, 16, 2, 2), 13), ((40, 1024, 2, 2), 6),
                                             ((9, 8, 1, 1), 96), ((4, 3, 7, 7), 32), ((8, 256, 7, 7), 256)])
def test_pointwise_convolutions(shape, channels):
    """The 1x1 convolutions as matrix products over all samples' positions: row tiles cut short,
    column panels that span samples or end early, blocks of a few panels for deep inputs, weight
    gradients whose rows are the output or the input channels. Sums run in another order than
    oneDNN's."""
    def chain(kernels, layer, x, w):
        layer.train_kernels = kernels
        return layer(x, w)

    def cells():
        layer = PointwiseConv(channels)
        layer.set_train(True)
        return [layer]

    x, w = data(shape, 20), data((channels, shape[1], 1, 1), 21, 0.5)
    check_chain(chain, cells, [x, w], [(shape[0], channels, *shape[2:])])
    # Both gradients come from the kernels too (the forward, input and weight gradient count a call each).
    layer = cells()[0]
    layer.train_kernels = fused.TrainKernels()
    before = fused.kernel_calls()["training"]
    [g.asnumpy() for g in ms.grad(layer, (0, 1))(x, w)]
    assert fused.kernel_calls()["training"] - before == 3


THREADS_SCRIPT = """
import sys
import mindspore as ms
import numpy as np
sys.path.insert(0, sys.argv[1])
from mindspore import nn
from src import fused
from src.quan_conv import PointwiseConv
from src.wavemlp_20_3 import create_model
ms.set_context(mode=ms.PYNATIVE_MODE)
results = {}
for i, (shape, channels) in enumerate([((8, 256, 7, 7), 256), ((40, 1024, 2, 2), 6), ((3, 5, 14, 14), 7)]):
    rng = np.random.RandomState(i)
    x, w, g = (ms.Tensor(rng.standard_normal(s).astype(np.float32))
               for s in (shape, (channels, shape[1], 1, 1), (shape[0], channels) + shape[2:]))
    layer = PointwiseConv(channels)
    layer.set_train(True)
    layer.train_kernels = fused.TrainKernels()
    results[f"y{i}"] = layer(x, w).asnumpy()
    dx, dw = ms.grad(lambda x, w: (layer(x, w) * g).sum(), (0, 1))(x, w)
    results[f"dx{i}"], results[f"dw{i}"] = dx.asnumpy(), dw.asnumpy()
ms.set_seed(1)
net = create_model("BiMLP_T14", fused_training=True)
net.set_train(True)
loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
x = ms.Tensor(np.random.RandomState(5).standard_normal((16, 1, 28, 28)).astype(np.float32))
labels = ms.Tensor(np.random.RandomState(6).randint(0, 10, 16).astype(np.int32))
_, grads = ms.value_and_grad(loss, None, net.trainable_params())(x, labels)
results.update({p.name: g.asnumpy() for p, g in zip(net.trainable_params(), grads)})
results.update({p.name: p.asnumpy() for p in net.get_parameters() if "moving" in p.name})
np.savez(sys.argv[2], **results)
"""


def test_training_kernels_do_not_depend_on_the_thread_count(tmp_path):
    """One thread or three, the 1x1 products and a BiMLP_T14 step's gradients and moving statistics
    are the same bits: each sum is one thread's, in order (the per-channel kernels split channels)."""
    script = tmp_path / "threads.py"
    script.write_text(THREADS_SCRIPT)
    results = []
    for threads in ("1", "3"):
        out = tmp_path / f"threads{threads}.npz"
        proc = subprocess.run([sys.executable, str(script), ROOT, str(out)], capture_output=True, text=True,
                              env=dict(os.environ, BIMLP_KERNEL_THREADS=threads), timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(np.load(out))
    assert len(results[0].files) > 100, results[0].files
    for name in results[0].files:
        np.testing.assert_array_equal(results[0][name], results[1][name], err_msg=name)


@pytest.mark.parametrize("binary", [True, False])
def test_training_step_of_the_network(tmp_path, binary):
    """One step of BiMLP_T14: per-parameter gradients, the loss and the updated BatchNorm moving
    statistics agree with MindSpore's operators; the checkpoint it writes loads strictly into the
    network without kernels and evaluates identically."""
    x = data((8, 1, 28, 28), 12, 1.0)
    labels = Tensor(np.random.RandomState(13).randint(0, 10, 8).astype(np.int32))
    results, nets = {}, {}
    for use in (True, False):
        ms.set_seed(1)
        net = create_model("BiMLP_T14", binary=binary, fused_training=use)
        net.set_train(True)
        loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
        before = fused.kernel_calls()["training"]
        value, grads = ms.value_and_grad(loss, None, net.trainable_params())(x, labels)
        assert (fused.kernel_calls()["training"] > before) == use, "the wrong path ran"
        results[use] = (float(value.asnumpy()), {p.name: g.asnumpy() for p, g in zip(net.trainable_params(), grads)},
                        {p.name: p.asnumpy() for p in net.get_parameters() if "moving" in p.name})
        nets[use] = net
    (loss_k, grads_k, stats_k), (loss_o, grads_o, stats_o) = results[True], results[False]
    assert abs(loss_k - loss_o) <= 1e-5 * abs(loss_o)
    largest = max(float(np.abs(g).max()) for g in grads_o.values())
    # Relative to the parameter's own gradient; those that cancel to ~0 (biases in front of a
    # batch norm) relative to 1e-2 of the largest gradient instead.
    errors = {name: float(np.abs(grads_k[name] - g).max()) / max(float(np.abs(g).max()), 1e-2 * largest)
              for name, g in grads_o.items()}
    worst = sorted(errors.items(), key=lambda item: -item[1])[:3]
    if binary:
        # Batch statistics summed in another order differ in the last bit, and the odd
        # activation that lands on a rounding threshold binarizes the other way: a few
        # gradients move by such a flip, the rest agree to sum-order precision.
        assert np.mean([e <= 1e-4 for e in errors.values()]) >= 0.8, worst
        assert worst[0][1] <= 1e-2, worst
    else:
        # The 1x1 convolutions sum in another order than oneDNN's: the odd gradient that cancels
        # to almost nothing (a bias in front of a batch norm) keeps less of its precision.
        assert np.mean([e <= 1e-4 for e in errors.values()]) >= 0.99, worst
        assert worst[0][1] <= 1e-3, worst
    for name, value in stats_o.items():  # some means are ~1e-8 (normalized inputs): a floor of 0.1
        assert_close(stats_k[name], value, 1e-5, name, floor=0.1)

    path = str(tmp_path / "fused.ckpt")
    ms.save_checkpoint(nets[True], path)
    plain = create_model("BiMLP_T14", binary=binary, fused=False)
    assert not ms.load_param_into_net(plain, ms.load_checkpoint(path), strict_load=True)[0]
    for net in (nets[True], plain):
        net.set_train(False)
    np.testing.assert_array_equal(nets[True](x).asnumpy(), plain(x).asnumpy())


def test_the_blocks_mixing_sums():
    shape = (3, 4, 5, 6)
    x, a, b, c = (data(shape, seed) for seed in (20, 21, 22, 23))
    weight = Tensor(np.array([0.3, -0.2], np.float32))

    def wave(kernels, drop_path, *inputs):
        return fused.wave_mix(kernels, *inputs, drop_path)

    check_chain(wave, lambda: [DropPath(0.0)], [x, a, b, c, weight], [shape])
    weights = Tensor(np.random.RandomState(24).uniform(0, 1, (3, 3, 4)).astype(np.float32))
    check_chain(lambda kernels, *inputs: fused.mix3(kernels, True, *inputs), lambda: [], [x, a, b, c, weights],
                [shape])


KERNEL_THREADS_SCRIPT = r"""
import ctypes, os, sys, threading
import numpy as np

library = ctypes.CDLL(sys.argv[1])


def threads():
    return len(os.listdir("/proc/self/task"))


def move_binarize(x, bias):
    t, q = np.empty_like(x), np.empty_like(x)
    arrays = [x, bias, t, q]
    shapes = [np.array(a.shape, np.int64) for a in arrays]
    params = (ctypes.c_void_p * 4)(*[a.ctypes.data for a in arrays])
    pointers = (ctypes.POINTER(ctypes.c_int64) * 4)(*[s.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)) for s in shapes])
    assert library.MoveBinarizeTrain(4, params, None, pointers, None, None, None) == 0
    return t, q


x = np.random.RandomState(0).standard_normal((16, 64, 14, 14)).astype(np.float32)
bias = np.linspace(-1, 1, 64).astype(np.float32)
before = threads()
first = move_binarize(x, bias)
kept = threads()
for _ in range(5):
    again = move_binarize(x, bias)
    assert all((a == b).all() for a, b in zip(first, again))
results = []


def call_often():
    results.append([move_binarize(x, bias) for _ in range(20)])


callers = [threading.Thread(target=call_often) for _ in range(3)]
for caller in callers:
    caller.start()
for caller in callers:
    caller.join()
assert all((a == b).all() for calls in results for pair in calls for a, b in zip(first, pair))
after = threads()
child = os.fork()
if child == 0:  # a child process (as a data loader forks) starts its own workers
    os._exit(0 if all((a == b).all() for a, b in zip(first, move_binarize(x, bias))) and threads() == kept - before + 1
             else 1)
assert os.waitpid(child, 0)[1] == 0, "the forked child computed wrong values or kept no workers"
print(before, kept, after)
"""


def test_kernel_threads_are_kept_between_calls_and_shared_safely(tmp_path):
    """With BIMLP_KERNEL_THREADS=3 the first kernel call starts two workers that stay for the next
    calls (a thread per call cost ~50 us); calls from several threads at once, which find the workers
    busy, compute the same values on their own thread; a forked child starts workers of its own."""
    script = tmp_path / "threads.py"
    script.write_text(KERNEL_THREADS_SCRIPT)
    env = dict(os.environ, BIMLP_KERNEL_THREADS="3")
    proc = subprocess.run([sys.executable, str(script), fused.library_path()], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    before, kept, after = map(int, proc.stdout.split())
    assert kept == before + 2 and after == kept, (before, kept, after)
