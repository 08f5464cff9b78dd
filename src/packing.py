"""Packed 1-bit checkpoints: binary weights as sign bits plus their xnor scales.

A BiMLP binary layer (QuanConv, "xnor" weights at 1 bit) only ever uses
`wb = sign(W) * scale` with `scale = mean(|W|, axis=1)` of shape (out, 1, kh, kw).
So the latent float weights W can be replaced by one sign bit each plus the
scale, and unpacking writes `W' = where(sign bit, scale, -scale)`, for which the
layer computes the very same wb: eval logits stay bit-identical.

File format (a NumPy .npz archive, uncompressed):
    format          "bimlp-packed-1"
    model           the variant name, e.g. "BiMLP_S"
    binary          1 for a binary network, 0 for its float twin (train.py's record; files
                    packed before it was kept lack it)
    names           every parameter name, in checkpoint order
    <name>          a float32 parameter, stored as is
    <name>@signs    a packed binary weight: np.packbits(W.ravel() > 0), uint8
    <name>@scale    its float32 scale, shape (out, 1, kh, kw)
    <name>@shape    its int64 shape (out, in/group, kh, kw)

Which weights are packed:
- Depthwise xnor layers (one input channel per group: sfc_h/sfc_w) are stored
  float: there the mean runs over a single value, so wb == W and bits + scale
  would take more room than the weights.
- A layer is packed only if the round trip is verified exact with MindSpore's
  own quantizer. sign(0) = 0 is a third state that one bit cannot hold, so a
  layer whose latent weights contain an exact 0 stays float (trained float
  weights essentially never hit 0 exactly; the packer reports such layers).
"""
import os
import zipfile

import numpy as np
from mindspore import Tensor

from src.context import UserError
from src.files import atomic_write
from src.quan_conv import QuanConv

FORMAT = "bimlp-packed-1"
SIGNS, SCALE, SHAPE = "@signs", "@scale", "@shape"


def is_packable(cell):
    """True for a QuanConv whose weights are 1-bit xnor with more than one input channel per group."""
    return (isinstance(cell, QuanConv) and cell.quan_name_w == "xnor" and cell.nbit_w == 1
            and cell.in_channels // cell.group > 1)


def packable_layers(net):
    """{weight parameter name: QuanConv} for the layers that pack_params may store as bits."""
    return {f"{name}.weight": cell for name, cell in net.cells_and_names() if is_packable(cell)}


def pack_weight(weight, quantizer):
    """(sign bits, scale) of one binary weight, or None if bits + scale cannot reproduce it exactly."""
    if not np.all(weight):
        return None
    quantized = quantizer(Tensor(weight)).asnumpy()
    scale = np.abs(quantized).max(axis=1, keepdims=True)
    signs = weight > 0
    rebuilt = quantizer(Tensor(unpack_weight(np.packbits(signs), scale, weight.shape))).asnumpy()
    if not np.array_equal(rebuilt, quantized):
        return None
    return np.packbits(signs), scale


def unpack_weight(bits, scale, shape):
    """Latent weights +-scale with the stored signs: the layer quantizes them to the original wb."""
    signs = np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape).astype(bool)
    return np.where(signs, scale, -scale).astype(np.float32)


def pack_params(params, layers, model_name, binary=True):
    """Pack a checkpoint (ordered name -> float32 array) into the arrays of the .npz format.

    layers: {weight name: QuanConv} from packable_layers; binary: the network is binary (not
    the float twin). Returns (arrays, names of the binary layers that had to stay float).
    """
    arrays = {"format": np.array(FORMAT), "model": np.array(model_name), "binary": np.array(int(binary)),
              "names": np.array(list(params))}
    kept_float = []
    for name, value in params.items():
        packed = pack_weight(value, layers[name].quantize_weight) if name in layers else None
        if packed is None:
            arrays[name] = value
            if name in layers:
                kept_float.append(name)
            continue
        arrays[name + SIGNS], arrays[name + SCALE] = packed
        arrays[name + SHAPE] = np.array(value.shape, np.int64)
    return arrays, kept_float


def unpack_arrays(arrays):
    """The .npz arrays back to an ordered {name: float32 array} checkpoint."""
    params = {}
    for name in arrays["names"].tolist():
        if name + SIGNS in arrays:
            params[name] = unpack_weight(arrays[name + SIGNS], arrays[name + SCALE], tuple(arrays[name + SHAPE]))
        else:
            params[name] = arrays[name]
    return params


def save_packed(arrays, path):
    # np.savez names its file *.npz whatever it is given: the temporary name has that suffix.
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")


def read_packed(path):
    """Load a packed archive as a dict of arrays; UserError if it is missing, damaged or not one."""
    if not os.path.isfile(path):
        raise UserError(f"packed checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = dict(archive)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot read packed checkpoint {path}: damaged or not a .npz archive ({err})") from None
    if "format" not in arrays or str(arrays["format"]) != FORMAT:
        raise UserError(f"{path} is not a packed BiMLP checkpoint (format {FORMAT})")
    return arrays
