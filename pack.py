"""Pack a BiMLP checkpoint into sign bits + scales (.npz), or unpack it back to a .ckpt.

    python pack.py --checkpoint_path bimlp_s.ckpt --checkpoint_nm BiMLP_S --output bimlp_s_packed.npz
    python pack.py --unpack --checkpoint_path bimlp_s_packed.npz --output bimlp_s_unpacked.ckpt

The unpacked checkpoint gives bit-identical eval logits; see src/packing.py for the format.
The binary/float record of train.py's checkpoints is kept through packing and unpacking.
"""
import argparse
import os

import mindspore as ms
import numpy as np

from src.checkpoint import BINARY_MARKER, check_binary, check_compatible, read_checkpoint, save_checkpoint
from src.config import parse_bool
from src.context import UserError, run_cli, setup_device
from src.files import check_output_file
from src.packing import pack_params, packable_layers, read_packed, save_packed, unpack_arrays
from src.wavemlp_20_3 import MODELS, create_model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint_path", required=True, help=".ckpt to pack, or .npz to unpack")
    parser.add_argument("--checkpoint_nm", default="BiMLP_S", choices=sorted(MODELS),
                        help="variant of the checkpoint (packing only; the .npz records it)")
    parser.add_argument("--output", required=True, help="output .npz (pack) or .ckpt (unpack)")
    parser.add_argument("--unpack", action="store_true", help="turn a packed .npz back into a .ckpt")
    parser.add_argument("--binary", type=parse_bool, default=True, metavar="{true,false}",
                        help="false packs a float-twin checkpoint (train.py --binary false): its weights "
                             "stay float32 (packing only; default: true)")
    return parser.parse_args(argv)


def network_weights(path, model_name, binary=True):
    """The checkpoint's network parameters (training state dropped) and the matching network."""
    checkpoint = read_checkpoint(path)
    head = checkpoint.get("head.weight")
    net = create_model(model_name, binary=binary, **({"num_classes": head.shape[0]} if head is not None else {}))
    check_compatible(net, checkpoint, model_name, path)
    check_binary(net, checkpoint, path)
    names = [name for name, _ in net.parameters_and_names()]
    return {name: checkpoint[name].asnumpy().astype(np.float32) for name in names}, net


def pack(args):
    params, net = network_weights(args.checkpoint_path, args.checkpoint_nm, args.binary)
    start_device()
    arrays, kept_float = pack_params(params, packable_layers(net), args.checkpoint_nm, args.binary)
    save_packed(arrays, args.output)
    packed = sum(name.endswith("@signs") for name in arrays)
    print(f"packed {packed} binary layers' weights as sign bits + scales; "
          f"kept {len(params) - packed} other tensors float32")
    for name in kept_float:
        print(f"  kept float (an exact 0 in the latent weights, or no exact bit round trip): {name}")
    report_sizes(args.checkpoint_path, args.output)


def unpack(args):
    arrays = read_packed(args.checkpoint_path)
    start_device()
    params = unpack_arrays(arrays)
    record = {BINARY_MARKER: int(arrays["binary"])} if "binary" in arrays else None
    save_checkpoint([{"name": name, "data": ms.Tensor(value)} for name, value in params.items()], args.output,
                    append_dict=record)
    kind = {None: "", 1: " (binary)", 0: " (float twin)"}[None if record is None else record[BINARY_MARKER]]
    print(f"unpacked {len(params)} parameters of {arrays['model']}{kind} to {args.output}")
    report_sizes(args.checkpoint_path, args.output)


def start_device():
    """After the inputs are checked. The quantizers run op by op: graph mode would compile one graph per shape."""
    setup_device("CPU", 0, mode="pynative")


def report_sizes(source, target):
    source_size, target_size = os.path.getsize(source), os.path.getsize(target)
    print(f"{source}: {source_size / 2**20:.2f} MiB -> {target}: {target_size / 2**20:.2f} MiB "
          f"({source_size / target_size:.2f}x)")


def main(argv=None):
    args = parse_args(argv)
    suffix = ".ckpt" if args.unpack else ".npz"
    if not args.output.endswith(suffix):
        raise UserError(f"--output must end in {suffix}, got {args.output}")
    check_output_file(args.output, "--output")
    if args.unpack:
        unpack(args)
    else:
        pack(args)


if __name__ == "__main__":
    run_cli(main)
