"""Test setup: pin oneDNN's CPU kernels before MindSpore runs a convolution.

Binary networks are chaotic, and oneDNN picks differently-rounding kernels by
CPU; AVX2 makes the reference logits reproducible on every x86 machine.
"""
import importlib
import os
import shutil
import sys

import pytest

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared")


from mindspore import Tensor, nn  # noqa: E402  (after the oneDNN setting)


def require(available, what):
    """Skip a test whose tool is missing on this machine; under CI (CI=true) fail instead, so that
    an advertised feature is never silently left untested."""
    if available:
        return
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"{what} is missing, and CI=true requires every feature to be tested", pytrace=False)
    pytest.skip(f"{what} is missing")


def require_tool(name, path=None):
    require(shutil.which(name, path=path) is not None, f"the program {name}")


def require_module(name):
    """The imported module, if installed (see require)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        require(False, f"the Python package {name}")


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
