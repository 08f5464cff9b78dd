"""Training configuration: defaults, overlaid by a YAML file, overlaid by command-line flags.

Every key has a default here, so a YAML file with an unknown (e.g. misspelt) key
is an error instead of a silently ignored setting, and every value is checked
against its setting's type before anything runs: a quoted "false", `epochs: 1.5`
or `lr: fast` is an error, not a surprise an epoch later.
"""
import argparse

import yaml

from src.context import PLATFORMS, UserError, check_device_id
from src.dataset import check_image_size
from src.files import write_text

DEFAULTS = {
    # model
    "model": "BiMLP_S",
    "binary": True,
    # false: 1-bit activations with float weights, the first stage of two-stage training (ReActNet);
    # the second stage starts from its weights with binary_weights true and init_checkpoint.
    "binary_weights": True,
    "num_classes": None,          # None: the dataset's class count
    "drop_path_rate": 0.0,
    # data
    "dataset": "imagenet",
    "dataset_path": None,         # imagenet/imagefolder: folder with train/ and val/; fashion_mnist: idx folder
    "image_size": None,           # None: 224 for imagenet/imagefolder, 28 for fashion_mnist
    "batch_size": 128,            # per device
    "num_workers": 2,
    "steps_per_epoch": 0,         # 0: the whole training set; N: only N batches (quick experiments)
    "augment": True,              # random crops and flips of the training images (false: as evaluated)
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
    "init_checkpoint": None,      # start a new run from these weights (e.g. a first stage's best.ckpt)
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
# The type of the settings whose default (None: not set) does not show it.
OPTIONAL_TYPES = {"num_classes": int, "image_size": int, "dataset_path": str, "teacher_checkpoint": str,
                  "resume": str, "init_checkpoint": str, "fused": bool}
TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}


def setting_type(key):
    return OPTIONAL_TYPES.get(key) or type(DEFAULTS[key])


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
    for key in config:
        config[key] = _typed(key, config[key])
    _validate(config)
    return config


def _typed(key, value):
    """value as its setting's type; UserError if it is not one (YAML's 1e-3, a text, becomes 0.001)."""
    kind = setting_type(key)
    if value is None and key in OPTIONAL_TYPES:
        return None
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    quoted = " (write it without quotes)" if kind is bool and str(value).lower() in ("true", "false") else ""
    raise UserError(f"{key} must be {TYPE_NAMES[kind]}, got {value!r}{quoted}")


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
    for key in ("epochs", "batch_size", "log_every", "num_workers"):
        if config[key] < 1:
            raise UserError(f"{key} must be at least 1, got {config[key]}")
    if config["num_classes"] is not None and config["num_classes"] < 1:
        raise UserError(f"num_classes must be at least 1, got {config['num_classes']}")
    for key in ("lr", "min_lr", "weight_decay", "warmup_epochs", "drop_path_rate", "label_smoothing",
                "steps_per_epoch"):
        if config[key] < 0:
            raise UserError(f"{key} must not be negative, got {config[key]}")
    for key in ("distill_alpha", "label_smoothing", "max_warmup_fraction"):
        if not 0.0 <= config[key] <= 1.0:
            raise UserError(f"{key} must be in [0, 1], got {config[key]}")
    if config["drop_path_rate"] >= 1.0:
        raise UserError(f"drop_path_rate must be below 1, got {config['drop_path_rate']}")
    if config["distill_temperature"] <= 0:
        raise UserError(f"distill_temperature must be positive, got {config['distill_temperature']}")
    if not config["binary_weights"] and not config["binary"]:
        raise UserError("binary_weights false trains a binary network's first stage (1-bit activations, float "
                        "weights): it needs binary true")
    if config["init_checkpoint"] and config["resume"]:
        raise UserError("init_checkpoint starts a new run from a checkpoint's weights, resume continues a run: "
                        "give only one of them (--init_checkpoint \"\" clears a config file's)")
    check_image_size(config["image_size"], "image_size")
    check_device_id(config["device_id"])


def add_arguments(parser):
    """One --flag per setting, typed by its default; None-defaulted flags are strings or ints as named."""
    for key in DEFAULTS:
        if setting_type(key) is bool:
            parser.add_argument(f"--{key}", type=parse_bool, metavar="{true,false}")
        else:
            parser.add_argument(f"--{key}", type=setting_type(key), choices=CHOICES.get(key))
    return parser


def parse_bool(text):
    value = text.lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "1", "yes")


def save_config(config, path):
    write_text(path, yaml.safe_dump(config, sort_keys=False))
