"""Writers for small, real test datasets: image files through PIL and Fashion-MNIST idx files."""
import os
import struct

import numpy as np
from PIL import Image

FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


def write_image(file, image, mode="RGB"):
    """Save a PIL image (or an HWC uint8 array) converted to `mode`, format chosen by the extension."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    os.makedirs(os.path.dirname(file), exist_ok=True)
    image.convert(mode).save(file, FORMATS[os.path.splitext(file)[1].lower()])
    return file


def solid(color, size=(40, 30)):
    """A one-colour RGB image of size (width, height)."""
    return Image.new("RGB", size, tuple(color))


def noisy(seed, size=(48, 40)):
    """A textured RGB image, so JPEG encoding does real work."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_tree(root, files):
    """files: {"class/name.ext": (PIL image, mode)} -> real image files under root."""
    for relative, (image, mode) in files.items():
        write_image(os.path.join(root, relative), image, mode)
    return root


def truncate(file, keep=300):
    """Cut a file short, like an interrupted download."""
    with open(file, "rb") as handle:
        data = handle.read(keep)
    with open(file, "wb") as handle:
        handle.write(data)


def write_idx(folder, split, images, labels):
    """Uncompressed Fashion-MNIST idx files (images (N, 28, 28) uint8, labels (N,)) for split train or test."""
    prefix = "train" if split == "train" else "t10k"
    os.makedirs(folder, exist_ok=True)
    images = np.asarray(images, np.uint8)
    with open(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), "wb") as handle:
        handle.write(struct.pack(">IIII", 2051, *images.shape) + images.tobytes())
    with open(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), "wb") as handle:
        handle.write(struct.pack(">II", 2049, len(labels)) + np.asarray(labels, np.uint8).tobytes())
    return folder


def write_high_depth(file, pixels, mode):
    """Grayscale uint8 pixels saved at a higher depth with the same brightness: as PIL mode I;16
    (x 257, a 16-bit PNG or TIFF), I (x 257 as 32-bit integers, TIFF) or F (/ 255, float TIFF)."""
    values = {"I;16": lambda p: p.astype(np.uint16) * 257, "I": lambda p: p.astype(np.int32) * 257,
              "F": lambda p: p.astype(np.float32) / 255}[mode](np.asarray(pixels))
    os.makedirs(os.path.dirname(file), exist_ok=True)
    Image.fromarray(values).save(file)
    with Image.open(file) as image:
        assert image.mode == mode, image.mode
    return file
