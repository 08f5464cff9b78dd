"""Optimizer and learning-rate schedule for binary networks (ReActNet / BiMLP practice)."""
import math

import numpy as np
from mindspore import Tensor, nn


def lr_schedule(lr, min_lr, warmup_epochs, epochs, steps_per_epoch, max_warmup_fraction=1.0):
    """Per-step learning rates: linear warm-up from ~0 to lr, then cosine decay to min_lr.

    The warm-up lasts warmup_epochs, but at most max_warmup_fraction of all steps: an
    ImageNet-sized warm-up must not eat most of a short run (see src/config.py).
    """
    total = epochs * steps_per_epoch
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), int(round(max_warmup_fraction * total)))
    rates = np.empty(total, np.float32)
    for step in range(total):
        if step < warmup:
            rates[step] = lr * (step + 1) / warmup
        else:
            progress = (step - warmup) / max(1, total - warmup)
            rates[step] = min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    return rates


def config_lr_schedule(config, steps_per_epoch):
    """The per-step learning rates of a training configuration (src/config.py)."""
    return lr_schedule(float(config["lr"]), float(config["min_lr"]), float(config["warmup_epochs"]),
                       int(config["epochs"]), steps_per_epoch, float(config["max_warmup_fraction"]))


def decays(name, param):
    """Weight decay only on conv and dense weights: never on biases, norms, learnable
    biases (4-D, 1xCx1x1), PReLU slopes or the blocks' branch-mixing weights."""
    return name.endswith("weight") and len(param.shape) >= 2


def create_optimizer(net, config, schedule):
    """AdamW over net's trainable parameters with per-step learning rates `schedule`."""
    params = net.trainable_params()
    groups = [
        {"params": [p for p in params if decays(p.name, p)], "weight_decay": float(config["weight_decay"])},
        {"params": [p for p in params if not decays(p.name, p)], "weight_decay": 0.0},
    ]
    return nn.AdamWeightDecay(groups, learning_rate=Tensor(schedule), beta1=float(config["beta1"]),
                              beta2=float(config["beta2"]), eps=1e-8)
