"""Test setup: pin oneDNN's CPU kernels before MindSpore runs a convolution.

Binary networks are chaotic, and oneDNN picks differently-rounding kernels by
CPU; AVX2 makes the reference logits reproducible on every x86 machine.
"""
import os
import sys

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")


from mindspore import Tensor, nn  # noqa: E402  (after the oneDNN setting)


class Weighted(nn.Cell):
    """sum(f(x) * g): its gradient with respect to x is f's vector-Jacobian product with g."""

    def __init__(self, f, g):
        super().__init__()
        self.f, self.g = f, Tensor(g)

    def construct(self, x):
        return (self.f(x) * self.g).sum()


def packed_copy(checkpoint, model):
    """checkpoint packed by pack.py (in its own process: the packer fixes the device mode) beside it."""
    import subprocess

    packed = os.path.splitext(checkpoint)[0] + ".packed"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "pack.py"), "--checkpoint_path", checkpoint,
                           "--model", model, "--output", packed], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return packed
