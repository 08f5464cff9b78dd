"""The fused eval path binarizes its weights once and recomputes them exactly when they change."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src import fused
from src.quan_conv import QuanConv
from src.wavemlp_20_3 import create_model
from test_fused import data, randomize

pytestmark = pytest.mark.skipif(fused.library_path() is None, reason="no C++ compiler for the fused kernels")


class Doubled(nn.Cell):
    """A cell whose graph calls the network inside it: BiMLP.__call__ does not run."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x):
        return self.net(x) * 2.0


def twins(seed):
    """A fused network and an unfused one with the same random weights, in eval mode."""
    nets = [create_model("BiMLP_T", fused=flag) for flag in (True, False)]
    randomize(nets[0], seed)
    copy_weights(nets[0], nets[1])
    for net in nets:
        net.set_train(False)
    return nets


def copy_weights(source, target):
    weights = {p.name: ms.Parameter(p.asnumpy().copy(), name=p.name) for p in source.get_parameters()}
    ms.load_param_into_net(target, weights, strict_load=True)


def test_binarized_weights_are_cached_and_follow_every_weight_change():
    ms.set_context(mode=ms.GRAPH_MODE)
    cached, plain = twins(1)
    cache = cached.binarized_weights
    x = data((2, 1, 28, 28), 2)
    assert len(cache.layers) == 40  # BiMLP_T: 10 a block (depthwise sfc_h/sfc_w and the reweighting MLP: none)
    first = cached(x).asnumpy()
    np.testing.assert_array_equal(first, plain(x).asnumpy())
    assert cache.refreshes == len(cache.layers)
    np.testing.assert_array_equal(cached(x).asnumpy(), first)
    assert cache.refreshes == len(cache.layers), "a second call with the same weights recomputed them"

    # On the path: the graph convolves with the cached tensor, not with weights derived from W.
    layer = cache.layers[0]
    kept = layer.binarized_weight.asnumpy().copy()
    layer.binarized_weight.set_data(Tensor(np.zeros_like(kept)))
    assert not np.array_equal(cached(x).asnumpy(), first)
    layer.binarized_weight.set_data(Tensor(kept))
    np.testing.assert_array_equal(cached(x).asnumpy(), first)

    # A checkpoint load between two eval calls.
    randomize(cached, 3)
    copy_weights(cached, plain)
    loaded = cached(x).asnumpy()
    np.testing.assert_array_equal(loaded, plain(x).asnumpy())
    assert not np.array_equal(loaded, first)
    # An in-place update of one layer (what an optimizer step does).
    layer.weight.asnumpy()[0] *= -1.0
    copy_weights(cached, plain)
    np.testing.assert_array_equal(cached(x).asnumpy(), plain(x).asnumpy())
    assert cache.refreshes == 2 * len(cache.layers) + 1

    # Inside another cell's graph the refresh cannot run: changed weights stop the forward.
    outer = Doubled(cached)
    np.testing.assert_array_equal(outer(x).asnumpy(), 2.0 * plain(x).asnumpy())
    layer.weight.asnumpy()[0] *= -1.0
    with pytest.raises(RuntimeError, match="WeightsUnchanged"):
        outer(x)


def test_the_cache_is_not_a_parameter_of_the_network():
    net = create_model("BiMLP_T", fused=True)
    names = [name for name, _ in net.parameters_and_names()]
    assert names == [name for name, _ in create_model("BiMLP_T").parameters_and_names()]
    assert not any("binarized" in name for name in names)


def test_under_the_compile_cache_the_weights_are_computed_in_the_graph(monkeypatch):
    """A graph restored by MS_COMPILER_CACHE_ENABLE would read the cache's first values."""
    monkeypatch.setenv("MS_COMPILER_CACHE_ENABLE", "1")
    net = create_model("BiMLP_T", fused=True)
    assert net.binarized_weights is None
    assert all(layer.binarized_weight is None for _, layer in net.cells_and_names() if isinstance(layer, QuanConv))
    with pytest.raises(ValueError, match="compile cache"):
        create_model("BiMLP_T", engine="xnor")


def test_the_benchmark_path_without_the_cache_binarizes_in_the_graph():
    """benchmark.py's fused_nocache_1thread: the fused path as it ran before the cache."""
    import benchmark

    ms.set_context(mode=ms.GRAPH_MODE)
    uncached, plain = twins(5)
    benchmark.without_weight_cache(uncached)
    assert uncached.binarized_weights is None
    assert all(layer.binarized_weight is None for _, layer in uncached.cells_and_names() if isinstance(layer, QuanConv))
    x = data((2, 1, 28, 28), 6)
    np.testing.assert_array_equal(uncached(x).asnumpy(), plain(x).asnumpy())
    layer = next(layer for _, layer in uncached.cells_and_names() if isinstance(layer, QuanConv)
                 and layer.xnor_weight and layer.in_channels != layer.group)
    layer.weight.asnumpy()[0] *= -1.0  # no fingerprint, no refresh: the graph itself follows W
    copy_weights(uncached, plain)
    np.testing.assert_array_equal(uncached(x).asnumpy(), plain(x).asnumpy())
