"""GroupedLineConv and FastPReLU: same values and gradients as MindSpore's own operators."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from conftest import Weighted
from src.grouped_conv import GroupedLineConv, reachable_taps
from src.wavemlp_20_3 import PReLUSlope


@pytest.fixture(params=["graph", "pynative"], autouse=True)
def mode(request):
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)


class WeightedConv(nn.Cell):
    """sum(conv(x, w) * g), differentiable in x and w."""

    def __init__(self, conv, g):
        super().__init__()
        self.conv, self.g = conv, Tensor(g)

    def construct(self, x, w):
        return (self.conv(x, w) * self.g).sum()


def test_reachable_taps():
    assert reachable_taps(7, 3, 7) == (0, 7)   # a long line uses the whole kernel
    assert reachable_taps(7, 3, 2) == (2, 5)   # 2 positions: shifts -1, 0, 1
    assert reachable_taps(7, 3, 1) == (3, 4)   # 1 position: the centre tap only


# BiMLP's layers: 1x7 / 7x1, padding 3, one or two input channels per group, on lines
# longer than the kernel and shorter (BiMLP_T's 2x2 and 1x1 stages), where taps get cropped.
@pytest.mark.parametrize("kernel,padding", [((1, 7), (0, 0, 3, 3)), ((7, 1), (3, 3, 0, 0))])
@pytest.mark.parametrize("per_group", [1, 2])
@pytest.mark.parametrize("size", [(9, 8), (2, 2), (1, 1)])
def test_values_and_gradients_match_the_grouped_conv2d(kernel, padding, per_group, size):
    rng = np.random.RandomState(sum(size) + per_group)
    groups = 4
    x = rng.standard_normal((3, groups * per_group, *size)).astype(np.float32)
    w = rng.standard_normal((groups, per_group, *kernel)).astype(np.float32)
    g = rng.standard_normal((3, groups, *size)).astype(np.float32)
    ours = GroupedLineConv(groups * per_group, groups, kernel, padding, groups)
    theirs = ops.Conv2D(out_channel=groups, kernel_size=kernel, mode=1, pad_mode="pad", pad=padding, group=groups)
    np.testing.assert_allclose(ours(Tensor(x), Tensor(w)).asnumpy(), theirs(Tensor(x), Tensor(w)).asnumpy(),
                               rtol=1e-5, atol=1e-5)
    grads = [ms.grad(WeightedConv(conv, g), grad_position=(0, 1))(Tensor(x), Tensor(w)) for conv in (ours, theirs)]
    for mine, reference in zip(*grads):
        np.testing.assert_allclose(mine.asnumpy(), reference.asnumpy(), rtol=1e-4, atol=1e-4)
    if size == (1, 1):  # only the centre tap sees data
        dw = grads[0][1].asnumpy().reshape(groups, per_group, 7)
        assert (dw[..., [0, 1, 2, 4, 5, 6]] == 0).all() and (dw[..., 3] != 0).all()


def test_prelu_gradients_match_the_straightforward_formula():
    rng = np.random.RandomState(0)
    x = Tensor(rng.standard_normal((3, 5, 4, 4)).astype(np.float32))
    g = rng.standard_normal((3, 5, 4, 4)).astype(np.float32)
    slope = rng.uniform(0.05, 0.5, (1, 5, 1, 1)).astype(np.float32)
    results = []
    for fast in (True, False):
        act = PReLUSlope(5, fast)
        act.w.set_data(Tensor(slope))
        loss = Weighted(act, g)
        dx, (dw,) = ms.grad(loss, grad_position=0, weights=act.trainable_params())(x)
        results.append((act(x).asnumpy(), dx.asnumpy(), dw.asnumpy()))
    (y, dx, dw), (y_ref, dx_ref, dw_ref) = results
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5)
    xn = x.asnumpy()
    np.testing.assert_allclose(dx, np.where(xn > 0, g, slope * g), rtol=1e-6)
