"""Loading and saving checkpoints: strict, explicit about mismatches, atomic on write."""
import json
import os

import mindspore as ms

from src.context import UserError
from src.packing import is_packed, load_packed
from src.pretrained import verify_shipped


def read_checkpoint(path):
    """{name: Parameter} of a packed checkpoint (known by its content, whatever its name) or a .ckpt."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    verify_shipped(path)
    if is_packed(path):
        return load_packed(path)
    if not path.endswith(".ckpt"):  # MindSpore reads .ckpt files only under that suffix
        raise UserError(f"{path} is neither a packed BiMLP checkpoint nor a MindSpore .ckpt file")
    try:
        return ms.load_checkpoint(path)
    except Exception as err:  # MindSpore raises ValueError/RuntimeError for corrupt files
        raise UserError(f"cannot read checkpoint {path}: {err}") from None


def _listing(names, limit=8):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def check_compatible(net, params, model_name, path):
    """Raise UserError naming missing, unexpected and mis-shaped parameters."""
    expected = {name: tuple(p.shape) for name, p in net.parameters_and_names()}
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
        lines.append(f"  this checkpoint looks like {hint}: try --model {hint}")
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
# ...and the class name of each label, as a JSON list: eval.py and predict.py map class folders by name.
CLASS_NAMES_RECORD = f"{STATE_PREFIX}class_names"


def model_records(binary, class_names):
    """The records train.py writes beside the weights of every checkpoint."""
    return {BINARY_MARKER: int(binary), CLASS_NAMES_RECORD: json.dumps(list(class_names))}


def recorded_class_names(params):
    """The checkpoint's class names (label index -> name), or None if it does not record them."""
    value = params.get(CLASS_NAMES_RECORD)
    return None if value is None else json.loads(str(value))


def _is_training_state(name):
    """Optimizer moments and counters that train.py stores beside the weights."""
    return name.startswith(("adam_", "moment", "global_step", "learning_rate", STATE_PREFIX)) \
        or name in ("beta1_power", "beta2_power", "epoch_num", "step_num", "current_iterator_step",
                    "last_overflow_iterator_step", "loss_scale")


def load_weights(net, path, model_name):
    """Load a checkpoint into net; every parameter must match by name and shape, and a
    checkpoint that records binary or float training (train.py's) must match net.binary."""
    params = read_checkpoint(path)
    check_compatible(net, params, model_name, path)
    check_binary(net, params, path)
    not_loaded, _ = ms.load_param_into_net(net, {n: v for n, v in params.items()
                                                if not _is_training_state(n)}, strict_load=True)
    if not_loaded:
        raise UserError(f"checkpoint {path} left parameters unloaded: {_listing(not_loaded)}")
    return params


def check_binary(net, params, path):
    """Float-twin and binary checkpoints have the same names and shapes; train.py records which it is."""
    if BINARY_MARKER not in params:
        return
    trained_binary = bool(params[BINARY_MARKER].asnumpy())
    if trained_binary == net.binary:
        return
    if trained_binary:
        hint = "a distillation teacher must be a float twin; eval.py evaluates this one without --binary false"
    else:
        hint = "evaluate a float twin with eval.py --binary false"
    raise UserError(f"checkpoint {path} holds a {'binary' if trained_binary else 'float'} network, "
                    f"but a {'binary' if net.binary else 'float'} one was built: {hint}")


def save_atomic(save_obj, path, append_dict=None):
    """Write a checkpoint to a temporary file, then rename: a crash never leaves a torn file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # MindSpore appends ".ckpt" to any other file name, so the temporary name keeps that suffix.
    tmp = f"{path}.{os.getpid()}.tmp.ckpt"
    ms.save_checkpoint(save_obj, tmp, append_dict=append_dict)
    os.replace(tmp, path)
