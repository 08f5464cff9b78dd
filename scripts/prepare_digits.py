"""Write scikit-learn's handwritten digits as an image folder: OUT/train and OUT/val of PNG files.

The 1,797 8x8 grayscale digits (UCI optdigits, 10 classes) ship inside scikit-learn, so this
needs no download beyond the package: `pip install scikit-learn`, or Debian's
`apt-get install python3-sklearn python3-pil` and run with /usr/bin/python3. Each class is
split on its own (seeded), so train and val hold every digit in the same proportions.
Pixels 0..16 become 0..255 grey levels; train.py resizes them (--image_size 32).

    python scripts/prepare_digits.py /tmp/digits
    python train.py --model BiMLP_S --dataset imagefolder --dataset_path /tmp/digits --image_size 32 --epochs 8
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from src.context import UserError, run_cli  # noqa: E402  (after the path set-up)


def load_digits():
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise UserError("scikit-learn is not installed: pip install scikit-learn "
                        "(or apt-get install python3-sklearn)") from None
    digits = sklearn_digits()
    return np.rint(digits.images * 255 / 16).astype(np.uint8), digits.target


def split_per_class(labels, val_fraction, seed):
    """{"train": indices, "val": indices}, each class shuffled and cut at val_fraction."""
    rng = np.random.default_rng(seed)
    splits = {"train": [], "val": []}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(len(members) * val_fraction))
        splits["val"].extend(members[:cut])
        splits["train"].extend(members[cut:])
    return {split: sorted(indices) for split, indices in splits.items()}


def write_folder(out, images, labels, splits):
    from PIL import Image

    for split, indices in splits.items():
        for index in indices:
            folder = os.path.join(out, split, str(labels[index]))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(images[index], "L").save(os.path.join(folder, f"{index:04d}.png"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder to create; train/ and val/ are written inside")
    parser.add_argument("--val_fraction", type=float, default=0.25, help="share of each class for val/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0.0 < args.val_fraction < 1.0:
        raise UserError(f"--val_fraction must be between 0 and 1, got {args.val_fraction}")
    existing = [split for split in ("train", "val") if os.path.exists(os.path.join(args.out, split))]
    if existing:
        raise UserError(f"{args.out} already has {' and '.join(s + '/' for s in existing)}: remove it or choose "
                        f"another folder")
    images, labels = load_digits()
    splits = split_per_class(labels, args.val_fraction, args.seed)
    write_folder(args.out, images, labels, splits)
    print(f"wrote {len(splits['train'])} train and {len(splits['val'])} val images "
          f"of {len(np.unique(labels))} classes to {args.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
