"""Packed 1-bit checkpoints: unpacking reproduces the quantized weights and logits bit for bit."""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

import pack
from conftest import ROOT
from reference import reference_params
from src.checkpoint import BINARY_MARKER, load_weights, read_checkpoint, recorded_binary, save_checkpoint
from src.context import UserError, run_cli
from src.packing import SHAPE, SIGNS, pack_params, packable_layers, read_packed, save_packed, unpack_arrays
from src.summary import layer_counts, total
from src.wavemlp_20_3 import create_model


@pytest.fixture(autouse=True)
def pynative():
    """The packer runs the layers' quantizers op by op."""
    ms.set_context(mode=ms.PYNATIVE_MODE)


def seeded_params(model="BiMLP_T"):
    ms.set_seed(0)
    net = create_model(model)
    return net, {name: p.asnumpy() for name, p in net.parameters_and_names()}


def run_pack(*args):
    """pack.py in its own process: MindSpore fixes the device once per process."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "pack.py"), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def round_trip(net, params, model):
    arrays, kept_float = pack_params(params, packable_layers(net), model)
    return arrays, kept_float, unpack_arrays(arrays)


def assert_same_quantized_weights(net, original, unpacked):
    for name, cell in packable_layers(net).items():
        before = cell.quantize_weight(ms.Tensor(original[name])).asnumpy()
        after = cell.quantize_weight(ms.Tensor(unpacked[name])).asnumpy()
        assert np.array_equal(before, after), name


@pytest.fixture(scope="module")
def tiny():
    """BiMLP_T's parameters packed and unpacked: (net, params, arrays, kept_float, unpacked)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net, params = seeded_params()
    return (net, params, *round_trip(net, params, "BiMLP_T"))


def test_round_trip_keeps_quantized_weights_and_float_parameters(tiny):
    net, params, arrays, kept_float, unpacked = tiny
    layers = packable_layers(net)
    assert not kept_float
    assert {name[:-len(SIGNS)] for name in arrays if name.endswith(SIGNS)} == set(layers)
    assert list(unpacked) == list(params)
    for name, value in params.items():
        if name not in layers:
            assert np.array_equal(unpacked[name], value), name
    assert_same_quantized_weights(net, params, unpacked)


def test_depthwise_layers_stay_float(tiny):
    arrays = tiny[2]
    assert "network.0.0.sfc_h.weight" in arrays and "network.0.0.sfc_h.weight" + SIGNS not in arrays
    assert "network.0.0.attn.tfc_h.weight" + SIGNS in arrays


def test_summary_counts_what_the_packer_stores(tiny):
    net, arrays = tiny[0], tiny[2]
    whole = total(layer_counts(net, 28))
    assert whole.params_1bit == sum(int(np.prod(arrays[n])) for n in arrays if n.endswith(SHAPE))
    assert whole.scales == sum(arrays[n].size for n in arrays if n.endswith("@scale"))


def test_exact_zero_weight_keeps_its_layer_float(tiny):
    name = "network.0.0.mlp.fc1.weight"
    weight = tiny[1][name].copy()
    weight[3, 5, 0, 0] = 0.0
    layer = {name: packable_layers(tiny[0])[name]}
    arrays, kept_float = pack_params({name: weight}, layer, "BiMLP_T")
    assert kept_float == [name]
    assert name + SIGNS not in arrays
    assert np.array_equal(unpack_arrays(arrays)[name], weight)


def test_cli_round_trip_gives_identical_logits(tmp_path):
    net, params = seeded_params()
    ckpt, packed, unpacked = tmp_path / "t.ckpt", tmp_path / "t.npz", tmp_path / "t_unpacked.ckpt"
    ms.save_checkpoint(net, str(ckpt))
    assert "packed 48 binary layers' weights" in run_pack("--checkpoint_path", str(ckpt), "--checkpoint_nm", "BiMLP_T",
                                                 "--output", str(packed))
    run_pack("--unpack", "--checkpoint_path", str(packed), "--output", str(unpacked))
    assert str(read_packed(str(packed))["model"]) == "BiMLP_T"
    assert packed.stat().st_size * 4 < ckpt.stat().st_size

    ms.set_context(mode=ms.GRAPH_MODE)
    images = ms.Tensor(np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32))
    model = create_model("BiMLP_T")
    model.set_train(False)
    load_weights(model, str(ckpt), "BiMLP_T")
    before = model(images).asnumpy()
    load_weights(model, str(unpacked), "BiMLP_T")
    after = model(images).asnumpy()
    assert np.array_equal(before, after)


def test_reference_bimlp_s_quantized_weights_survive():
    params = dict(reference_params("BiMLP_S", 1))
    net = create_model("BiMLP_S")
    arrays, kept_float, unpacked = round_trip(net, params, "BiMLP_S")
    assert not kept_float
    assert sum(name.endswith(SIGNS) for name in arrays) == 120
    assert_same_quantized_weights(net, params, unpacked)


@pytest.mark.parametrize("argv,message", [
    (["--checkpoint_path", "missing.ckpt", "--output", "x.npz"], "checkpoint not found"),
    (["--unpack", "--checkpoint_path", "missing.npz", "--output", "x.ckpt"], "packed checkpoint not found"),
    (["--checkpoint_path", "a.ckpt", "--output", "x.ckpt"], "must end in .npz"),
])
def test_cli_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: pack.main(argv))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unpack_rejects_other_npz(tmp_path, capsys):
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(SystemExit):
        run_cli(lambda: pack.main(["--unpack", "--checkpoint_path", str(other), "--output", str(tmp_path / "x.ckpt")]))
    assert "not a packed BiMLP checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("binary", [True, False])
def test_unpacking_keeps_the_binary_or_float_record(tmp_path, binary):
    ms.set_seed(0)
    ckpt, packed, unpacked = tmp_path / "t.ckpt", tmp_path / "t.npz", tmp_path / "t_unpacked.ckpt"
    save_checkpoint(create_model("BiMLP_T", binary=binary), str(ckpt), append_dict={BINARY_MARKER: int(binary)})
    run_cli(lambda: pack.main(["--checkpoint_path", str(ckpt), "--checkpoint_nm", "BiMLP_T", "--output", str(packed),
                               "--binary", str(binary).lower()]))
    run_cli(lambda: pack.main(["--unpack", "--checkpoint_path", str(packed), "--output", str(unpacked)]))
    assert recorded_binary(read_checkpoint(str(unpacked))) is binary
    with pytest.raises(UserError, match=f"holds a {'binary' if binary else 'float'} network"):
        load_weights(create_model("BiMLP_T", binary=not binary), str(unpacked), "BiMLP_T")
    if binary:
        with pytest.raises(UserError, match="a distillation teacher must be a float twin"):
            load_weights(create_model("BiMLP_T", binary=False), str(unpacked), "BiMLP_T", teacher=True)


def test_a_float_twin_is_refused_with_packs_own_flag(tmp_path, capsys):
    ckpt = tmp_path / "float.ckpt"
    save_checkpoint(create_model("BiMLP_T", binary=False), str(ckpt), append_dict={BINARY_MARKER: 0})
    with pytest.raises(SystemExit):
        run_cli(lambda: pack.main(["--checkpoint_path", str(ckpt), "--checkpoint_nm", "BiMLP_T",
                                   "--output", str(tmp_path / "x.npz")]))
    assert "holds a float network, but a binary one was built: pass --binary false" in capsys.readouterr().err


def test_damaged_archives_and_unwritable_outputs_are_clear_errors(tmp_path, capsys):
    net, params = seeded_params()
    packed = tmp_path / "t.npz"
    save_packed(pack_params(params, packable_layers(net), "BiMLP_T")[0], str(packed))
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(packed.read_bytes()[:5000])
    (tmp_path / "file").write_text("x")
    for argv, message in [
        (["--unpack", "--checkpoint_path", str(damaged), "--output", str(tmp_path / "x.ckpt")],
         f"cannot read packed checkpoint {damaged}: damaged or not a .npz archive"),
        (["--unpack", "--checkpoint_path", str(packed), "--output", str(tmp_path / "file" / "x.ckpt")],
         f"--output {tmp_path / 'file' / 'x.ckpt'}: {tmp_path / 'file'} is a file, not a folder"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: pack.main(argv))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
