"""Evaluate a BiMLP checkpoint: top-1 / top-5 accuracy on ImageNet val, an ImageNet-layout folder or Fashion-MNIST.

    python eval.py --dataset_path /data/imagenet/val --checkpoint_path BiMLP_M.ckpt --checkpoint_nm BiMLP_M
    python eval.py        # the committed BiMLP_T checkpoint on the Fashion-MNIST test set

Ends with the upstream-style line
    result: {'acc': <top-1>, 'top5': <top-5>, 'num_samples': <images>} ckpt= <path>
"""
import argparse
import os
import sys
import time

import numpy as np
from mindspore import Tensor

from src.checkpoint import load_weights
from src.context import PLATFORMS, UserError, default_device_id, run_cli, setup_device
from src.dataset import (DATASETS, DEFAULT_IMAGE_SIZE, FASHION_MNIST_DIR, count_images, create_dataset,
                         num_classes_of, numpy_batches)
from src.wavemlp_20_3 import create_model

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CHECKPOINT = os.path.join(ROOT, "checkpoints", "BiMLP_T_fashion_mnist.ckpt")
MODEL_NAMES = ("BiMLP_S", "BiMLP_M", "BiMLP_T")
PROGRESS_EVERY = 10.0  # seconds between progress lines
# BiMLP_S/M's stride-4 stem needs a few pixels; 16 is the smallest size the tests run.
MIN_IMAGE_SIZE = 16


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate a BiMLP checkpoint (top-1 / top-5 accuracy).")
    parser.add_argument("--dataset_path", help="folder with one sub-folder per class (ImageNet val layout), "
                        f"or the Fashion-MNIST folder (default for fashion_mnist: {FASHION_MNIST_DIR})")
    parser.add_argument("--platform", default="CPU", choices=PLATFORMS, help="default: CPU")
    parser.add_argument("--checkpoint_path", help="checkpoint file (default for BiMLP_T: "
                        "checkpoints/BiMLP_T_fashion_mnist.ckpt)")
    parser.add_argument("--checkpoint_nm", default="BiMLP_T", choices=MODEL_NAMES,
                        help="network variant of the checkpoint (default: BiMLP_T)")
    parser.add_argument("--dataset", choices=DATASETS,
                        help="default: fashion_mnist for BiMLP_T, imagenet otherwise")
    parser.add_argument("--image_size", type=int, help="default: 224 (imagenet, imagefolder), 28 (fashion_mnist)")
    parser.add_argument("--num_classes", type=int,
                        help="default: 1000 (imagenet), 10 (fashion_mnist), number of class folders (imagefolder)")
    parser.add_argument("--batch_size", type=int, default=64, help="default: 64")
    parser.add_argument("--device_id", type=int, default=default_device_id(), help="default: $DEVICE_ID or 0")
    parser.add_argument("--mode", default="graph", choices=("graph", "pynative"), help="default: graph")
    return parser.parse_args(argv)


def resolve(args):
    """Fill in the defaults that depend on other flags; reject bad values before any heavy work."""
    args.dataset = args.dataset or ("fashion_mnist" if args.checkpoint_nm == "BiMLP_T" else "imagenet")
    if args.checkpoint_path is None:
        if args.checkpoint_nm != "BiMLP_T":
            raise UserError(f"--checkpoint_path is required for {args.checkpoint_nm}")
        if not os.path.isfile(DEFAULT_CHECKPOINT):
            raise UserError(f"the default Fashion-MNIST checkpoint {DEFAULT_CHECKPOINT} does not exist yet: "
                            f"train one with train.py, or pass --checkpoint_path")
        args.checkpoint_path = DEFAULT_CHECKPOINT
    if not os.path.isfile(args.checkpoint_path):
        raise UserError(f"checkpoint not found: {args.checkpoint_path}")
    if args.dataset_path is None:
        if args.dataset != "fashion_mnist":
            raise UserError(f"--dataset_path is required for --dataset {args.dataset}: "
                            f"the folder with one sub-folder per class")
        args.dataset_path = FASHION_MNIST_DIR
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.image_size is None:
        args.image_size = DEFAULT_IMAGE_SIZE[args.dataset]
    if args.image_size < MIN_IMAGE_SIZE:
        raise UserError(f"--image_size must be at least {MIN_IMAGE_SIZE}, got {args.image_size}")
    dataset_classes = num_classes_of(args.dataset, args.dataset_path)
    if args.num_classes is None:
        args.num_classes = dataset_classes
    if args.num_classes < dataset_classes:
        raise UserError(f"the dataset has {dataset_classes} classes but the model only {args.num_classes}: "
                        f"pass --num_classes {dataset_classes} or a matching dataset")
    return args


def build_network(args):
    net = create_model(args.checkpoint_nm, num_classes=args.num_classes)
    load_weights(net, args.checkpoint_path, args.checkpoint_nm)
    model_channels = net.patch_embed.proj.weight.shape[1]
    data_channels = 1 if args.dataset == "fashion_mnist" else 3
    if model_channels != data_channels:
        raise UserError(f"{args.checkpoint_nm} takes {model_channels}-channel images but {args.dataset} gives "
                        f"{data_channels}-channel ones: use BiMLP_T with fashion_mnist, BiMLP_S/BiMLP_M "
                        f"with imagenet or imagefolder")
    net.set_train(False)
    return net


class Progress:
    """Prints batches done, images, running top-1, throughput and ETA to stderr every few seconds."""

    def __init__(self, total_batches, total_images):
        self.total_batches, self.total_images = total_batches, total_images
        self.start = time.time()
        # The first batch includes graph compilation: throughput is measured after it.
        self.first_done, self.first_images = None, 0
        self.last_print = 0.0

    def update(self, batches, images, correct):
        now = time.time()
        if self.first_done is None:
            self.first_done, self.first_images = now, images
        if batches not in (1, self.total_batches) and now - self.last_print < PROGRESS_EVERY:
            return
        self.last_print = now
        timed = images - self.first_images
        rate = timed / (now - self.first_done) if timed and now > self.first_done else None
        speed = f"{rate:.1f} img/s" if rate else "- img/s"
        eta = _duration((self.total_images - images) / rate) if rate else "-"
        print(f"eval: batch {batches}/{self.total_batches}, {images}/{self.total_images} images, "
              f"top-1 {correct / images:.4f}, {speed}, elapsed {_duration(now - self.start)}, ETA {eta}",
              file=sys.stderr, flush=True)


def _duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def forward(net, images, batch_shape):
    """Logits for a batch; in graph mode a short last batch is zero-padded to the compiled batch size.

    Graph mode compiles one graph per input shape (tens of seconds to minutes on CPU);
    in eval mode every layer treats samples independently, so padding leaves the
    real images' logits as they are.
    """
    count = len(images)
    if batch_shape is not None and count < batch_shape:
        padding = np.zeros((batch_shape - count, *images.shape[1:]), images.dtype)
        images = np.concatenate([images, padding])
    return net(Tensor(images)).asnumpy()[:count]


def evaluate(net, dataset, dataset_path, num_images, num_classes, pad_batches):
    """Top-1 and top-k (k = min(5, classes)) counted with numpy over every image, the last partial batch too."""
    k = min(5, num_classes)
    progress = Progress(dataset.get_dataset_size(), num_images)
    batches = images_seen = correct1 = correct5 = 0
    batch_shape = None
    for images, labels in numpy_batches(dataset, dataset_path):
        logits = forward(net, images, batch_shape)
        if pad_batches and batch_shape is None:
            batch_shape = len(images)
        ranked = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        correct1 += int((ranked[:, 0] == labels).sum())
        correct5 += int((ranked == labels[:, None]).any(axis=1).sum())
        batches += 1
        images_seen += len(labels)
        progress.update(batches, images_seen, correct1)
    if images_seen == 0:
        raise UserError(f"no images were read from {dataset_path}")
    return {"acc": correct1 / images_seen, "top5": correct5 / images_seen, "num_samples": images_seen}


def main(argv=None):
    args = resolve(parse_args(argv))
    num_images = count_images(args.dataset, args.dataset_path, "val")
    print(f"evaluating {args.checkpoint_nm} checkpoint {args.checkpoint_path}", flush=True)
    print(f"  data: {args.dataset} at {args.dataset_path}, {num_images} images, "
          f"image size {args.image_size}, batch size {args.batch_size}", flush=True)
    print(f"  model: {args.num_classes} classes, {args.platform} device {args.device_id}, {args.mode} mode",
          flush=True)
    setup_device(args.platform, args.device_id, args.mode)
    net = build_network(args)
    dataset = create_dataset(args.dataset, args.dataset_path, "val", args.batch_size, args.image_size)
    if args.mode == "graph":
        print("compiling the network graph on the first batch (can take minutes on CPU; "
              "--mode pynative skips compilation)", file=sys.stderr, flush=True)
    result = evaluate(net, dataset, args.dataset_path, num_images, args.num_classes,
                      pad_batches=args.mode == "graph")
    print(f"result: {result} ckpt= {args.checkpoint_path}", flush=True)


if __name__ == "__main__":
    run_cli(main)
