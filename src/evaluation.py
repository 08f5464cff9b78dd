"""Accuracy over a whole dataset, shared by eval.py and train.py."""
import sys
import time

import numpy as np
from mindspore import Tensor

from src.context import UserError
from src.dataset import numpy_batches

PROGRESS_EVERY = 10.0  # seconds between progress lines


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
        eta = format_duration((self.total_images - images) / rate) if rate else "-"
        print(f"eval: batch {batches}/{self.total_batches}, {images}/{self.total_images} images, "
              f"top-1 {correct / images:.4f}, {speed}, elapsed {format_duration(now - self.start)}, ETA {eta}",
              file=sys.stderr, flush=True)


def format_duration(seconds):
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
