"""Classify one image, or every image in a folder, with a trained BiMLP.

    python predict.py --image shirt.png          # the committed BiMLP_T14 checkpoint
    python predict.py --image shirts/ --model BiMLP_T --json
    python predict.py --image photo.jpg --checkpoint_path bimlp_s.ckpt --model BiMLP_S \
        --class_names /data/imagenet/LOC_synset_mapping.txt

Images get the evaluation preprocessing of src/dataset.py (ImageNet: resize the
shorter side to image_size / 0.875, center crop, normalize; BiMLP_T/T14: grayscale
28x28 Fashion-MNIST normalization). Class names: --class_names (ImageNet's
LOC_synset_mapping.txt, or one name per line), else the names the checkpoint records
(train.py's do), else Fashion-MNIST's for BiMLP_T/T14 and ImageNet-1k's for 1000-class
BiMLP_S/M, otherwise class indices. In a folder, unreadable images are reported and skipped.
"""
import argparse
import json
import os
import re
import sys

import mindspore as ms
import numpy as np

from src.checkpoint import load_weights, recorded_class_names
from src.config import parse_bool
from src.context import UserError, add_model_argument, default_device_id, run_cli, setup_device
from src.dataset import IMAGE_EXTENSIONS, check_image_size, preprocess_image_file, readable_class_names
from src.dataset import class_names as dataset_class_names
from src.pretrained import SHIPPED_DEFAULT_MODEL, shipped_checkpoint
from src.wavemlp_20_3 import DATASET_OF_MODEL, create_model
from src.weight_cache import ENGINES

# Images per step; the last, partial batch is padded so that the graph compiles once.
BATCH_SIZE = 8
SYNSET_LINE = re.compile(r"^n\d{8}\s+(.+)$")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", required=True, help="an image file, or a folder of images")
    parser.add_argument("--checkpoint_path", help="checkpoint file, .ckpt or packed (default for BiMLP_T and "
                        "BiMLP_T14: the variant's committed checkpoints/<variant>_fashion_mnist.packed)")
    add_model_argument(parser, SHIPPED_DEFAULT_MODEL)
    parser.add_argument("--num_classes", type=int, default=None, help="classes of the head (default: the variant's)")
    parser.add_argument("--binary", type=parse_bool, default=True, metavar="{true,false}",
                        help="false classifies with a float-twin checkpoint (train.py --binary false); default: true")
    parser.add_argument("--image_size", type=int, default=None,
                        help="input height = width (default 224; 28 for BiMLP_T and BiMLP_T14)")
    parser.add_argument("--class_names", default=None,
                        help="LOC_synset_mapping.txt (lines 'n01440764 tench, Tinca tinca') or one name per line")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--engine", default="exact", choices=ENGINES,
                        help="exact: logits bit-identical to the released network; xnor: binary 1x1 layers on "
                             "packed bits, faster, equal up to float rounding (CPU; default: exact)")
    parser.add_argument("--platform", default="CPU", choices=("Ascend", "GPU", "CPU"))
    parser.add_argument("--device_id", type=int, default=default_device_id())
    return parser.parse_args(argv)


def image_files(path):
    """The image to classify, or the images directly inside a folder, sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"image or folder not found: {path}")
    files = sorted(os.path.join(path, name) for name in os.listdir(path)
                   if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
                   and os.path.isfile(os.path.join(path, name)))
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
    return files


def read_class_names(path, num_classes):
    """Names from a synset mapping file (line i = class i) or a plain list of names."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read class names from {path}: {err}") from None
    names = [SYNSET_LINE.match(line).group(1) if SYNSET_LINE.match(line) else line for line in lines]
    if len(names) != num_classes:
        raise UserError(f"{path} lists {len(names)} class names, the model has {num_classes} classes")
    return names


def class_names(model_name, num_classes, checkpoint):
    """The checkpoint's recorded class names, else those of the variant's dataset if the head fits it."""
    names = recorded_class_names(checkpoint)
    if names is None:
        known = dataset_class_names(DATASET_OF_MODEL[model_name])
        names = known if len(known) == num_classes else []
    names = readable_class_names(names)
    return names + [f"class {index}" for index in range(len(names), num_classes)]


def load_images(files, dataset, image_size):
    """(preprocessed images, their files, [(file, error)] for unreadable ones)."""
    images, readable, errors = [], [], []
    for file in files:
        try:
            images.append(preprocess_image_file(file, dataset, image_size))
            readable.append(file)
        except UserError as err:
            if len(files) == 1:
                raise
            errors.append((file, str(err)))
    if not images:
        raise UserError(f"none of the {len(files)} images could be read; first error: {errors[0][1]}")
    return np.stack(images).astype(np.float32), readable, errors


def probabilities(net, images):
    """Softmax of the logits, in batches of one size."""
    size = min(BATCH_SIZE, len(images))
    results = []
    for start in range(0, len(images), size):
        batch = images[start:start + size]
        padded = np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), np.float32)])
        logits = net(ms.Tensor(padded)).asnumpy()[:len(batch)].astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        results.append(exp / exp.sum(axis=1, keepdims=True))
    return np.concatenate(results)


def top_k(probs, names, k):
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"rank": rank + 1, "class": int(index), "label": names[index], "probability": float(probs[index])}
            for rank, index in enumerate(order)]


def print_readable(predictions, errors):
    for prediction in predictions:
        print(prediction["image"])
        width = max(len(entry["label"]) for entry in prediction["top_k"])
        for entry in prediction["top_k"]:
            print(f"  {entry['rank']}. {entry['label']:<{width}}  {100 * entry['probability']:6.2f}%"
                  f"  (class {entry['class']})")
    for file, error in errors:
        print(f"skipped {file}: {error}", file=sys.stderr)


def main(argv=None):
    args = parse_args(argv)
    if args.top_k < 1:
        raise UserError(f"--top_k must be at least 1, got {args.top_k}")
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num_classes must be at least 1, got {args.num_classes}")
    check_image_size(args.image_size)
    checkpoint_path = args.checkpoint_path or shipped_checkpoint(args.model)
    dataset = DATASET_OF_MODEL[args.model]
    images, readable, errors = load_images(image_files(args.image), dataset, args.image_size)
    if args.engine == "xnor" and args.platform != "CPU":
        raise UserError("--engine xnor runs on the fused CPU kernels: use --platform CPU")
    try:
        net = create_model(args.model, fused=None, binary=args.binary, engine=args.engine,
                           **({"num_classes": args.num_classes} if args.num_classes else {}))
    except ValueError as err:  # --engine xnor without a C++ compiler, or for a float twin
        raise UserError(str(err)) from None
    names = read_class_names(args.class_names, net.num_classes) if args.class_names else None
    # After the inputs are checked: a bad path fails fast, before the device starts.
    setup_device(args.platform, args.device_id)
    checkpoint = load_weights(net, checkpoint_path, args.model)
    names = names or class_names(args.model, net.num_classes, checkpoint)
    net.set_train(False)
    probs = probabilities(net, images)
    predictions = [{"image": file, "top_k": top_k(p, names, min(args.top_k, net.num_classes))}
                   for file, p in zip(readable, probs)]
    if args.json:
        print(json.dumps({"model": args.model, "checkpoint": checkpoint_path, "predictions": predictions,
                          "skipped": [{"image": file, "error": error} for file, error in errors]}, indent=2))
    else:
        print_readable(predictions, errors)


if __name__ == "__main__":
    run_cli(main)
