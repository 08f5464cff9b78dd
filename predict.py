"""Classify one image, or every image in a folder, with a trained BiMLP.

    python predict.py --image photo.jpg --checkpoint_path bimlp_s.ckpt --checkpoint_nm BiMLP_S \
        --class_names /data/imagenet/LOC_synset_mapping.txt
    python predict.py --image shirts/ --checkpoint_path bimlp_t.ckpt --checkpoint_nm BiMLP_T --json

Images get the evaluation preprocessing of src/dataset.py (ImageNet: resize the
shorter side to image_size / 0.875, center crop, normalize; BiMLP_T/T14: grayscale
28x28 Fashion-MNIST normalization). Class names: --class_names (ImageNet's
LOC_synset_mapping.txt, or one name per line), Fashion-MNIST's names for BiMLP_T/T14,
otherwise class indices. In a folder, unreadable images are reported and skipped.
"""
import argparse
import json
import os
import re
import sys

import mindspore as ms
import numpy as np

from src.checkpoint import load_weights
from src.config import parse_bool
from src.context import UserError, default_device_id, run_cli, setup_device
from src.dataset import FASHION_MNIST_CLASSES, IMAGE_EXTENSIONS, check_image_size, preprocess_image_file
from src.wavemlp_20_3 import DATASET_OF_MODEL, MODELS, create_model
# Images per step; the last, partial batch is padded so that the graph compiles once.
BATCH_SIZE = 8
SYNSET_LINE = re.compile(r"^n\d{8}\s+(.+)$")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", required=True, help="an image file, or a folder of images")
    parser.add_argument("--checkpoint_path", required=True)
    parser.add_argument("--checkpoint_nm", default="BiMLP_S", choices=sorted(MODELS), help="model variant")
    parser.add_argument("--num_classes", type=int, default=None, help="classes of the head (default: the variant's)")
    parser.add_argument("--binary", type=parse_bool, default=True, metavar="{true,false}",
                        help="false classifies with a float-twin checkpoint (train.py --binary false); default: true")
    parser.add_argument("--image_size", type=int, default=None,
                        help="input height = width (default 224; 28 for BiMLP_T)")
    parser.add_argument("--class_names", default=None,
                        help="LOC_synset_mapping.txt (lines 'n01440764 tench, Tinca tinca') or one name per line")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
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


def class_names(args, num_classes):
    if args.class_names:
        return read_class_names(args.class_names, num_classes)
    if DATASET_OF_MODEL[args.checkpoint_nm] == "fashion_mnist" and num_classes == len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [f"class {index}" for index in range(num_classes)]


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
    dataset = DATASET_OF_MODEL[args.checkpoint_nm]
    images, readable, errors = load_images(image_files(args.image), dataset, args.image_size)
    net = create_model(args.checkpoint_nm, fused=None, binary=args.binary,
                       **({"num_classes": args.num_classes} if args.num_classes else {}))
    names = class_names(args, net.num_classes)
    # After the inputs are checked: a bad path fails fast, before the device starts.
    setup_device(args.platform, args.device_id)
    load_weights(net, args.checkpoint_path, args.checkpoint_nm)
    net.set_train(False)
    probs = probabilities(net, images)
    predictions = [{"image": file, "top_k": top_k(p, names, min(args.top_k, net.num_classes))}
                   for file, p in zip(readable, probs)]
    if args.json:
        print(json.dumps({"model": args.checkpoint_nm, "predictions": predictions,
                          "skipped": [{"image": file, "error": error} for file, error in errors]}, indent=2))
    else:
        print_readable(predictions, errors)


if __name__ == "__main__":
    run_cli(main)
