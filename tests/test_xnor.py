"""The xnor engine: binary 1x1 convolutions on packed bits (src/xnor_cpu.cc) in exact integer arithmetic."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops

from src import fused
from src.weight_cache import pack_signs
from src.wavemlp_20_3 import create_model
from test_fused import data, randomize

pytestmark = pytest.mark.skipif(fused.library_path() is None, reason="no C++ compiler for the fused kernels")


@pytest.mark.parametrize("channels,outputs,size", [(64, 256, (5, 7)), (130, 9, (3, 3)), (2048, 16, (2, 1)),
                                                   (7, 5, (1, 1))])
@pytest.mark.parametrize("zeros", [False, True])
def test_xnor_kernel_is_the_float_convolution_where_float_sums_are_exact(channels, outputs, size, zeros):
    """Scales that are powers of two make every partial sum of the float convolution an exact
    multiple of the scale: both must then give the same numbers, for every channel count (whole
    and partial 64-bit words), every number of positions (vector and tail), and weights with an
    exact 0 (sign(0) = 0: the kernel's ternary path)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    rng = np.random.RandomState(channels + outputs)
    x, bias = data((3, channels, *size), 1), data((channels,), 2, 0.5)
    x[0, 0, 0, 0], bias[0] = 0.5, 0.0  # a tie: rint(0.5) = 0
    signs = np.where(rng.rand(outputs, channels) < 0.5, -1.0, 1.0).astype(np.float32)
    if zeros:
        signs[rng.rand(outputs, channels) < 0.1] = 0.0
    scale = (2.0 ** rng.randint(-6, 2, outputs)).astype(np.float32)
    k = fused.Kernels()
    got = k.xnor_conv1x1(x, bias, Tensor(pack_signs(signs)), Tensor(scale)).asnumpy()
    quantized = k.move_binarize(x, bias)
    conv = ops.Conv2D(out_channel=outputs, kernel_size=1)
    expected = conv(quantized, Tensor((signs * scale[:, None])[:, :, None, None])).asnumpy()
    np.testing.assert_array_equal(got, expected)


def test_xnor_engine_runs_the_binary_layers_on_packed_bits():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    exact, xnor = (create_model("BiMLP_T", engine=engine, fused=None) for engine in ("exact", "xnor"))
    randomize(exact, 1)
    ms.load_param_into_net(xnor, {p.name: ms.Parameter(p.asnumpy(), name=p.name) for p in exact.get_parameters()},
                           strict_load=True)
    cache = xnor.binarized_weights
    assert sum(cache.packed) == 32  # the 1x1 layers; the grouped 1x7/7x1 ones stay float
    x = data((2, 1, 28, 28), 3)
    for net in (exact, xnor):
        net.set_train(False)
    ours, theirs = xnor(x).asnumpy(), exact(x).asnumpy()
    assert np.abs(ours - theirs).max() < 1e-2 * np.abs(theirs).max()
    assert not np.array_equal(ours, theirs)  # integer sums: not oneDNN's float rounding
    sizes = cache.resident_bytes()
    packed_weights = sum(layer.weight.nbytes for layer, packed in zip(cache.layers, cache.packed) if packed)
    assert sizes["packed"] < packed_weights / 10
    layer = next(layer for layer, packed in zip(cache.layers, cache.packed) if packed)
    assert layer.binarized_weight is None  # no float copy of a packed layer's weights
    layer.xnor_bits.set_data(Tensor(np.zeros_like(layer.xnor_bits.asnumpy())))  # on the path
    assert not np.array_equal(xnor(x).asnumpy(), ours)


def test_engine_choices():
    with pytest.raises(ValueError, match="engine must be one of exact, xnor"):
        create_model("BiMLP_T", engine="bnn")
    with pytest.raises(ValueError, match="binary=True"):
        create_model("BiMLP_T", engine="xnor", binary=False)
    net = create_model("BiMLP_T", engine="xnor")
    assert net.fused and net.engine == "xnor"


def test_portable_build_computes_the_same(tmp_path):
    """The library is built for this CPU (AVX2 here); the portable C++ path, built without any
    -march, must give the same integers on the same packed input."""
    import ctypes
    import shutil
    import subprocess

    compiler = shutil.which("g++") or shutil.which("c++")
    portable = tmp_path / "portable.so"
    flags = [flag for flag in fused.FLAGS if not flag.startswith("-march")]
    subprocess.run([compiler, *flags, "-o", str(portable), *fused.SOURCES], check=True)

    def xnor_conv(library, x, bias, bits, scale):
        y = np.zeros((x.shape[0], bits.shape[0], *x.shape[2:]), np.float32)
        arrays = [x, bias, bits, scale, y]
        shapes = [np.array(a.shape, np.int64) for a in arrays]
        params = (ctypes.c_void_p * 5)(*[a.ctypes.data for a in arrays])
        shape_pointers = (ctypes.POINTER(ctypes.c_int64) * 5)(
            *[s.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)) for s in shapes])
        assert ctypes.CDLL(library).XnorConv1x1(5, params, None, shape_pointers, None, None, None) == 0
        return y

    rng = np.random.RandomState(0)
    x = rng.standard_normal((2, 130, 7, 9)).astype(np.float32)
    bias = (rng.standard_normal(130) * 0.5).astype(np.float32)
    signs = np.where(rng.rand(24, 130) < 0.5, -1.0, 1.0).astype(np.float32)
    signs[3, :5] = 0.0
    bits, scale = pack_signs(signs), rng.uniform(0.1, 1.0, 24).astype(np.float32)
    native = xnor_conv(fused.library_path(), x, bias, bits, scale)
    np.testing.assert_array_equal(xnor_conv(str(portable), x, bias, bits, scale), native)
    assert np.abs(native).max() > 0
