"""export.py: MINDIR gives the Cell's logits exactly, ONNX runs in onnxruntime, errors are clear."""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

import export
from conftest import ROOT, packed_copy, require_module
from reference import reference_params
from src.checkpoint import BINARY_MARKER, load_weights, save_checkpoint
from src.context import UserError, run_cli
from src.wavemlp_20_3 import create_model

BATCH = 2
# (input channels, image size): BiMLP_M (GroupNorm, rewritten for ONNX) at a small size keeps the test cheap.
SHAPES = {"BiMLP_T": (1, 28), "BiMLP_M": (3, 32)}


def images(model):
    channels, size = SHAPES[model]
    return np.random.default_rng(3).normal(size=(BATCH, channels, size, size)).astype(np.float32)


def export_command(model, checkpoint, file_format, file_name):
    return [sys.executable, os.path.join(ROOT, "export.py"), "--checkpoint_path", checkpoint,
            "--model", model, "--file_format", file_format, "--batch_size", str(BATCH),
            "--image_size", str(SHAPES[model][1]), "--file_name", file_name]


def seeded_checkpoint(model, path):
    """BiMLP_T: seeded random weights, packed (export.py reads packed files as they are, logits
    bit-identical); BiMLP_M: the upstream reference weights (calibrated statistics), a .ckpt."""
    if model == "BiMLP_M":
        net = create_model(model)
        params = {n: ms.Parameter(ms.Tensor(v), name=n) for n, v in reference_params(model, 4)}
        ms.load_param_into_net(net, params, strict_load=True)
    else:
        ms.set_seed(1)
        net = create_model(model)
    ms.save_checkpoint(net, path)
    return packed_copy(path, model) if model == "BiMLP_T" else path


@pytest.fixture(scope="module", params=list(SHAPES))
def exported(request, tmp_path_factory):
    """A checkpoint exported by the CLI to MINDIR and ONNX (in parallel), and the Cell's eval
    logits: (model, {format: path}, logits)."""
    model = request.param
    folder = tmp_path_factory.mktemp("export")
    checkpoint = seeded_checkpoint(model, str(folder / "model.ckpt"))
    runs = {fmt: subprocess.Popen(export_command(model, checkpoint, fmt, str(folder / model.lower())), cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for fmt in ("MINDIR", "ONNX")}
    ms.set_context(mode=ms.PYNATIVE_MODE)  # the eval logits of graph mode, without a third compilation
    net = create_model(model)
    load_weights(net, checkpoint, model)
    net.set_train(False)
    logits = net(ms.Tensor(images(model))).asnumpy()
    paths = {}
    for fmt, proc in runs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, out + err
        paths[fmt] = str(folder / f"{model.lower()}{export.EXTENSIONS[fmt]}")
        assert paths[fmt] in out
    return model, paths, logits


def test_mindir_gives_the_cells_logits(exported):
    model, paths, logits = exported
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = nn.GraphCell(ms.load(paths["MINDIR"]))
    np.testing.assert_array_equal(graph(ms.Tensor(images(model))).asnumpy(), logits)


def test_onnx_runs_in_onnxruntime_like_the_cell(exported):
    onnx = require_module("onnx")
    onnxruntime = require_module("onnxruntime")
    model_name, paths, logits = exported
    model = onnx.load(paths["ONNX"])
    operators = {node.op_type for node in model.graph.node}
    assert not operators & {"Sign", "AdaptiveAvgPool2D", "Round", "GroupNormalization"}
    pads = {tuple(node.attribute[i].ints) for node in model.graph.node if node.op_type == "Conv"
            for i in range(len(node.attribute)) if node.attribute[i].name == "pads"}
    assert (0, 3, 0, 3) in pads and (3, 0, 3, 0) in pads  # 1x7 and 7x1 convs, ONNX order
    session = onnxruntime.InferenceSession(paths["ONNX"])
    result = session.run(None, {session.get_inputs()[0].name: images(model_name)})[0]
    # Another runtime rounds differently; on this small model that stays at float rounding.
    assert np.abs(result - logits).max() <= 1e-4 * (1 + np.abs(logits).max())
    assert (result.argmax(1) == logits.argmax(1)).all()


def test_air_needs_ascend(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: export.main(["--checkpoint_path", "x.ckpt", "--file_format", "AIR"]))
    assert exit_info.value.code == 2
    assert "AIR export needs the Ascend backend" in capsys.readouterr().err


class SignNet(nn.Cell):
    def construct(self, x):
        return ops.sign(x)


def test_an_operator_without_onnx_converter_is_named(tmp_path):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    with pytest.raises(UserError, match="ONNX export cannot express the MindSpore operator Sign"):
        export.export_network(SignNet(), ms.Tensor(np.ones((1, 2), np.float32)), str(tmp_path / "sign"), "ONNX")


def test_an_unwritable_file_name_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: export.main(["--checkpoint_path", "x.ckpt", "--file_name", str(tmp_path / "file" / "net")]))
    assert exit_info.value.code == 2
    assert f"--file_name {tmp_path / 'file' / 'net.mindir'}: {tmp_path / 'file'} is a file" in capsys.readouterr().err


def test_float_twins_export_with_binary_false(tmp_path, capsys, monkeypatch):
    checkpoint = str(tmp_path / "float.ckpt")
    save_checkpoint(create_model("BiMLP_T", binary=False), checkpoint, append_dict={BINARY_MARKER: 0})
    argv = ["--checkpoint_path", checkpoint, "--model", "BiMLP_T", "--file_name", str(tmp_path / "net")]
    with pytest.raises(SystemExit):
        run_cli(lambda: export.main(argv))
    assert "holds a float network, but a binary one was built: pass --binary false" in capsys.readouterr().err
    exported = []
    monkeypatch.setattr(export, "export_network", lambda net, *args: exported.append(net.binary) or "net.mindir")
    run_cli(lambda: export.main([*argv, "--binary", "false"]))
    assert exported == [False]
