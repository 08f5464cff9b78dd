"""Evaluate a BiMLP checkpoint: top-1 / top-5 accuracy on ImageNet val, an ImageNet-layout folder or Fashion-MNIST.

    python eval.py --dataset_path /data/imagenet/val --checkpoint_path BiMLP_M.ckpt --model BiMLP_M
    python eval.py        # the committed BiMLP_T14 checkpoint on the Fashion-MNIST test set
    python eval.py --model BiMLP_T    # the committed BiMLP_T checkpoint

Ends with the upstream-style line
    result: {'acc': <top-1>, 'top5': <top-5>, 'num_samples': <images>} ckpt= <path>
"""
import argparse
import os
import sys

from src.checkpoint import load_weights, read_checkpoint, recorded_class_names
from src.config import parse_bool
from src.context import PLATFORMS, UserError, add_model_argument, default_device_id, run_cli, setup_device
from src.dataset import (DATASETS, DEFAULT_IMAGE_SIZE, FASHION_MNIST_DIR, check_image_size, count_images,
                         create_dataset, num_classes_of, short_list)
from src.evaluation import evaluate
from src.pretrained import SHIPPED_DEFAULT_MODEL, shipped_checkpoint
from src.wavemlp_20_3 import DATASET_OF_MODEL, create_model, models_for
from src.weight_cache import ENGINES


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate a BiMLP checkpoint (top-1 / top-5 accuracy).")
    parser.add_argument("--dataset_path", help="folder with one sub-folder per class (ImageNet val layout), "
                        f"or the Fashion-MNIST folder (default for fashion_mnist: {FASHION_MNIST_DIR})")
    parser.add_argument("--platform", default="CPU", choices=PLATFORMS, help="default: CPU")
    parser.add_argument("--checkpoint_path", help="checkpoint file, .ckpt or packed (default for BiMLP_T and "
                        "BiMLP_T14: the variant's committed checkpoints/<variant>_fashion_mnist.packed)")
    add_model_argument(parser, SHIPPED_DEFAULT_MODEL)
    parser.add_argument("--binary", type=parse_bool, default=True, metavar="{true,false}",
                        help="false evaluates a float-twin checkpoint (train.py --binary false); "
                        "both have the same parameter names, so this cannot be told from the file (default: true)")
    parser.add_argument("--fused", type=parse_bool, default=None, metavar="{true,false}",
                        help="run the binary network's element-wise chains as the fused CPU kernels of "
                             "src/fused_cpu.cc (same logits, faster); default: on CPU when a C++ compiler "
                             "is available")
    parser.add_argument("--engine", default="exact", choices=ENGINES,
                        help="exact: logits bit-identical to the released network; xnor: binary 1x1 layers on "
                             "packed bits in integer arithmetic, faster, equal up to float rounding (default: exact)")
    parser.add_argument("--dataset", choices=DATASETS,
                        help="default: fashion_mnist for BiMLP_T/T14, imagenet for BiMLP_S/M")
    parser.add_argument("--image_size", type=int, help="default: 224 (imagenet, imagefolder), 28 (fashion_mnist)")
    parser.add_argument("--num_classes", type=int,
                        help="default: 1000 (imagenet), 10 (fashion_mnist), number of class folders (imagefolder)")
    parser.add_argument("--batch_size", type=int, default=64, help="default: 64")
    parser.add_argument("--device_id", type=int, default=default_device_id(), help="default: $DEVICE_ID or 0")
    parser.add_argument("--mode", default="graph", choices=("graph", "pynative"), help="default: graph")
    return parser.parse_args(argv)


def resolve(args):
    """Fill in the defaults that depend on other flags; reject bad values before any heavy work."""
    args.dataset = args.dataset or DATASET_OF_MODEL[args.model]
    if args.checkpoint_path is None:
        args.checkpoint_path = shipped_checkpoint(args.model)
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
    check_image_size(args.image_size)
    # Class folders are labelled by the checkpoint's class names when it records them (train.py's do).
    args.class_names = recorded_class_names(read_checkpoint(args.checkpoint_path))
    args.classes_from = f"the checkpoint {args.checkpoint_path}"
    if args.class_names:
        count_images(args.dataset, args.dataset_path, "val", args.class_names, args.classes_from)
        dataset_classes = len(args.class_names)
    else:
        dataset_classes = num_classes_of(args.dataset, args.dataset_path)
    if args.num_classes is None:
        args.num_classes = dataset_classes
    if args.num_classes < dataset_classes:
        raise UserError(f"the dataset has {dataset_classes} classes but the model only {args.num_classes}: "
                        f"pass --num_classes {dataset_classes} or a matching dataset")
    if args.fused and not args.binary:
        raise UserError("--fused true needs the binary network: the fused kernels binarize activations")
    if args.engine == "xnor" and (not args.binary or args.fused is False or args.platform != "CPU"):
        raise UserError("--engine xnor computes the binary network with the fused CPU kernels: it needs "
                        "--binary true, --platform CPU and --fused true (or unset)")
    if args.fused and args.platform != "CPU":
        raise UserError("--fused true needs --platform CPU: the fused kernels are CPU code")
    return args


def build_network(args):
    try:
        net = create_model(args.model, num_classes=args.num_classes, binary=args.binary, fused=args.fused,
                           engine=args.engine)
    except ValueError as err:  # --fused true without a C++ compiler
        raise UserError(str(err)) from None
    load_weights(net, args.checkpoint_path, args.model)
    model_channels = net.patch_embed.proj.weight.shape[1]
    data_channels = 1 if args.dataset == "fashion_mnist" else 3
    if model_channels != data_channels:
        raise UserError(f"{args.model} takes {model_channels}-channel images but {args.dataset} gives "
                        f"{data_channels}-channel ones: use {'/'.join(models_for('fashion_mnist'))} with "
                        f"fashion_mnist, "
                        f"{'/'.join(models_for('imagenet'))} with imagenet or imagefolder")
    net.set_train(False)
    return net


def main(argv=None):
    args = resolve(parse_args(argv))
    num_images = count_images(args.dataset, args.dataset_path, "val", args.class_names, args.classes_from)
    print(f"evaluating {args.model} checkpoint {args.checkpoint_path}", flush=True)
    print(f"  data: {args.dataset} at {args.dataset_path}, {num_images} images, "
          f"image size {args.image_size}, batch size {args.batch_size}", flush=True)
    print(f"  model: {args.num_classes} classes, {args.platform} device {args.device_id}, {args.mode} mode",
          flush=True)
    if args.class_names:
        print(f"  labels: by the checkpoint's class names ({short_list(args.class_names)})", flush=True)
    setup_device(args.platform, args.device_id, args.mode)
    net = build_network(args)
    print(f"  fused CPU kernels: {'on' if net.fused else 'off'}, engine {net.engine}", flush=True)
    dataset = create_dataset(args.dataset, args.dataset_path, "val", args.batch_size, args.image_size,
                             classes=args.class_names, classes_from=args.classes_from)
    if args.mode == "graph":
        print("compiling the network graph on the first batch (can take minutes on CPU; "
              "--mode pynative skips compilation)", file=sys.stderr, flush=True)
    result = evaluate(net, dataset, args.dataset_path, num_images, args.num_classes,
                      pad_batches=args.mode == "graph")
    print(f"result: {result} ckpt= {args.checkpoint_path}", flush=True)


if __name__ == "__main__":
    run_cli(main)
