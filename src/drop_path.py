"""Stochastic depth whose random decisions a resumed training run repeats exactly.

MindSpore 2.10 on CPU has no random operator whose state can be saved or set:
`ops.bernoulli` seeds itself from the clock, so two identical runs, or a run and its
resumption from a checkpoint, drop different samples. Here each decision is a hash of
(the global seed, the layer, a draw counter, the sample's index in the batch). The
counter is a Parameter that train.py checkpoints with the weights, so a resumed run
continues the very sequence an unbroken one would have drawn.
"""
import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

# The counter's attribute and parameter name; checkpoint loaders treat it as training state, not a weight.
COUNTER = "drop_path_draws"
_MASK31 = 2 ** 31 - 1
_MULTIPLIER = 0x45D9F3B  # of the integer hash below (Thomas Mueller's), kept to 31 bits


def _mix(x):
    """An integer hash of 31-bit values with int64 arithmetic: products stay below 2**62."""
    for _ in range(2):
        x = ops.bitwise_xor(x, x // 65536)
        x = ops.bitwise_and(x * _MULTIPLIER, _MASK31)
    return ops.bitwise_xor(x, x // 65536)


def _mix_int(x):
    """_mix for a Python int: the per-layer constant."""
    for _ in range(2):
        x ^= x >> 16
        x = (x * _MULTIPLIER) & _MASK31
    return x ^ (x >> 16)


class DropPath(nn.Cell):
    """Drop whole samples of a residual branch with probability `rate` (training only),
    scaling the kept ones by 1 / (1 - rate); identity at rate 0 and in eval mode.

    A layer's decisions depend on its rate (BiMLP's rates grow with depth, so each block
    draws its own stream) and on the global seed at construction (mindspore.set_seed).
    """

    def __init__(self, rate):
        super().__init__()
        self.keep = 1.0 - rate
        if rate > 0:
            seed = ms.get_seed() or 0
            self.stream = _mix_int((_mix_int(seed & _MASK31) + int(np.float32(rate).view(np.int32))) & _MASK31)
            self.drop_path_draws = Parameter(Tensor(0, ms.int64), name=COUNTER, requires_grad=False)

    def construct(self, x):
        if not self.training or self.keep == 1.0:
            return x
        draw = self.drop_path_draws + 0
        ops.assign_add(self.drop_path_draws, ops.ones((), ms.int64))
        key = _mix(ops.bitwise_and(draw + self.stream, _MASK31))
        key = _mix(ops.bitwise_and(key + ops.arange(x.shape[0], dtype=ms.int64), _MASK31))
        uniform = key.astype(x.dtype) / float(2 ** 31)
        mask = (uniform < self.keep).astype(x.dtype).reshape(x.shape[0], 1, 1, 1)
        return x * mask / self.keep
