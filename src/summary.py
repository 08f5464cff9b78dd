"""Model summary in the spirit of Larq's: 1-bit vs 32-bit parameters, memory, BOPs, FLOPs, OPs.

Conventions (per image, counted analytically from the network's cells):
- 1-bit parameters: weights of binary QuanConvs that a packed checkpoint stores as
  sign bits (src/packing.is_packable: xnor weights, more than one input channel per
  group). Each such layer also needs its float32 xnor scale, out * kh * kw values,
  which count in the packed memory but not as parameters.
- 32-bit parameters: everything else - float convs and the head, BatchNorm /
  GroupNorm (including moving statistics), learnable biases, RPReLU slopes, the
  blocks' branch weights, and the depthwise 1x7 / 7x1 QuanConvs, whose xnor scale
  over a single input channel gives wb == W: their weights are effectively float.
- BOPs: multiply-accumulates of convs with 1-bit weights and 1-bit activations.
  The activations are rint(clip(x, -1, 1)), so strictly in {-1, 0, +1}; like the
  paper we count them as binary.
- FLOPs: float multiply-accumulates (MACs, one MAC = one FLOP here) of the float
  stem and downsampling convs, the head, and the depthwise QuanConvs (binary
  activations times float weights cannot run as XNOR-popcount; Larq likewise counts
  a layer at the higher of its input and weight precisions). Elementwise work
  (norms, RPReLU, shortcuts, pooling, cos/sin, softmax, xnor scale multiplies) is
  not counted, as in the paper's OPs.
- OPs = BOPs / 64 + FLOPs.
- Memory: float32 = 4 bytes per parameter; packed = 1 bit per 1-bit parameter
  plus 4 bytes per 32-bit parameter and per xnor scale (what pack.py stores,
  without the archive's headers).
"""
import math
from dataclasses import dataclass

from mindspore import nn

from src.packing import is_packable
from src.quan_conv import QuanConv
from src.wavemlp_20_3 import Downsample

KIND_BINARY = "binary conv"
KIND_DEPTHWISE = "dw conv, 1-bit act, float w"
KIND_FLOAT_CONV = "float conv"
KIND_DENSE = "dense"
KIND_OTHER = "norm/bias/RPReLU"


@dataclass
class Count:
    name: str
    kind: str
    output: str = ""
    params_1bit: int = 0
    params_32bit: int = 0
    scales: int = 0
    bops: int = 0
    flops: int = 0

    @property
    def float32_bytes(self):
        return 4 * (self.params_1bit + self.params_32bit)

    @property
    def packed_bytes(self):
        return self.params_1bit / 8 + 4 * (self.params_32bit + self.scales)

    @property
    def ops(self):
        return self.bops / 64 + self.flops

    def add(self, other):
        self.params_1bit += other.params_1bit
        self.params_32bit += other.params_32bit
        self.scales += other.scales
        self.bops += other.bops
        self.flops += other.flops


def conv_output_size(size, kernel, stride, pad_before, pad_after):
    return (size + pad_before + pad_after - kernel) // stride + 1


def conv_output(cell, height, width):
    """Output (H, W) of a QuanConv or nn.Conv2d (pad_mode "pad", "same" or "valid")."""
    (kh, kw), (sh, sw) = cell.kernel_size, pair(cell.stride)
    pad_mode = getattr(cell, "pad_mode", "pad")
    if pad_mode == "same":
        return math.ceil(height / sh), math.ceil(width / sw)
    padding = (0, 0, 0, 0) if pad_mode == "valid" else cell.padding
    top, bottom, left, right = padding if isinstance(padding, tuple) else (padding,) * 4
    return conv_output_size(height, kh, sh, top, bottom), conv_output_size(width, kw, sw, left, right)


def pair(value):
    return value if isinstance(value, tuple) else (value, value)


def conv_resolutions(net, image_size):
    """{conv cell name: output (H, W)} by shape propagation through the BiMLP layout.

    Every conv inside a stage keeps the stage's resolution, except the PATM
    `reweight` Mlp, which runs on the globally pooled (1, 1) map; a Downsample's
    max-pools (stride 2, pad_mode "same") give ceil(H / 2).
    """
    height, width = conv_output(net.patch_embed.proj, image_size, image_size)
    sizes = {"patch_embed.proj": (height, width)}
    for index, stage in enumerate(net.network):
        for name, cell in stage.cells_and_names():
            if isinstance(cell, (QuanConv, nn.Conv2d)):
                at = (1, 1) if "reweight." in name else (height, width)
                sizes[f"network.{index}.{name}"] = conv_output(cell, *at)
        if isinstance(stage, Downsample):
            height, width = math.ceil(height / 2), math.ceil(width / 2)
    if min(min(size) for size in sizes.values()) < 1:
        raise ValueError(f"image size {image_size} is too small for this network")
    return sizes


def own_parameter_count(cell):
    return sum(p.size for p in cell.get_parameters(expand=False))


def count_conv(name, cell, size):
    out_channels = cell.out_channels
    kh, kw = cell.kernel_size
    macs = out_channels * size[0] * size[1] * (cell.in_channels // cell.group) * kh * kw
    output = f"{out_channels}x{size[0]}x{size[1]}"
    if not isinstance(cell, QuanConv):
        return Count(name, KIND_FLOAT_CONV, output, params_32bit=own_parameter_count(cell), flops=macs)
    binary_input = cell.quan_name_a != "fp" and cell.nbit_a == 1
    if is_packable(cell):
        count = Count(name, KIND_BINARY, output, params_1bit=cell.weight.size, scales=out_channels * kh * kw)
        if binary_input:
            count.bops = macs
        else:
            count.flops = macs
        return count
    kind = KIND_DEPTHWISE if binary_input and cell.quan_name_w != "fp" else KIND_FLOAT_CONV
    return Count(name, kind, output, params_32bit=cell.weight.size, flops=macs)


def layer_counts(net, image_size):
    """Counts of a BiMLP network at image_size x image_size."""
    return cell_counts(net, conv_resolutions(net, image_size))


def cell_counts(net, sizes):
    """A Count for every cell of net that owns parameters, in definition order.

    sizes: {conv cell name: output (H, W)} for every conv in net.
    """
    counts = []
    for name, cell in net.cells_and_names():
        if isinstance(cell, (QuanConv, nn.Conv2d)):
            counts.append(count_conv(name, cell, sizes[name]))
        elif isinstance(cell, nn.Dense):
            counts.append(Count(name, KIND_DENSE, str(cell.out_channels),
                                params_32bit=own_parameter_count(cell),
                                flops=cell.in_channels * cell.out_channels))
        elif own_parameter_count(cell):
            counts.append(Count(name, KIND_OTHER, params_32bit=own_parameter_count(cell)))
    return counts


def block_of(name):
    """The block a parameter belongs to: network.i.j (a WaveBlock), network.i (a Downsample), or the top cell."""
    parts = name.split(".")
    if parts[0] != "network":
        return parts[0]
    return ".".join(parts[:3]) if parts[2].isdigit() else ".".join(parts[:2])


def group_counts(counts, key):
    """Sum counts by key(name), keeping first-seen order."""
    groups = {}
    for count in counts:
        group = key(count.name)
        groups.setdefault(group, Count(group, "")).add(count)
    return list(groups.values())


def per_layer_rows(counts):
    """Convs and the head as they are; each block's norms, biases and RPReLUs as one row."""
    rows, others = [], {}
    for count in counts:
        if count.kind != KIND_OTHER:
            rows.append(count)
            continue
        block = block_of(count.name)
        if block not in others:
            others[block] = Count(f"{block} (norm/bias/RPReLU)", KIND_OTHER)
            rows.append(others[block])
        others[block].add(count)
    return rows


def top_level(name):
    """network.i for a stage or downsampling, else the top cell's name (patch_embed, norm, head)."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "network" else parts[0]


def stage_labels(net):
    labels = {"patch_embed": "stem (patch_embed)", "norm": "head (norm, head)", "head": "head (norm, head)"}
    stage = 0
    for index, cell in enumerate(net.network):
        if isinstance(cell, Downsample):
            labels[f"network.{index}"] = f"downsample {stage}->{stage + 1} (network.{index})"
        else:
            stage += 1
            dim = cell[0].norm_h.num_features
            labels[f"network.{index}"] = f"stage {stage}: {len(cell)} x MBB, dim {dim} (network.{index})"
    return labels


def stage_rows(net, counts):
    """One row each for the stem, every stage and downsampling, and the head."""
    labels = stage_labels(net)
    return group_counts(counts, lambda name: labels[top_level(name)])


def total(counts):
    result = Count("total", "")
    for count in counts:
        result.add(count)
    return result
