"""Training configuration: defaults, overlaid by a YAML file, overlaid by command-line flags.

Every key has a default here, so a YAML file with an unknown (e.g. misspelt) key
is an error instead of a silently ignored setting.
"""
import argparse

import yaml

from src.context import PLATFORMS, UserError

DEFAULTS = {
    # model
    "model": "BiMLP_S",
    "binary": True,
    "num_classes": None,          # None: the dataset's class count
    "drop_path_rate": 0.0,
    # data
    "dataset": "imagenet",
    "dataset_path": None,         # imagenet/imagefolder: folder with train/ and val/; fashion_mnist: idx folder
    "image_size": None,           # None: 224 for imagenet/imagefolder, 28 for fashion_mnist
    "batch_size": 128,            # per device
    "num_workers": 2,
    "steps_per_epoch": 0,         # 0: the whole training set; N: only N batches (quick experiments)
    # schedule and optimizer
    "epochs": 100,
    "lr": 1.0e-3,                 # peak learning rate for batch_size * devices images per step
    "min_lr": 1.0e-6,
    # Warm-up: linear over warmup_epochs, but never more than max_warmup_fraction of the run,
    # so the ImageNet-style 5 epochs still fit a short run: --epochs 8 warms up for 0.8 epochs,
    # while runs of 50 epochs or more (the ImageNet configs: 300) keep all 5. Then cosine to min_lr.
    "warmup_epochs": 5.0,
    "max_warmup_fraction": 0.1,
    "weight_decay": 0.05,
    "beta1": 0.9,
    "beta2": 0.999,
    "label_smoothing": 0.1,
    # knowledge distillation from a float teacher (the same network, binary: false)
    "teacher_checkpoint": None,
    "distill_alpha": 1.0,         # loss = (1 - alpha) * CE(labels) + alpha * KL(teacher || student)
    "distill_temperature": 1.0,
    # run
    "output_dir": "output",
    "resume": None,               # path of a checkpoint written by train.py ("last" = output_dir/last.ckpt)
    "platform": "CPU",
    "device_id": 0,
    "distribute": False,
    "mode": "graph",
    "fused": None,                # fused CPU training kernels; None: on CPU whenever a C++ compiler works
    "seed": 1,
    "log_every": 50,              # steps between progress lines
}
CHOICES = {"platform": PLATFORMS, "mode": ("graph", "pynative"),
           "dataset": ("imagenet", "imagefolder", "fashion_mnist")}


def load_config(path=None, overrides=None):
    """DEFAULTS <- YAML file at path <- overrides (keys whose value is not None)."""
    config = dict(DEFAULTS)
    if path:
        config.update(_read_yaml(path))
    for key, value in (overrides or {}).items():
        if key not in DEFAULTS:
            raise UserError(f"unknown setting {key!r}")
        if value is not None:
            config[key] = value
    _validate(config)
    return config


def _read_yaml(path):
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of settings")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise UserError(f"unknown setting(s) in {path}: {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(DEFAULTS))}")
    return data


def _validate(config):
    for key, choices in CHOICES.items():
        if config[key] not in choices:
            raise UserError(f"{key} must be one of {', '.join(choices)}, got {config[key]!r}")
    for key in ("epochs", "batch_size", "log_every"):
        if int(config[key]) < 1:
            raise UserError(f"{key} must be at least 1, got {config[key]}")
    for key in ("lr", "min_lr", "weight_decay", "warmup_epochs", "drop_path_rate", "label_smoothing",
                "steps_per_epoch"):
        if float(config[key]) < 0:
            raise UserError(f"{key} must not be negative, got {config[key]}")
    for key in ("distill_alpha", "max_warmup_fraction"):
        if not 0.0 <= float(config[key]) <= 1.0:
            raise UserError(f"{key} must be in [0, 1], got {config[key]}")


def add_arguments(parser):
    """One --flag per setting, typed by its default; None-defaulted flags are strings or ints as named."""
    typed = {"num_classes": int, "image_size": int, "dataset_path": str, "teacher_checkpoint": str,
             "resume": str}
    for key, default in DEFAULTS.items():
        if isinstance(default, bool) or key == "fused":
            parser.add_argument(f"--{key}", type=parse_bool, metavar="{true,false}")
        else:
            kind = typed.get(key) or type(default)
            parser.add_argument(f"--{key}", type=kind, choices=CHOICES.get(key))
    return parser


def parse_bool(text):
    value = text.lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "1", "yes")


def save_config(config, path):
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
