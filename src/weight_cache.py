"""Binarized weights of the fused eval path, computed once and reused while the latent weights stay.

A binary layer convolves with wb = sign(W) * mean(|W|) (QuanConv, "xnor" weights). Computing wb
costs three passes over every weight per forward (abs, MindSpore's ReduceMean, sign times scale),
whatever the batch. `BinarizedWeights` computes wb with the very same operators once and keeps it
in a Parameter the compiled graph reads; it is computed again only when W changes (a checkpoint
load, a training step, any set_data or in-place update), which a 64-bit fingerprint of W's bytes
detects:

- `refresh()` runs before every call of the network (BiMLP.__call__) in eval mode: it fingerprints
  each layer's W and recomputes wb where the fingerprint differs from the one recorded with it;
- inside the graph, the `WeightsUnchanged` kernel fingerprints W again before wb is used and fails
  the forward if they disagree: a BiMLP called inside another cell's graph after its weights
  changed stops with an error instead of using stale weights.

The cached tensors are Parameters held outside the cell's parameter list, so checkpoints, parameter
counts and optimizers never see them; they take as much memory as the binary layers' weights.
"""
import ctypes
import functools
import os

import numpy as np
from mindspore import Parameter, Tensor, ops

from src import fused


@functools.lru_cache(maxsize=None)
def _fingerprint_function():
    function = ctypes.CDLL(fused.library_path()).BimlpFingerprint
    function.restype = ctypes.c_uint64
    function.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    return function


def fingerprint(tensor):
    """The fingerprint WeightsUnchanged compares, as a Python int (read in place, no copy)."""
    array = np.ascontiguousarray(tensor.asnumpy())
    return int(_fingerprint_function()(array.ctypes.data, array.nbytes))


def as_int64(value):
    """A uint64 fingerprint as the int64 bits MindSpore stores."""
    return np.array([value], np.uint64).view(np.int64)


def xnor_packable(layer):
    """A binary 1x1 convolution the xnor engine computes on packed bits (XnorConv1x1)."""
    return (layer.kernel_size == (1, 1) and layer.stride == 1 and layer.padding == (0, 0, 0, 0)
            and layer.group == 1 and layer.quan_name_a == "xnor" and layer.nbit_a == 1)


def pack_signs(wb):
    """XnorConv1x1's int64 words (O, 2, ceil(C / 64)) of wb (O, C): negative signs, nonzero weights."""
    outputs, channels = wb.shape
    planes = np.zeros((outputs, 2, (channels + 63) // 64 * 64), bool)
    planes[:, 0, :channels], planes[:, 1, :channels] = wb < 0, wb != 0
    return np.packbits(planes, axis=-1, bitorder="little").view("<u8").view(np.int64)


class BinarizedWeights:
    """The cached weights of every binary layer of a fused network whose wb is not W itself.

    Each such QuanConv gets unregistered Parameters (object.__setattr__: not parameters of the
    network, yet the compiled graph reads their current data at every call):
    `binarized_fingerprint`, the fingerprint of the W they were computed from (int64 bits), and
    either `binarized_weight`, its wb (the exact engine), or, for the 1x1 layers of the xnor
    engine, `xnor_bits` and `xnor_scale`: wb as sign bits and its per-output scale. Those layers
    keep no float copy of wb.
    """

    def __init__(self, net, kernels, engine="exact"):
        from src.quan_conv import QuanConv

        self.kernels = kernels
        # The layers of the cells that run fused kernels (PATM's small reweighting MLP does not).
        fused_cells = [cell for _, cell in net.cells_and_names() if getattr(cell, "kernels", None) is not None]
        self.layers = [layer for cell in fused_cells for layer in cell.cells()
                       if isinstance(layer, QuanConv) and layer.xnor_weight and layer.in_channels != layer.group]
        self.packed = [engine == "xnor" and xnor_packable(layer) for layer in self.layers]
        for index, (layer, packed) in enumerate(zip(self.layers, self.packed)):
            # 0 is never a fingerprint: the first refresh computes every layer's weights.
            self._attach(layer, "binarized_fingerprint", as_int64(0), index)
            if packed:
                self._attach(layer, "xnor_bits", pack_signs(np.zeros(layer.weight.shape[:2], np.float32)), index)
                self._attach(layer, "xnor_scale", np.zeros(layer.out_channels, np.float32), index)
                object.__setattr__(layer, "xnor_no_bias", Tensor(np.zeros(layer.in_channels, np.float32)))
            else:
                self._attach(layer, "binarized_weight", np.zeros(layer.weight.shape, np.float32), index)
        self.fingerprints = [0] * len(self.layers)
        self.refreshes = 0  # layers computed so far: what the tests watch

    @staticmethod
    def _attach(layer, name, value, index):
        object.__setattr__(layer, name, Parameter(Tensor(value), name=f"{name}_{index}", requires_grad=False))

    def refresh(self):
        """Bring every layer's weights up to date with its W (only fingerprints when nothing changed)."""
        for index, (layer, packed) in enumerate(zip(self.layers, self.packed)):
            current = fingerprint(layer.weight)
            if current == self.fingerprints[index]:
                continue
            weight = layer.weight
            scale = layer.quantize_weight.scale(weight)
            binarized = self.kernels.sign_scale(weight, scale)
            if packed:
                layer.xnor_bits.set_data(Tensor(pack_signs(binarized.asnumpy()[:, :, 0, 0])))
                layer.xnor_scale.set_data(scale.reshape(-1))
            else:
                layer.binarized_weight.set_data(binarized)
            layer.binarized_fingerprint.set_data(Tensor(as_int64(current)))
            self.fingerprints[index] = current
            self.refreshes += 1

    def resident_bytes(self):
        """Bytes of the cached weights: {"float": wb tensors, "packed": sign bits and scales}."""
        sizes = {"float": 0, "packed": 0}
        for layer, packed in zip(self.layers, self.packed):
            if packed:
                sizes["packed"] += layer.xnor_bits.nbytes + layer.xnor_scale.nbytes
            else:
                sizes["float"] += layer.binarized_weight.nbytes
        return sizes


def compile_cache_enabled():
    """MindSpore's compile cache (MS_COMPILER_CACHE_ENABLE) restores graphs without the cache's
    unregistered Parameters: a restored graph would read their first values."""
    return os.environ.get("MS_COMPILER_CACHE_ENABLE", "0").lower() in ("1", "true", "on")


def cache_for(net, kernels, engine):
    """The network's BinarizedWeights; None under the compile cache, where the exact engine computes
    wb in the graph at every call instead (the xnor engine needs the cache: an error)."""
    if not compile_cache_enabled():
        return BinarizedWeights(net, kernels, engine)
    if engine == "xnor":
        raise ValueError("engine='xnor' keeps its packed weights outside the graph, which MindSpore's "
                         "compile cache (MS_COMPILER_CACHE_ENABLE) does not restore: unset it")
    return None


def _checked(layer, kernels, value):
    """value, once WeightsUnchanged has checked that the layer's W is the one it was computed from."""
    return ops.depend(value, kernels.weights_unchanged(layer.weight, layer.binarized_fingerprint))


def cached_weight(layer, kernels):
    """The layer's cached wb for the graph (exact engine)."""
    return _checked(layer, kernels, layer.binarized_weight)


def xnor_conv(layer, x, bias, kernels):
    """conv(rint(clip(x + bias, -1, 1)), wb) on the layer's packed weights (xnor engine)."""
    return _checked(layer, kernels, kernels.xnor_conv1x1(x, bias, layer.xnor_bits, layer.xnor_scale))


ENGINES = ("exact", "xnor")


def check_engine(engine, fused, binary, fast):
    """BiMLP's `fused` argument for `engine`: the xnor engine turns the fused kernels on."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "exact":
        return fused
    if not binary or not fast:
        raise ValueError("engine='xnor' computes the binary network: it needs binary=True (with binary weights) "
                         "and fast=True")
    return True
