"""Loading and saving checkpoints: strict, explicit about mismatches, atomic and checked.

Every .ckpt the package writes ends with MindSpore's CRC32 of its contents
(`save_checkpoint(crc_check=True)`), and a packed file carries a SHA-256 of its own
(src/packing.py); both are verified on every load: a damaged file is an error instead of
slightly wrong weights. Files without a CRC (other tools' checkpoints) load as before.
"""
import json
import logging
import os
import tempfile
import zlib

import mindspore as ms

from src.context import UserError
from src.drop_path import COUNTER as DROP_PATH_COUNTER
from src.files import atomic_write
from src.packing import is_packed, load_packed
from src.pretrained import verify_shipped

# MindSpore's save_checkpoint(crc_check=True) appends b"crc_num" and the CRC32 of everything
# before it as 10 big-endian bytes.
CRC_TAG, CRC_BYTES = b"crc_num", 10


def read_checkpoint(path):
    """{name: Parameter} of a packed checkpoint (known by its content, whatever its name) or a .ckpt;
    UserError if it is missing, empty, damaged or not a checkpoint."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes): an interrupted copy or download?")
    verify_shipped(path)
    if is_packed(path):
        return load_packed(path)
    verify_crc(path)
    try:
        params = _load(path)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError for damaged files
        cause = f" ({err.__cause__})" if err.__cause__ else ""
        raise UserError(f"cannot read checkpoint {path}: not a MindSpore checkpoint, or damaged{cause}") from None
    return params


def verify_crc(path):
    """UserError if the file carries a CRC32 that its contents do not match.

    Checked here rather than by load_checkpoint(crc_check=True), which reports a mismatch as
    a permission problem and logs errors of its own.
    """
    with open(path, "rb") as f:
        data = f.read()
    trailer = len(CRC_TAG) + CRC_BYTES
    if data[-trailer:-CRC_BYTES] != CRC_TAG:
        return
    if zlib.crc32(data[:-trailer]) != int.from_bytes(data[-CRC_BYTES:], "big"):
        raise UserError(f"checkpoint {path} is damaged: its contents do not match the CRC32 written with it")


def _load(path):
    # MindSpore logs its own error lines for a file it cannot parse; the UserError says it once.
    logging.disable(logging.ERROR)
    try:
        if path.endswith(".ckpt"):
            return ms.load_checkpoint(path)
        # MindSpore only reads files named *.ckpt: a checkpoint renamed (x.ckpt.bak) is read via a link.
        with tempfile.TemporaryDirectory() as folder:
            link = os.path.join(folder, "checkpoint.ckpt")
            os.symlink(os.path.abspath(path), link)
            return ms.load_checkpoint(link)
    finally:
        logging.disable(logging.NOTSET)


def _listing(names, limit=8):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def check_compatible(net, params, model_name, path, model_flag="--model"):
    """Raise UserError naming missing, unexpected and mis-shaped parameters.

    model_flag: the command's flag that names the variant, suggested when the checkpoint looks
    like another one (None: no suggestion, e.g. for a teacher that must match the student).
    """
    expected = {name: tuple(p.shape) for name, p in net.parameters_and_names() if not _is_training_state(name)}
    weights = {name: tuple(v.shape) for name, v in params.items() if not _is_training_state(name)}
    missing = set(expected) - set(weights)
    unexpected = set(weights) - set(expected)
    shapes = {n for n in set(expected) & set(weights) if expected[n] != weights[n]}
    if not (missing or unexpected or shapes):
        return
    lines = [f"checkpoint {path} does not fit {model_name}:"]
    if missing:
        lines.append(f"  missing parameters: {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected parameters: {_listing(unexpected)}")
    if shapes:
        lines.append("  shape mismatches: " + _listing(
            f"{n} checkpoint {weights[n]} vs model {expected[n]}" for n in shapes))
    hint = guess_variant(weights, exclude=model_name)
    if hint:
        lines.append(f"  this checkpoint looks like {hint}" + (f": try {model_flag} {hint}" if model_flag else ""))
    if "head.weight" in shapes:
        lines.append(f"  the checkpoint has {weights['head.weight'][0]} classes: "
                     f"try --num_classes {weights['head.weight'][0]}")
    raise UserError("\n".join(lines))


def guess_variant(weights, exclude=None):
    """The registered variant whose parameter names and shapes match the checkpoint's, if any
    (BiMLP_T and BiMLP_T14 differ only in the stem's kernel shape)."""
    from src.wavemlp_20_3 import MODELS, create_model

    for name in MODELS:
        if name == exclude:
            continue
        with_classes = {"num_classes": weights["head.weight"][0]} if "head.weight" in weights else {}
        candidate = create_model(name, **with_classes)
        if {n: tuple(p.shape) for n, p in candidate.parameters_and_names()} == weights:
            return name
    return None


# train.py stores its epoch counter and best accuracy under this prefix, beside the weights.
STATE_PREFIX = "train_state."
# ...and whether the weights are a binary network or its float twin (1 or 0).
BINARY_MARKER = f"{STATE_PREFIX}binary"
# ...and, for the first stage of two-stage training only, that its weights are float (0).
BINARY_WEIGHTS_RECORD = f"{STATE_PREFIX}binary_weights"
# ...and the class name of each label, as a JSON list: eval.py and predict.py map class folders by name.
CLASS_NAMES_RECORD = f"{STATE_PREFIX}class_names"


def model_records(binary, class_names, binary_weights=True):
    """The records train.py writes beside the weights of every checkpoint."""
    records = {BINARY_MARKER: int(binary), CLASS_NAMES_RECORD: json.dumps(list(class_names))}
    if not binary_weights:
        records[BINARY_WEIGHTS_RECORD] = 0
    return records


def recorded_class_names(params):
    """The checkpoint's class names (label index -> name), or None if it does not record them."""
    value = params.get(CLASS_NAMES_RECORD)
    return None if value is None else json.loads(str(value))


def _is_training_state(name):
    """Optimizer moments and counters that train.py stores beside the weights."""
    return name.startswith(("adam_", "moment", "global_step", "learning_rate", STATE_PREFIX)) \
        or name.endswith(f".{DROP_PATH_COUNTER}") \
        or name in ("beta1_power", "beta2_power", "epoch_num", "step_num", "current_iterator_step",
                    "last_overflow_iterator_step", "loss_scale")


def load_weights(net, path, model_name, teacher=False, start=False):
    """Load a checkpoint into net; every parameter must match by name and shape, and a
    checkpoint that records binary or float training (train.py's) must match net.binary.

    teacher: net is train.py's distillation teacher (messages name no CLI flags).
    start: the weights start a new training run, whichever network trained them."""
    params = read_checkpoint(path)
    check_compatible(net, params, model_name, path, model_flag=None if teacher else "--model")
    if not start:
        check_binary(net, params, path, teacher)
    not_loaded, _ = ms.load_param_into_net(net, {n: v for n, v in params.items()
                                                if not _is_training_state(n)}, strict_load=True)
    # A network in training mode counts its drop-path draws, which no weights file needs to hold.
    not_loaded = [name for name in not_loaded if not _is_training_state(name)]
    if not_loaded:
        raise UserError(f"checkpoint {path} left parameters unloaded: {_listing(not_loaded)}")
    return params


def recorded_binary(params):
    """True/False as the checkpoint records binary or float training, None if it does not say."""
    return bool(params[BINARY_MARKER].asnumpy()) if BINARY_MARKER in params else None


def recorded_binary_weights(params):
    """False for the first stage of two-stage training (float weights), else True."""
    return BINARY_WEIGHTS_RECORD not in params or bool(params[BINARY_WEIGHTS_RECORD].asnumpy())


def check_binary(net, params, path, teacher=False):
    """Float-twin and binary checkpoints have the same names and shapes; train.py records which it is."""
    if not teacher and not recorded_binary_weights(params) and net.binary_weights:
        raise UserError(f"checkpoint {path} holds the first stage of two-stage training (binary activations, float "
                        f"weights), not a finished network: train the second stage from it with "
                        f"train.py --init_checkpoint {path}")
    trained_binary = recorded_binary(params)
    if trained_binary is None or trained_binary == net.binary:
        return
    if teacher:
        hint = "a distillation teacher must be a float twin (trained with --binary false)"
    elif trained_binary:
        hint = "leave out --binary false (or pass --binary true)"
    else:
        hint = "pass --binary false for a float twin"
    raise UserError(f"checkpoint {path} holds a {'binary' if trained_binary else 'float'} network, "
                    f"but a {'binary' if net.binary else 'float'} one was built: {hint}")


def save_checkpoint(save_obj, path, append_dict=None):
    """Write a checkpoint (a Cell or a list of {"name", "data"}) atomically, with its CRC32."""
    return atomic_write(path, lambda tmp: ms.save_checkpoint(save_obj, tmp, append_dict=append_dict, crc_check=True),
                        suffix=".ckpt")
