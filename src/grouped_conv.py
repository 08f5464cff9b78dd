"""Grouped 1xK / Kx1 convolution whose weight gradient is fast on CPU.

MindSpore 2.10's CPU Conv2DBackpropFilter is ~100x slower than the forward
convolution for the depthwise-style layers of BiMLP (group = out channels),
which made a training step take seconds. The forward and the input gradient use
MindSpore's own kernels; the weight gradient is written as K products of shifted
slices, each reduced to one value per channel by BiasAddGrad (a general
ReduceSum over the batch and spatial axes is several times slower there).
"""
from mindspore import nn, ops
from mindspore.ops.operations._grad_ops import BiasAddGrad


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
        top, _, left, _ = padding
        self.before = left if self.along_width else top
        self.conv = ops.Conv2D(out_channel=out_channels, kernel_size=kernel_size, mode=1,
                               pad_mode="pad", pad=padding, group=group)
        self.input_grad = ops.Conv2DBackpropInput(out_channel=in_channels, kernel_size=kernel_size,
                                                  pad_mode="pad", pad=padding, group=group)
        self.channel_sum = BiasAddGrad()

    def construct(self, x, w):
        return self.conv(x, w)

    def bprop(self, x, w, out, dout):
        dx = self.input_grad(dout, w, x.shape)
        b, c_in, h, wd = x.shape
        if self.per_group > 1:
            # input channel g * per_group + i meets output channel g
            dout = ops.broadcast_to(dout.reshape(b, -1, 1, h, wd), (b, c_in // self.per_group, self.per_group, h, wd))
            dout = dout.reshape(b, c_in, h, wd)
        length = wd if self.along_width else h
        taps = []
        for j in range(self.taps):
            shift = j - self.before  # output position p reads input position p + shift
            lo, hi = max(0, -shift), min(length, length - shift)
            if hi <= lo:  # the tap only ever reads padding
                taps.append(ops.zeros((c_in,), x.dtype))
            else:
                taps.append(self.channel_sum(self._span(x, lo + shift, hi + shift) * self._span(dout, lo, hi)))
        dw = ops.stack(taps, axis=-1).reshape(w.shape)
        return dx, dw

    def _span(self, t, start, stop):
        return t[:, :, :, start:stop] if self.along_width else t[:, :, start:stop, :]
