"""Quantizers and QuanConv: values, scaling axes and straight-through gradients."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from conftest import Weighted
from src.quan_conv import WEIGHT_SCHEMES, QuanConv, activation_quantizer, weight_quantizer

# Includes the rounding ties +-0.5 (-> 0, half to even), both zeros and values beyond +-1.
X = np.array([-3.0, -1.0, -0.75, -0.5, -0.25, -0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 3.0], np.float32)

# The distinct quantizers as (scheme, bits, fast). The others build one of these: activations
# xnor and dorefa are the same RoundClip, whose `fast` matters at 1 bit only; bits and `fast` do
# not change bnn, bireal and fp; weights: xnor ignores the bits, dorefa and the rest ignore `fast`.
ACTIVATION_CASES = [("xnor", 1, True), ("xnor", 1, False), ("dorefa", 2, True), ("bnn", 1, True),
                    ("bireal", 1, True), ("fp", 1, True)]
WEIGHT_CASES = [("xnor", 1, True), ("xnor", 1, False), ("bireal", 1, True), ("bnn", 1, True),
                ("dorefa", 1, True), ("dorefa", 2, True), ("fp", 1, True)]


@pytest.fixture(params=["graph", "pynative"], autouse=True)
def mode(request):
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    return request.param


def vjp(f, x, g):
    return ms.grad(Weighted(f, g))(Tensor(x)).asnumpy()


def expected_activation(name, nbit, x):
    if name in ("xnor", "dorefa"):
        levels = 2.0 ** nbit - 1
        return np.rint(np.clip(x, -1, 1) * levels) / levels
    if name in ("bnn", "bireal"):
        return np.sign(x)
    return x


@pytest.mark.parametrize("name,nbit,fast", ACTIVATION_CASES)
def test_activation_values(name, nbit, fast):
    out = activation_quantizer(name, nbit, fast)(Tensor(X)).asnumpy()
    np.testing.assert_array_equal(out, expected_activation(name, nbit, X).astype(np.float32))


def test_one_bit_rounding_gives_minus_one_zero_one_with_ties_to_zero():
    out = activation_quantizer("xnor", 1)(Tensor(X)).asnumpy()
    assert out.tolist() == [-1, -1, -1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("name", ["xnor", "bnn", "bireal", "fp"])  # 1-bit dorefa is xnor's RoundClip
def test_activation_gradient(name):
    g = np.linspace(0.5, 1.5, X.size).astype(np.float32)
    grad = vjp(activation_quantizer(name, 1), X, g)
    assert np.isfinite(grad).all()
    if name == "fp":
        np.testing.assert_array_equal(grad, g)
    elif name == "bireal":
        np.testing.assert_allclose(grad, g * np.maximum(2 - 2 * np.abs(X), 0), rtol=1e-6)
    else:
        np.testing.assert_array_equal(grad, np.where(np.abs(X) <= 1, g, 0))
    if name != "fp":
        assert (grad[np.abs(X) > 1] == 0).all() and (grad[np.abs(X) < 1] != 0).all()


def random_weight(shape, seed=0):
    w = np.random.RandomState(seed).standard_normal(shape).astype(np.float32)
    w.flat[::7] = 0.0  # sign(0) = 0 must survive
    return w


def expected_weight(name, nbit, w):
    if name == "xnor":
        return np.sign(w) * np.abs(w).mean(axis=1, keepdims=True)
    if name == "bireal":
        return np.sign(w) * np.abs(w).mean(axis=(1, 2, 3), keepdims=True)
    if name == "bnn":
        return np.sign(w)
    if name == "dorefa" and nbit == 1:
        return np.sign(w) * np.abs(w).mean()
    if name == "dorefa":
        t = np.tanh(w)
        t = t / (2 * np.abs(t).max()) + 0.5
        levels = 2.0 ** nbit - 1
        return 2 * np.rint(t * levels) / levels - 1
    return w


@pytest.mark.parametrize("name,nbit,fast", WEIGHT_CASES)
def test_weight_values(name, nbit, fast):
    w = random_weight((6, 4, 3, 2))
    out = weight_quantizer(name, nbit, fast)(Tensor(w)).asnumpy()
    np.testing.assert_allclose(out, expected_weight(name, nbit, w), rtol=1e-6, atol=1e-7)
    if name in ("xnor", "bireal", "bnn") or (name == "dorefa" and nbit == 1):
        assert (out[w == 0] == 0).all()


def test_xnor_scale_is_a_mean_over_input_channels_only():
    w = random_weight((5, 3, 2, 4))
    out = weight_quantizer("xnor", 1)(Tensor(w)).asnumpy()
    scale = np.abs(out).max(axis=1, keepdims=True)
    assert scale.shape == (5, 1, 2, 4)
    np.testing.assert_allclose(scale, np.abs(w).mean(axis=1, keepdims=True), rtol=1e-6)
    assert not np.allclose(scale, np.abs(w).mean(axis=(1, 2, 3), keepdims=True))


@pytest.mark.parametrize("kernel,padding", [((1, 7), (0, 0, 3, 3)), ((7, 1), (3, 3, 0, 0))])
def test_depthwise_xnor_weights_are_the_latent_weights(kernel, padding):
    conv = QuanConv(8, 8, kernel, padding=padding, group=8)
    np.testing.assert_array_equal(conv.quantized_weight(), conv.weight.asnumpy())


@pytest.mark.parametrize("name", WEIGHT_SCHEMES)
def test_weight_gradient_is_the_identity(name):
    w = random_weight((4, 3, 1, 1))
    g = np.random.RandomState(1).standard_normal(w.shape).astype(np.float32)
    np.testing.assert_array_equal(vjp(weight_quantizer(name, 1), w, g), g)


def test_quan_conv_attributes():
    conv = QuanConv(8, 16, 3, stride=2, padding=1, group=2, quan_name_w="xnor", quan_name_a="xnor")
    assert conv.weight.shape == (16, 4, 3, 3)
    assert (conv.kernel_size, conv.stride, conv.padding, conv.group) == ((3, 3), 2, (1, 1, 1, 1), 2)
    assert conv.is_binary_weight
    assert not QuanConv(8, 16, 1, quan_name_w="fp", quan_name_a="fp").is_binary_weight
    assert isinstance(conv.quantize_weight, nn.Cell) and isinstance(conv.quantize_input, nn.Cell)


def test_quan_conv_forward_is_conv_of_quantized_operands():
    x = np.random.RandomState(2).uniform(-2, 2, (2, 6, 5, 5)).astype(np.float32)
    conv = QuanConv(6, 4, 1)
    wb = conv.quantized_weight()[:, :, 0, 0]
    xb = np.rint(np.clip(x, -1, 1))
    expected = np.einsum("oc,bchw->bohw", wb, xb)
    np.testing.assert_allclose(conv(Tensor(x)).asnumpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,padding,group", [(1, 0, 1), ((1, 7), (0, 0, 3, 3), 4), ((7, 1), (3, 3, 0, 0), 4)])
def test_fast_and_straightforward_convs_agree_bit_for_bit(kernel, padding, group):
    x = Tensor(np.random.RandomState(3).uniform(-2, 2, (2, 8, 9, 9)).astype(np.float32))
    fast = QuanConv(8, 4, kernel, padding=padding, group=group, fast=True)
    plain = QuanConv(8, 4, kernel, padding=padding, group=group, fast=False)
    plain.weight.set_data(fast.weight.value())
    np.testing.assert_array_equal(fast(x).asnumpy(), plain(x).asnumpy())


class ConvLoss(nn.Cell):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def construct(self, x):
        return (self.conv(x) ** 2).sum()


@pytest.mark.parametrize("kernel,padding,group", [(1, 0, 1), ((1, 7), (0, 0, 3, 3), 4)])
def test_quan_conv_gradients_reach_weights_and_inputs(kernel, padding, group):
    x = np.random.RandomState(4).uniform(-2, 2, (2, 8, 6, 6)).astype(np.float32)
    conv = QuanConv(8, 4, kernel, padding=padding, group=group)
    loss = ConvLoss(conv)
    dx, (dw,) = ms.grad(loss, grad_position=0, weights=loss.trainable_params())(Tensor(x))
    dx, dw = dx.asnumpy(), dw.asnumpy()
    assert np.isfinite(dx).all() and np.isfinite(dw).all()
    assert (dx[np.abs(x) > 1] == 0).all()
    assert np.abs(dx[np.abs(x) < 1]).sum() > 0
    assert (np.abs(dw).reshape(dw.shape[0], -1).sum(axis=1) > 0).all()
