"""Export a trained BiMLP to MINDIR, ONNX or AIR for inference.

    python export.py --checkpoint_path bimlp_s.ckpt --model BiMLP_S --file_format MINDIR

The exported graph is the eval-mode network with the binary weights folded: each
binary QuanConv carries wb = sign(W) * scale instead of the latent W, so the graph
needs no Sign/ReduceMean and computes the same convolutions on the same values.
Format support with MindSpore 2.10 (CPU):
- MINDIR: exact, logits identical to the Cell.
- ONNX: MindSpore 2.10's ONNX converter needs four rewrites, all numerically
  equivalent: the network is built with fast=False (its BiasAdd exports as an Add
  broadcast over the wrong axis); the global average pools (AdaptiveAvgPool2D, no
  converter) export as a mean over H, W; GroupNorm (BiMLP_M, no converter) as
  elementary operators; and asymmetric conv paddings, which MindSpore writes in
  the wrong order, are fixed in the written file. onnxruntime agrees with the
  Cell to float rounding; a binary network can turn that into larger logit
  differences (see docs/deployment.md).
- AIR: needs the Ascend backend (--platform Ascend).
"""
import argparse
import contextlib
import re

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

import src.wavemlp_20_3 as wavemlp
from src.checkpoint import load_weights
from src.config import parse_bool
from src.context import UserError, add_model_argument, default_device_id, run_cli, setup_device
from src.dataset import check_image_size
from src.files import atomic_write, check_output_file
from src.quan_conv import Identity, QuanConv
from src.wavemlp_20_3 import create_model, default_image_size

FORMATS = ("MINDIR", "AIR", "ONNX")
EXTENSIONS = {"MINDIR": ".mindir", "AIR": ".air", "ONNX": ".onnx"}
UNSUPPORTED_OPERATOR = re.compile(r"Can not find key (\w+) in convert map")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint_path", required=True)
    add_model_argument(parser, "BiMLP_S")
    parser.add_argument("--file_format", default="MINDIR", choices=FORMATS)
    parser.add_argument("--batch_size", type=int, default=1, help="fixed batch size of the exported graph")
    parser.add_argument("--image_size", type=int, default=None,
                        help="input height = width (default: 224 for BiMLP_S/M, 28 for BiMLP_T/T14)")
    parser.add_argument("--num_classes", type=int, default=None, help="classes of the head (default: the variant's)")
    parser.add_argument("--binary", type=parse_bool, default=True, metavar="{true,false}",
                        help="false exports a float-twin checkpoint (train.py --binary false); default: true")
    parser.add_argument("--file_name", default=None,
                        help="output path without extension (default: the variant, lower case)")
    parser.add_argument("--platform", default="CPU", choices=("Ascend", "GPU", "CPU"))
    parser.add_argument("--device_id", type=int, default=default_device_id())
    return parser.parse_args(argv)


def check_args(args):
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {args.batch_size}")
    check_image_size(args.image_size)
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num_classes must be at least 1, got {args.num_classes}")
    if args.file_format == "AIR" and args.platform != "Ascend":
        raise UserError("AIR export needs the Ascend backend: MindSpore writes AIR only with --platform Ascend; "
                        "use --file_format MINDIR or ONNX here")
    check_output_file(output_path(args.file_name or args.model.lower(), args.file_format), "--file_name")


def output_path(file_name, file_format):
    """The file MindSpore writes for file_name: it adds the format's extension unless present."""
    extension = EXTENSIONS[file_format]
    return file_name if file_name.endswith(extension) else file_name + extension


def build_network(model_name, checkpoint_path, num_classes=None, fast=True, binary=True):
    """The variant in eval mode with the checkpoint strictly loaded."""
    net = create_model(model_name, fast=fast, fused=False, binary=binary,
                       **({"num_classes": num_classes} if num_classes else {}))
    load_weights(net, checkpoint_path, model_name)
    net.set_train(False)
    return net


def fold_binary_weights(net):
    """Replace each quantized QuanConv's latent weights by the weights its convolution uses."""
    for _, cell in net.cells_and_names():
        if isinstance(cell, QuanConv) and cell.quan_name_w != "fp":
            cell.weight.set_data(Tensor(cell.quantized_weight()))
            cell.quantize_weight = Identity()
    return net


class ElementaryGroupNorm(ms.nn.Cell):
    """nn.GroupNorm written with elementary operators, which MindSpore can export to ONNX.

    gamma and beta become constants of the inference graph.
    """

    def __init__(self, norm):
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        self.gamma = Tensor(norm.gamma.asnumpy().reshape(1, -1, 1, 1))
        self.beta = Tensor(norm.beta.asnumpy().reshape(1, -1, 1, 1))

    def construct(self, x):
        batch, channels, height, width = x.shape
        groups = x.reshape(batch, self.groups, -1)
        centered = groups - groups.mean(-1, keep_dims=True)
        variance = (centered * centered).mean(-1, keep_dims=True)
        normalized = (centered / ops.sqrt(variance + self.eps)).reshape(batch, channels, height, width)
        return normalized * self.gamma + self.beta


def replace_group_norms(net):
    """Swap every nn.GroupNorm (no ONNX converter in MindSpore 2.10) for ElementaryGroupNorm."""
    for _, cell in net.cells_and_names():
        for name, child in list(cell.name_cells().items()):
            if isinstance(child, ms.nn.GroupNorm):
                setattr(cell, name, ElementaryGroupNorm(child))
    return net


class SpatialMean(ms.nn.Cell):
    """Global average pool as a mean over H and W, which MindSpore can export to ONNX."""

    def construct(self, x):
        return ops.mean(x, (2, 3), True)


@contextlib.contextmanager
def onnx_exportable_pooling():
    """Swap the model's AdaptiveAvgPool2D (no ONNX converter in MindSpore 2.10) while exporting.

    Should the model stop using the module-level ACCURATE_POOL, nothing is swapped and the
    export fails with an error naming AdaptiveAvgPool2D.
    """
    original = getattr(wavemlp, "ACCURATE_POOL", None)
    if original is None:
        yield
        return
    wavemlp.ACCURATE_POOL = SpatialMean()
    try:
        yield
    finally:
        wavemlp.ACCURATE_POOL = original


def fix_onnx_conv_padding(path):
    """MindSpore 2.10 writes a Conv's (top, bottom, left, right) padding as ONNX pads as is;
    ONNX wants (top, left, bottom, right). Symmetric paddings are unaffected."""
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the onnx package to fix the conv paddings: pip install onnx") from None
    model = onnx.load(path)
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Conv" and attribute.name == "pads":
                top, bottom, left, right = attribute.ints
                attribute.ints[:] = [top, left, bottom, right]
    onnx.save(model, path)


def export_error(err, file_format):
    message = str(err)
    unsupported = UNSUPPORTED_OPERATOR.search(message)
    if unsupported:
        return UserError(f"{file_format} export cannot express the MindSpore operator {unsupported.group(1)}; "
                         f"use --file_format MINDIR")
    return UserError(f"{file_format} export failed: {message.strip().splitlines()[0]}")


def export_network(net, inputs, file_name, file_format):
    """Export the folded network; returns the written path. MindSpore's failures become UserError.

    Give it a network this process has not run in graph mode: MindSpore 2.10 fails to
    recompile such a network once the ONNX pooling is swapped in.
    """
    fold_binary_weights(net)
    if file_format == "ONNX":
        replace_group_norms(net)
    pooling = onnx_exportable_pooling() if file_format == "ONNX" else contextlib.nullcontext()

    def write(tmp):
        try:
            with pooling:
                ms.export(net, inputs, file_name=tmp, file_format=file_format)
        except (RuntimeError, ValueError, TypeError) as err:
            raise export_error(err, file_format) from None
        if file_format == "ONNX":
            fix_onnx_conv_padding(tmp)

    return atomic_write(output_path(file_name, file_format), write, suffix=EXTENSIONS[file_format])


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    # Eager mode folds the weights op by op; ms.export compiles the graph itself.
    setup_device(args.platform, args.device_id, mode="pynative")
    # The fast path's BiasAdd exports to ONNX as an Add that broadcasts over the wrong axis.
    net = build_network(args.model, args.checkpoint_path, args.num_classes,
                        fast=args.file_format != "ONNX", binary=args.binary)
    size = args.image_size or default_image_size(args.model)
    inputs = Tensor(np.zeros((args.batch_size, net.patch_embed.proj.in_channels, size, size), np.float32))
    path = export_network(net, inputs, args.file_name or args.model.lower(), args.file_format)
    print(f"exported {args.model} ({args.batch_size}x{inputs.shape[1]}x{size}x{size} -> "
          f"{net.num_classes} classes) to {path}")


if __name__ == "__main__":
    run_cli(main)
