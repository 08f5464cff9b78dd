"""summary.py / src/summary.py: parameter, memory and operation counts against hand-computed values."""
import importlib.util
import os

import mindspore as ms
import numpy as np
import pytest

import summary
from conftest import ROOT
from src.context import run_cli
from src.quan_conv import QuanConv
from src.summary import (KIND_BINARY, KIND_DEPTHWISE, KIND_FLOAT_CONV, cell_counts, conv_resolutions,
                         layer_counts, total)
from src.wavemlp_20_3 import Mlp, create_model

BINARY = dict(quan_name_w="xnor", quan_name_a="xnor", nbit_w=1, nbit_a=1, fast=True)
FLOAT = dict(quan_name_w="fp", quan_name_a="fp", nbit_w=1, nbit_a=1, fast=True)


def only(counts):
    assert len(counts) == 1
    return counts[0]


def test_binary_1x1_conv():
    count = only(cell_counts(QuanConv(8, 16, 1, **BINARY), {"": (5, 5)}))
    assert count.kind == KIND_BINARY
    assert (count.params_1bit, count.params_32bit, count.scales) == (16 * 8, 0, 16)
    assert (count.bops, count.flops) == (16 * 5 * 5 * 8, 0)
    assert count.packed_bytes == 128 / 8 + 4 * 16
    assert count.float32_bytes == 4 * 128


def test_grouped_1x7_conv_with_two_channels_per_group_is_binary():
    conv = QuanConv(16, 8, (1, 7), padding=(0, 0, 3, 3), group=8, **BINARY)
    count = only(cell_counts(conv, {"": (5, 5)}))
    assert count.kind == KIND_BINARY
    assert (count.params_1bit, count.scales) == (8 * 2 * 7, 8 * 7)
    assert (count.bops, count.flops) == (8 * 5 * 5 * 2 * 7, 0)


def test_depthwise_conv_counts_float_weights_and_float_macs():
    conv = QuanConv(8, 8, (7, 1), padding=(3, 3, 0, 0), group=8, **BINARY)
    count = only(cell_counts(conv, {"": (5, 5)}))
    assert count.kind == KIND_DEPTHWISE
    assert (count.params_1bit, count.params_32bit, count.scales) == (0, 8 * 7, 0)
    assert (count.bops, count.flops) == (0, 8 * 5 * 5 * 7)


def test_float_twin_conv_is_float():
    count = only(cell_counts(QuanConv(8, 16, 1, **FLOAT), {"": (5, 5)}))
    assert count.kind == KIND_FLOAT_CONV
    assert (count.params_1bit, count.params_32bit, count.bops, count.flops) == (0, 128, 0, 16 * 5 * 5 * 8)


def test_channel_mlp_by_hand():
    counts = cell_counts(Mlp(8, 32, 8, BINARY), {"fc1": (5, 5), "fc2": (5, 5)})
    whole = total(counts)
    assert whole.params_1bit == 8 * 32 + 32 * 8
    # move1 8 + move2 32; norm0/norm1 4 x 32 each, norm2 4 x 8; act1/act2 3 x 32 each, act3 3 x 8
    assert whole.params_32bit == 8 + 32 + 2 * 128 + 32 + 2 * 96 + 24
    assert whole.scales == 32 + 8
    assert whole.bops == 32 * 25 * 8 + 8 * 25 * 32
    assert whole.flops == 0
    assert whole.packed_bytes == 512 / 8 + 4 * (544 + 40)
    assert whole.ops == whole.bops / 64


def hooked_output_shapes(net, image_size):
    """Output (H, W) of every conv from a real PyNative forward pass."""
    shapes = {}
    for name, cell in net.cells_and_names():
        if isinstance(cell, (QuanConv, ms.nn.Conv2d)):
            cell.register_forward_hook(lambda c, inputs, output, name=name: shapes.__setitem__(name, output.shape[2:]))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net.set_train(False)
    net(ms.Tensor(np.zeros((1, 1, image_size, image_size), np.float32)))
    return {name: tuple(shape) for name, shape in shapes.items()}


def test_analytic_shapes_match_a_forward_pass():
    net = create_model("BiMLP_T", fused=False)  # the fused kernels run around the conv cells, not through them
    assert conv_resolutions(net, 28) == hooked_output_shapes(net, 28)


def test_tiny_bimlp_totals():
    net = create_model("BiMLP_T")  # 4x4 stride-4 stem: 7x7 tokens, then 4x4, 2x2, 1x1
    counts = {count.name: count for count in layer_counts(net, 28)}
    whole = total(counts.values())
    assert whole.params_1bit + whole.params_32bit == sum(p.size for p in net.get_parameters())
    assert counts["patch_embed.proj"].flops == 32 * 7 * 7 * 1 * 4 * 4
    assert counts["network.1.proj"].flops == 64 * 7 * 7 * 32
    assert counts["network.2.0.attn.fc_h"].bops == 64 * 4 * 4 * 64
    assert counts["network.2.0.attn.tfc_w"].bops == 64 * 4 * 4 * 2 * 7
    assert counts["network.2.0.attn.reweight.fc2"].bops == 192 * 16
    assert counts["network.6.0.sfc_h"].flops == 256 * 1 * 1 * 7
    assert counts["head"].flops == 256 * 10


def test_bimlp_s_at_224():
    counts = {count.name: count for count in layer_counts(create_model("BiMLP_S"), 224)}
    whole = total(counts.values())
    assert whole.params_1bit + whole.params_32bit == 15_975_196  # shared/reference/README.md
    assert counts["patch_embed.proj"].flops == 64 * 56 * 56 * 3 * 7 * 7
    assert counts["network.6.1.mlp.fc1"].bops == 2048 * 7 * 7 * 512
    assert counts["network.0.0.sfc_h"].flops == 64 * 56 * 56 * 7
    assert whole.ops == whole.bops / 64 + whole.flops


def test_cli_markdown(capsys):
    summary.main(["--model", "BiMLP_T", "--markdown", "--per_layer"])
    out = capsys.readouterr().out
    assert "| network.0.0.mlp.fc1 | binary conv | 128x7x7 |" in out
    assert "| OPs = BOPs/64 + FLOPs |" in out


@pytest.mark.parametrize("size", ["2", "0"])
def test_cli_rejects_too_small_image(capsys, size):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: summary.main(["--model", "BiMLP_S", "--image_size", size]))
    assert exit_info.value.code == 2
    assert f"--image_size must be at least 16, got {size}" in capsys.readouterr().err


def test_architecture_figure(tmp_path):
    script = os.path.join(ROOT, "scripts", "make_arch_figure.py")
    spec = importlib.util.spec_from_file_location("make_arch_figure", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.draw("BiMLP_T", 28, str(tmp_path / "arch.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
