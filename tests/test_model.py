"""The network as a model: shapes, options, training, and fast == straightforward path."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src.wavemlp_20_3 import (DATASET_OF_MODEL, MODELS, BiMLP_S, DropPath, WaveBlock, create_model,
                              default_image_size, models_for)


def tiny_batch(batch=8, seed=0):
    rng = np.random.RandomState(seed)
    return (Tensor(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)),
            Tensor(rng.randint(0, 10, batch).astype(np.int32)))


def copy_params(src, dst):
    not_loaded, _ = ms.load_param_into_net(dst, {p.name: p for p in src.get_parameters()}, strict_load=True)
    assert not not_loaded


def test_registry():
    assert set(MODELS) >= {"BiMLP_S", "BiMLP_M", "BiMLP_T", "BiMLP_T14"}
    assert set(DATASET_OF_MODEL) == set(MODELS)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("BiMLP_X")
    assert [default_image_size(name) for name in ("BiMLP_S", "BiMLP_M", "BiMLP_T", "BiMLP_T14")] == [224, 224, 28, 28]
    assert models_for("fashion_mnist") == ["BiMLP_T", "BiMLP_T14"] and models_for("imagenet") == ["BiMLP_S", "BiMLP_M"]


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE])
def test_batch_of_one_gives_one_row(mode):
    ms.set_context(mode=mode)
    net = create_model("BiMLP_T", num_classes=7)
    net.set_train(False)
    assert net(tiny_batch(1)[0]).shape == (1, 7)


def test_bimlp_s_batch_of_one_at_small_resolution():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = BiMLP_S(num_classes=5)
    net.set_train(False)
    assert net(Tensor(np.zeros((1, 3, 64, 64), np.float32))).shape == (1, 5)


def test_num_classes_and_drop_path_rate_are_respected():
    net = create_model("BiMLP_T", num_classes=3, drop_path_rate=0.3)
    assert net.head.weight.shape == (3, 256)
    keeps = [cell.keep for _, cell in net.cells_and_names() if isinstance(cell, DropPath)]
    assert len(keeps) == len([c for _, c in net.cells_and_names() if isinstance(c, WaveBlock)])
    assert keeps[0] == pytest.approx(1.0) and keeps[-1] == pytest.approx(0.7)


def test_float_twin_has_the_same_parameters():
    binary = [(n, p.shape) for n, p in BiMLP_S().parameters_and_names()]
    real = [(n, p.shape) for n, p in BiMLP_S(binary=False).parameters_and_names()]
    assert binary == real


@pytest.mark.parametrize("train", [False, True])
def test_fast_and_straightforward_paths_give_identical_logits(train):
    ms.set_context(mode=ms.PYNATIVE_MODE)  # GRAPH mode is covered by test_fidelity.py
    fast = create_model("BiMLP_T", fast=True)
    plain = create_model("BiMLP_T", fast=False)
    copy_params(fast, plain)
    x, _ = tiny_batch()
    fast.set_train(train)
    plain.set_train(train)
    np.testing.assert_array_equal(fast(x).asnumpy(), plain(x).asnumpy())


def test_gradients_reach_the_trainable_parameters():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = create_model("BiMLP_T")
    net.set_train(True)  # in eval mode the default network runs the inference kernels, which have no gradient
    for _, cell in net.cells_and_names():
        if isinstance(cell, WaveBlock):  # at init (0, 0) the two depthwise branches are switched off
            cell.weight.set_data(Tensor(np.array([0.3, 0.3], np.float32)))
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    params = net.trainable_params()
    grads = [g.asnumpy() for g in ms.grad(loss, grad_position=None, weights=params)(*tiny_batch())]
    assert all(np.isfinite(g).all() for g in grads)
    alive = {p.name: bool(np.abs(g).sum() > 0) for p, g in zip(params, grads)}
    # A few slopes/biases inside the pooled reweight MLP see no gradient on one batch (all
    # inputs positive, or |x| > 1 at the input STE); every convolution and norm must.
    assert all(alive[n] for n in alive if n.endswith(("weight", "gamma", "beta")))
    assert sum(alive.values()) >= 0.95 * len(alive)


def test_train_steps_reduce_the_loss_on_a_fixed_batch():
    # PYNATIVE: train.py's GRAPH-mode steps are covered by tests/test_train.py.
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = create_model("BiMLP_T")
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    step = nn.TrainOneStepCell(loss, nn.AdamWeightDecay(net.trainable_params(), learning_rate=2e-3,
                                                         weight_decay=0.0))
    step.set_train(True)
    x, y = tiny_batch(16)
    losses = [float(step(x, y).asnumpy()) for _ in range(8)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0]
