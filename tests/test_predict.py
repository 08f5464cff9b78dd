"""predict.py: top-k with class names for an image or a folder, eval preprocessing, clear errors."""
import gzip
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

import predict
from conftest import ROOT, packed_copy
from data_images import write_high_depth
from src.checkpoint import CLASS_NAMES_RECORD, load_weights, model_records, save_checkpoint
from src.context import run_cli
from src.dataset import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, create_dataset, preprocess_image_file
from src.pretrained import SHIPPED_DEFAULT_MODEL, shipped_checkpoint
from src.wavemlp_20_3 import create_model

IMAGES = 3
RECORDED = [f"{name} (recorded)" for name in FASHION_MNIST_CLASSES]


def fashion_mnist_test_images(count):
    with gzip.open(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")) as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:count]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A seeded BiMLP_T checkpoint recording the class names RECORDED, and a folder with the first test
    images as PNG, the first one also as a 16-bit PNG, plus one broken file."""
    folder = tmp_path_factory.mktemp("predict")
    ms.set_seed(2)
    checkpoint = str(folder / "t.ckpt")
    ms.save_checkpoint(create_model("BiMLP_T"), checkpoint, append_dict=model_records(True, RECORDED))
    save_checkpoint(create_model("BiMLP_T", binary=False), str(folder / "float.ckpt"),
                    append_dict=model_records(False, RECORDED))
    images = folder / "images"
    images.mkdir()
    for index, pixels in enumerate(fashion_mnist_test_images(IMAGES)):
        Image.fromarray(pixels).save(images / f"{index}.png")
    write_high_depth(str(images / "0_16bit.png"), fashion_mnist_test_images(1)[0], "I;16")
    (images / "broken.png").write_text("not an image")
    (images / "notes.txt").write_text("not an image either, and not an image name")
    return checkpoint, str(images)


def predict_command(*args):
    return [sys.executable, os.path.join(ROOT, "predict.py"), *args]


@pytest.fixture(scope="module")
def outputs(setup, tmp_path_factory):
    """stdout of predict.py on the folder with --json (from the packed checkpoint), and on one image with a
    class-name file (run in parallel)."""
    checkpoint, folder = setup
    names = tmp_path_factory.mktemp("names") / "names.txt"
    names.write_text("".join(f"n{index:08d} thing{index}, other name\n" for index in range(10)))
    common = ["--checkpoint_path", checkpoint, "--model", "BiMLP_T"]
    float_twin = os.path.join(os.path.dirname(checkpoint), "float.ckpt")
    commands = {"json": predict_command("--image", folder, "--json", "--checkpoint_path",
                                        packed_copy(checkpoint, "BiMLP_T"), "--model", "BiMLP_T"),
                "single": predict_command("--image", os.path.join(folder, "0.png"), "--class_names", str(names),
                                          "--top_k", "3", *common),
                "shipped": predict_command("--image", os.path.join(folder, "0.png"), "--json"),
                "float": predict_command("--image", os.path.join(folder, "0.png"), "--checkpoint_path", float_twin,
                                         "--model", "BiMLP_T", "--binary", "false")}
    # Run from elsewhere: the shipped checkpoint must be found from the script's folder, not the caller's.
    elsewhere = str(tmp_path_factory.mktemp("elsewhere"))
    runs = {key: subprocess.Popen(command, cwd=elsewhere, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for key, command in commands.items()}
    results = {}
    for key, proc in runs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out + err
        results[key] = out
    return results


def test_png_preprocessing_is_the_eval_pipeline():
    dataset = create_dataset("fashion_mnist", split="val", batch_size=IMAGES)
    batch = next(dataset.create_tuple_iterator(output_numpy=True, num_epochs=1))[0]
    for index, pixels in enumerate(fashion_mnist_test_images(IMAGES)):
        image = Image.fromarray(pixels)
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bimlp_predict_{os.getpid()}_{index}.png")
        image.save(path)
        try:
            assert np.array_equal(preprocess_image_file(path, "fashion_mnist"), batch[index])
        finally:
            os.remove(path)


def test_folder_as_json(setup, outputs):
    checkpoint = setup[0]
    result = json.loads(outputs["json"])
    assert [os.path.basename(p["image"]) for p in result["predictions"]] == ["0.png", "0_16bit.png", "1.png", "2.png"]
    assert result["predictions"][1]["top_k"] == result["predictions"][0]["top_k"]
    assert [os.path.basename(s["image"]) for s in result["skipped"]] == ["broken.png"]
    for prediction in result["predictions"]:
        top = prediction["top_k"]
        assert [entry["rank"] for entry in top] == [1, 2, 3, 4, 5]
        assert all(entry["label"] == RECORDED[entry["class"]] for entry in top)
        probs = [entry["probability"] for entry in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-9

    ms.set_context(mode=ms.PYNATIVE_MODE)  # same logits as graph mode, without the compile
    net = create_model("BiMLP_T")
    ms.load_param_into_net(net, ms.load_checkpoint(checkpoint), strict_load=True)
    net.set_train(False)
    images = np.stack([preprocess_image_file(p["image"], "fashion_mnist") for p in result["predictions"]])
    logits = net(ms.Tensor(images)).asnumpy()
    assert [p["top_k"][0]["class"] for p in result["predictions"]] == logits.argmax(1).tolist()


def test_without_checkpoint_path_the_shipped_default_variant_predicts(setup, outputs):
    result = json.loads(outputs["shipped"])
    assert (result["model"], result["checkpoint"]) == (SHIPPED_DEFAULT_MODEL, shipped_checkpoint(SHIPPED_DEFAULT_MODEL))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = create_model(SHIPPED_DEFAULT_MODEL)
    load_weights(net, result["checkpoint"], SHIPPED_DEFAULT_MODEL)
    net.set_train(False)
    logits = net(ms.Tensor(preprocess_image_file(os.path.join(setup[1], "0.png"), "fashion_mnist")[None])).asnumpy()
    top = result["predictions"][0]["top_k"]
    assert [entry["class"] for entry in top] == np.argsort(-logits[0], kind="stable")[:5].tolist()
    assert all(entry["label"] == FASHION_MNIST_CLASSES[entry["class"]] for entry in top)


def test_single_image_readable_with_class_file(outputs):
    lines = outputs["single"].strip().splitlines()
    assert lines[0].endswith("0.png")
    assert [line.split()[0] for line in lines[1:]] == ["1.", "2.", "3."]
    assert all("thing" in line and "other name" in line and "%" in line for line in lines[1:])


def test_synset_mapping_and_plain_names(tmp_path):
    synsets = tmp_path / "LOC_synset_mapping.txt"
    synsets.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    assert predict.read_class_names(str(synsets), 2) == ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    plain = tmp_path / "names.txt"
    plain.write_text("cat\ndog\n")
    assert predict.read_class_names(str(plain), 2) == ["cat", "dog"]


def test_a_float_twin_classifies_with_binary_false(outputs):
    lines = outputs["float"].strip().splitlines()
    assert lines[0].endswith("0.png") and len(lines) == 6


def test_names_without_a_record_are_the_variants_datasets():
    assert predict.class_names("BiMLP_T14", 10, {}) == list(FASHION_MNIST_CLASSES)
    imagenet = predict.class_names("BiMLP_S", 1000, {})
    assert imagenet[0] == "tench, Tinca tinca" and imagenet[897] == "washer, automatic washer, washing machine"
    assert predict.class_names("BiMLP_S", 3, {}) == ["class 0", "class 1", "class 2"]
    recorded = {CLASS_NAMES_RECORD: '["n01530575", "cat"]'}
    assert predict.class_names("BiMLP_S", 3, recorded) == ["brambling, Fringilla montifringilla", "cat", "class 2"]


@pytest.mark.parametrize("case,message", [
    ("missing", "image or folder not found"),
    ("empty", "no images"),
    ("broken", "cannot decode"),
    ("class_count", "lists 2 class names, the model has 10 classes"),
    ("size 0", "--image_size must be at least 16, got 0"),
    ("size 5", "--image_size must be at least 16, got 5"),
    ("float twin", "holds a float network, but a binary one was built: pass --binary false"),
    ("no_shipped_checkpoint", "--checkpoint_path is required for BiMLP_S"),
    ("xnor_gpu", "--engine xnor runs on the fused CPU kernels"),
])
def test_errors(case, message, setup, tmp_path, capsys):
    checkpoint, folder = setup
    image = {"missing": str(tmp_path / "nothing.png"), "empty": str(tmp_path),
             "broken": os.path.join(folder, "broken.png")}.get(case, os.path.join(folder, "0.png"))
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    if case == "float twin":
        checkpoint = os.path.join(os.path.dirname(checkpoint), "float.ckpt")
    argv = ["--image", image, "--checkpoint_path", checkpoint, "--model", "BiMLP_T"]
    if case == "class_count":
        argv += ["--class_names", str(names)]
    if case.startswith("size"):
        argv += ["--image_size", case.split()[1]]
    if case == "no_shipped_checkpoint":
        argv = ["--image", image, "--model", "BiMLP_S"]
    elif case == "xnor_gpu":
        argv += ["--engine", "xnor", "--platform", "GPU"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: predict.main(argv))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
