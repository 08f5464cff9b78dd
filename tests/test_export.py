"""export.py: MINDIR gives the Cell's logits exactly, ONNX runs in onnxruntime, errors are clear."""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

import export
from conftest import ROOT, packed_copy
from src.checkpoint import load_weights
from src.context import UserError, run_cli
from src.wavemlp_20_3 import create_model

BATCH = 2


def images():
    return np.random.default_rng(3).normal(size=(BATCH, 1, 28, 28)).astype(np.float32)


def export_command(checkpoint, file_format, file_name):
    return [sys.executable, os.path.join(ROOT, "export.py"), "--checkpoint_path", checkpoint,
            "--model", "BiMLP_T", "--file_format", file_format, "--batch_size", str(BATCH),
            "--file_name", file_name]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A seeded BiMLP_T checkpoint, packed, exported by the CLI to MINDIR and ONNX (in parallel),
    and the Cell's eval logits: ({format: path}, logits)."""
    folder = tmp_path_factory.mktemp("export")
    ms.set_seed(1)
    checkpoint = str(folder / "t.ckpt")
    ms.save_checkpoint(create_model("BiMLP_T"), checkpoint)
    packed = packed_copy(checkpoint, "BiMLP_T")  # export.py reads it as it is, logits bit-identical
    runs = {fmt: subprocess.Popen(export_command(packed, fmt, str(folder / "bimlp_t")), cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for fmt in ("MINDIR", "ONNX")}
    ms.set_context(mode=ms.GRAPH_MODE)
    net = create_model("BiMLP_T")
    load_weights(net, checkpoint, "BiMLP_T")
    net.set_train(False)
    logits = net(ms.Tensor(images())).asnumpy()
    paths = {}
    for fmt, proc in runs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, out + err
        paths[fmt] = str(folder / f"bimlp_t{export.EXTENSIONS[fmt]}")
        assert paths[fmt] in out
    return paths, logits


def test_mindir_gives_the_cells_logits(exported):
    paths, logits = exported
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = nn.GraphCell(ms.load(paths["MINDIR"]))
    assert np.array_equal(graph(ms.Tensor(images())).asnumpy(), logits)


def test_onnx_runs_in_onnxruntime_like_the_cell(exported):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    paths, logits = exported
    model = onnx.load(paths["ONNX"])
    operators = {node.op_type for node in model.graph.node}
    assert not operators & {"Sign", "AdaptiveAvgPool2D", "Round"}
    pads = {tuple(node.attribute[i].ints) for node in model.graph.node if node.op_type == "Conv"
            for i in range(len(node.attribute)) if node.attribute[i].name == "pads"}
    assert (0, 3, 0, 3) in pads and (3, 0, 3, 0) in pads  # 1x7 and 7x1 convs, ONNX order
    session = onnxruntime.InferenceSession(paths["ONNX"])
    result = session.run(None, {session.get_inputs()[0].name: images()})[0]
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
