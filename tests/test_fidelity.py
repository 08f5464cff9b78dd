"""The network is the released network: same parameters, same logits as upstream."""
import mindspore as ms
import numpy as np
import pytest

from reference import CASES, manifest, reference_input, reference_logits, reference_params
from src.wavemlp_20_3 import create_model


@pytest.mark.parametrize("model", ["BiMLP_S", "BiMLP_M"])
def test_parameter_names_shapes_and_order_match_manifest(model):
    net = create_model(model)
    ours = [(name, list(p.shape), p.requires_grad) for name, p in net.parameters_and_names()]
    theirs = [(name, shape, grad) for name, shape, _dtype, grad in manifest()[model]]
    assert ours == theirs


@pytest.mark.parametrize("model,seed,mode,fused", [
    (model, seed, mode, fused) for model, seed in CASES
    for mode, fused in [("graph", True), ("graph", False)] + ([("pynative", True)] if model == "BiMLP_S" else [])])
def test_eval_logits_match_upstream(model, seed, mode, fused):
    """The default network (fused CPU kernels) and the MindSpore-operators-only one, bit for bit."""
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    net = create_model(model, fused=fused)
    params = {n: ms.Parameter(ms.Tensor(v), name=n) for n, v in reference_params(model, seed)}
    not_loaded, unused = ms.load_param_into_net(net, params, strict_load=True)
    assert not not_loaded and not unused
    net.set_train(False)
    logits = net(ms.Tensor(reference_input(seed))).asnumpy()
    expected = reference_logits(model, seed)
    assert net.fused == fused
    np.testing.assert_array_equal(logits, expected)  # bit-identical, as the README promises
