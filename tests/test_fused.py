"""The fused CPU kernels (src/fused_cpu.cc) give bit-identical results to the operators they replace."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from conftest import require
from src import fused
from src.quan_conv import QuanConv, RoundClip, XnorWeight
from src.wavemlp_20_3 import RPReLU, WaveBlock, create_model


@pytest.fixture(autouse=True)
def compiled_kernels():
    require(fused.library_path() is not None, "a C++ compiler (g++) for the fused kernels")


def randomize(net, seed):
    """Parameters of realistic spread: slopes and biases away from their zero/0.25 init,
    batch-norm statistics away from 0/1, so every fused formula is exercised."""
    rng = np.random.RandomState(seed)
    for name, p in net.parameters_and_names():
        shape = p.shape
        if name.endswith("moving_variance"):
            value = rng.uniform(0.2, 3.0, shape)
        elif name.endswith(".weight") and len(shape) == 1:  # WaveBlock branch weights
            value = rng.uniform(0.1, 0.4, shape)
        else:
            value = p.asnumpy() + rng.standard_normal(shape) * (0.3 if len(shape) != 4 else 0.02)
        p.set_data(Tensor(value.astype(np.float32)))


def bn_and_act(channels, seed):
    bn, act = nn.BatchNorm2d(channels, eps=1e-5), RPReLU(channels)
    for cell in (bn, act):
        randomize(cell, seed)
    bn.set_train(False)
    return bn, act


def data(shape, seed, scale=1.5):
    return Tensor((np.random.RandomState(seed).standard_normal(shape) * scale).astype(np.float32))


@pytest.fixture(autouse=True)
def pynative_mode():
    """Kernels and reference operators run eagerly here; test_fused_network_* covers graph mode."""
    ms.set_context(mode=ms.PYNATIVE_MODE)


def test_batch_norm_and_rprelu_with_each_shortcut():
    k = fused.Kernels()
    bn, act = bn_and_act(6, 1)
    params = fused.bn_act_params(bn, act)
    a, u = data((3, 6, 5, 7), 2), data((3, 6, 5, 7), 3)
    move = Tensor(np.random.RandomState(4).standard_normal((1, 6, 1, 1)).astype(np.float32))
    s2, s4 = data((3, 12, 5, 7), 5), data((3, 24, 5, 7), 6)
    cases = {
        "none": (k.bn_act(a, *params), act(bn(a))),
        "moved": (k.bn_act_moved(a, u, move, *params), act(bn(a) + (u + move))),
        "pair mean": (k.bn_act_group_mean(a, s2, *params), act(bn(a) + (s2[:, 0::2] + s2[:, 1::2]) / 2.0)),
        "group mean": (k.bn_act_group_mean(a, s4, *params),
                       act(bn(a) + (((s4[:, 0::4] + s4[:, 1::4]) + s4[:, 2::4]) + s4[:, 3::4]) / 4.0)),
    }
    for name, (got, expected) in cases.items():
        np.testing.assert_array_equal(got.asnumpy(), expected.asnumpy(), err_msg=name)


def test_tiled_shortcut_of_the_channel_mlp_and_its_binarized_output():
    k = fused.Kernels()
    bn0, act1 = bn_and_act(8, 1)
    bn1, act2 = bn_and_act(8, 2)
    a, x, move = data((2, 8, 4, 3), 3), data((2, 2, 4, 3), 4), data((1, 8, 1, 1), 5, 0.5)
    expected = act2(bn1(a) + act1(bn0(ops.tile(x, (1, 4, 1, 1)))))
    h, h_q = k.bn_act_tiled_binarize(a, x, *fused.bn_act_params(bn0, act1), *fused.bn_act_params(bn1, act2), move)
    np.testing.assert_array_equal(h.asnumpy(), expected.asnumpy())
    np.testing.assert_array_equal(h_q.asnumpy(), RoundClip(1)(expected + move).asnumpy())


def line_layer(channels, per_group, kernel, seed):
    layer = QuanConv(channels * per_group, channels, kernel, group=channels,
                     padding=(3, 3, 0, 0) if kernel[0] == 7 else (0, 0, 3, 3))
    randomize(layer, seed)
    return layer


def reference_phase_branch(x, theta, move, layer, bn, act):
    """PATM's unfused token-mixing branch (tfc_h or tfc_w) from x and theta."""
    p = ops.concat((x * ops.cos(theta), x * ops.sin(theta)), 1) + move
    return act(bn(layer(p)) + (p[:, 0::2] + p[:, 1::2]) / 2.0)


def phase_branch(x, theta, move, layer, bn, act):
    k = fused.Kernels()
    return k.phase_branch(x, theta, move, layer.fused_weight(k), *fused.bn_act_params(bn, act))


def test_phase_branch_agrees_with_mindspore_cos_and_sin_everywhere():
    # MindSpore's Cos/Sin are the double-precision functions rounded to float32; the kernel's
    # fast path must agree everywhere: typical angles, huge ones (glibc fallback), angles next
    # to multiples of pi/2 (tiny results), tiny angles, and exact zeros.
    rng = np.random.RandomState(0)
    near = (np.arange(1, 2001)[:, None] * np.pi / 2 + np.array([-1e-3, -1e-6, 0.0, 1e-6, 1e-3])).ravel()
    angles = np.concatenate([rng.standard_normal(20000) * 3, rng.uniform(-1e4, 1e4, 4000),
                             rng.uniform(-1e6, 1e6, 1000), near, -near, rng.standard_normal(2000) * 1e-6,
                             np.zeros(10)])
    angles = np.concatenate([angles, rng.standard_normal(48000 - angles.size)])
    theta = Tensor(angles.astype(np.float32).reshape(2, 6, 40, 100))
    x, move = data((2, 6, 40, 100), 1), data((1, 12, 1, 1), 2, 0.3)
    layer, (bn, act) = line_layer(6, 2, (1, 7), 3), bn_and_act(6, 4)
    np.testing.assert_array_equal(phase_branch(x, theta, move, layer, bn, act).asnumpy(),
                                  reference_phase_branch(x, theta, move, layer, bn, act).asnumpy())


@pytest.mark.parametrize("kernel", [(1, 7), (7, 1)])
@pytest.mark.parametrize("size", [(56, 56), (14, 14), (7, 7), (2, 2), (1, 1)])
def test_line_and_phase_branches_sum_like_the_layers_convolution(kernel, size):
    """On binarized inputs the products are exact and only the order of the sums decides the
    result: it must be the order of oneDNN's grouped convolution, at every map size."""
    channels = 64 if size[0] > 2 else 8
    m, theta = data((2, channels, *size), 0), data((2, channels, *size), 1, 3.0)
    move, move2 = data((1, channels, 1, 1), 2, 0.5), data((1, 2 * channels, 1, 1), 3, 0.5)
    bn, act = bn_and_act(channels, 4)
    layer = line_layer(channels, 1, kernel, 5)
    k = fused.Kernels()
    got = k.line_branch(m, move, layer.fused_weight(k), *fused.bn_act_params(bn, act))
    np.testing.assert_array_equal(got.asnumpy(), act(bn(layer(m + move)) + (m + move)).asnumpy())
    layer = line_layer(channels, 2, kernel, 6)
    np.testing.assert_array_equal(phase_branch(m, theta, move2, layer, bn, act).asnumpy(),
                                  reference_phase_branch(m, theta, move2, layer, bn, act).asnumpy())


def test_move_binarize_and_xnor_weights():
    k = fused.Kernels()
    x = data((2, 3, 6, 5), 0)
    bias = data((1, 3, 1, 1), 1, 0.5)
    np.testing.assert_array_equal(k.move_binarize(x, bias).asnumpy(), RoundClip(1)(x + bias).asnumpy())
    w = np.random.RandomState(2).standard_normal((6, 4, 1, 7)).astype(np.float32)
    w[0, :, 0, 0] = 0.0  # sign(0) = 0
    w = Tensor(w)
    mean = ops.ReduceMean(keep_dims=True)(ops.abs(w), 1)
    np.testing.assert_array_equal(k.sign_scale(w, mean).asnumpy(), XnorWeight()(w).asnumpy())


@pytest.mark.parametrize("shape", [(2, 64, 28, 28), (3, 320, 14, 14), (1, 512, 7, 7), (4, 5, 3, 2)])
def test_group_norm_is_mindspores(shape):
    gn = nn.GroupNorm(1, shape[1], eps=1e-5)
    randomize(gn, 1)
    x = data(shape, 2, 2.0) + 0.7
    np.testing.assert_array_equal(fused.Kernels().group_norm(x, gn.gamma, gn.beta).asnumpy(), gn(x).asnumpy())


@pytest.mark.parametrize("size", [(8, 8), (7, 7), (6, 9), (2, 2), (1, 1)])
@pytest.mark.parametrize("minus_inf", [False, True])
def test_pool4_is_downsample_pooling(size, minus_inf):
    """With -inf in the input, a window of -inf alone pools to MaxPool's lowest float."""
    x = data((2, 3, *size), 0)
    if minus_inf:
        x = x.asnumpy()
        x[0, 1] = -np.inf
        x[1, :, :2] = -np.inf
        x = Tensor(x)
    pools = [nn.MaxPool2d(kernel_size=k, stride=2, pad_mode="same") for k in (2, 3, 5, 7)]
    expected = (((pools[0](x) + pools[1](x)) + pools[2](x)) + pools[3](x)) / 4.0
    np.testing.assert_array_equal(fused.Kernels().pool4(x).asnumpy(), expected.asnumpy())


def test_sums_and_mixes():
    k = fused.Kernels()
    h, w, c, u = (data((2, 5, 3, 4), i) for i in range(4))
    np.testing.assert_array_equal(k.sum4(h, w, c, u).asnumpy(), (((h + w) + c) + u).asnumpy())
    a = ops.softmax(data((3, 2, 5), 9), axis=0)
    a5 = a.reshape(3, 2, 5, 1, 1)
    np.testing.assert_array_equal(k.mix3(h, w, c, u, a).asnumpy(),
                                  (((h * a5[0] + w * a5[1]) + c * a5[2]) + u).asnumpy())
    weight = Tensor(np.array([0.3, 0.45], np.float32))
    w0, w1 = weight[0], weight[1]
    np.testing.assert_array_equal(k.wave_mix(u, h, w, c, weight).asnumpy(),
                                  (u + ((w0 * w + w1 * c) + (1 - w0 - w1) * h)).asnumpy())


@pytest.mark.parametrize("mode,model", [(ms.GRAPH_MODE, "BiMLP_T"), (ms.PYNATIVE_MODE, "BiMLP_T"),
                                        (ms.PYNATIVE_MODE, "BiMLP_T14")])
def test_fused_network_equals_unfused_in_eval_and_is_off_in_training(mode, model):
    ms.set_context(mode=mode)
    nets = [create_model(model), create_model(model, fused=False)]
    assert [net.fused for net in nets] == [True, False]  # the library default fuses where it can
    randomize(nets[0], 7)
    ms.load_param_into_net(nets[1], {p.name: p for p in nets[0].get_parameters()}, strict_load=True)
    blocks = [cell for _, cell in nets[0].cells_and_names() if isinstance(cell, WaveBlock)]
    assert all(b.mlp.kernels is not None and b.attn.reweight.kernels is None for b in blocks)
    x = data((5, 1, 28, 28), 8)
    for train in (False, True):
        outputs, ran = [], []
        for net in nets:
            net.set_train(train)
            before = fused.kernel_calls()["inference"]
            outputs.append(net(x).asnumpy())
            ran.append(fused.kernel_calls()["inference"] > before)
        # The outputs are bit-identical either way: the kernel call count tells which path ran.
        assert ran == [not train, False], f"train={train}"
        np.testing.assert_array_equal(outputs[0], outputs[1], err_msg=f"train={train}")


def test_float_twin_and_other_platforms_do_not_fuse():
    assert not create_model("BiMLP_T", binary=False).fused
    with pytest.raises(ValueError, match="float twin"):
        create_model("BiMLP_T", binary=False, fused=True)
    assert create_model("BiMLP_T").fused  # the default: auto, on CPU with a compiler
    assert not create_model("BiMLP_T", fused=False).fused
