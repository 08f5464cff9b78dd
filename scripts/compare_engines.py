"""The xnor engine against the exact one: predictions on a dataset, or logits on the reference checkpoints.

    python scripts/compare_engines.py                      # committed BiMLP_T14 checkpoint, Fashion-MNIST test set
    python scripts/compare_engines.py --model BiMLP_T --checkpoint_path checkpoints/BiMLP_T_fashion_mnist.packed
    python scripts/compare_engines.py --reference          # ../shared/reference: BiMLP_S seed 1, BiMLP_M seed 4

Both networks run the same batches in one process (GRAPH mode). On a dataset it prints each
engine's top-1, the share of images with the same predicted class and the largest logit
difference; on the reference checkpoints the logit differences of each engine to the upstream
logits.
"""
import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
REFERENCE = os.path.join(os.path.dirname(ROOT), "shared", "reference")
REFERENCE_CASES = (("BiMLP_S", 1), ("BiMLP_M", 4))


def engines_for(model, checkpoint=None, params=None):
    """{engine: eval-mode network} with the same weights, from a checkpoint file or a parameter list."""
    import mindspore as ms

    from src.checkpoint import load_weights
    from src.wavemlp_20_3 import create_model

    nets = {}
    for engine in ("exact", "xnor"):
        net = create_model(model, fused=None, engine=engine)
        if checkpoint:
            load_weights(net, checkpoint, model)
        else:
            ms.load_param_into_net(net, {n: ms.Parameter(ms.Tensor(v), name=n) for n, v in params}, strict_load=True)
        net.set_train(False)
        nets[engine] = net
    return nets


def compare_on_dataset(args):
    from src.dataset import count_images, create_dataset, numpy_batches
    from src.evaluation import forward
    from src.wavemlp_20_3 import DATASET_OF_MODEL

    dataset_name = DATASET_OF_MODEL[args.model]
    nets = engines_for(args.model, args.checkpoint_path)
    dataset = create_dataset(dataset_name, args.dataset_path, "val", args.batch_size)
    correct = {engine: 0 for engine in nets}
    same = seen = 0
    largest = 0.0
    batch_shape = None
    for images, labels in numpy_batches(dataset, args.dataset_path):
        logits = {engine: forward(net, images, batch_shape) for engine, net in nets.items()}
        batch_shape = batch_shape or len(images)
        predictions = {engine: value.argmax(1) for engine, value in logits.items()}
        for engine in nets:
            correct[engine] += int((predictions[engine] == labels).sum())
        same += int((predictions["exact"] == predictions["xnor"]).sum())
        largest = max(largest, float(np.abs(logits["exact"] - logits["xnor"]).max()))
        seen += len(labels)
    total = count_images(dataset_name, args.dataset_path, "val")
    print(f"{args.model} {args.checkpoint_path}, {seen} of {total} {dataset_name} test images:")
    for engine in nets:
        print(f"  {engine}: top-1 {100 * correct[engine] / seen:.2f}%")
    print(f"  same predicted class: {100 * same / seen:.2f}% ({seen - same} images differ); "
          f"largest logit difference {largest:.4g}")


def compare_on_reference():
    sys.path.insert(0, REFERENCE)
    import mindspore as ms
    from make_ckpt import random_params, reference_input  # ../shared/reference, not a package

    import json

    with open(os.path.join(REFERENCE, "manifest.json")) as f:
        manifest = json.load(f)
    for model, seed in REFERENCE_CASES:
        stats = dict(np.load(os.path.join(REFERENCE, f"{model}_seed{seed}_bnstats.npz")))
        expected = np.load(os.path.join(REFERENCE, f"{model}_seed{seed}_logits.npy"))
        nets = engines_for(model, params=random_params(manifest, model, seed, stats))
        x = ms.Tensor(reference_input(seed))
        for engine, net in nets.items():
            logits = net(x).asnumpy()
            print(f"{model} seed {seed}, {engine}: max |logit - upstream| {np.abs(logits - expected).max():.4g} "
                  f"(upstream logits span {expected.min():.3g} .. {expected.max():.3g}), same argmax "
                  f"{int((logits.argmax(1) == expected.argmax(1)).sum())}/{len(expected)}")


def main():
    from src.context import run_cli, setup_device
    from src.dataset import FASHION_MNIST_DIR
    from src.pretrained import shipped_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="BiMLP_T14")
    parser.add_argument("--checkpoint_path", help="default: the committed checkpoints/<model>_fashion_mnist.packed")
    parser.add_argument("--dataset_path", default=FASHION_MNIST_DIR)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--reference", action="store_true", help="the reference checkpoints instead of a dataset")
    args = parser.parse_args()
    args.checkpoint_path = args.checkpoint_path or shipped_checkpoint(args.model)

    def run():
        setup_device("CPU", 0, "graph")
        if args.reference:
            compare_on_reference()
        else:
            compare_on_dataset(args)

    run_cli(run)


if __name__ == "__main__":
    main()
