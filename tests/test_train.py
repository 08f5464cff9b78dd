"""train.py: configs, schedule, checkpoints, resume after Ctrl-C, divergence, output-folder safety
(msrun: test_distribute.py).

Runs use BiMLP_T on a small real Fashion-MNIST subset (the first images of the
Debian package's files), so each training process takes well under a minute.
"""
import csv
import gzip
import hashlib
import os
import re
import signal
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
import yaml

import train
from conftest import ROOT, packed_copy
from data_images import noisy, write_idx, write_tree
from src.checkpoint import BINARY_MARKER, model_records, recorded_class_names, save_checkpoint
from src.config import DEFAULTS, load_config
from src.context import UserError, run_cli
from src.dataset import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR
from src.files import FolderLock
from src.optim import config_lr_schedule, decays, lr_schedule
from src.run_folder import RUN_FILES, claim_output_dir
from src.wavemlp_20_3 import MODELS, create_model

CONFIG = os.path.join(ROOT, "configs", "bimlp_t_fashion_mnist.yaml")
# Training images per epoch, and the devices the ImageNet configs are written for.
TRAIN_IMAGES = {"imagenet": 1_281_167, "fashion_mnist": 60_000}
DEVICES = {"imagenet": 8, "fashion_mnist": 1}


def read_idx(split, count):
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(os.path.join(FASHION_MNIST_DIR, f"{prefix}-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    with gzip.open(os.path.join(FASHION_MNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:count]
    return images, labels


@pytest.fixture(scope="module")
def small_fashion(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("fashion"))
    write_idx(folder, "train", *read_idx("train", 320))
    write_idx(folder, "test", *read_idx("test", 40))
    return folder


def train_args(data, out, *extra):
    return [sys.executable, "train.py", "--config", CONFIG, "--dataset_path", data, "--output_dir", str(out),
            "--batch_size", "8", "--steps_per_epoch", "10", "--epochs", "2", "--warmup_epochs", "0.5",
            "--num_workers", "1", "--log_every", "1", *extra]


def run(args, timeout=900, env=None):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def compile_cache(folder):
    """MindSpore's graph compile cache in `folder`, for runs of identical settings only.

    MindSpore keys the cache by the source files alone: a run with other settings (a float
    twin after a binary run, another batch size) would silently get the first run's graph.
    """
    return {"MS_COMPILER_CACHE_ENABLE": "1", "MS_COMPILER_CACHE_PATH": str(folder)}


def checkpoint_arrays(path):
    """Every entry as an array; records such as the class names are strings."""
    return {name: p if isinstance(p, str) else p.asnumpy() for name, p in ms.load_checkpoint(str(path)).items()}


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def log_epochs(folder):
    with open(os.path.join(folder, "log.csv")) as f:
        return [row["epoch"] for row in csv.DictReader(f)]


def assert_one_line_error(result, message):
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]


def test_config_layers_defaults_yaml_and_flags(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("model: BiMLP_T\nlr: 0.5\nepochs: 7\n")
    config = load_config(str(file), {"lr": 0.25, "epochs": None})
    assert (config["model"], config["lr"], config["epochs"]) == ("BiMLP_T", 0.25, 7)
    assert config["weight_decay"] == DEFAULTS["weight_decay"]


@pytest.mark.parametrize("text,message", [
    ("modle: BiMLP_T\n", "unknown setting(s) in"),
    ("- a\n- b\n", "must be a mapping"),
    ("epochs: 0\n", "epochs must be at least 1"),
    ("platform: TPU\n", "platform must be one of"),
    ("max_warmup_fraction: 1.5\n", "max_warmup_fraction must be in [0, 1]"),
    ('binary: "false"\n', "binary must be true or false, got 'false' (write it without quotes)"),
    ("epochs: 1.5\n", "epochs must be a whole number, got 1.5"),
    ("lr: fast\n", "lr must be a number, got 'fast'"),
    ("image_size: 0\n", "image_size must be at least 16, got 0"),
    ("device_id: -1\n", "device_id must be a device number"),
])
def test_bad_config_files_are_errors(tmp_path, text, message):
    file = tmp_path / "c.yaml"
    file.write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(str(file))


def test_yaml_numbers_in_exponent_form_are_numbers(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("lr: 1e-3\n")  # YAML 1.1 reads this as a string
    assert load_config(str(file))["lr"] == 0.001


def test_every_shipped_config_loads():
    for name in os.listdir(os.path.join(ROOT, "configs")):
        assert load_config(os.path.join(ROOT, "configs", name))["model"] in MODELS


def test_schedule_warms_up_linearly_then_decays_by_cosine():
    rates = lr_schedule(1.0, 0.0, warmup_epochs=1, epochs=3, steps_per_epoch=4)
    assert len(rates) == 12
    np.testing.assert_allclose(rates[:4], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(rates[4], 1.0)
    np.testing.assert_allclose(rates[8], 0.5, atol=1e-6)  # halfway through the cosine
    assert all(np.diff(rates[4:]) < 0) and rates[-1] > 0


def warmup_then_cosine(lr, min_lr, warmup_steps, total_steps):
    """The schedule written out independently: linear warm-up over warmup_steps, then cosine to min_lr."""
    step = np.arange(total_steps)
    cosine = min_lr + 0.5 * (lr - min_lr) * (1 + np.cos(np.pi * (step - warmup_steps) / (total_steps - warmup_steps)))
    return np.where(step < warmup_steps, lr * (step + 1) / max(warmup_steps, 1), cosine)


def test_a_short_run_warms_up_for_a_tenth_of_it_then_peaks_and_ends_at_min_lr():
    config = load_config(overrides={"epochs": 8})  # default warmup_epochs 5 would be 62% of the run
    rates = config_lr_schedule(config, steps_per_epoch=50)
    warmup = 40  # 10% of 400 steps
    assert len(rates) == 400 and int(np.argmax(rates)) == warmup - 1
    np.testing.assert_allclose(rates.max(), config["lr"], rtol=1e-6)
    assert all(np.diff(rates[:warmup]) > 0) and all(np.diff(rates[warmup:]) < 0)
    np.testing.assert_allclose(rates[warmup + 180], (config["lr"] + config["min_lr"]) / 2, rtol=1e-4)
    np.testing.assert_allclose(rates[-1], config["min_lr"], rtol=0.05)
    np.testing.assert_allclose(rates, warmup_then_cosine(config["lr"], config["min_lr"], warmup, 400), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_every_shipped_config_gets_the_warm_up_it_asks_for(name):
    """The cap on the warm-up binds in no shipped config: the long ImageNet runs keep 5 epochs,
    with the same per-step rates as before the cap existed."""
    config = load_config(os.path.join(ROOT, "configs", name))
    steps_per_epoch = TRAIN_IMAGES[config["dataset"]] // (config["batch_size"] * DEVICES[config["dataset"]])
    rates = config_lr_schedule(config, steps_per_epoch)
    warmup = round(config["warmup_epochs"] * steps_per_epoch)
    assert int(np.argmax(rates)) == warmup - 1
    expected = warmup_then_cosine(config["lr"], config["min_lr"], warmup, config["epochs"] * steps_per_epoch)
    np.testing.assert_allclose(rates, expected, rtol=1e-5)
    if config["dataset"] == "imagenet":
        assert (steps_per_epoch, warmup, len(rates)) == (1251, 5 * 1251, 300 * 1251)


def test_weight_decay_only_on_conv_and_dense_weights():
    net = create_model("BiMLP_T")
    decayed = {p.name for p in net.trainable_params() if decays(p.name, p)}
    assert "head.weight" in decayed and "network.0.0.mlp.fc1.weight" in decayed
    assert "patch_embed.proj.weight" in decayed
    for name in ("head.bias", "network.0.0.weight", "network.0.0.norm1.gamma", "network.0.0.mlp.move1.bias",
                 "network.0.0.mlp.act1.act.w", "patch_embed.proj.bias"):
        assert name not in decayed


def test_ctrl_c_mid_epoch_then_resume_equals_an_unbroken_run(small_fashion, tmp_path):
    # Three runs of one configuration in GRAPH mode, as users train: compile once, reuse twice.
    # DropPath on: its random decisions must continue where the interrupted run stopped.
    cache = compile_cache(tmp_path / "graph_cache")
    unbroken = run(train_args(small_fashion, tmp_path / "a", "--drop_path_rate", "0.2"), env=cache)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["batch_size"] == 8 and saved["num_classes"] == 10

    out = tmp_path / "b"
    proc = subprocess.Popen(train_args(small_fashion, out, "--drop_path_rate", "0.2"), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **cache})
    for line in proc.stdout:
        if line.startswith("epoch 2/2 step 3/"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == \
        f"interrupted; {out / 'last.ckpt'} holds epoch 1; continue with --resume last"
    assert checkpoint_arrays(out / "last.ckpt")["train_state.epoch"] == 1
    assert sorted(os.listdir(out)) == [".lock", *sorted(RUN_FILES)]

    resumed = run(train_args(small_fashion, out, "--drop_path_rate", "0.2", "--resume", "last"), env=cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "1 epochs done" in resumed.stdout
    assert "epoch 1/2 step" not in resumed.stdout

    a, b = checkpoint_arrays(tmp_path / "a" / "last.ckpt"), checkpoint_arrays(out / "last.ckpt")
    assert a.keys() == b.keys()
    assert "global_step" in a and any(name.startswith("adam_m.") for name in a)
    assert a["network.6.0.drop_path.drop_path_draws"] == 2 * 2 * 10  # two calls per step, 2 x 10 steps
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    with open(tmp_path / "a" / "log.csv") as fa, open(out / "log.csv") as fb:
        rows_a, rows_b = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert [r["epoch"] for r in rows_b] == ["1", "2"]
    assert [r["val_top1"] for r in rows_a] == [r["val_top1"] for r in rows_b]
    assert os.path.isfile(out / "best.ckpt")

    evaluated = run([sys.executable, "eval.py", "--checkpoint_path", str(out / "best.ckpt"),
                     "--model", "BiMLP_T", "--dataset_path", small_fashion, "--batch_size", "16"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "'num_samples': 40" in evaluated.stdout


def test_divergence_stops_with_the_last_good_checkpoint_intact(small_fashion, tmp_path):
    out = tmp_path / "run"
    # PYNATIVE: no graph compilations; the stop does not depend on the mode.
    first = run(train_args(small_fashion, out, "--epochs", "1", "--steps_per_epoch", "3", "--mode", "pynative"))
    assert first.returncode == 0, first.stderr[-3000:]
    before = digest(out / "last.ckpt")
    diverged = run(train_args(small_fashion, out, "--epochs", "2", "--steps_per_epoch", "3", "--resume", "last",
                              "--lr", "1e30", "--mode", "pynative"))
    assert diverged.returncode == 2  # as the README promises
    assert "loss became" in diverged.stderr and "Last good checkpoint" in diverged.stderr
    assert str(out / "last.ckpt") in diverged.stderr
    assert "Traceback" not in diverged.stderr
    assert digest(out / "last.ckpt") == before


# train.py, with a full disk inside MindSpore's checkpoint writer from the Nth save on (argv[1]).
FULL_DISK_FROM_SAVE = """
import errno, os, runpy, sys
import mindspore.train.serialization as serialization

fail_from, saves = int(sys.argv.pop(1)), []


def counted(save):
    def wrapper(*args, **kwargs):
        saves.append(args[0])
        return save(*args, **kwargs)
    return wrapper


def full_disk(write):
    def wrapper(name, value, f, *args, **kwargs):
        if len(saves) >= fail_from:
            f.write(bytes(4096))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(name, value, f, *args, **kwargs)
    return wrapper


serialization._exec_save = counted(serialization._exec_save)
for name in ("_write_parameter_data", "_write_parameter_bytes_data"):
    setattr(serialization, name, full_disk(getattr(serialization, name)))
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def test_an_output_dir_is_never_shared_overwritten_or_left_half_written(small_fashion, tmp_path):
    out = tmp_path / "run"
    args = train_args(small_fashion, out, "--epochs", "2", "--steps_per_epoch", "2", "--mode", "pynative")
    # Saves 1 and 2 are epoch 1's last.ckpt and best.ckpt; the disk is full from epoch 2's last.ckpt on.
    with open(tmp_path / "first.err", "w") as first_err:
        first = subprocess.Popen([sys.executable, "-c", FULL_DISK_FROM_SAVE, "3", *args[2:]], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=first_err, text=True)
        for line in first.stdout:
            if line.startswith("training "):
                break
        with pytest.raises(UserError, match=rf"in use by train.py \(pid {first.pid} on host"):
            FolderLock(str(out), "pytest")  # the run holds its folder
        first.communicate(timeout=900)
    err = (tmp_path / "first.err").read_text()
    assert first.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (f"error: cannot write {out / 'last.ckpt'}: no space left on the device "
                                            f"(the previous file, if any, is unchanged)")
    assert sorted(os.listdir(out)) == [".lock", *sorted(RUN_FILES)]  # no temporary left behind
    assert checkpoint_arrays(out / "last.ckpt")["train_state.epoch"] == 1
    assert log_epochs(out) == ["1"]  # no row for the epoch that no checkpoint holds

    before = {name: digest(out / name) for name in RUN_FILES}
    lock = FolderLock(str(out), "pytest")  # as if another run held the folder
    refused = {message: subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for message, command in {
                   f"{out} is in use by pytest (pid {os.getpid()} on host": args,
                   "checkpoint not found": [*args, "--resume", "last",
                                            "--teacher_checkpoint", str(tmp_path / "no.ckpt")],
                   "holds a binary network but this run trains a float one": [*args, "--resume", "last",
                                                                               "--binary", "false"],
               }.items()}
    for message, proc in refused.items():
        out_text, err_text = proc.communicate(timeout=900)
        assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out_text, err_text), message)
    lock.release()
    assert_one_line_error(run(args), "is not empty (best.ckpt, config.yaml, last.ckpt, log.csv): "
                                     "continue that run with --resume last, replace its results with --overwrite")
    assert {name: digest(out / name) for name in RUN_FILES} == before

    replaced = run([*args, "--overwrite", "--epochs", "1", "--steps_per_epoch", "1"])
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert log_epochs(out) == ["1"] and digest(out / "last.ckpt") != before["last.ckpt"]


def test_claiming_an_output_dir_removes_stale_scratch_and_overwrites_only_a_runs_files(tmp_path):
    folder = tmp_path / "run"
    (folder / ".last.ckpt.k2j3x.tmp").mkdir(parents=True)  # left by a run killed while saving
    (folder / ".notes.tmp").mkdir()
    (folder / "msrun_log").mkdir()  # msrun's worker logs, written before train.py starts
    (folder / "log.csv").write_text("epoch\n")
    (folder / "notes.txt").write_text("the user's")
    with pytest.raises(UserError, match=r"is not empty \(\.notes\.tmp, log\.csv, notes\.txt\)"):
        claim_output_dir(str(folder), resume=None, overwrite=False)
    claim_output_dir(str(folder), resume=None, overwrite=True).release()
    assert sorted(os.listdir(folder)) == [".lock", ".notes.tmp", "msrun_log", "notes.txt"]


@pytest.mark.parametrize("flags,message", [
    (["--image_size", "0"], "image_size must be at least 16, got 0"),
    (["--device_id", "-1"], "device_id must be a device number"),
    (["--distribute", "true"], "--distribute true runs under msrun"),
    (["--resume", "last", "--overwrite"], "give only one of them"),
    (["--resume", "last", "--init_checkpoint", "x.ckpt"], "init_checkpoint starts a new run"),
    (["--binary", "false", "--binary_weights", "false"], "binary_weights false trains a binary network's first"),
])
def test_bad_training_input_in_process(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train.main(["--config", CONFIG, "--output_dir", str(tmp_path / "out"), *flags]))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_an_output_dir_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        run_cli(lambda: train.main(["--config", CONFIG, "--output_dir", str(tmp_path / "file" / "out")]))
    assert f"--output_dir {tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is a file, not a folder" \
        in capsys.readouterr().err


def test_a_teacher_of_another_variant_is_named_without_other_commands_flags(tmp_path):
    path = str(tmp_path / "t14.ckpt")
    save_checkpoint(create_model("BiMLP_T14", binary=False), path, append_dict={BINARY_MARKER: 0})
    config = load_config(CONFIG, {"teacher_checkpoint": path})
    with pytest.raises(UserError) as raised:
        train.build_teacher(config, 10, list(FASHION_MNIST_CLASSES))
    assert "this checkpoint looks like BiMLP_T14" in str(raised.value)
    assert "--model" not in str(raised.value)


@pytest.mark.parametrize("flags,message", [
    (["--config", "nope.yaml"], "config file not found"),
    (["--resume", "missing.ckpt"], "nothing to resume"),
    (["--model", "BiMLP_X"], "unknown model"),
    (["--dataset", "imagenet", "--dataset_path", ""], "--dataset_path is required"),
    (["--num_classes", "5"], "num_classes 5 is fewer than the 10 classes of"),
])
def test_bad_training_input_is_one_clear_error(tmp_path, flags, message):
    result = run([sys.executable, "train.py", "--config", CONFIG, "--output_dir", str(tmp_path), *flags])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_distillation_from_a_packed_float_teacher_trains(small_fashion, tmp_path):
    teacher = str(tmp_path / "teacher.ckpt")
    ms.save_checkpoint(create_model("BiMLP_T", binary=False), teacher,
                       append_dict=model_records(False, FASHION_MNIST_CLASSES))
    result = run(train_args(small_fashion, tmp_path / "kd", "--epochs", "1", "--steps_per_epoch", "3",
                            "--teacher_checkpoint", packed_copy(teacher, "BiMLP_T"), "--distill_alpha", "0.5"))
    assert result.returncode == 0, result.stderr[-3000:]
    names = set(ms.load_checkpoint(str(tmp_path / "kd" / "best.ckpt")))
    assert "head.weight" in names and not any(name.startswith(("teacher.", "net.")) for name in names)


def test_a_missing_teacher_checkpoint_is_a_clear_error(small_fashion, tmp_path):
    result = run(train_args(small_fashion, tmp_path / "kd", "--teacher_checkpoint", str(tmp_path / "missing.ckpt")))
    assert result.returncode == 2 and "checkpoint not found" in result.stderr


def test_checkpoints_record_binary_or_float_and_loaders_check_it(small_fashion, tmp_path):
    # PYNATIVE throughout: no graph compilations; the record and its checks do not depend on the mode.
    result = run(train_args(small_fashion, tmp_path / "float", "--binary", "false", "--epochs", "1",
                            "--steps_per_epoch", "2", "--mode", "pynative"))
    assert result.returncode == 0, result.stderr[-3000:]
    float_ckpt = str(tmp_path / "float" / "best.ckpt")
    evaluate = [sys.executable, "eval.py", "--dataset_path", small_fashion, "--checkpoint_path", float_ckpt,
                "--model", "BiMLP_T", "--mode", "pynative"]
    as_binary = run(evaluate)
    assert as_binary.returncode == 2 and "holds a float network" in as_binary.stderr
    assert "Traceback" not in as_binary.stderr
    as_float = run([*evaluate, "--binary", "false"])
    assert as_float.returncode == 0, as_float.stderr[-3000:]
    assert "'num_samples': 40" in as_float.stdout

    result = run(train_args(small_fashion, tmp_path / "binary", "--epochs", "1", "--steps_per_epoch", "2",
                            "--mode", "pynative"))
    assert result.returncode == 0, result.stderr[-3000:]
    kd = run(train_args(small_fashion, tmp_path / "kd", "--teacher_checkpoint", str(tmp_path / "binary" / "best.ckpt"),
                        "--mode", "pynative"))
    assert kd.returncode == 2 and "must be a float twin" in kd.stderr


def test_two_stage_training_first_stage_float_weights_then_both_binary(small_fashion, tmp_path):
    """The first stage trains float weights under binary activations and says so in its checkpoints,
    which only a second stage takes (with the learning rate at 0 it keeps their weights exactly)."""
    layers = [cell for cell in create_model("BiMLP_T", binary_weights=False).cells_and_names()
              if hasattr(cell[1], "binary_input")]
    assert layers and all(layer.binary_input and not layer.is_binary_weight for _, layer in layers)
    stage1 = run(train_args(small_fashion, tmp_path / "stage1", "--binary_weights", "false", "--epochs", "1",
                            "--steps_per_epoch", "2", "--mode", "pynative"))
    assert stage1.returncode == 0, stage1.stderr[-3000:]
    assert "binary activations, float weights" in stage1.stdout
    first = str(tmp_path / "stage1" / "best.ckpt")
    evaluate = run([sys.executable, "eval.py", "--dataset_path", small_fashion, "--checkpoint_path", first,
                    "--model", "BiMLP_T", "--mode", "pynative"])
    assert_one_line_error(evaluate, "holds the first stage of two-stage training")
    wrong_resume = run(train_args(small_fashion, tmp_path / "stage1", "--resume", "last", "--mode", "pynative"))
    assert_one_line_error(wrong_resume, "was trained with binary_weights false")

    # Drop path: the network in training counts its draws, which the first stage's weights need not hold.
    stage2 = run(train_args(small_fashion, tmp_path / "stage2", "--init_checkpoint", first, "--epochs", "1",
                            "--steps_per_epoch", "2", "--lr", "0", "--min_lr", "0", "--drop_path_rate", "0.1",
                            "--mode", "pynative"))
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    assert f"starting from the weights of {first}" in stage2.stdout
    before, after = checkpoint_arrays(first), checkpoint_arrays(tmp_path / "stage2" / "best.ckpt")
    trained = [p.name for p in create_model("BiMLP_T").trainable_params()]
    assert all(np.array_equal(before[name], after[name]) for name in trained)
    assert "train_state.binary_weights" in before and "train_state.binary_weights" not in after


def image_folders(root, splits):
    """{split: class folders} -> a train/ + val/ tree with two small images per class."""
    files = {f"{split}/{name}/{i}.png": (noisy(i, size=(16, 16)), "RGB")
             for split, names in splits.items() for name in names for i in range(2)}
    return write_tree(str(root), files)


def test_image_folders_are_labelled_by_class_name_and_checkpoints_record_the_names(tmp_path):
    # PYNATIVE, one step of BiMLP_S at 32x32: the labels, not the training, are under test.
    def train_on(data, out, *extra):
        return run(train_args(data, out, "--model", "BiMLP_S", "--dataset", "imagefolder", "--image_size", "32",
                              "--batch_size", "2", "--steps_per_epoch", "1", "--epochs", "1", "--mode", "pynative",
                              *extra))

    fewer_val = image_folders(tmp_path / "fewer_val", {"train": "abc", "val": "ac"})
    result = train_on(fewer_val, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("best.ckpt", "last.ckpt"):
        assert recorded_class_names(ms.load_checkpoint(str(tmp_path / "run" / name))) == ["a", "b", "c"]

    more_val = image_folders(tmp_path / "more_val", {"train": "ac", "val": "abc"})
    refused = train_on(more_val, tmp_path / "refused")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"class folders b are not among the 2 classes of {more_val}/train (a, c)" in refused.stderr

    other = image_folders(tmp_path / "other", {"train": "ac", "val": "a"})
    resumed = train_on(other, tmp_path / "resumed", "--resume", str(tmp_path / "run" / "last.ckpt"))
    assert resumed.returncode == 2 and "Traceback" not in resumed.stderr
    assert "was trained on other classes (a, b, c) than" in resumed.stderr


def test_a_teacher_of_other_classes_is_refused(tmp_path):
    teacher = str(tmp_path / "teacher.ckpt")
    ms.save_checkpoint(create_model("BiMLP_T", binary=False), teacher,
                       append_dict=model_records(False, [f"item {i}" for i in range(10)]))
    config = {**DEFAULTS, "model": "BiMLP_T", "dataset": "fashion_mnist",
              "teacher_checkpoint": packed_copy(teacher, "BiMLP_T")}
    with pytest.raises(UserError, match="teacher.packed was trained on other classes"):
        train.build_teacher(config, 10, list(FASHION_MNIST_CLASSES))


def test_learning_curves_are_plotted_from_two_logs(tmp_path):
    logs = []
    for label, top1 in (("binary", [0.80, 0.85]), ("float", [0.82, 0.88])):
        path = tmp_path / f"{label}.csv"
        rows = "".join(f"{e},{1.0 / e:.3f},{t},0.99,1e-3,60.0,70.0\n" for e, t in enumerate(top1, start=1))
        path.write_text("epoch,train_loss,val_top1,val_top5,lr,epoch_seconds,train_img_per_s\n" + rows)
        logs.append(f"{path}:{label}")
    out = tmp_path / "curve.png"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plot_log.py"), *logs, "--output", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "plot_log.py"), str(tmp_path / "none.csv")],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "log not found" in missing.stderr


@pytest.mark.parametrize("args", [["BiMLP_X"], ["BiMLP_T14", "everything"]])
def test_reproduce_script_rejects_unknown_arguments_before_training(args):
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "reproduce_fashion_mnist.sh"), *args],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage: reproduce_fashion_mnist.sh [BiMLP_T14|BiMLP_T]" in proc.stderr
