"""Grouped 1xK / Kx1 convolution whose weight gradient is fast on CPU.

MindSpore 2.10's CPU Conv2DBackpropFilter is ~100x slower than the forward
convolution for the depthwise-style layers of BiMLP (group = out channels),
which made a training step take seconds. The forward and the input gradient use
MindSpore's own kernels; the weight gradient is written as K shifted products.
"""
from mindspore import nn, ops


class GroupedLineConv(nn.Cell):
    """conv2d(x, w) for stride 1, a (1, K) or (K, 1) kernel and out_channels == group."""

    def __init__(self, in_channels, out_channels, kernel_size, padding, group):
        super().__init__()
        kh, kw = kernel_size
        if group != out_channels or 1 not in (kh, kw):
            raise ValueError("GroupedLineConv needs out_channels == group and a 1xK or Kx1 kernel")
        self.per_group = in_channels // group
        self.taps = max(kh, kw)
        self.along_width = kh == 1
        self.padding = padding
        self.conv = ops.Conv2D(out_channel=out_channels, kernel_size=kernel_size, mode=1,
                               pad_mode="pad", pad=padding, group=group)
        self.input_grad = ops.Conv2DBackpropInput(out_channel=in_channels, kernel_size=kernel_size,
                                                  pad_mode="pad", pad=padding, group=group)

    def construct(self, x, w):
        return self.conv(x, w)

    def bprop(self, x, w, out, dout):
        dx = self.input_grad(dout, w, x.shape)
        top, bottom, left, right = self.padding
        xpad = ops.pad(x, (left, right, top, bottom))
        b, c_out, h, wd = dout.shape
        dout5 = dout.reshape(b, c_out, 1, h, wd)
        taps = []
        for j in range(self.taps):
            shifted = xpad[:, :, :, j:j + wd] if self.along_width else xpad[:, :, j:j + h, :]
            prod = shifted.reshape(b, c_out, self.per_group, h, wd) * dout5
            taps.append(prod.sum(axis=(0, 3, 4)))
        dw = ops.stack(taps, axis=-1).reshape(w.shape)
        return dx, dw
