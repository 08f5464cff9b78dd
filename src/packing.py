"""Packed 1-bit checkpoints: binary weights as sign bits plus their xnor scales.

A BiMLP binary layer (QuanConv, "xnor" weights at 1 bit) only ever uses
`wb = sign(W) * scale` with `scale = mean(|W|, axis=1)` of shape (out, 1, kh, kw).
So the latent float weights W can be replaced by one sign bit each plus the
scale, and unpacking writes `W' = where(sign bit, scale, -scale)`, for which the
layer computes the very same wb: eval logits stay bit-identical.

File format, in this order:
    MAGIC           8 bytes, b"BiMLPpk\x02"
    digest          the SHA-256 of every byte after it (32 bytes): any damaged byte is refused
    header length   8 bytes, little-endian
    header          UTF-8 JSON:
        format      "bimlp-packed-2"
        model       the variant name, e.g. "BiMLP_S"
        names       every parameter name, in checkpoint order
        records     {name: int or str}: the checkpoint's records (binary or float twin,
                    class names), returned beside the parameters
        tensors     {key: [numpy dtype, shape, byte offset]} into the data below
    data            the tensors' bytes, one after the other
The tensors, by key:
    <name>          a float parameter, stored as is (float32, or float16 if packed so)
    <name>@signs    a packed binary weight: np.packbits(W.ravel() > 0), uint8
    <name>@scale    its float32 scale, shape (out, 1, kh, kw)
    <name>@shape    its int64 shape (out, in/group, kh, kw)

Which weights are packed:
- Only a binary network's: a float twin's QuanConvs quantize nothing ("fp"), so its weights stay float.
- Depthwise xnor layers (one input channel per group: sfc_h/sfc_w) are stored
  float: there the mean runs over a single value, so wb == W and bits + scale
  would take more room than the weights.
- A layer is packed only if the round trip is verified exact with MindSpore's
  own quantizer. sign(0) = 0 is a third state that one bit cannot hold, so a
  layer whose latent weights contain an exact 0 stays float (trained float
  weights essentially never hit 0 exactly; the packer reports such layers).
"""
import hashlib
import json
import os

import numpy as np
from mindspore import Parameter, Tensor

from src.context import UserError
from src.files import write_bytes
from src.quan_conv import QuanConv

MAGIC = b"BiMLPpk\x02"
FORMAT = "bimlp-packed-2"
SIGNS, SCALE, SHAPE = "@signs", "@scale", "@shape"
DIGEST_SIZE = hashlib.sha256().digest_size
HEADER_LENGTH_SIZE = 8


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


def pack_params(params, layers, model_name, records=None, float_dtype=np.float32):
    """Pack a checkpoint (ordered name -> float32 array) into the packed format's content.

    layers: {weight name: QuanConv} from packable_layers (none for a float twin). records:
    {name: int or str} kept beside the weights. float_dtype: how the tensors that stay
    float are stored. Returns (packed, names of the binary layers that had to stay float);
    packed is {"format", "model", "names", "records", "tensors": {key: array}}.
    """
    tensors, kept_float = {}, []
    for name, value in params.items():
        bits = pack_weight(value, layers[name].quantize_weight) if name in layers else None
        if bits is None:
            tensors[name] = value.astype(float_dtype)
            if name in layers:
                kept_float.append(name)
            continue
        tensors[name + SIGNS], tensors[name + SCALE] = bits
        tensors[name + SHAPE] = np.array(value.shape, np.int64)
    packed = {"format": FORMAT, "model": model_name, "names": list(params), "records": dict(records or {}),
              "tensors": tensors}
    return packed, kept_float


def unpack_params(packed):
    """The packed content back to an ordered {name: float32 array} checkpoint."""
    tensors, params = packed["tensors"], {}
    for name in packed["names"]:
        if name + SIGNS in tensors:
            params[name] = unpack_weight(tensors[name + SIGNS], tensors[name + SCALE], tuple(tensors[name + SHAPE]))
        else:
            params[name] = tensors[name].astype(np.float32)
    return params


def save_packed(packed, path):
    """Write the packed file atomically; returns the SHA-256 (hex) of the whole file."""
    table, offset = {}, 0
    for key, value in packed["tensors"].items():
        table[key] = [value.dtype.str, list(value.shape), offset]
        offset += value.nbytes
    header = json.dumps({**{k: v for k, v in packed.items() if k != "tensors"}, "tensors": table}).encode("utf-8")
    body = (len(header).to_bytes(HEADER_LENGTH_SIZE, "little") + header
            + b"".join(np.ascontiguousarray(value).tobytes() for value in packed["tensors"].values()))
    data = MAGIC + hashlib.sha256(body).digest() + body
    write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def is_packed(path):
    """True if the file starts like a packed checkpoint, whatever its name."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def read_packed(path):
    """A packed file's content (as pack_params returns it); UserError if it is missing, not a packed
    file, or damaged (its digest does not match)."""
    if not os.path.isfile(path):
        raise UserError(f"packed checkpoint not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise UserError(f"{path} is not a packed BiMLP checkpoint (format {FORMAT})")
    digest, body = data[len(MAGIC):len(MAGIC) + DIGEST_SIZE], data[len(MAGIC) + DIGEST_SIZE:]
    if hashlib.sha256(body).digest() != digest:
        raise UserError(f"packed checkpoint {path} is damaged: its content does not match its SHA-256 "
                        f"(a truncated download or a changed byte); fetch or pack it again")
    try:
        return parse_body(body)
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read packed checkpoint {path}: {err}") from None


def parse_body(body):
    length = int.from_bytes(body[:HEADER_LENGTH_SIZE], "little")
    packed = json.loads(body[HEADER_LENGTH_SIZE:HEADER_LENGTH_SIZE + length].decode("utf-8"))
    if packed.get("format") != FORMAT:
        raise ValueError(f"format {packed.get('format')!r}, expected {FORMAT}")
    data = memoryview(body)[HEADER_LENGTH_SIZE + length:]
    packed["tensors"] = {key: np.frombuffer(data, np.dtype(dtype), int(np.prod(shape)), offset).reshape(shape)
                         for key, (dtype, shape, offset) in packed["tensors"].items()}
    return packed


def load_packed(path):
    """A packed file as ms.load_checkpoint returns a .ckpt: {name: Parameter}, plus its records
    (ints as Tensors, strings as str)."""
    packed = read_packed(path)
    checkpoint = {name: Parameter(Tensor(value), name=name) for name, value in unpack_params(packed).items()}
    for name, value in packed["records"].items():
        checkpoint[name] = value if isinstance(value, str) else Tensor(np.int64(value))
    return checkpoint
