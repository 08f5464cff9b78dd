"""BiMLP: binary Wave-MLP (NeurIPS 2022), checkpoint-compatible with the released weights.

The network is specified in `shared/spec/bimlp.md`; names, shapes and the order
of every floating-point operation follow it, because a binary network amplifies
any last-bit difference. Attribute definition order follows the released
checkpoints, so a saved checkpoint lists parameters in the same order.

Variants are registered in `MODELS`; `create_model(name, **kwargs)` builds one.
"""
from functools import partial

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import TruncatedNormal, initializer
from mindspore.ops.operations._grad_ops import BiasAddGrad, ReluGrad

from src import fused as fused_kernels
from src.fused import (binary_fc, channel_scale, mix3, norm_act, norm_act_fc, norm_act_of_shortcut,
                       norm_act_plus_shortcut, phase_branch, pool4, residual_fc, sum4, wave_mix)
from src import weight_cache
from src.dataset import DEFAULT_IMAGE_SIZE
from src.drop_path import DropPath
from src.quan_conv import QuanConv

ACCURATE_POOL = ops.AdaptiveAvgPool2D(1)


class LearnableBias(nn.Cell):
    """x + bias; `fast` uses BiasAdd (same sums, no broadcasting Add, see channel_scale)."""

    def __init__(self, channels, fast=True):
        super().__init__()
        self.fast = fast
        self.bias = Parameter(initializer("zeros", (1, channels, 1, 1)), name="bias")

    def construct(self, x):
        if self.fast:
            return ops.bias_add(x, self.bias.reshape(-1))
        return x + self.bias


class PReLUSlope(nn.Cell):
    """max(x, 0) + w * min(x, 0) with a per-channel slope `w`."""

    def __init__(self, channels, fast=True):
        super().__init__()
        self.fast = fast
        self.w = Parameter(Tensor(np.full((1, channels, 1, 1), 0.25, np.float32)), name="w")
        self.kernel = FastPReLU()

    def construct(self, x):
        if self.fast:
            # w * 1.0: a Parameter passed straight into a custom-bprop Cell breaks its gradient.
            return self.kernel(x, self.w * 1.0)
        return ops.maximum(x, 0.0) + self.w * ops.minimum(x, 0.0)


class FastPReLU(nn.Cell):
    """PReLUSlope's values with a gradient written out for MindSpore's CPU kernels.

    Differentiating Maximum and Minimum costs four Selects and two full reductions
    for the scalar 0 per activation (the Selects alone: 8% of a BiMLP_T train step's
    operator time); here it is a ReluGrad and one per-channel BiasAddGrad for the slope.
    """

    def __init__(self):
        super().__init__()
        self.relu_grad = ReluGrad()
        self.channel_sum = BiasAddGrad()

    def construct(self, x, w):
        return ops.maximum(x, 0.0) + channel_scale(ops.minimum(x, 0.0), w)

    def bprop(self, x, w, out, dout):
        negative_part = channel_scale(dout, w)
        dx = self.relu_grad(dout - negative_part, ops.relu(x)) + negative_part
        dw = self.channel_sum(dout * ops.minimum(x, 0.0)).reshape(w.shape)
        return dx, dw


class RPReLU(nn.Cell):
    """ReActNet's RPReLU: shift, PReLU, shift."""

    def __init__(self, channels, fast=True):
        super().__init__()
        self.move1 = LearnableBias(channels, fast)
        self.move2 = LearnableBias(channels, fast)
        self.act = PReLUSlope(channels, fast)

    def construct(self, x):
        return self.move2(self.act(self.move1(x)))


def batch_norm(channels):
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.9)


def group_norm(channels):
    return nn.GroupNorm(1, channels, eps=1e-5)


class UniShortcut(nn.Cell):
    """The uni-shortcut: tile x to more channels, or average groups of channels.

    Averaging sums the strided slices x[:, i::k] one after another, as the released
    model does. `fast` gathers them by index: the same values, and on MindSpore 2.10's
    CPU ~10x faster than slicing the reshaped tensor (strided_channel_mean).
    """

    def __init__(self, channels_in, channels_out, fast=True):
        super().__init__()
        if channels_out % channels_in and channels_in % channels_out:
            raise ValueError(f"a uni-shortcut tiles or averages whole channel groups: {channels_in} -> "
                             f"{channels_out} channels is neither")
        self.fast = fast
        self.repeats = channels_out // channels_in
        self.k = channels_in // channels_out
        self.index = tuple(Tensor(np.arange(i, channels_in, max(self.k, 1), dtype=np.int32))
                           for i in range(self.k))

    def construct(self, x):
        if self.repeats:
            return ops.tile(x, (1, self.repeats, 1, 1))
        if not self.fast:
            return strided_channel_mean(x, self.k)
        total = ops.gather(x, self.index[0], 1)
        for i in range(1, self.k):
            total = total + ops.gather(x, self.index[i], 1)
        return total / float(self.k)


def strided_channel_mean(x, k):
    """(x[:, 0::k] + x[:, 1::k] + ...) / k, summed left to right.

    Channel i::k is entry i of groups of k consecutive channels; slicing the
    reshaped tensor gives the same values while avoiding MindSpore 2.10's CPU
    StridedSliceGrad, which fails ("input memory out of bounds") in training.
    """
    b, c, h, w = x.shape
    groups = x.reshape(b, c // k, k, h, w)
    total = groups[:, :, 0]
    for i in range(1, k):
        total = total + groups[:, :, i]
    return total / float(k)


def conv1x1(cin, cout, quant):
    return QuanConv(cin, cout, 1, **quant)


class Mlp(nn.Cell):
    """Channel Bi-MLP: two binary 1x1 FCs, each with a uni-shortcut."""

    def __init__(self, in_features, hidden_features, out_features, quant):
        super().__init__()
        fast = quant["fast"]
        self.move1 = LearnableBias(in_features, fast)
        self.fc1 = conv1x1(in_features, hidden_features, quant)
        self.act1 = RPReLU(hidden_features, fast)
        self.act2 = RPReLU(hidden_features, fast)
        self.act3 = RPReLU(out_features, fast)
        self.move2 = LearnableBias(hidden_features, fast)
        self.fc2 = conv1x1(hidden_features, out_features, quant)
        self.norm1 = batch_norm(hidden_features)
        self.norm2 = batch_norm(out_features)
        self.norm0 = batch_norm(hidden_features)
        self.shortcut1 = UniShortcut(in_features, hidden_features, fast)
        self.shortcut2 = UniShortcut(hidden_features, out_features, fast)
        self.kernels = self.train_kernels = None
        self.fusable = bool(self.shortcut1.repeats) and self.shortcut2.k > 1

    def construct(self, x):
        if self.kernels is not None and not self.training:
            return self.construct_fused(x)
        k = self.train_kernels if self.training else None
        s1 = norm_act_of_shortcut(k, self.norm0, self.act1, self.shortcut1, x)
        h, a = norm_act_fc(k, self.norm1, self.act2, self.move2, self.fc2, binary_fc(k, self.move1, self.fc1, x), s1)
        return norm_act_plus_shortcut(k, self.norm2, self.act3, self.shortcut2, a, h)

    def construct_fused(self, x):
        """The forward above in three inference kernels around the two FCs (they also read x's copies
        for the tiling shortcut in place and average the groups of the other one)."""
        k = self.kernels
        a = self.fc1.conv_binarized(x, self.move1.bias, k)
        h, h_q = k.bn_act_tiled_binarize(a, x, *fused_kernels.bn_act_params(self.norm0, self.act1),
                                         *fused_kernels.bn_act_params(self.norm1, self.act2), self.move2.bias)
        return k.bn_act_group_mean(self.fc2.conv_quantized(h_q, k), h,
                                   *fused_kernels.bn_act_params(self.norm2, self.act3))


class PATM(nn.Cell):
    """Spatial Bi-MLP: Wave-MLP's phase-aware token mixing, binarized."""

    def __init__(self, dim, quant):
        super().__init__()
        fast = self.fast = quant["fast"]
        self.dim = dim
        self.fc_h = conv1x1(dim, dim, quant)
        self.fc_w = conv1x1(dim, dim, quant)
        self.fc_c = conv1x1(dim, dim, quant)
        self.move_fch = LearnableBias(dim, fast)
        self.move_fcw = LearnableBias(dim, fast)
        self.move_fcc = LearnableBias(dim, fast)
        self.fc_h_bn = batch_norm(dim)
        self.fc_w_bn = batch_norm(dim)
        self.fc_h_act = RPReLU(dim, fast)
        self.fc_w_act = RPReLU(dim, fast)
        self.tfc_h = QuanConv(2 * dim, dim, (1, 7), padding=(0, 0, 3, 3), group=dim, **quant)
        self.tfc_w = QuanConv(2 * dim, dim, (7, 1), padding=(3, 3, 0, 0), group=dim, **quant)
        self.move_tfch = LearnableBias(2 * dim, fast)
        self.move_tfcw = LearnableBias(2 * dim, fast)
        self.reweight = Mlp(dim, dim // 4, dim * 3, quant)
        self.proj = conv1x1(dim, dim, quant)
        self.move_proj = LearnableBias(dim, fast)
        self.move_thetah = LearnableBias(dim, fast)
        self.theta_h_conv = conv1x1(dim, dim, quant)
        self.theta_h_bn = batch_norm(dim)
        self.theta_h_act = RPReLU(dim, fast)
        self.move_thetaw = LearnableBias(dim, fast)
        self.theta_w_conv = conv1x1(dim, dim, quant)
        self.theta_w_bn = batch_norm(dim)
        self.theta_w_act = RPReLU(dim, fast)
        self.act_c = RPReLU(dim, fast)
        self.act_h = RPReLU(dim, fast)
        self.act_w = RPReLU(dim, fast)
        self.act_proj = RPReLU(dim, fast)
        self.norm_c = batch_norm(dim)
        self.norm_h = batch_norm(dim)
        self.norm_w = batch_norm(dim)
        self.norm_proj = batch_norm(dim)
        self.pair_mean = UniShortcut(2 * dim, dim, fast)
        self.kernels = self.train_kernels = None
        self.fusable = True

    def construct(self, u):
        k = self.train_kernels if self.training else self.kernels
        theta_h = residual_fc(k, self.move_thetah, self.theta_h_conv, self.theta_h_bn, self.theta_h_act, u)
        theta_w = residual_fc(k, self.move_thetaw, self.theta_w_conv, self.theta_w_bn, self.theta_w_act, u)
        xh = residual_fc(k, self.move_fch, self.fc_h, self.fc_h_bn, self.fc_h_act, u)
        xw = residual_fc(k, self.move_fcw, self.fc_w, self.fc_w_bn, self.fc_w_act, u)
        h = phase_branch(k, self.move_tfch, self.tfc_h, self.pair_mean, self.norm_h, self.act_h, xh, theta_h)
        w = phase_branch(k, self.move_tfcw, self.tfc_w, self.pair_mean, self.norm_w, self.act_w, xw, theta_w)
        c = residual_fc(k, self.move_fcc, self.fc_c, self.norm_c, self.act_c, u)
        a = self.reweight(ACCURATE_POOL(sum4(k, h, w, c, u)))
        a = a.reshape(u.shape[0], self.dim, 3).transpose(2, 0, 1)
        x = mix3(k, self.fast, h, w, c, u, ops.softmax(a, axis=0))
        return residual_fc(k, self.move_proj, self.proj, self.norm_proj, self.act_proj, x)


class WaveBlock(nn.Cell):
    """The MLP building block (MBB): token mixing, then channel MLP + two binary depthwise branches."""

    def __init__(self, dim, mlp_ratio, norm_layer, drop_path, quant):
        super().__init__()
        fast = quant["fast"]
        self.weight = Parameter(initializer("zeros", (2,)), name="weight")
        self.norm1 = norm_layer(dim)
        self.attn = PATM(dim, quant)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, quant)
        self.move_h = LearnableBias(dim, fast)
        self.move_w = LearnableBias(dim, fast)
        self.sfc_h = QuanConv(dim, dim, (1, 7), padding=(0, 0, 3, 3), group=dim, **quant)
        self.sfc_w = QuanConv(dim, dim, (7, 1), padding=(3, 3, 0, 0), group=dim, **quant)
        self.act1 = RPReLU(dim, fast)
        self.act2 = RPReLU(dim, fast)
        self.norm_h = batch_norm(dim)
        self.norm_w = batch_norm(dim)
        self.drop_path = DropPath(drop_path)
        self.kernels = self.train_kernels = None
        self.fusable = True
        self.group_norm = isinstance(self.norm1, nn.GroupNorm)  # GroupNorm(1, C) of NORM_LAYERS

    def construct(self, x):
        k = self.train_kernels if self.training else self.kernels
        x = x + self.drop_path(self.attn(self.token_norm(k, self.norm1, x)))
        m = self.token_norm(k, self.norm2, x)
        a = self.mlp(m)
        b = residual_fc(k, self.move_h, self.sfc_h, self.norm_h, self.act1, m)
        c = residual_fc(k, self.move_w, self.sfc_w, self.norm_w, self.act2, m)
        return wave_mix(k, x, a, b, c, self.weight, self.drop_path)

    def token_norm(self, kernels, norm, x):
        return fused_kernels.group_norm(kernels, norm, x) if self.group_norm else norm(x)


class PatchEmbed(nn.Cell):
    """Float stem: conv, norm, RPReLU."""

    def __init__(self, in_chans, dim, kernel_size, stride, padding, norm_layer, fast=True):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size, stride=stride, pad_mode="pad",
                              padding=padding, has_bias=True)
        self.norm = norm_layer(dim)
        self.act = RPReLU(dim, fast)
        self.kernels = self.train_kernels = None
        self.fusable = True
        self.batch_norm = isinstance(self.norm, nn.BatchNorm2d)

    def construct(self, x):
        k = self.train_kernels if self.training else self.kernels
        return stem_norm_act(k, self.batch_norm, self.norm, self.act, self.proj(x))


def stem_norm_act(kernels, batch_norm, norm, act, x):
    """act(norm(x)) of the float layers (stem, downsampling), for batch norm or GroupNorm(1, C)."""
    if batch_norm:
        return norm_act(kernels, norm, act, x)
    return act(fused_kernels.group_norm(kernels, norm, x))


class Downsample(nn.Cell):
    """Float 1x1 conv, norm, RPReLU, then the mean of four stride-2 max-pools."""

    def __init__(self, cin, cout, norm_layer, fast=True):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1, has_bias=True)
        self.norm = norm_layer(cout)
        self.act = RPReLU(cout, fast)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2, pad_mode="same")
        self.pool3 = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="same")
        self.pool5 = nn.MaxPool2d(kernel_size=5, stride=2, pad_mode="same")
        self.pool7 = nn.MaxPool2d(kernel_size=7, stride=2, pad_mode="same")
        self.kernels = self.train_kernels = None
        self.fusable = True
        self.batch_norm = isinstance(self.norm, nn.BatchNorm2d)

    def construct(self, x):
        k = self.train_kernels if self.training else self.kernels
        x = stem_norm_act(k, self.batch_norm, self.norm, self.act, self.proj(x))
        return pool4(k, (self.pool2, self.pool3, self.pool5, self.pool7), x)


class BiMLP(nn.Cell):
    """BiMLP network.

    Args:
        layers: blocks per stage.
        embed_dims: channels per stage.
        mlp_ratios: hidden/in ratio of each stage's channel MLP.
        norm: "bn" (BatchNorm2d) or "gn" (GroupNorm(1, C)) for the block and stem norms.
        binary: False builds the float twin (same parameters, quantizers off).
        binary_weights: False keeps the weights float while the activations are binary: the first
            stage of two-stage training (ReActNet); the same parameters.
        stem: (kernel, stride, padding) of the float patch-embedding conv.
        fast: compute with MindSpore CPU kernels that are faster and leaner but give
            bit-identical results; False restores the straightforward operators.
        fused: in eval mode (set_train(False)), run the forward as the fused CPU kernels
            of src/fused_cpu.cc: the same logits, several times faster. None (default): on
            whenever binary, fast, on CPU and a C++ compiler is available; False: off.
        fused_training: in training, run the element-wise chains, the line convolutions and
            the downsampling pools as the fused kernels of src/fused_train.cc, forward and
            backward (binary or float twin). Off by default; train.py turns it on on CPU.
        engine: "exact" (logits bit-identical to the released network) or "xnor": the fused
            path (whatever `fused` says) with its binary 1x1 convolutions on packed bits in
            integer arithmetic, faster, logits equal up to float rounding (src/xnor_cpu.cc).
    """

    def __init__(self, layers, embed_dims=(64, 128, 320, 512), mlp_ratios=(4, 4, 4, 4), norm="bn",
                 num_classes=1000, drop_path_rate=0.0, binary=True, binary_weights=True, in_chans=3, stem=(7, 4, 2),
                 fast=True, fused=None, fused_training=False, engine="exact"):
        super().__init__()
        if norm not in NORM_LAYERS:
            raise ValueError(f"norm must be one of {sorted(NORM_LAYERS)}, got {norm!r}")
        norm_layer = NORM_LAYERS[norm]
        scheme = "xnor" if binary else "fp"
        quant = dict(quan_name_w=scheme if binary_weights else "fp", quan_name_a=scheme, nbit_w=1, nbit_a=1, fast=fast)
        self.num_classes, self.binary, self.binary_weights = num_classes, binary, binary_weights
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], *stem, norm_layer, fast)
        rates = np.linspace(0.0, drop_path_rate, sum(layers)).tolist()
        network = []
        for i, (depth, dim) in enumerate(zip(layers, embed_dims)):
            start = sum(layers[:i])
            network.append(nn.SequentialCell([
                WaveBlock(dim, mlp_ratios[i], norm_layer, rates[start + j], quant) for j in range(depth)
            ]))
            if i + 1 < len(layers):
                network.append(Downsample(dim, embed_dims[i + 1], norm_layer, fast))
        self.network = nn.CellList(network)
        self.norm = norm_layer(embed_dims[-1])
        self.head = nn.Dense(embed_dims[-1], num_classes,
                             weight_init=TruncatedNormal(0.02), bias_init="zeros")
        fused = weight_cache.check_engine(engine, fused, binary and binary_weights, fast)
        if fused is None:
            fused = binary and binary_weights and fast and fused_kernels.available()
        if fused and not (binary and binary_weights):
            raise ValueError("the fused inference kernels binarize activations and weights: use fused=False for the "
                             "float twin and for float weights")
        if (fused or fused_training) and not fused_kernels.available():
            raise ValueError("the fused kernels need MindSpore on CPU and src/fused_*.cc built: a C++ compiler "
                             "and a writable cache directory (see the warning above)")
        self.fused, self.fused_training, self.engine = bool(fused), bool(fused_training), engine
        cells = [cell for _, cell in self.cells_and_names()]
        if self.fused:
            kernels = fused_kernels.Kernels()
            for cell in [cell for cell in cells if getattr(cell, "fusable", False)]:
                cell.kernels = kernels
            self.binarized_weights = weight_cache.cache_for(self, kernels, engine)
        if self.fused_training:
            train_kernels = fused_kernels.TrainKernels()
            for cell in [cell for cell in cells if hasattr(cell, "train_kernels")]:
                cell.train_kernels = train_kernels

    def __call__(self, *args, **kwargs):
        if self.fused and not self.training and self.binarized_weights is not None:
            self.binarized_weights.refresh()
        return super().__call__(*args, **kwargs)

    def forward_features(self, x):
        x = self.patch_embed(x)
        for stage in self.network:
            x = stage(x)
        return ACCURATE_POOL(self.norm(x)).reshape(x.shape[0], -1)

    def construct(self, x):
        return self.head(self.forward_features(x))


NORM_LAYERS = {"bn": batch_norm, "gn": group_norm}

MODELS = {
    "BiMLP_S": partial(BiMLP, layers=(2, 2, 4, 2), norm="bn"),
    "BiMLP_M": partial(BiMLP, layers=(2, 3, 10, 3), norm="gn"),
    # Sized for 28x28 grayscale images (Fashion-MNIST) and a 2-core CPU: a 4x4 patchify
    # stem gives 7x7 tokens (as MLP-Mixers use on MNIST-sized data), one block per stage.
    "BiMLP_T": partial(BiMLP, layers=(1, 1, 1, 1), embed_dims=(32, 64, 128, 256), norm="bn",
                       num_classes=10, in_chans=1, stem=(4, 4, 0)),
    # BiMLP_T with a 3x3 stride-2 stem: 14x14 tokens. ~3x BiMLP_T's training time per image,
    # and more accurate for the same training time (README, Fashion-MNIST).
    "BiMLP_T14": partial(BiMLP, layers=(1, 1, 1, 1), embed_dims=(32, 64, 128, 256), norm="bn",
                         num_classes=10, in_chans=1, stem=(3, 2, 1)),
}
# The data each variant is made for: the scripts' default dataset, image size and channels.
DATASET_OF_MODEL = {"BiMLP_S": "imagenet", "BiMLP_M": "imagenet", "BiMLP_T": "fashion_mnist",
                    "BiMLP_T14": "fashion_mnist"}


def models_for(dataset):
    """The registered variants made for `dataset`, in registry order."""
    return [name for name, data in DATASET_OF_MODEL.items() if data == dataset]


def default_image_size(name):
    """The input side of the data variant `name` is made for: 224 on ImageNet, 28 on Fashion-MNIST."""
    return DEFAULT_IMAGE_SIZE[DATASET_OF_MODEL[name]]


def create_model(name, **kwargs):
    """Build a registered variant; kwargs (num_classes, drop_path_rate, binary, ...) override."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


def BiMLP_S(num_classes=1000, drop_path_rate=0.0, **kwargs):
    return create_model("BiMLP_S", num_classes=num_classes, drop_path_rate=drop_path_rate, **kwargs)


def BiMLP_M(num_classes=1000, drop_path_rate=0.0, **kwargs):
    return create_model("BiMLP_M", num_classes=num_classes, drop_path_rate=drop_path_rate, **kwargs)
