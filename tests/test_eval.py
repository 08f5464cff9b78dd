"""eval.py and the run_eval scripts end to end, on generated image files and checkpoints of known accuracy.

A known-accuracy checkpoint has head.weight = 0, so the logits equal head.bias
for every image: the prediction is always the class with the largest bias and
the top-5 are the five largest. Accuracy is then the share of images in those
classes, whatever the rest of the (random) network computes.

BiMLP_S runs in pynative mode here: compiling its graph takes minutes on a busy
CPU. Graph mode (the default) is covered by a BiMLP_T run. The image-folder run
goes through scripts/run_eval_cpu.sh, which tests the script and eval.py at once.
"""
import ast
import os
import re
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

import eval as eval_script
from conftest import packed_copy
from data_images import noisy, solid, truncate, write_idx, write_tree
from src import pretrained
from src.checkpoint import model_records
from src.context import UserError, run_cli
from src.dataset import FASHION_MNIST_DIR
from src.wavemlp_20_3 import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL = os.path.join(ROOT, "eval.py")

# Six classes; sorted folder order gives the labels 0..5.
FRUITS = ["apple", "banana", "cherry", "date", "elder", "fig"]
FRUIT_FILES = {
    "fig/one.png": (noisy(1), "RGB"),
    "banana/gray.jpg": (noisy(2), "L"),
    "banana/palette.png": (noisy(3), "P"),
    "apple/rgb.JPEG": (noisy(4), "RGB"),
    "cherry/cmyk.jpeg": (noisy(5), "CMYK"),
    "date/rgba.png": (noisy(6), "RGBA"),
    "elder/rgb.JPEG": (solid((10, 200, 30)), "RGB"),
}
# banana first, then fig, apple, date, elder: cherry is the only class outside the top 5.
FRUIT_BIAS = [3.0, 5.0, 0.0, 2.0, 1.0, 4.0]
FRUIT_ACC, FRUIT_TOP5 = 2 / 7, 6 / 7  # banana has 2 of the 7 images, cherry 1

FASHION_LABELS = [3, 3, 3, 1, 0, 9, 5]
FASHION_BIAS = [0.5, 0.0, 3.0, 9.0, 2.0, 0.2, 1.0, 0.1, 0.3, 5.0]  # top 5: 3, 9, 2, 4, 6
FASHION_ACC, FASHION_TOP5 = 3 / 7, 4 / 7


def known_checkpoint(path, name, bias, class_names=None):
    """A checkpoint of `name` whose logits are `bias` for every image, recording class_names if given."""
    net = create_model(name, num_classes=len(bias))
    net.head.weight.set_data(ms.Tensor(np.zeros(net.head.weight.shape, np.float32)))
    net.head.bias.set_data(ms.Tensor(np.array(bias, np.float32)))
    ms.save_checkpoint(net, path, append_dict=model_records(True, class_names) if class_names else None)
    return path


@pytest.fixture(scope="session")
def s_checkpoint(tmp_path_factory):
    return known_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "BiMLP_S_6.ckpt"), "BiMLP_S", FRUIT_BIAS)


@pytest.fixture(scope="session")
def t_checkpoint(tmp_path_factory):
    return known_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "BiMLP_T_10.ckpt"), "BiMLP_T", FASHION_BIAS)


@pytest.fixture(scope="session")
def fruits(tmp_path_factory):
    return write_tree(str(tmp_path_factory.mktemp("fruits")), FRUIT_FILES)


def run(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, timeout=900, **kwargs)


def run_eval(*args):
    return run([sys.executable, EVAL, *args], cwd=ROOT)


def parse_result(output):
    match = re.search(r"^result: (\{.*\}) ckpt= (.+)$", output, flags=re.MULTILINE)
    assert match, output
    return ast.literal_eval(match.group(1)), match.group(2)


def assert_user_error(proc, *fragments):
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


@pytest.mark.parametrize("engine", ["exact", "xnor"])
def test_fashion_mnist_layout_in_graph_mode_pads_the_last_batch(tmp_path, t_checkpoint, engine):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28))
    folder = write_idx(str(tmp_path), "test", images, FASHION_LABELS)
    write_idx(folder, "train", images[:1], [0])
    proc = run_eval("--dataset_path", folder, "--checkpoint_path", packed_copy(t_checkpoint, "BiMLP_T"),
                    "--model", "BiMLP_T", "--batch_size", "3", "--engine", engine)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result, _ = parse_result(proc.stdout)
    assert result == {"acc": FASHION_ACC, "top5": FASHION_TOP5, "num_samples": 7}
    assert "fashion_mnist" in proc.stdout and "graph mode" in proc.stdout
    assert f"fused CPU kernels: on, engine {engine}" in proc.stdout


@pytest.mark.parametrize("argv,model", [([], "BiMLP_T14"), (["--model", "BiMLP_T"], "BiMLP_T")])
def test_no_checkpoint_path_uses_the_committed_fashion_mnist_checkpoint(argv, model):
    args = eval_script.resolve(eval_script.parse_args(argv))
    assert (args.checkpoint_path, args.model, args.dataset, args.dataset_path) == \
        (os.path.join(ROOT, "checkpoints", f"{model}_fashion_mnist.packed"), model, "fashion_mnist", FASHION_MNIST_DIR)
    assert (args.image_size, args.num_classes, args.batch_size, args.platform, args.mode) == \
        (28, 10, 64, "CPU", "graph")


def test_no_arguments_without_the_committed_checkpoint_say_so(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "CHECKPOINT_DIR", str(tmp_path))
    with pytest.raises(UserError, match="default Fashion-MNIST checkpoint .* does not exist yet"):
        eval_script.resolve(eval_script.parse_args([]))


def test_imagenet_variants_need_a_checkpoint_path(fruits):
    with pytest.raises(UserError, match="--checkpoint_path is required for BiMLP_S"):
        eval_script.resolve(eval_script.parse_args(["--dataset_path", fruits, "--model", "BiMLP_S"]))


def test_imagenet_defaults(fruits, s_checkpoint):
    args = eval_script.parse_args(["--dataset_path", fruits, "--checkpoint_path", s_checkpoint,
                                   "--model", "BiMLP_S"])
    with pytest.raises(UserError, match="6 class folders that are not ImageNet-1k synsets"):
        eval_script.resolve(args)
    args = eval_script.resolve(eval_script.parse_args(["--dataset_path", fruits, "--checkpoint_path",
                                                       s_checkpoint, "--model", "BiMLP_S",
                                                       "--dataset", "imagefolder"]))
    assert (args.image_size, args.num_classes) == (224, 6)


def test_missing_checkpoint(fruits):
    proc = run_eval("--dataset_path", fruits, "--checkpoint_path", "/nonexistent/x.ckpt",
                    "--model", "BiMLP_S", "--dataset", "imagefolder")
    assert_user_error(proc, "checkpoint not found: /nonexistent/x.ckpt")


def test_checkpoint_of_the_other_variant(fruits, s_checkpoint):
    proc = run_eval("--dataset_path", fruits, "--checkpoint_path", s_checkpoint, "--model", "BiMLP_M",
                    "--dataset", "imagefolder", "--mode", "pynative")
    assert_user_error(proc, "does not fit BiMLP_M", "missing parameters", "unexpected parameters",
                      "--model BiMLP_S")


def test_checkpoint_of_the_other_fashion_mnist_variant(t_checkpoint):
    proc = run_eval("--checkpoint_path", t_checkpoint, "--model", "BiMLP_T14", "--mode", "pynative")
    assert_user_error(proc, "does not fit BiMLP_T14", "patch_embed.proj.weight checkpoint (32, 1, 4, 4) vs model "
                      "(32, 1, 3, 3)", "--model BiMLP_T")


def test_a_negative_device_id_is_a_clear_error(t_checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: eval_script.main(["--checkpoint_path", t_checkpoint, "--model", "BiMLP_T",
                                          "--device_id", "-1"]))
    assert exit_info.value.code == 2
    assert "error: --device_id must be a device number (0, 1, ...), got -1" in capsys.readouterr().err


def test_wrong_class_count(fruits, s_checkpoint):
    proc = run_eval("--dataset_path", fruits, "--checkpoint_path", s_checkpoint, "--model", "BiMLP_S",
                    "--dataset", "imagefolder", "--num_classes", "10", "--mode", "pynative")
    assert_user_error(proc, "head.weight", "--num_classes 6")


def test_fewer_classes_than_class_folders(fruits, s_checkpoint):
    proc = run_eval("--dataset_path", fruits, "--checkpoint_path", s_checkpoint, "--model", "BiMLP_S",
                    "--dataset", "imagefolder", "--num_classes", "4")
    assert_user_error(proc, "the dataset has 6 classes but the model only 4")


def test_missing_dataset_folder(s_checkpoint):
    proc = run_eval("--dataset_path", "/nonexistent/val", "--checkpoint_path", s_checkpoint,
                    "--model", "BiMLP_S")
    assert_user_error(proc, "dataset folder not found: /nonexistent/val")


def test_empty_dataset_folder(tmp_path, s_checkpoint):
    proc = run_eval("--dataset_path", str(tmp_path), "--checkpoint_path", s_checkpoint,
                    "--model", "BiMLP_S", "--dataset", "imagefolder")
    assert_user_error(proc, f"no class folders in {tmp_path}")


def test_corrupt_image(tmp_path, s_checkpoint):
    bad = write_tree(str(tmp_path), {"apple/bad.JPEG": (noisy(7), "RGB")}) + "/apple/bad.JPEG"
    truncate(bad)
    proc = run_eval("--dataset_path", str(tmp_path), "--checkpoint_path", s_checkpoint, "--model",
                    "BiMLP_S", "--dataset", "imagefolder", "--num_classes", "6", "--mode", "pynative")
    assert_user_error(proc, f"cannot decode {bad}")


def test_model_and_dataset_channels_must_agree(fruits, t_checkpoint):
    proc = run_eval("--dataset_path", fruits, "--checkpoint_path", t_checkpoint, "--model", "BiMLP_T",
                    "--dataset", "imagefolder", "--num_classes", "10", "--mode", "pynative")
    assert_user_error(proc, "BiMLP_T takes 1-channel images")
    assert "use BiMLP_T/BiMLP_T14 with fashion_mnist, BiMLP_S/BiMLP_M with imagenet" in proc.stderr


@pytest.mark.parametrize("flags, message", [
    (["--platform", "GPU"], "platform GPU is not available"),
    (["--platform", "TPU"], "invalid choice: 'TPU'"),
    (["--batch_size", "0"], "--batch_size must be at least 1"),
    (["--image_size", "0"], "--image_size must be at least 16"),
    (["--num_classes", "0"], "the dataset has 6 classes but the model only 0"),
    (["--model", "BiMLP_M", "--checkpoint_path", None], "--checkpoint_path is required for BiMLP_M"),
    (["--fused", "true", "--binary", "false"], "--fused true needs the binary network"),
    (["--fused", "true", "--platform", "GPU"], "--fused true needs --platform CPU"),
    (["--engine", "xnor", "--binary", "false"], "--engine xnor computes the binary network"),
    (["--engine", "xnor", "--fused", "false"], "--engine xnor computes the binary network"),
])
def test_bad_flags(fruits, s_checkpoint, flags, message):
    base = {"--dataset_path": fruits, "--checkpoint_path": s_checkpoint, "--model": "BiMLP_S",
            "--dataset": "imagefolder"}
    base.update(zip(flags[::2], flags[1::2]))
    args = [item for flag, value in base.items() if value is not None for item in (flag, value)]
    assert_user_error(run_eval(*args), message)


def test_class_folders_are_labelled_by_the_checkpoints_class_names(tmp_path):
    # The model always predicts "c" (largest bias); a folder holding b and c must give c label 2, not 1.
    checkpoint = known_checkpoint(str(tmp_path / "abc.ckpt"), "BiMLP_S", [0.0, 1.0, 2.0], ["a", "b", "c"])
    folder = write_tree(str(tmp_path / "bc"), {"b/x.png": (noisy(1), "RGB"), "c/y.png": (noisy(2), "RGB")})
    proc = run_eval("--dataset_path", folder, "--checkpoint_path", checkpoint, "--model", "BiMLP_S",
                    "--dataset", "imagefolder", "--image_size", "32", "--mode", "pynative")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert parse_result(proc.stdout)[0] == {"acc": 0.5, "top5": 1.0, "num_samples": 2}
    assert "model: 3 classes" in proc.stdout and "labels: by the checkpoint's class names (a, b, c)" in proc.stdout

    write_tree(folder, {"d/z.png": (noisy(3), "RGB")})
    with pytest.raises(UserError, match=f"{folder}: class folders d are not among the 3 classes of the checkpoint"):
        eval_script.resolve(eval_script.parse_args(["--dataset_path", folder, "--checkpoint_path", checkpoint,
                                                    "--model", "BiMLP_S", "--dataset", "imagefolder"]))


def test_an_imagenet_subset_evaluates_against_a_1000_class_checkpoint(tmp_path):
    # Canonical indices 10 (brambling) and 897 (washer); the model always predicts 897.
    bias = np.zeros(1000, np.float32)
    bias[897] = 1.0
    checkpoint = known_checkpoint(str(tmp_path / "s1000.ckpt"), "BiMLP_S", bias.tolist())
    folder = write_tree(str(tmp_path / "val"), {"n01530575/a.png": (noisy(1), "RGB"),
                                                "n04554684/b.png": (noisy(2), "RGB")})
    proc = run_eval("--dataset_path", folder, "--checkpoint_path", checkpoint, "--model", "BiMLP_S",
                    "--image_size", "32", "--mode", "pynative")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert parse_result(proc.stdout)[0]["acc"] == 0.5
    assert "imagenet at" in proc.stdout and "model: 1000 classes" in proc.stdout


@pytest.mark.parametrize("platform", ["cpu", "gpu", "ascend"])
def test_scripts_print_usage_without_arguments(platform):
    proc = run(["bash", os.path.join(ROOT, "scripts", f"run_eval_{platform}.sh")])
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_cpu_script_evaluates_an_image_folder_exactly(tmp_path, fruits, s_checkpoint):
    log = tmp_path / "eval.log"
    env = dict(os.environ, PYTHON=sys.executable, EVAL_LOG=str(log))
    # Relative paths from the caller's directory must survive the script's cd to the repo root.
    proc = run(["bash", os.path.join(ROOT, "scripts", "run_eval_cpu.sh"), os.path.relpath(fruits, tmp_path),
                os.path.relpath(s_checkpoint, tmp_path), "BiMLP_S", "--dataset", "imagefolder",
                "--image_size", "32", "--batch_size", "4", "--mode", "pynative"], cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result, checkpoint = parse_result(proc.stdout)
    assert result == {"acc": FRUIT_ACC, "top5": FRUIT_TOP5, "num_samples": 7}
    assert checkpoint == os.path.realpath(s_checkpoint)
    assert "evaluating BiMLP_S" in proc.stdout and "7 images" in proc.stdout and "CPU device 0" in proc.stdout
    assert "eval: batch 1/2" in proc.stdout and "eval: batch 2/2, 7/7 images" in proc.stdout
    assert parse_result(log.read_text()) == (result, checkpoint)


def test_gpu_script_fails_cleanly_on_a_cpu_build(tmp_path, fruits, s_checkpoint):
    env = dict(os.environ, PYTHON=sys.executable, EVAL_LOG=str(tmp_path / "eval.log"))
    proc = run(["bash", os.path.join(ROOT, "scripts", "run_eval_gpu.sh"), fruits, s_checkpoint,
                "--dataset", "imagefolder"], env=env)
    assert proc.returncode != 0
    assert "platform GPU is not available" in proc.stdout and "Traceback" not in proc.stdout
