"""The checkpoints committed in checkpoints/: eval.py's and predict.py's defaults, and the SHA-256 each must have.

They are packed files (src/packing.py). `python pack.py --ship ...` writes one and records
its SHA-256 in SHIPPED_SHA256 below; loading a committed file whose digest differs is an error.
"""
import hashlib
import os
import re

from src.context import UserError
from src.files import write_text
from src.wavemlp_20_3 import models_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT_DIR = os.path.join(ROOT, "checkpoints")
SHIPPED_SHA256 = {
    "BiMLP_T14_fashion_mnist.packed": "e2ae396008c3adf9e98aa2cab244f1e04562049925e0883f17748f42429d2063",
    "BiMLP_T14_fashion_mnist_float.packed": "00acb1d0dd1fa5d8e5e74edba113febbb0ccb04fea2b16f6fc53d87a89ed09a4",
    "BiMLP_T_fashion_mnist.packed": "75946e680df696ccd35060aff428582638f31a19cd9e6ae07cfdb64a54812894",
    "BiMLP_T_fashion_mnist_float.packed": "e37a6fbd0a48893366244a997dcdb759f3e8bbd91a46a8fc44f0453fe410bd90",
}
SHIPPED_DATASET = "fashion_mnist"
# The file record_sha256 rewrites: this one.
TABLE_SOURCE = os.path.abspath(__file__)


def shipped_name(model_name, binary=True):
    """The committed file of a variant's binary net or float twin: BiMLP_T14_fashion_mnist[_float].packed."""
    return f"{model_name}_{SHIPPED_DATASET}{'' if binary else '_float'}.packed"


def shipped_path(model_name, binary=True):
    return os.path.join(CHECKPOINT_DIR, shipped_name(model_name, binary))


# The variant eval.py and predict.py take when --model is not given.
SHIPPED_DEFAULT_MODEL = "BiMLP_T14"


def shipped_checkpoint(model_name):
    """The committed binary checkpoint of `model_name`: what eval.py and predict.py load without --checkpoint_path."""
    if model_name not in models_for(SHIPPED_DATASET):
        raise UserError(f"--checkpoint_path is required for {model_name}: no checkpoint of it ships with the package")
    path = shipped_path(model_name)
    if not os.path.isfile(path):
        raise UserError(f"the default Fashion-MNIST checkpoint {path} does not exist yet: "
                        f"train one with train.py, or pass --checkpoint_path")
    return path


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_shipped(path):
    """A committed checkpoint must be the very file its SHA-256 was recorded for; other files pass."""
    name = os.path.basename(path)
    if name not in SHIPPED_SHA256 or os.path.dirname(os.path.realpath(path)) != os.path.realpath(CHECKPOINT_DIR):
        return
    digest = file_sha256(path)
    if digest != SHIPPED_SHA256[name]:
        raise UserError(f"{path} is not the committed checkpoint: its SHA-256 is {digest}, src/pretrained.py "
                        f"records {SHIPPED_SHA256[name]}. Restore it (git checkout -- checkpoints/{name}), "
                        f"or, if it was replaced on purpose, write it with `python pack.py --ship`")


def record_sha256(name, digest):
    """Set SHIPPED_SHA256[name] to digest, here and in this module's source (the table's one line)."""
    table = TABLE_SOURCE
    with open(table, encoding="utf-8") as f:
        source = f.read()
    line = re.compile(rf'^(    "{re.escape(name)}": )"[0-9a-f]{{64}}",$', flags=re.MULTILINE)
    if len(line.findall(source)) != 1:
        raise UserError(f"{table} has no SHIPPED_SHA256 line for {name}")
    write_text(table, line.sub(rf'\g<1>"{digest}",', source))
    SHIPPED_SHA256[name] = digest
