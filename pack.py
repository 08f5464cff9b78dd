"""Pack a BiMLP checkpoint into sign bits + scales, or unpack it back to a .ckpt.

    python pack.py --checkpoint_path bimlp_s.ckpt --model BiMLP_S --output bimlp_s.packed
    python pack.py --unpack --checkpoint_path bimlp_s.packed --output bimlp_s_unpacked.ckpt
    # Replace a committed checkpoint (checkpoints/<variant>_fashion_mnist[_float].packed) and its SHA-256:
    python pack.py --checkpoint_path output/bimlp_t14_fashion_mnist/best.ckpt --model BiMLP_T14 --ship

eval.py, predict.py, export.py and train.py --teacher_checkpoint read packed files as they are.
A binary network unpacks to bit-identical eval logits; see src/packing.py for the format.
The checkpoint's records (binary or float twin, class names) are kept through packing and unpacking.
"""
import argparse
import os

import mindspore as ms
import numpy as np

from src.checkpoint import (BINARY_MARKER, CLASS_NAMES_RECORD, check_binary, check_compatible, read_checkpoint,
                            save_checkpoint)
from src.config import parse_bool
from src.context import UserError, add_model_argument, run_cli, setup_device
from src.files import check_output_file
from src.packing import SIGNS, pack_params, packable_layers, read_packed, save_packed, unpack_params
from src.pretrained import SHIPPED_DATASET, record_sha256, shipped_name, shipped_path
from src.wavemlp_20_3 import create_model, models_for

# The records a packed file keeps beside the weights (optimizer state and counters are dropped).
KEPT_RECORDS = (BINARY_MARKER, CLASS_NAMES_RECORD)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint_path", required=True, help="checkpoint to pack, or packed file to unpack")
    add_model_argument(parser, "BiMLP_S")
    parser.add_argument("--output", help="output .packed file (pack) or .ckpt (unpack)")
    parser.add_argument("--ship", action="store_true",
                        help=f"write checkpoints/{shipped_name('<variant>')} (or _float.packed for a float twin) "
                             "and record its SHA-256 in src/pretrained.py")
    parser.add_argument("--binary", type=parse_bool, default=None, metavar="{true,false}",
                        help="false packs a float twin (no bits); default: the checkpoint's record, else true")
    parser.add_argument("--float16", action="store_true",
                        help="store the tensors that stay float as float16 (smaller, slightly different logits: "
                             "check the accuracy with eval.py)")
    parser.add_argument("--unpack", action="store_true", help="turn a packed file back into a .ckpt")
    return parser.parse_args(argv)


def check_args(args):
    if args.unpack and args.ship:
        raise UserError("--ship packs a checkpoint: it does not go with --unpack")
    if bool(args.output) == args.ship:
        raise UserError("give either --output or --ship")
    suffix = ".ckpt" if args.unpack else ".packed"
    if args.output and not args.output.endswith(suffix):
        raise UserError(f"--output must end in {suffix}, got {args.output}")
    if args.output:
        check_output_file(args.output, "--output")
    if args.ship and args.model not in models_for(SHIPPED_DATASET):
        raise UserError(f"only {'/'.join(models_for(SHIPPED_DATASET))} checkpoints are committed, "
                        f"not {args.model}: use --output")


def network_weights(path, model_name, binary):
    """The checkpoint's network parameters (training state dropped), its records, and the matching network."""
    checkpoint = read_checkpoint(path)
    if binary is None:
        binary = bool(checkpoint[BINARY_MARKER].asnumpy()) if BINARY_MARKER in checkpoint else True
    head = checkpoint.get("head.weight")
    net = create_model(model_name, binary=binary,
                       **({"num_classes": head.shape[0]} if head is not None else {}))
    check_compatible(net, checkpoint, model_name, path)
    check_binary(net, checkpoint, path)
    names = [name for name, _ in net.parameters_and_names()]
    records = {name: checkpoint[name] for name in KEPT_RECORDS if name in checkpoint}
    records = {name: value if isinstance(value, str) else int(value.asnumpy()) for name, value in records.items()}
    records[BINARY_MARKER] = int(binary)
    return {name: checkpoint[name].asnumpy().astype(np.float32) for name in names}, records, net


def pack(args):
    params, records, net = network_weights(args.checkpoint_path, args.model, args.binary)
    output = args.output or shipped_path(args.model, net.binary)
    start_device()
    packed, kept_float = pack_params(params, packable_layers(net), args.model, records,
                                     np.float16 if args.float16 else np.float32)
    digest = save_packed(packed, output)
    bits = sum(key.endswith(SIGNS) for key in packed["tensors"])
    print(f"packed {bits} binary layers' weights as sign bits + scales; kept {len(params) - bits} "
          f"other tensors {'float16' if args.float16 else 'float32'} ({'binary' if net.binary else 'float twin'})")
    for name in kept_float:
        print(f"  kept float (an exact 0 in the latent weights, or no exact bit round trip): {name}")
    report_sizes(args.checkpoint_path, output)
    print(f"SHA-256 {digest}  {output}")
    if args.ship:
        record_sha256(os.path.basename(output), digest)
        print("recorded it in src/pretrained.py (SHIPPED_SHA256); commit both files")


def unpack(args):
    packed = read_packed(args.checkpoint_path)
    start_device()
    params = unpack_params(packed)
    records = packed["records"]
    save_checkpoint([{"name": name, "data": ms.Tensor(value)} for name, value in params.items()], args.output,
                    append_dict=records or None)
    kind = {None: "", 1: " (binary)", 0: " (float twin)"}[records.get(BINARY_MARKER)]
    print(f"unpacked {len(params)} parameters of {packed['model']}{kind} to {args.output}")
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
    check_args(args)
    if args.unpack:
        unpack(args)
    else:
        pack(args)


if __name__ == "__main__":
    run_cli(main)
