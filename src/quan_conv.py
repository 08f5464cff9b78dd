"""Binary and low-bit convolutions with straight-through estimators.

`QuanConv` keeps the constructor of the upstream BiMLP `quan_conv.QuanConv` and the
exact forward of its "xnor" scheme, which the released checkpoints need. Unlike the
upstream code every quantizer has a straight-through estimator (STE), so the
layer trains: gradients reach both the latent float weights and the input.

Weight schemes (`quan_name_w`):
    xnor    sign(W) * mean(|W|) over input channels, per (out, kh, kw)   (BiMLP)
    bnn     sign(W)
    bireal  sign(W) * mean(|W|) per output channel
    dorefa  DoReFa-Net k-bit weights (1 bit: sign(W) * mean(|W|) over the layer)
    fp      W unchanged (the float twin)
Activation schemes (`quan_name_a`):
    xnor, dorefa  rint(clip(x, -1, 1) * (2^k - 1)) / (2^k - 1); at 1 bit {-1, 0, 1}
    bnn           sign(x), STE clipped to |x| <= 1
    bireal        sign(x), Bi-Real's piecewise-quadratic STE
    fp            x unchanged
"""
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeNormal, initializer
from mindspore.ops.operations import _grad_ops

from src import weight_cache
from src.grouped_conv import GroupedLineConv


class _InputSTE(nn.Cell):
    """Base for activation quantizers whose gradient is 1 where |x| <= 1."""

    def bprop(self, x, out, dout):
        return (dout * (ops.abs(x) <= 1.0).astype(dout.dtype),)


# Adding then subtracting 1.5 * 2^23 rounds a float32 of magnitude < 2^22 to an
# integer, ties to even: rint with two of MindSpore's fastest CPU kernels.
ROUNDING_MAGIC = 12582912.0


class RoundClip(_InputSTE):
    """rint(clip(x, -1, 1) * levels) / levels; rint rounds half to even."""

    def __init__(self, nbit=1, fast=True):
        super().__init__()
        self.levels = float(2 ** nbit - 1)
        self.fast = fast
        self.rint = ops.Rint()

    def construct(self, x):
        if self.levels == 1.0 and self.fast:
            # Same values as below in 4 fast kernels instead of 5 (Greater, Less, Cast are slow).
            clipped = ops.minimum(ops.maximum(x, -1.0), 1.0)
            return (clipped + ROUNDING_MAGIC) - ROUNDING_MAGIC
        if self.levels == 1.0:
            # Equals rint(clip(x, -1, 1)) bit for bit (ties at +-0.5 go to 0 both ways),
            # with fewer operators, and exports to ONNX, which has no Rint.
            return (x > 0.5).astype(x.dtype) - (x < -0.5).astype(x.dtype)
        return self.rint(ops.clip(x, -1.0, 1.0) * self.levels) / self.levels


class SignClip(_InputSTE):
    """sign(x) with the clipped identity gradient of BNN."""

    def construct(self, x):
        return ops.sign(x)


class BiRealSign(nn.Cell):
    """sign(x) with Bi-Real Net's gradient 2 - 2|x| on |x| < 1."""

    def construct(self, x):
        return ops.sign(x)

    def bprop(self, x, out, dout):
        return (dout * ops.relu(2.0 - 2.0 * ops.abs(x)),)


class Identity(nn.Cell):
    def construct(self, x):
        return x


class FloatWeight(nn.Cell):
    """The latent weight itself, as a computed tensor rather than the Parameter: a
    Parameter passed straight into a Cell with a custom bprop (the grouped convs)
    fails to compile its gradient in MindSpore 2.10. Multiplying by 1.0 is exact."""

    def construct(self, w):
        return w * 1.0


class _WeightSTE(nn.Cell):
    """Base for weight quantizers: the gradient passes straight to the latent W."""

    def bprop(self, w, out, dout):
        return (dout,)


class XnorWeight(_WeightSTE):
    """sign(W) * mean(|W|) over axis 1, the scale shaped (out, 1, kh, kw)."""

    def __init__(self, fast=True):
        super().__init__()
        self.fast = fast
        self.mean = ops.ReduceMean(keep_dims=True)
        # Set by BiMLP(fused_training=True): in training, sign and scale as one kernel (the same
        # values; a step quantizes ~50 weights, and their Sign, BroadcastTo and Mul were 3% of it).
        self.train_kernels = None

    def scale(self, w):
        """mean(|W|) over the input channels, shaped (out, 1, kh, kw)."""
        return self.mean(ops.abs(w), 1)

    def with_kernel(self, kernels, w):
        """The same values, signed and scaled by the SignScale kernel of `kernels` (training or inference)."""
        return kernels.sign_scale(w, self.scale(w))

    def construct(self, w):
        if self.train_kernels is not None and self.training:
            return self.with_kernel(self.train_kernels, w)
        scale = self.scale(w)
        if self.fast:
            # Same products; MindSpore's CPU Mul is slow and keeps memory when it broadcasts.
            return ops.sign(w) * ops.broadcast_to(scale, w.shape)
        return ops.sign(w) * scale


class BiRealWeight(_WeightSTE):
    def __init__(self):
        super().__init__()
        self.mean = ops.ReduceMean(keep_dims=True)

    def construct(self, w):
        return ops.sign(w) * self.mean(ops.abs(w), (1, 2, 3))


class SignWeight(_WeightSTE):
    def construct(self, w):
        return ops.sign(w)


class DorefaWeight(_WeightSTE):
    def __init__(self, nbit=1):
        super().__init__()
        self.levels = float(2 ** nbit - 1)
        self.rint = ops.Rint()
        self.max_abs = ops.ReduceMax()

    def construct(self, w):
        if self.levels == 1.0:
            return ops.sign(w) * ops.mean(ops.abs(w))
        t = ops.tanh(w)
        t = t / (2.0 * self.max_abs(ops.abs(t))) + 0.5
        return 2.0 * self.rint(t * self.levels) / self.levels - 1.0


def weight_quantizer(name, nbit, fast=True):
    if name == "xnor":
        return XnorWeight(fast)
    if name == "bireal":
        return BiRealWeight()
    if name == "bnn":
        return SignWeight()
    if name == "dorefa":
        return DorefaWeight(nbit)
    if name == "fp":
        return FloatWeight()
    raise ValueError(f"unknown weight quantizer {name!r}; choose from {sorted(WEIGHT_SCHEMES)}")


def activation_quantizer(name, nbit, fast=True):
    if name in ("xnor", "dorefa"):
        return RoundClip(nbit, fast)
    if name == "bnn":
        return SignClip()
    if name == "bireal":
        return BiRealSign()
    if name == "fp":
        return Identity()
    raise ValueError(f"unknown activation quantizer {name!r}; choose from {sorted(ACTIVATION_SCHEMES)}")


WEIGHT_SCHEMES = ("xnor", "bireal", "bnn", "dorefa", "fp")
ACTIVATION_SCHEMES = ("xnor", "dorefa", "bnn", "bireal", "fp")


class PointwiseConv(nn.Cell):
    """conv2d(x, w) for a 1x1 kernel, stride 1 and one group: in training with the training kernels,
    the matrix products of src/pointwise_gemm.h (forward, input and weight gradient); otherwise
    MindSpore's Conv2D and its gradients."""

    def __init__(self, out_channels):
        super().__init__()
        # Attributes as tuples, as the ONNX exporter needs them.
        self.conv = ops.Conv2D(out_channel=out_channels, kernel_size=(1, 1), mode=1, pad_mode="pad", pad=(0, 0, 0, 0))
        self.input_grad = ops.Conv2DBackpropInput(out_channel=out_channels, kernel_size=(1, 1), pad_mode="pad",
                                                  pad=(0, 0, 0, 0))
        self.filter_grad = _grad_ops.Conv2DBackpropFilter(out_channel=out_channels, kernel_size=(1, 1), pad_mode="pad",
                                                          pad=(0, 0, 0, 0))
        # Set by the network: src/fused.TrainKernels, used in training.
        self.train_kernels = None

    def construct(self, x, w):
        if self.training and self.train_kernels is not None:
            return self.train_kernels.pointwise_conv(x, w)
        return self.conv(x, w)

    def bprop(self, x, w, out, dout):
        if self.training and self.train_kernels is not None:
            return (self.train_kernels.pointwise_conv_input_grad(dout, w),
                    self.train_kernels.pointwise_conv_filter_grad(dout, x))
        return self.input_grad(dout, w, x.shape), self.filter_grad(dout, x, w.shape)


class QuanConv(nn.Cell):
    """Conv2d (no bias) on quantized weights and quantized activations.

    padding is (top, bottom, left, right), as in the upstream layer. `fast` picks
    quantizer formulations with the same values but faster MindSpore CPU kernels.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=(0, 0, 0, 0),
                 group=1, quan_name_w="xnor", quan_name_a="xnor", nbit_w=1, nbit_a=1, fast=True):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if isinstance(padding, int):
            padding = (padding,) * 4
        if in_channels % group or out_channels % group:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by group {group}")
        self.in_channels, self.out_channels, self.group = in_channels, out_channels, group
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, tuple(padding)
        self.quan_name_w, self.quan_name_a = quan_name_w, quan_name_a
        self.nbit_w, self.nbit_a = nbit_w, nbit_a
        self.weight = Parameter(initializer(HeNormal(), (out_channels, in_channels // group, kh, kw)),
                                name="weight")
        self.quantize_weight = weight_quantizer(quan_name_w, nbit_w, fast)
        self.quantize_input = activation_quantizer(quan_name_a, nbit_a, fast)
        if group > 1 and group == out_channels and stride == 1 and 1 in (kh, kw):
            self.conv = GroupedLineConv(in_channels, out_channels, (kh, kw), self.padding, group)
        elif (kh, kw) == (1, 1) and stride == 1 and group == 1 and not any(self.padding):
            self.conv = PointwiseConv(out_channels)
        else:
            self.conv = ops.Conv2D(out_channel=out_channels, kernel_size=(kh, kw), mode=1,
                                   pad_mode="pad", pad=self.padding, stride=stride, group=group)
        self.is_binary_weight = quan_name_w != "fp" and nbit_w == 1
        self.xnor_weight = quan_name_w == "xnor" and nbit_w == 1
        # The fused kernels' 1-bit quantizer: rint(clip(x, -1, 1)) with the |x| <= 1 STE.
        self.binary_input = quan_name_a in ("xnor", "dorefa") and nbit_a == 1
        self.float_input = quan_name_a == "fp"
        # Set by src/weight_cache.py when the network caches this layer's binarized weights: wb
        # (exact engine) or, for the xnor engine, its packed sign bits.
        self.binarized_weight = self.xnor_bits = None

    def construct(self, x):
        return self.convolve(self.quantize_input(x))

    def convolve(self, xq):
        """The convolution of an input already quantized, with the quantized weights."""
        return self.conv(xq, self.quantize_weight(self.weight))

    def fused_weight(self, kernels):
        """The quantized weights, computed with the fused kernels of src/fused.py."""
        if not self.xnor_weight:
            return self.quantize_weight(self.weight)
        if self.in_channels == self.group:
            # One input channel per group: mean(|W|) over it is |W|, so sign(W) * |W| == W.
            return self.weight
        if self.binarized_weight is not None:
            return weight_cache.cached_weight(self, kernels)
        return self.quantize_weight.with_kernel(kernels, self.weight)

    def conv_quantized(self, xq, kernels):
        """The convolution of an input already quantized by a fused kernel."""
        if self.xnor_bits is not None:
            return weight_cache.xnor_conv(self, xq, self.xnor_no_bias, kernels)
        return self.conv(xq, self.fused_weight(kernels))

    def conv_binarized(self, x, bias, kernels):
        """The convolution of rint(clip(x + bias, -1, 1)): one xnor kernel on packed bits, or the
        fused binarization then the convolution."""
        if self.xnor_bits is not None:
            return weight_cache.xnor_conv(self, x, bias, kernels)
        return self.conv_quantized(kernels.move_binarize(x, bias), kernels)

    def quantized_weight(self):
        """The weights the convolution actually uses, as a numpy array."""
        return self.quantize_weight(Tensor(self.weight.asnumpy())).asnumpy()

    def extend_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, group={self.group}, "
                f"w={self.quan_name_w}/{self.nbit_w}, a={self.quan_name_a}/{self.nbit_a}")

