"""Grouped 1xK / Kx1 convolution, fast on MindSpore's CPU kernels in training and on small maps.

Two things make the plain grouped Conv2D slow on MindSpore 2.10's CPU backend:
- its weight gradient (Conv2DBackpropFilter) is ~100x slower than the forward for
  these depthwise-style layers; here it is one batched matrix product per layer
  (see `line_filter_grad`);
- on a map shorter than the kernel (BiMLP_T's 2x2 and 1x1 stages) the convolution
  pads more than half a kernel and runs several times slower. Taps that can only ever read
  padding add nothing, so such a map is convolved with the taps that can reach it.
  ImageNet-sized maps (7x7 or more at 224) always use the whole kernel.
"""
import numpy as np
from mindspore import Tensor, nn, ops


def reachable_taps(taps, before, length):
    """The taps [lo, hi) of a K-tap line kernel, padded `before`, that read a position of a length-L line."""
    lo, hi = before - length + 1, before + length
    return (lo if lo > 0 else 0), (hi if hi < taps else taps)


def diagonal_index(taps, before, length):
    """Where dw[:, j] collects its terms in a flattened (L, L) correlation matrix plus one zero at the end.

    Entry (j, p) points at (p + j - before, p), or at the zero if that row is padding.
    """
    j, p = np.meshgrid(np.arange(taps), np.arange(length), indexing="ij")
    q = p + j - before
    flat = np.where((q >= 0) & (q < length), q * length + p, length * length)
    return Tensor(flat.astype(np.int32))


class GroupedLineConv(nn.Cell):
    """conv2d(x, w) for stride 1, a (1, K) or (K, 1) kernel and out_channels == group."""

    def __init__(self, in_channels, out_channels, kernel_size, padding, group):
        super().__init__()
        kh, kw = kernel_size
        if group != out_channels or 1 not in (kh, kw):
            raise ValueError("GroupedLineConv needs out_channels == group and a 1xK or Kx1 kernel")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.per_group = in_channels // group
        self.taps = max(kh, kw)
        self.along_width = kh == 1
        top, bottom, left, right = padding
        self.before, self.after = (left, right) if self.along_width else (top, bottom)
        if self.before + self.after != self.taps - 1:
            raise ValueError("GroupedLineConv keeps the line length: padding must add up to K - 1")
        # Set by the network: src/fused.TrainKernels, used in training (forward and gradient).
        self.train_kernels = None
        self.symmetric = self.before == self.after

    def construct(self, x, w):
        if self.training and self.train_kernels is not None and self.symmetric:
            return self.train_kernels.line_conv(x, w)
        conv, _, lo, hi = self.kernels(self.length(x))
        return conv(x, self.crop(w, lo, hi))

    def bprop(self, x, w, out, dout):
        if self.training and self.train_kernels is not None and self.symmetric:
            return self.train_kernels.line_conv_grad(x, w, dout)
        _, input_grad, lo, hi = self.kernels(self.length(x))
        dx = input_grad(dout, self.crop(w, lo, hi), x.shape)
        b, c_in, h, wd = x.shape
        if self.per_group > 1:
            # input channel g * per_group + i meets output channel g
            dout = ops.broadcast_to(dout.reshape(b, -1, 1, h, wd), (b, c_in // self.per_group, self.per_group, h, wd))
            dout = dout.reshape(b, c_in, h, wd)
        return dx, self.line_filter_grad(x, dout).reshape(w.shape)

    def length(self, x):
        return x.shape[3] if self.along_width else x.shape[2]

    def kernels(self, length):
        """Forward and input-gradient primitives for the taps that reach a line of this length."""
        lo, hi = reachable_taps(self.taps, self.before, length)
        before, after = self.before - lo, self.after - (self.taps - hi)
        size, pad = ((1, hi - lo), (0, 0, before, after)) if self.along_width else ((hi - lo, 1), (before, after, 0, 0))
        conv = ops.Conv2D(out_channel=self.out_channels, kernel_size=size, mode=1,
                          pad_mode="pad", pad=pad, group=self.out_channels)
        input_grad = ops.Conv2DBackpropInput(out_channel=self.in_channels, kernel_size=size,
                                             pad_mode="pad", pad=pad, group=self.out_channels)
        return conv, input_grad, lo, hi

    def crop(self, w, lo, hi):
        if hi - lo == self.taps:
            return w
        return w[:, :, :, lo:hi] if self.along_width else w[:, :, lo:hi, :]

    def line_filter_grad(self, x, dout):
        """dw[c, j] = sum over batch and lines of sum_p x[c, p + j - before] * dout[c, p] (x is 0 outside).

        Per channel, M = x^T @ dout over all (batch, other-axis) rows is an (L, L)
        matrix whose diagonals hold those sums: one BatchMatMul and one gather,
        where K pairs of shifted slices would run MindSpore's slow CPU StridedSlice.
        """
        b, c, h, wd = x.shape
        if self.along_width:
            length = wd
            rows = x.transpose(1, 3, 0, 2).reshape(c, length, b * h)
            cols = dout.transpose(1, 0, 2, 3).reshape(c, b * h, length)
        else:
            length = h
            rows = x.transpose(1, 2, 0, 3).reshape(c, length, b * wd)
            cols = dout.transpose(1, 0, 3, 2).reshape(c, b * wd, length)
        m = ops.bmm(rows, cols).reshape(c, -1)
        m = ops.concat((m, ops.zeros((c, 1), m.dtype)), axis=1)
        return ops.gather(m, diagonal_index(self.taps, self.before, length), 1).sum(axis=2)
