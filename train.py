"""Train a BiMLP (binary or its float twin) from a YAML config, on one device or data-parallel under msrun.

    python train.py --config configs/bimlp_t_fashion_mnist.yaml
    python train.py --config configs/bimlp_s_imagenet.yaml --dataset_path /data/imagenet --platform GPU
    python train.py --config ... --resume last        # continue from output_dir/last.ckpt
    python train.py --config ... --binary_weights false --output_dir stage1      # two-stage training:
    python train.py --config ... --init_checkpoint stage1/best.ckpt              # then both binary

Writes to output_dir: config.yaml (the resolved settings), log.csv (one row per
epoch), last.ckpt (weights + optimizer state + epoch, every epoch, atomically)
and best.ckpt (weights of the best validation top-1). A non-empty output_dir needs
--resume (continue the run in it) or --overwrite (replace its results); one run at a time
holds it. Every setting and input is checked before anything is written.
"""
import argparse
import csv
import io
import math
import os
import sys
import time
import zlib

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
from mindspore import nn, ops

from src.checkpoint import (STATE_PREFIX, load_weights, model_records, read_checkpoint, recorded_binary,
                            recorded_binary_weights, recorded_class_names, save_checkpoint)
from src.config import add_arguments, load_config, save_config
from src.context import UserError, default_device_id, run_cli, set_interrupt_note, setup_device
from src.dataset import DEFAULT_IMAGE_SIZE, class_names, count_images, create_dataset, short_list
from src.evaluation import evaluate, format_duration
from src.files import write_text
from src.optim import config_lr_schedule, create_optimizer
from src.run_folder import check_output_dir, claim_output_dir
from src.wavemlp_20_3 import MODELS, create_model

LOG_FIELDS = ["epoch", "train_loss", "val_top1", "val_top5", "lr", "epoch_seconds", "train_img_per_s"]


class TrainLoss(nn.Cell):
    """Label-smoothed cross-entropy, optionally mixed with distillation from a frozen float teacher."""

    def __init__(self, net, label_smoothing, teacher=None, alpha=1.0, temperature=1.0):
        # No prefix: the network's parameters keep their checkpoint names ("head.weight", not "net.head.weight").
        super().__init__(auto_prefix=False)
        self.net, self.teacher = net, teacher
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.alpha, self.temperature = alpha, temperature

    def construct(self, images, labels):
        logits = self.net(images)
        loss = self.ce(logits, labels)
        if self.teacher is None:
            return loss
        target = ops.softmax(ops.stop_gradient(self.teacher(images)) / self.temperature, axis=1)
        log_student = ops.log_softmax(logits / self.temperature, axis=1)
        kl = (target * (ops.log(target + 1e-12) - log_student)).sum(axis=1).mean()
        return (1.0 - self.alpha) * loss + self.alpha * kl * self.temperature ** 2


class TrainingDiverged(Exception):
    pass


def parse_config(argv=None):
    parser = argparse.ArgumentParser(description="Train BiMLP. Settings come from --config (YAML) and can "
                                     "be overridden by the flags below; see src/config.py for defaults.")
    parser.add_argument("--config", help="YAML file of settings (configs/*.yaml)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier run in --output_dir (otherwise a non-empty "
                             "output_dir needs --resume)")
    add_arguments(parser)
    args = vars(parser.parse_args(argv))
    overwrite = args.pop("overwrite")
    config = load_config(args.pop("config"), args)
    if config["model"] not in MODELS:
        raise UserError(f"unknown model {config['model']!r}; available: {', '.join(sorted(MODELS))}")
    if config["dataset"] != "fashion_mnist" and not config["dataset_path"]:
        raise UserError(f"--dataset_path is required for {config['dataset']}: a folder with train/ and val/")
    if config["image_size"] is None:
        config["image_size"] = DEFAULT_IMAGE_SIZE[config["dataset"]]
    return config, overwrite


def split_path(config, split):
    """fashion_mnist reads both splits from one folder; image folders have train/ and val/ inside."""
    if config["dataset"] == "fashion_mnist":
        return config["dataset_path"]
    return os.path.join(config["dataset_path"], split)


def init_distributed(config):
    """(rank, world size); under msrun every worker joins the data-parallel group."""
    if not config["distribute"]:
        return 0, 1
    if "MS_ROLE" not in os.environ and "RANK_TABLE_FILE" not in os.environ:
        raise UserError("--distribute true runs under msrun: start it with "
                        "scripts/run_distribute_train_{cpu,gpu,ascend}.sh WORKERS CONFIG [flags]")
    from mindspore.communication import get_group_size, get_rank, init

    init()
    world = get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=world)
    return get_rank(), world


def train_data(config, epoch, rank, world, classes):
    """The epoch's shuffled batches; seeding by epoch makes a resumed run see what an unbroken one would."""
    ds.config.set_seed(config["seed"] * 1000 + epoch)
    dataset = create_dataset(config["dataset"], split_path(config, "train"), "train", config["batch_size"],
                             config["image_size"], num_shards=world if world > 1 else None,
                             shard_id=rank if world > 1 else None, num_workers=config["num_workers"],
                             classes=classes, augment=config["augment"])
    if config["steps_per_epoch"]:
        dataset = dataset.take(int(config["steps_per_epoch"]))
    return dataset


def training_classes(config):
    """Label -> class name: the class folders of train/ (imagefolder), or the dataset's fixed classes."""
    classes = class_names(config["dataset"], split_path(config, "train"))
    if config["num_classes"] and config["num_classes"] < len(classes):
        raise UserError(f"num_classes {config['num_classes']} is fewer than the {len(classes)} classes of "
                        f"{split_path(config, 'train')}")
    return classes


def check_classes(saved, classes, path, config):
    """A checkpoint that records other classes than the training set's would silently relabel them."""
    recorded = recorded_class_names(saved)
    if recorded is not None and recorded != list(classes):
        raise UserError(f"{path} was trained on other classes ({short_list(recorded)}) than "
                        f"{split_path(config, 'train')} holds ({short_list(classes)})")


def use_training_kernels(config):
    """--fused: the fused training kernels on CPU by default when they build; true insists."""
    from src import fused

    if config["fused"] is None:
        return config["platform"] == "CPU" and fused.available()
    if config["fused"] and not (config["platform"] == "CPU" and fused.available()):
        raise UserError("--fused true needs --platform CPU and a working C++ compiler (g++); "
                        "use --fused false for MindSpore's operators")
    return config["fused"]


def build_teacher(config, num_classes, classes):
    if not config["teacher_checkpoint"]:
        return None
    teacher = create_model(config["model"], num_classes=num_classes, binary=False)
    saved = load_weights(teacher, config["teacher_checkpoint"], f"{config['model']} (float teacher)", teacher=True)
    check_classes(saved, classes, config["teacher_checkpoint"], config)
    teacher.update_parameters_name("teacher.")  # distinct from the student's names in one graph
    for param in teacher.get_parameters():
        param.requires_grad = False
    return teacher


def state_parameters(net, optimizer):
    """Weights, optimizer moments and the step counter: everything resume needs.

    The learning-rate table is not saved: it is recomputed from the settings, so a
    resumed run may change --lr or extend --epochs and continue at the saved step.
    """
    params = {p.name: p for p in net.get_parameters()}
    for p in optimizer.get_parameters():
        if p.name != "learning_rate":
            params.setdefault(p.name, p)
    return params


def save_state(path, params, epoch, best_top1, records):
    entries = [{"name": name, "data": p} for name, p in params.items()]
    save_checkpoint(entries, path, append_dict={f"{STATE_PREFIX}epoch": int(epoch),
                                                f"{STATE_PREFIX}best_top1": float(best_top1), **records})


def restore_state(path, params, classes, config):
    """Load weights and optimizer state; returns (epochs done, best top-1)."""
    saved = read_checkpoint(path)
    trained_binary, binary = recorded_binary(saved), config["binary"]
    if trained_binary is not None and trained_binary != binary:
        kind = {True: "binary", False: "float"}
        raise UserError(f"{path} holds a {kind[trained_binary]} network but this run trains a {kind[binary]} one: "
                        f"resume with the run's own setting (--binary {str(trained_binary).lower()})")
    if recorded_binary_weights(saved) != config["binary_weights"]:
        setting = str(recorded_binary_weights(saved)).lower()
        raise UserError(f"{path} was trained with binary_weights {setting}: resume with the run's own setting "
                        f"(--binary_weights {setting}); a second stage starts from it with --init_checkpoint")
    check_classes(saved, classes, path, config)
    missing = sorted(set(params) - set(saved))
    if missing or f"{STATE_PREFIX}epoch" not in saved:
        raise UserError(f"{path} is not a train.py checkpoint of this configuration "
                        f"(missing: {', '.join(missing[:5]) or 'training state'}); "
                        f"resume needs output_dir/last.ckpt of the same model and settings")
    for name, param in params.items():
        if tuple(saved[name].shape) != tuple(param.shape):
            raise UserError(f"{path}: {name} has shape {tuple(saved[name].shape)}, "
                            f"this configuration needs {tuple(param.shape)}")
        param.set_data(saved[name])
    return int(saved[f"{STATE_PREFIX}epoch"].asnumpy()), float(saved[f"{STATE_PREFIX}best_top1"].asnumpy())


def resume_path(config):
    if config["resume"] in (None, ""):
        return None
    path = os.path.join(config["output_dir"], "last.ckpt") if config["resume"] == "last" else config["resume"]
    if not os.path.isfile(path):
        raise UserError(f"nothing to resume: {path} does not exist")
    return path


def trim_log(path, epochs_done):
    """Drop log rows of epochs after the checkpoint (written before an interruption)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        rows = [row for row in csv.DictReader(f) if int(row["epoch"]) <= epochs_done]
    write_log(path, rows)


def write_log(path, rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LOG_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def append_log(path, row):
    rows = []
    if os.path.isfile(path):
        with open(path) as f:
            rows = list(csv.DictReader(f))
    write_log(path, rows + [row])


def parameter_digest(net):
    """A CRC of the trained weights: equal on every rank when gradient averaging keeps them in sync.
    (BatchNorm moving statistics are per rank, as in any data-parallel run without SyncBN.)"""
    crc = 0
    for p in net.trainable_params():
        crc = zlib.crc32(p.asnumpy().tobytes(), crc)
    return f"{crc:08x}"


def train_epoch(step_cell, dataset, epoch, config, schedule, rank, run_start, digest_images=False):
    """One pass over the data; returns (mean loss, images/s, seconds, CRC of the images if digest_images).
    Stops on a non-finite loss."""
    steps = dataset.get_dataset_size()
    losses, images, digest = [], 0, 0
    start = timed_start = time.time()
    for step, (x, y) in enumerate(dataset.create_tuple_iterator(num_epochs=1), start=1):
        if digest_images:
            digest = zlib.crc32(x.asnumpy().tobytes(), digest)
        loss = float(step_cell(x, y).asnumpy())
        if not math.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss} at epoch {epoch} step {step}")
        losses.append(loss)
        if step == 1:
            timed_start = time.time()  # the first step includes graph compilation
        else:
            images += x.shape[0]
        if rank == 0 and (step % config["log_every"] == 0 or step == steps):
            rate = images / max(time.time() - timed_start, 1e-9) if images else 0.0
            global_step = (epoch - 1) * steps + step
            left = (config["epochs"] * steps - global_step) * x.shape[0] / rate if rate else 0
            recent = np.mean(losses[-config["log_every"]:])
            print(f"epoch {epoch}/{config['epochs']} step {step}/{steps} loss {recent:.4f} "
                  f"lr {schedule[min(global_step, len(schedule)) - 1]:.2e} {rate:.1f} img/s "
                  f"elapsed {format_duration(time.time() - run_start)} ETA {format_duration(left)}", flush=True)
    if not losses:
        raise UserError("the training set gave no batch: fewer images than --batch_size?")
    rate = images / max(time.time() - timed_start, 1e-9) if images else 0.0
    return float(np.mean(losses)), rate, time.time() - start, digest


def main(argv=None):
    config, overwrite = parse_config(argv)
    out = config["output_dir"]
    check_output_dir(out, config["resume"], overwrite)
    resume = resume_path(config)
    # Under msrun every worker has its own device: DEVICE_ID, its rank on this node. --device_id is for one.
    device_id = default_device_id() if config["distribute"] else config["device_id"]
    setup_device(config["platform"], device_id, config["mode"])
    rank, world = init_distributed(config)
    ms.set_seed(config["seed"])
    classes = training_classes(config)
    num_classes = config["num_classes"] or len(classes)
    # Validation folders are labelled by the training set's class names, so they must be among them.
    val_images = count_images(config["dataset"], split_path(config, "val"), "val", classes,
                              split_path(config, "train"))
    config["num_classes"] = num_classes

    # fused=None: the per-epoch validation runs the fused CPU kernels when it can.
    net = create_model(config["model"], num_classes=num_classes, drop_path_rate=config["drop_path_rate"],
                       binary=config["binary"], binary_weights=config["binary_weights"], fused=None,
                       fused_training=use_training_kernels(config))
    if config["init_checkpoint"]:
        check_classes(load_weights(net, config["init_checkpoint"], config["model"], start=True), classes,
                      config["init_checkpoint"], config)
    steps_per_epoch = train_data(config, 1, rank, world, classes).get_dataset_size()
    schedule = config_lr_schedule(config, steps_per_epoch)
    optimizer = create_optimizer(net, config, schedule)
    teacher = build_teacher(config, num_classes, classes)
    loss_cell = TrainLoss(net, config["label_smoothing"], teacher, config["distill_alpha"],
                          config["distill_temperature"])
    step_cell = nn.TrainOneStepCell(loss_cell, optimizer)
    data_digest = 0  # CRC of every training image this rank read: shards must differ
    params = state_parameters(net, optimizer)
    epochs_done, best = 0, -1.0
    if resume:
        epochs_done, best = restore_state(resume, params, classes, config)

    # Everything is checked: from here on the run writes to output_dir, which it holds until it ends.
    if rank == 0:
        claim_output_dir(out, resume, overwrite)
        save_config(config, os.path.join(out, "config.yaml"))
        if resume:
            trim_log(os.path.join(out, "log.csv"), epochs_done)
    if resume:
        print(f"resumed from {resume}: {epochs_done} epochs done, best val top-1 {best:.4f}", flush=True)
    elif config["init_checkpoint"]:
        print(f"starting from the weights of {config['init_checkpoint']}", flush=True)
    if rank == 0:
        kind = ("binary" if config["binary_weights"] else "binary activations, float weights") if config["binary"] \
            else "float"
        print(f"training {config['model']} ({kind}) on {config['dataset']}: "
              f"{steps_per_epoch} steps/epoch x {config['batch_size']} images x {world} device(s), "
              f"{val_images} validation images, epochs {epochs_done + 1}..{config['epochs']}, output {out}, "
              f"{'fused CPU training kernels' if net.fused_training else 'MindSpore operators'}",
              flush=True)
    run_start = time.time()
    last_path = os.path.join(out, "last.ckpt")
    for epoch in range(epochs_done + 1, config["epochs"] + 1):
        step_cell.set_train(True)
        if teacher is not None:
            teacher.set_train(False)
        try:
            loss, rate, seconds, digest = train_epoch(step_cell, train_data(config, epoch, rank, world, classes),
                                                      epoch, config, schedule, rank, run_start,
                                                      digest_images=world > 1)
        except TrainingDiverged as err:
            kept = last_path if os.path.isfile(last_path) else "none yet"
            raise UserError(f"{err}: training stopped. Last good checkpoint: {kept}. "
                            f"Try a lower --lr or a longer warm-up "
                            f"(--warmup_epochs, capped by --max_warmup_fraction).") from None
        data_digest = zlib.crc32(digest.to_bytes(4, "little"), data_digest)
        if rank != 0:
            continue
        net.set_train(False)
        val = evaluate(net, create_dataset(config["dataset"], split_path(config, "val"), "val",
                                           config["batch_size"], config["image_size"], classes=classes,
                                           classes_from=split_path(config, "train")),
                       split_path(config, "val"), val_images, num_classes, pad_batches=config["mode"] == "graph")
        best_now = val["acc"] > best
        best = max(best, val["acc"])
        # The log row comes last: the log never lists an epoch that no checkpoint holds.
        records = model_records(net.binary, classes, net.binary_weights)
        save_state(last_path, params, epoch, best, records)
        if best_now:
            save_checkpoint(net, os.path.join(out, "best.ckpt"), append_dict=records)
        lr_now = float(schedule[epoch * steps_per_epoch - 1])
        append_log(os.path.join(out, "log.csv"), {
            "epoch": epoch, "train_loss": f"{loss:.5f}", "val_top1": f"{val['acc']:.5f}",
            "val_top5": f"{val['top5']:.5f}", "lr": f"{lr_now:.3e}", "epoch_seconds": f"{seconds:.1f}",
            "train_img_per_s": f"{rate:.1f}"})
        set_interrupt_note(f"{last_path} holds epoch {epoch}; continue with --resume last")
        print(f"epoch {epoch}/{config['epochs']} done in {format_duration(seconds)}: train loss {loss:.4f}, "
              f"val top-1 {val['acc']:.4f} top-5 {val['top5']:.4f}{' (best)' if best_now else ''}", flush=True)
    if world > 1:
        print(f"rank {rank}/{world}: data digest {data_digest:08x}, "
              f"parameter digest {parameter_digest(net)}", flush=True)
    if rank == 0:
        print(f"finished in {format_duration(time.time() - run_start)}: best val top-1 {best:.4f}; "
              f"checkpoints in {out}", flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))
