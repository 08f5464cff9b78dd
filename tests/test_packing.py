"""Packed 1-bit checkpoints: unpacking reproduces the quantized weights and logits bit for bit."""
import os
import shutil
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

import pack
from conftest import ROOT
from reference import reference_params
import src.pretrained as pretrained
from src.checkpoint import (BINARY_MARKER, load_weights, model_records, read_checkpoint, recorded_binary,
                            recorded_class_names, save_checkpoint)
from src.context import UserError, run_cli
from src.packing import SCALE, SHAPE, SIGNS, pack_params, packable_layers, read_packed, save_packed, unpack_params
from src.summary import layer_counts, total
from src.wavemlp_20_3 import create_model, models_for


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
    packed, kept_float = pack_params(params, packable_layers(net), model)
    return packed["tensors"], kept_float, unpack_params(packed)


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
    assert whole.scales == sum(arrays[n].size for n in arrays if n.endswith(SCALE))


def test_exact_zero_weight_keeps_its_layer_float(tiny):
    name = "network.0.0.mlp.fc1.weight"
    weight = tiny[1][name].copy()
    weight[3, 5, 0, 0] = 0.0
    layer = {name: packable_layers(tiny[0])[name]}
    packed, kept_float = pack_params({name: weight}, layer, "BiMLP_T")
    assert kept_float == [name]
    assert name + SIGNS not in packed["tensors"]
    assert np.array_equal(unpack_params(packed)[name], weight)


def test_cli_round_trip_gives_identical_logits_and_keeps_the_records(tmp_path):
    net, params = seeded_params()
    ckpt, packed, unpacked = tmp_path / "t.ckpt", tmp_path / "t.packed", tmp_path / "t_unpacked.ckpt"
    names = [f"class {i}" for i in range(10)]
    ms.save_checkpoint(net, str(ckpt), append_dict=model_records(True, names))
    assert "packed 48 binary layers' weights" in run_pack("--checkpoint_path", str(ckpt), "--model", "BiMLP_T",
                                                          "--output", str(packed))
    run_pack("--unpack", "--checkpoint_path", str(packed), "--output", str(unpacked))
    assert read_packed(str(packed))["model"] == "BiMLP_T"
    assert packed.stat().st_size * 6 < ckpt.stat().st_size
    # The loader knows a packed file by its content, even under a .ckpt name.
    packed_as_ckpt = tmp_path / "packed.ckpt"
    shutil.copy(packed, packed_as_ckpt)

    ms.set_context(mode=ms.GRAPH_MODE)
    images = ms.Tensor(np.random.default_rng(0).normal(size=(2, 1, 28, 28)).astype(np.float32))
    model = create_model("BiMLP_T")
    model.set_train(False)
    logits = {}
    for path in (ckpt, packed_as_ckpt, unpacked):
        records = load_weights(model, str(path), "BiMLP_T")
        assert recorded_class_names(records) == names and int(records[BINARY_MARKER].asnumpy()) == 1, path
        logits[path] = model(images).asnumpy()
    assert all(np.array_equal(logits[ckpt], value) for value in logits.values())


def test_a_float_twin_is_stored_float_as_is_or_as_float16(tmp_path):
    twin = create_model("BiMLP_T", binary=False)
    ckpt = str(tmp_path / "float.ckpt")
    ms.save_checkpoint(twin, ckpt, append_dict=model_records(False, []))
    for flags, dtype in (([], np.float32), (["--float16"], np.float16)):
        out = str(tmp_path / f"float_{dtype.__name__}.packed")
        pack.main(["--checkpoint_path", ckpt, "--model", "BiMLP_T", "--output", out, *flags])
        tensors = read_packed(out)["tensors"]
        assert not any(key.endswith(SIGNS) for key in tensors)
        loaded = read_checkpoint(out)
        assert int(loaded[BINARY_MARKER].asnumpy()) == 0
        for name, param in twin.parameters_and_names():
            assert tensors[name].dtype == dtype
            assert np.array_equal(loaded[name].asnumpy(), param.asnumpy().astype(dtype).astype(np.float32)), name


def tiny_packed(path):
    packed, _ = pack_params({"w": np.arange(6, dtype=np.float32)}, {}, "BiMLP_T", model_records(False, ["a"]))
    save_packed(packed, path)
    return path


@pytest.mark.parametrize("name", ["tiny.packed", "tiny.ckpt"])
def test_every_flipped_byte_of_a_packed_file_is_refused(tmp_path, name):
    good = tiny_packed(str(tmp_path / "good.packed"))
    assert read_checkpoint(good)["w"].asnumpy().tolist() == list(range(6))
    data = open(good, "rb").read()
    bad = str(tmp_path / name)
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        with open(bad, "wb") as f:
            f.write(damaged)
        with pytest.raises(UserError, match="checkpoint") as error:
            read_checkpoint(bad)
        assert bad in str(error.value), position


def test_committed_checkpoints_are_packed_and_match_their_recorded_sha256():
    files = sorted(os.listdir(pretrained.CHECKPOINT_DIR))
    assert files == sorted(pretrained.SHIPPED_SHA256)
    for name in files:
        path = os.path.join(pretrained.CHECKPOINT_DIR, name)
        assert pretrained.file_sha256(path) == pretrained.SHIPPED_SHA256[name], name
        assert read_packed(path)["format"] == "bimlp-packed-2"
    assert all(os.path.basename(pretrained.shipped_checkpoint(name)) in files for name in models_for("fashion_mnist"))


@pytest.fixture
def shipping_place(tmp_path, monkeypatch):
    """A stand-in checkpoints/ folder and SHA-256 table, so tests never touch the repository's."""
    table = tmp_path / "pretrained.py"
    shutil.copy(pretrained.TABLE_SOURCE, table)
    monkeypatch.setattr(pretrained, "CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setattr(pretrained, "TABLE_SOURCE", str(table))
    monkeypatch.setattr(pretrained, "SHIPPED_SHA256", dict(pretrained.SHIPPED_SHA256))
    return tmp_path / "checkpoints", table


def test_a_committed_file_with_another_sha256_is_refused_by_name(shipping_place):
    folder, _ = shipping_place
    replaced = tiny_packed(str(folder / "BiMLP_T_fashion_mnist.packed"))
    with pytest.raises(UserError, match=f"{replaced} is not the committed checkpoint: its SHA-256 is "):
        read_checkpoint(replaced)


def test_ship_writes_the_committed_file_and_records_its_sha256(shipping_place, tmp_path, capsys):
    folder, table = shipping_place
    net, _ = seeded_params()
    ckpt = str(tmp_path / "best.ckpt")
    ms.save_checkpoint(net, ckpt, append_dict=model_records(True, [str(i) for i in range(10)]))
    pack.main(["--checkpoint_path", ckpt, "--model", "BiMLP_T", "--ship"])
    shipped = str(folder / "BiMLP_T_fashion_mnist.packed")
    digest = pretrained.file_sha256(shipped)
    assert f"SHA-256 {digest}  {shipped}" in capsys.readouterr().out
    assert f'    "BiMLP_T_fashion_mnist.packed": "{digest}",\n' in table.read_text()
    assert pretrained.SHIPPED_SHA256["BiMLP_T_fashion_mnist.packed"] == digest
    assert recorded_class_names(read_checkpoint(shipped)) == [str(i) for i in range(10)]


def test_reference_bimlp_s_quantized_weights_survive():
    params = dict(reference_params("BiMLP_S", 1))
    net = create_model("BiMLP_S")
    arrays, kept_float, unpacked = round_trip(net, params, "BiMLP_S")
    assert not kept_float
    assert sum(name.endswith(SIGNS) for name in arrays) == 120
    assert_same_quantized_weights(net, params, unpacked)


@pytest.mark.parametrize("argv,message", [
    (["--checkpoint_path", "missing.ckpt", "--output", "x.packed"], "checkpoint not found"),
    (["--unpack", "--checkpoint_path", "missing.packed", "--output", "x.ckpt"], "packed checkpoint not found"),
    (["--checkpoint_path", "a.ckpt", "--output", "x.ckpt"], "must end in .packed"),
    (["--checkpoint_path", "a.ckpt"], "give either --output or --ship"),
    (["--checkpoint_path", "a.ckpt", "--model", "BiMLP_S", "--ship"], "only BiMLP_T/BiMLP_T14 checkpoints"),
])
def test_cli_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: pack.main(argv))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unpack_rejects_other_files(tmp_path, capsys):
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(SystemExit):
        run_cli(lambda: pack.main(["--unpack", "--checkpoint_path", str(other), "--output", str(tmp_path / "x.ckpt")]))
    assert "not a packed BiMLP checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("binary", [True, False])
def test_unpacking_keeps_the_binary_or_float_record(tmp_path, binary):
    ms.set_seed(0)
    ckpt, packed, unpacked = tmp_path / "t.ckpt", tmp_path / "t.packed", tmp_path / "t_unpacked.ckpt"
    save_checkpoint(create_model("BiMLP_T", binary=binary), str(ckpt), append_dict={BINARY_MARKER: int(binary)})
    run_cli(lambda: pack.main(["--checkpoint_path", str(ckpt), "--model", "BiMLP_T", "--output", str(packed)]))
    run_cli(lambda: pack.main(["--unpack", "--checkpoint_path", str(packed), "--output", str(unpacked)]))
    assert recorded_binary(read_checkpoint(str(unpacked))) is binary
    with pytest.raises(UserError, match=f"holds a {'binary' if binary else 'float'} network"):
        load_weights(create_model("BiMLP_T", binary=not binary), str(unpacked), "BiMLP_T")
    if binary:
        with pytest.raises(UserError, match="a distillation teacher must be a float twin"):
            load_weights(create_model("BiMLP_T", binary=False), str(unpacked), "BiMLP_T", teacher=True)


def test_a_float_twin_is_refused_as_binary(tmp_path, capsys):
    ckpt = tmp_path / "float.ckpt"
    save_checkpoint(create_model("BiMLP_T", binary=False), str(ckpt), append_dict={BINARY_MARKER: 0})
    with pytest.raises(SystemExit):
        run_cli(lambda: pack.main(["--checkpoint_path", str(ckpt), "--model", "BiMLP_T", "--binary", "true",
                                   "--output", str(tmp_path / "x.packed")]))
    assert "holds a float network, but a binary one was built: pass --binary false" in capsys.readouterr().err


def test_damaged_archives_and_unwritable_outputs_are_clear_errors(tmp_path, capsys):
    net, params = seeded_params()
    packed = tmp_path / "t.packed"
    save_packed(pack_params(params, packable_layers(net), "BiMLP_T")[0], str(packed))
    damaged = tmp_path / "damaged.packed"
    damaged.write_bytes(packed.read_bytes()[:5000])
    (tmp_path / "file").write_text("x")
    for argv, message in [
        (["--unpack", "--checkpoint_path", str(damaged), "--output", str(tmp_path / "x.ckpt")],
         f"packed checkpoint {damaged} is damaged: its content does not match its SHA-256"),
        (["--unpack", "--checkpoint_path", str(packed), "--output", str(tmp_path / "file" / "x.ckpt")],
         f"--output {tmp_path / 'file' / 'x.ckpt'}: {tmp_path / 'file'} is a file, not a folder"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: pack.main(argv))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
