"""Access to ../shared/reference: the upstream network's parameters and logits."""
import json
import os
import sys

import numpy as np

from conftest import SHARED

REFERENCE = os.path.join(SHARED, "reference")
sys.path.insert(0, REFERENCE)
from make_ckpt import random_params, reference_input  # noqa: E402  (shared helper, not a package)

CASES = [("BiMLP_S", 1), ("BiMLP_M", 4)]


def manifest():
    with open(os.path.join(REFERENCE, "manifest.json")) as f:
        return json.load(f)


def reference_params(model, seed):
    stats = dict(np.load(os.path.join(REFERENCE, f"{model}_seed{seed}_bnstats.npz")))
    return random_params(manifest(), model, seed, stats)


def reference_logits(model, seed):
    return np.load(os.path.join(REFERENCE, f"{model}_seed{seed}_logits.npy"))


__all__ = ["CASES", "manifest", "reference_params", "reference_logits", "reference_input"]
