"""Input pipelines: ImageNet-layout image folders and Fashion-MNIST, as batched MindSpore datasets.

`create_dataset` yields batches of (image float32 NCHW, label int32). Evaluation
pipelines never shuffle and never drop images; training pipelines shuffle,
augment and drop the last partial batch.

Images are decoded with PIL instead of MindSpore's C++ `Decode`: both give
bit-identical pixels (same libjpeg), but the C++ decoder kills the whole process
with SIGFPE on some truncated JPEGs, while PIL raises an error that we can turn
into a message naming the file.
"""
import functools
import gzip
import hashlib
import io
import os
import re
import shutil
import zlib

import numpy as np
from PIL import Image

import mindspore as ms
import mindspore.dataset as ds
import mindspore.dataset.transforms as transforms
import mindspore.dataset.vision as vision

from src.context import UserError, cache_dir
from src.files import atomic_write

DATASETS = ("imagenet", "imagefolder", "fashion_mnist")
SPLITS = ("train", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
DEFAULT_IMAGE_SIZE = {"imagenet": 224, "imagefolder": 224, "fashion_mnist": 28}
# The smallest input side the scripts accept: below it BiMLP's last stages see one-pixel maps.
MIN_IMAGE_SIZE = 16
# ImageNet-1k's synsets in canonical order with their names (origin: see the file's header).
IMAGENET_CLASSES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "imagenet_classes.tsv")
# The eval resize keeps the crop at 87.5% of the shorter side: 224 -> 256.
CROP_RATIO = 0.875
# At this size and below (CIFAR, MNIST-likes) ImageNet's crops, down to 8% of the image in training
# and without the border at eval, leave too few pixels: the CIFAR practice instead trains on the whole
# image shifted by up to 1/8 of its side (zero fill) and flipped, and evaluates on the whole image.
SMALL_IMAGE_SIZE = 32
IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_MEAN = [0.2860 * 255]
FASHION_MNIST_STD = [0.3530 * 255]

# Marks our decoder's failures inside MindSpore's pipeline error text.
UNREADABLE = "unreadable image"
# The value range of each PIL mode with more than 8 bits per pixel: I;16 (16-bit PNG and TIFF; also
# I;16B, I;16L...) and I (32-bit integers, how older Pillow and TIFF give 16-bit pixels) span the
# 16-bit range, F (float TIFF) spans 0..1. Each is scaled to 0..255 (I;16: divided by 257).
HIGH_DEPTH_RANGE = {"I": (0, 65535), "F": (0.0, 1.0)}


def create_dataset(name, path=None, split="val", batch_size=64, image_size=None,
                   num_shards=None, shard_id=None, num_workers=None, classes=None, classes_from=None, augment=True):
    """A batched dataset of (image float32 CHW, label int32).

    name: imagenet (class folders named by ImageNet-1k synset, any subset of the 1000,
    labelled by their canonical index), imagefolder (any class folders, labelled in
    sorted order) or fashion_mnist (path defaults to FASHION_MNIST_DIR).
    classes: label index -> class name, as recorded in a checkpoint or read from the
    training set (classes_from names the source for messages): class folders are then
    labelled by their index there, and a folder not in it is an error.
    split: "val" (no shuffle, no augmentation, keeps the last partial batch) or
    "train" (shuffled, augmented unless augment is False, drops the last partial batch).
    num_shards/shard_id: read one shard for distributed training. MindSpore pads
    shards to equal size by repeating images, so evaluate unsharded.
    """
    _check_choice("dataset", name, DATASETS)
    _check_choice("split", split, SPLITS)
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    image_size = DEFAULT_IMAGE_SIZE[name] if image_size is None else image_size
    if image_size < 1:
        raise UserError(f"image size must be at least 1, got {image_size}")
    workers = num_workers or default_workers(name)
    training = split == "train"
    if name == "fashion_mnist":
        _check_fashion_mnist_classes(classes, classes_from)
        source = ds.FashionMnistDataset(fashion_mnist_folder(path or FASHION_MNIST_DIR),
                                        usage="train" if training else "test", shuffle=training,
                                        num_shards=num_shards, shard_id=shard_id,
                                        num_parallel_workers=workers)
    else:
        source = ds.ImageFolderDataset(path, shuffle=training, extensions=_extensions_in(path),
                                       class_indexing=folder_labels(name, path, classes, classes_from),
                                       num_shards=num_shards, shard_id=shard_id,
                                       num_parallel_workers=workers)
    dataset = source.map(image_transforms(name, split, image_size, augment), input_columns="image",
                         num_parallel_workers=workers)
    dataset = dataset.map(transforms.TypeCast(ms.int32), input_columns="label")
    return dataset.batch(batch_size, drop_remainder=training)


def check_image_size(size, flag="--image_size"):
    """UserError for an input side below MIN_IMAGE_SIZE (None: the default size, fine)."""
    if size is not None and size < MIN_IMAGE_SIZE:
        raise UserError(f"{flag} must be at least {MIN_IMAGE_SIZE}, got {size}")


def default_workers(name):
    """Fashion-MNIST's few C++ ops per image run ~10x faster in one worker than in two
    (measured here: 2,400 vs 230 img/s); decoding JPEGs is worth one worker per core."""
    return 1 if name == "fashion_mnist" else min(8, os.cpu_count() or 1)


def image_transforms(name, split, image_size=None, augment=True):
    """The per-image operations, from the source's image column to float32 CHW."""
    decode = [] if name == "fashion_mnist" else [decode_rgb]
    return decode + pixel_transforms(name, split, image_size, augment)


def pixel_transforms(name, split, image_size=None, augment=True):
    """From decoded HWC uint8 pixels (RGB, or 1-channel for fashion_mnist) to float32 CHW; training
    images get random crops and flips unless augment is False."""
    image_size = DEFAULT_IMAGE_SIZE[name] if image_size is None else image_size
    augmented = split == "train" and augment
    if name == "fashion_mnist":
        # A same-size resize is an exact copy, so 28x28 Fashion-MNIST images pass unchanged.
        resize = vision.Resize((image_size, image_size), vision.Inter.LINEAR)
        crop = [vision.RandomCrop(image_size, padding=2), vision.RandomHorizontalFlip()] if augmented else []
        return [resize, *crop, vision.Normalize(FASHION_MNIST_MEAN, FASHION_MNIST_STD), vision.HWC2CHW()]
    if image_size <= SMALL_IMAGE_SIZE:
        crop = [vision.Resize(image_size, vision.Inter.LINEAR), vision.CenterCrop(image_size)]
        if augmented:
            crop += [vision.RandomCrop(image_size, padding=image_size // 8), vision.RandomHorizontalFlip()]
    elif augmented:
        crop = [vision.RandomResizedCrop(image_size, scale=(0.08, 1.0), interpolation=vision.Inter.LINEAR),
                vision.RandomHorizontalFlip()]
    else:
        crop = [vision.Resize(resize_size(image_size), vision.Inter.LINEAR), vision.CenterCrop(image_size)]
    return [*crop, vision.Normalize(IMAGENET_MEAN, IMAGENET_STD), vision.HWC2CHW()]


def resize_size(image_size):
    """Shorter side before the eval center crop: 256 for 224."""
    return int(round(image_size / CROP_RATIO))


def decode_rgb(raw):
    """Encoded image bytes -> HWC uint8 RGB, as decode_image."""
    try:
        return decode_image(io.BytesIO(raw.tobytes()), "RGB")
    except UserError as err:
        raise ValueError(f"{UNREADABLE}: {err}") from None


def decode_image(source, mode="RGB"):
    """An image file (path or file object) -> HWC uint8 pixels in PIL mode "RGB" or "L".

    The one decoder of the package: the data pipelines and predict.py read images through it.
    Grayscale, CMYK, palette and alpha images are converted; 16-bit and float pixels are
    first scaled to 8 bits by the range of their type (see to_8bit).
    """
    try:
        with Image.open(source) as image:
            return np.asarray(to_8bit(image).convert(mode))
    except UserError:
        raise
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError... for bad files
        raise UserError(str(err)) from None


def to_8bit(image):
    """A PIL image with 8-bit channels. PIL's own convert() clips 16-bit and 32-bit pixels at 255
    (a 16-bit photo turns almost white) and maps float pixels in 0..1 to black."""
    mode = image.mode.split(";")[0]
    if mode not in HIGH_DEPTH_RANGE:
        return image
    low, high = HIGH_DEPTH_RANGE[mode]
    pixels = np.asarray(image, np.float64)
    if pixels.size and (pixels.min() < low or pixels.max() > high):
        raise UserError(f"{image.mode} pixels from {pixels.min():g} to {pixels.max():g} lie outside "
                        f"{low:g}..{high:g}, the range this package reads {image.mode} images in; "
                        f"save the image with 8 or 16 bits per channel")
    return Image.fromarray(np.round(pixels * (255.0 / high)).astype(np.uint8), "L")


def preprocess_image_file(file, name="imagenet", image_size=None):
    """One image file -> the float32 CHW array that the eval pipeline of `name` produces."""
    if not os.path.isfile(file):
        raise UserError(f"image not found: {file}")
    try:
        pixels = decode_image(file, "L" if name == "fashion_mnist" else "RGB")
    except UserError as err:
        raise UserError(f"cannot decode {file}: {err}") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    for op in pixel_transforms(name, "val", image_size):
        pixels = op(pixels)
    return pixels


def numpy_batches(dataset, path=None):
    """Iterate (images, labels) as numpy arrays; pipeline failures become UserError."""
    try:
        for images, labels in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1):
            yield images, labels
    except RuntimeError as err:
        raise pipeline_error(err, path) from None


def pipeline_error(err, path=None):
    """A UserError explaining a MindSpore pipeline RuntimeError, naming the bad file if known."""
    text = str(err)
    file = re.search(r"The corresponding data file is: (.+?)\. Error description", text)
    where = file.group(1) if file else path or "an unknown file"
    reason = re.search(rf"{UNREADABLE}: (.*)", text)
    if reason:
        return UserError(f"cannot decode {where}: {reason.group(1).strip()} "
                         f"(a corrupt or non-image file; remove or replace it)")
    details = re.findall(r"^\[ERROR\] (.*)$", text, flags=re.MULTILINE)
    return UserError(f"reading the dataset failed at {where}: {'; '.join(details) or text.strip()}")


def class_names(name, path=None):
    """Label index -> class name: Fashion-MNIST's names, ImageNet-1k's 1000 synsets in canonical
    order, or the sorted class folders of an imagefolder path."""
    if name == "fashion_mnist":
        return list(FASHION_MNIST_CLASSES)
    _check_choice("dataset", name, DATASETS)
    if name == "imagenet":
        return list(imagenet_classes())
    return _class_folders(path)


def num_classes_of(name, path=None):
    """10 for fashion_mnist, 1000 for imagenet, the number of class folders for imagefolder.

    With a path, the folder is checked: an imagenet folder must hold only synset folders.
    """
    if path is not None and name != "fashion_mnist":
        folder_labels(name, path)
    return len(class_names(name, path))


@functools.lru_cache(maxsize=None)
def imagenet_classes():
    """{synset: name} of the ImageNet-1k classes, in canonical order (the sorted synsets)."""
    with open(IMAGENET_CLASSES_FILE, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    return {synset: label for synset, label in rows}


def readable_class_names(names):
    """Class names for people: ImageNet synsets become their names ("n01440764" -> "tench, Tinca tinca")."""
    known = imagenet_classes()
    return [known.get(name, name) for name in names]


def count_images(name, path=None, split="val", classes=None, classes_from=None):
    """How many images one epoch of the (unsharded) split holds."""
    _check_choice("split", split, SPLITS)
    if name == "fashion_mnist":
        _check_fashion_mnist_classes(classes, classes_from)
        return ds.FashionMnistDataset(fashion_mnist_folder(path or FASHION_MNIST_DIR),
                                      usage="train" if split == "train" else "test").get_dataset_size()
    _check_choice("dataset", name, DATASETS)
    folders = folder_labels(name, path, classes, classes_from)
    return sum(len(_image_files(os.path.join(path, folder))) for folder in folders)


def _check_choice(what, value, choices):
    if value not in choices:
        raise UserError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def _image_files(folder):
    return [entry.name for entry in os.scandir(folder)
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS]


def _class_folders(path):
    """Sorted class folder names; hidden folders (.ipynb_checkpoints, ...) are not classes."""
    if not path:
        raise UserError("no dataset path given: pass --dataset_path")
    if not os.path.isdir(path):
        raise UserError(f"dataset folder not found: {path}")
    folders = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not folders:
        loose = " (it holds image files directly: put them in one sub-folder per class)" \
            if _image_files(path) else ""
        raise UserError(f"no class folders in {path}{loose}; expected the ImageNet layout "
                        f"{path}/<class>/<image>.JPEG")
    return folders


def folder_labels(name, path, classes=None, classes_from=None):
    """Class folder -> label: its index in `classes` (default: class_names(name, path)).

    Labels follow class names, never folder positions: a folder holding some of the classes
    still gets each class's own label. A folder that is not among the classes is an error.
    """
    folders = _class_folders(path)
    if classes is None:
        classes = class_names(name, path)
    index = {class_name: label for label, class_name in enumerate(classes)}
    unknown = [folder for folder in folders if folder not in index]
    if unknown:
        raise UserError(_unknown_folders_message(name, path, unknown, classes, classes_from))
    if not any(_image_files(os.path.join(path, folder)) for folder in folders):
        raise UserError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) in the class folders of {path}")
    return {folder: index[folder] for folder in folders}


def _unknown_folders_message(name, path, unknown, classes, classes_from):
    if classes_from is None and name == "imagenet":
        return (f"{path} has {len(unknown)} class folders that are not ImageNet-1k synsets ({short_list(unknown)}); "
                f"ImageNet class folders are named like n01440764: use --dataset imagefolder for other folders")
    return (f"{path}: class folders {short_list(unknown)} are not among the {len(classes)} classes of "
            f"{classes_from or 'the dataset'} ({short_list(classes)})")


def _check_fashion_mnist_classes(classes, classes_from):
    if classes is not None and list(classes) != list(FASHION_MNIST_CLASSES):
        raise UserError(f"Fashion-MNIST's classes are {', '.join(FASHION_MNIST_CLASSES)}, but "
                        f"{classes_from or 'the model'} has {short_list(classes)}")


def short_list(names, limit=6):
    """The names joined by commas; past `limit` of them, the first few and the count."""
    names = list(names)
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def _extensions_in(path):
    """The image extensions present, in their actual spelling: ImageFolderDataset matches case-sensitively."""
    found = set()
    for folder in _class_folders(path):
        found.update(os.path.splitext(file)[1] for file in _image_files(os.path.join(path, folder)))
    return sorted(found)


def fashion_mnist_folder(path=FASHION_MNIST_DIR):
    """A folder with the four uncompressed idx files, decompressing `.gz` ones into a cache once."""
    names = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
    sources = {name: _idx_source(path, name) for name in names}
    missing = [name for name, source in sources.items() if source is None]
    if missing:
        raise UserError(f"Fashion-MNIST files missing in {path}: {', '.join(missing)} (or .gz); "
                        f"install them with `apt-get install dataset-fashion-mnist` "
                        f"or pass the folder that holds them")
    if all(not source.endswith(".gz") for source in sources.values()):
        _check_idx(path)
        return path
    cache = os.path.join(cache_dir(), "fashion-mnist", _fingerprint(sources.values()))
    for name, source in sources.items():
        target = os.path.join(cache, name)
        if not os.path.isfile(target):
            _decompress(source, target)
    _check_idx(cache)
    return cache


def _idx_source(path, name):
    for candidate in (os.path.join(path, name), os.path.join(path, name + ".gz")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _fingerprint(files):
    """Names the cache after the source files, so a changed source never reuses a stale copy."""
    digest = hashlib.sha1()
    for file in files:
        stat = os.stat(file)
        digest.update(f"{os.path.abspath(file)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _decompress(source, target):
    """Copy an idx file into the cache, decompressing a .gz one, with atomic_write: never a torn cache file."""

    def write(tmp):
        opener = gzip.open if source.endswith(".gz") else open
        with opener(source, "rb") as src, open(tmp, "wb") as dst:
            try:
                shutil.copyfileobj(src, dst, 1 << 20)
            except (gzip.BadGzipFile, EOFError, zlib.error) as err:
                raise UserError(f"cannot decompress {source}: {err} (a damaged download?)") from None

    atomic_write(target, write)


# idx files: a magic number, the item count and (images) rows and columns, big-endian uint32, then uint8 data.
IDX_MAGIC = {"images": 2051, "labels": 2049}


def _check_idx(folder):
    """UserError for a truncated or mismatched pair of idx files (MindSpore would fail deep inside)."""
    for images_name, labels_name in FASHION_MNIST_FILES.values():
        counts = []
        for kind, name in (("images", images_name), ("labels", labels_name)):
            file = os.path.join(folder, name)
            dims = 3 if kind == "images" else 1
            with open(file, "rb") as f:
                header = f.read(4 * (1 + dims))
            values = np.frombuffer(header, ">u4") if len(header) == 4 * (1 + dims) else None
            if values is None or values[0] != IDX_MAGIC[kind]:
                raise UserError(f"{file} is not a Fashion-MNIST {kind} idx file (bad header)")
            expected = len(header) + int(np.prod(values[1:], dtype=np.int64))
            if os.path.getsize(file) != expected:
                raise UserError(f"{file} is truncated or damaged: {os.path.getsize(file)} bytes, "
                                f"its header promises {expected}")
            counts.append(int(values[1]))
        if counts[0] != counts[1]:
            raise UserError(f"{images_name} holds {counts[0]} images but {labels_name} {counts[1]} labels in {folder}")
