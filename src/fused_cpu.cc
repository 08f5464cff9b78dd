// Fused element-wise kernels for BiMLP inference on CPU (MindSpore "aot" custom operators).
//
// Each kernel does in one pass over memory what the network otherwise does in 5-10
// MindSpore CPU operators, with the same float32 operations in the same order, so the
// results are bit-identical. Build without -ffast-math and with -ffp-contract=off: a
// fused multiply-add would round differently.
//
// Tensors are NCHW float32. Per-channel parameters are float32 arrays of C values.
// Batch norm is the eval-mode form (x - mean) * (gamma / sqrt(var + eps)) + beta, which
// is what MindSpore's CPU BatchNorm computes (checked bit for bit by the tests).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cpu_threads.h"
#include "fused_common.h"

namespace {

using bimlp::parallel_for;

const float kRoundingMagic = 12582912.0f;  // 1.5 * 2^23: (x + M) - M is rint(x), ties to even
const float kEps = 1e-5f;

inline float prelu(float x, float w) { return std::max(x, 0.0f) + std::min(x, 0.0f) * w; }
inline float rprelu(float x, float b1, float w, float b2) { return prelu(x + b1, w) + b2; }
inline float binarize(float x) { return (std::min(std::max(x, -1.0f), 1.0f) + kRoundingMagic) - kRoundingMagic; }

struct Dims {
  int64_t n, c, hw;
};

Dims dims_of(const int64_t *shape) { return {shape[0], shape[1], shape[2] * shape[3]}; }

// Eval-mode batch norm followed by RPReLU, on one channel's parameters.
struct BnActParams {
  const float *gamma, *beta, *mean, *var, *b1, *w, *b2;
  struct Channel {
    float mean, scale, beta, b1, w, b2;
    float operator()(float x, float shortcut) const { return rprelu((x - mean) * scale + beta + shortcut, b1, w, b2); }
    float operator()(float x) const { return rprelu((x - mean) * scale + beta, b1, w, b2); }
  };
  Channel at(int64_t c) const {
    return {mean[c], gamma[c] / std::sqrt(var[c] + kEps), beta[c], b1[c], w[c], b2[c]};
  }
};

BnActParams bn_act_from(void **params, int first) {
  auto p = [&](int i) { return static_cast<const float *>(params[first + i]); };
  return {p(0), p(1), p(2), p(3), p(4), p(5), p(6)};
}

// Runs body(n, c, offset) for every (sample, channel) plane, planes split across threads.
template <typename Body>
void for_each_plane(const Dims &d, Body body) {
  parallel_for(d.n * d.c, d.hw, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) body(p / d.c, p % d.c, p * d.hw);
  });
}

// Adds to out (h x w) the 1xK (horizontal) or Kx1 convolution of one input plane with
// `taps` weights, zero padding (taps - 1) / 2. Called input channel by input channel on
// an output that starts at 0, each output sums its products in the order of oneDNN's
// kernel for these layers (input channels, then taps in order; checked by the tests).
void line_conv_plane(const float *in, const float *weight, int64_t taps, bool horizontal, int64_t h, int64_t w,
                     float *out) {
  const int64_t half = (taps - 1) / 2;
  for (int64_t t = 0; t < taps; ++t) {
    const float wt = weight[t];
    const int64_t shift = t - half;
    if (horizontal) {
      const int64_t from = std::max<int64_t>(0, -shift), to = std::min<int64_t>(w, w - shift);
      for (int64_t r = 0; r < h; ++r)
        for (int64_t col = from; col < to; ++col) out[r * w + col] = out[r * w + col] + in[r * w + col + shift] * wt;
    } else {
      const int64_t from = std::max<int64_t>(0, -shift), to = std::min<int64_t>(h, h - shift);
      for (int64_t r = from; r < to; ++r)
        for (int64_t col = 0; col < w; ++col) out[r * w + col] = out[r * w + col] + in[(r + shift) * w + col] * wt;
    }
  }
}

}  // namespace

extern "C" {

// y = rint(clip(x + bias, -1, 1)): a LearnableBias and the 1-bit activation quantizer.
int MoveBinarize(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(0);  // every fused forward binarizes through this kernel
  const float *x = static_cast<const float *>(params[0]), *bias = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  Dims d = dims_of(shapes[0]);
  for_each_plane(d, [&](int64_t, int64_t c, int64_t o) {
    const float b = bias[c];
    for (int64_t i = 0; i < d.hw; ++i) y[o + i] = binarize(x[o + i] + b);
  });
  return 0;
}

// y = act(bn(a)): inputs a, then gamma, beta, mean, var, move1, slope, move2.
int BnAct(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *a = static_cast<const float *>(params[0]);
  BnActParams k = bn_act_from(params, 1);
  float *y = static_cast<float *>(params[8]);
  Dims d = dims_of(shapes[0]);
  for_each_plane(d, [&](int64_t, int64_t c, int64_t o) {
    const auto ch = k.at(c);
    for (int64_t i = 0; i < d.hw; ++i) y[o + i] = ch(a[o + i]);
  });
  return 0;
}

// y = act(bn(a) + (u + move)): residual_fc's tail, recomputing t = move(u).
int BnActMoved(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *a = static_cast<const float *>(params[0]), *u = static_cast<const float *>(params[1]);
  const float *move = static_cast<const float *>(params[2]);
  BnActParams k = bn_act_from(params, 3);
  float *y = static_cast<float *>(params[10]);
  Dims d = dims_of(shapes[0]);
  for_each_plane(d, [&](int64_t, int64_t c, int64_t o) {
    const auto ch = k.at(c);
    const float m = move[c];
    for (int64_t i = 0; i < d.hw; ++i) y[o + i] = ch(a[o + i], u[o + i] + m);
  });
  return 0;
}

// y = act(bn(a) + mean of s's channel groups): s has k*C channels, channel c's
// shortcut is (((s[k c] + s[k c + 1]) + ...) + s[k c + k - 1]) / k (the uni-shortcut).
int BnActGroupMean(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *a = static_cast<const float *>(params[0]), *s = static_cast<const float *>(params[1]);
  BnActParams k = bn_act_from(params, 2);
  float *y = static_cast<float *>(params[9]);
  Dims d = dims_of(shapes[0]);
  const int64_t group = shapes[1][1] / d.c;
  const float divisor = static_cast<float>(group);
  for_each_plane(d, [&](int64_t n, int64_t c, int64_t o) {
    const auto ch = k.at(c);
    const float *first = s + (n * shapes[1][1] + c * group) * d.hw;
    float *total = y + o;  // the output plane doubles as the sum's buffer, so each loop vectorizes
    for (int64_t i = 0; i < d.hw; ++i) total[i] = first[i];
    for (int64_t j = 1; j < group; ++j)
      for (int64_t i = 0; i < d.hw; ++i) total[i] = total[i] + first[j * d.hw + i];
    for (int64_t i = 0; i < d.hw; ++i) y[o + i] = ch(a[o + i], total[i] / divisor);
  });
  return 0;
}

// XNOR weights from the per-(out, kh, kw) mean of |W| over input channels, which
// MindSpore's ReduceMean computes (its summation order is its own): sign(W) * mean.
int SignScale(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *w = static_cast<const float *>(params[0]), *mean = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  const int64_t out = shapes[0][0], in = shapes[0][1], taps = shapes[0][2] * shapes[0][3];
  parallel_for(out, in * taps, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o)
      for (int64_t i = 0; i < in; ++i)
        for (int64_t t = 0; t < taps; ++t) {
          const float v = w[(o * in + i) * taps + t], m = mean[o * taps + t];
          y[(o * in + i) * taps + t] = v > 0.0f ? m : (v < 0.0f ? -m : 0.0f * m);
        }
  });
  return 0;
}

// ((h + w) + c) + u: the sum PATM pools for its branch weights.
int Sum4(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *h = static_cast<const float *>(params[0]), *w = static_cast<const float *>(params[1]);
  const float *c = static_cast<const float *>(params[2]), *u = static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  Dims d = dims_of(shapes[0]);
  for_each_plane(d, [&](int64_t, int64_t, int64_t o) {
    for (int64_t i = 0; i < d.hw; ++i) y[o + i] = ((h[o + i] + w[o + i]) + c[o + i]) + u[o + i];
  });
  return 0;
}

// PATM's reweighting: ((h a0 + w a1) + c a2) + u, with a of shape (3, N, C).
int Mix3(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *h = static_cast<const float *>(params[0]), *w = static_cast<const float *>(params[1]);
  const float *c = static_cast<const float *>(params[2]), *u = static_cast<const float *>(params[3]);
  const float *a = static_cast<const float *>(params[4]);
  float *y = static_cast<float *>(params[5]);
  Dims d = dims_of(shapes[0]);
  const int64_t stride = d.n * d.c;
  for_each_plane(d, [&](int64_t n, int64_t ch, int64_t o) {
    const float a0 = a[n * d.c + ch], a1 = a[stride + n * d.c + ch], a2 = a[2 * stride + n * d.c + ch];
    for (int64_t i = 0; i < d.hw; ++i) y[o + i] = ((h[o + i] * a0 + w[o + i] * a1) + c[o + i] * a2) + u[o + i];
  });
  return 0;
}

// The WaveBlock's second residual: x + ((w0 b + w1 c) + (1 - w0 - w1) a).
int WaveMix(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]), *a = static_cast<const float *>(params[1]);
  const float *b = static_cast<const float *>(params[2]), *c = static_cast<const float *>(params[3]);
  const float *weight = static_cast<const float *>(params[4]);
  float *y = static_cast<float *>(params[5]);
  Dims d = dims_of(shapes[0]);
  const float w0 = weight[0], w1 = weight[1], rest = (1.0f - w0) - w1;
  for_each_plane(d, [&](int64_t, int64_t, int64_t o) {
    for (int64_t i = 0; i < d.hw; ++i) y[o + i] = x[o + i] + ((w0 * b[o + i] + w1 * c[o + i]) + rest * a[o + i]);
  });
  return 0;
}

// Downsample's pooling: Pool4Planes of fused_common.h (exact: a max does not depend on order).
int Pool4(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t planes = shapes[0][0] * shapes[0][1], h = shapes[0][2], w = shapes[0][3];
  const int64_t size = ((h + 1) / 2) * ((w + 1) / 2);
  parallel_for(planes, h * w, [&](int64_t begin, int64_t end) {
    Pool4Planes pool(h, w);
    for (int64_t plane = begin; plane < end; plane += Pool4Planes::kBlock)
      pool.run(x + plane * h * w, y + plane * size, nullptr, std::min(Pool4Planes::kBlock, end - plane));
  });
  return 0;
}

// The WaveBlock's 1xK / Kx1 branch in one pass per plane:
// act(bn(conv(rint(clip(m + move)))) + (m + move)), with depthwise weights (C, 1, kh, kw).
int LineBranch(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *m = static_cast<const float *>(params[0]), *move = static_cast<const float *>(params[1]);
  const float *weight = static_cast<const float *>(params[2]);
  BnActParams k = bn_act_from(params, 3);
  float *y = static_cast<float *>(params[10]);
  Dims d = dims_of(shapes[0]);
  const int64_t h = shapes[0][2], w = shapes[0][3], kh = shapes[2][2], kw = shapes[2][3];
  parallel_for(d.n * d.c, d.hw * kh * kw, [&](int64_t begin, int64_t end) {
    std::vector<float> quantized(d.hw);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % d.c, o = p * d.hw;
      const float b = move[c];
      for (int64_t i = 0; i < d.hw; ++i) quantized[i] = binarize(m[o + i] + b);
      float *out = y + o;
      std::fill(out, out + d.hw, 0.0f);
      line_conv_plane(quantized.data(), weight + c * kh * kw, kh * kw, kh == 1, h, w, out);
      const auto ch = k.at(c);
      for (int64_t i = 0; i < d.hw; ++i) out[i] = ch(out[i], m[o + i] + b);
    }
  });
  return 0;
}

// PATM's token mixing along one axis in one pass per output plane, from x and theta:
// p = concat(x cos(theta), x sin(theta)) + move (2C channels, not materialized), then
// act(bn(conv(rint(clip(p)))) + (p[2g] + p[2g + 1]) / 2) with weights (C, 2, kh, kw).
int PhaseBranch(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]), *theta = static_cast<const float *>(params[1]);
  const float *move = static_cast<const float *>(params[2]), *weight = static_cast<const float *>(params[3]);
  BnActParams k = bn_act_from(params, 4);
  float *y = static_cast<float *>(params[11]);
  Dims d = dims_of(shapes[0]);
  const int64_t h = shapes[0][2], w = shapes[0][3], kh = shapes[3][2], kw = shapes[3][3], taps = kh * kw;
  // Output plane (n, g) reads channels 2g and 2g + 1 of concat(x cos, x sin): the cosine of
  // channel 2g (if < C) and the sine of channel 2g - C (if >= C). A thread computes sin and cos
  // of the channels its range of planes reads, per sample.
  parallel_for(d.n * d.c, d.hw * (2 * taps + 8), [&](int64_t begin, int64_t end) {
    std::vector<float> sine, cosine, plane(2 * d.hw), quantized(d.hw);
    std::vector<int32_t> unsure;
    for (int64_t n = begin / d.c; n * d.c < end; ++n) {
      const int64_t g_begin = std::max(begin - n * d.c, int64_t{0}), g_end = std::min(end - n * d.c, d.c);
      const int64_t cos_begin = 2 * g_begin, cos_end = std::min(2 * g_end, d.c);
      const int64_t sin_begin = std::max(2 * g_begin, d.c) - d.c, sin_end = std::max(2 * g_end - d.c, int64_t{0});
      const int64_t first = cos_begin < cos_end ? (sin_begin < sin_end ? std::min(cos_begin, sin_begin) : cos_begin)
                                                : sin_begin;
      const int64_t last = std::max(cos_begin < cos_end ? cos_end : 0, sin_begin < sin_end ? sin_end : 0);
      const int64_t values = (last - first) * d.hw;
      sine.resize(values);
      cosine.resize(values);
      unsure.resize(values);
      sincos_rounded(theta + (n * d.c + first) * d.hw, sine.data(), cosine.data(), unsure.data(), values);
      const float *xs = x + n * d.c * d.hw;
      for (int64_t g = g_begin; g < g_end; ++g) {
        float *out = y + (n * d.c + g) * d.hw;
        std::fill(out, out + d.hw, 0.0f);
        for (int64_t i = 0; i < 2; ++i) {
          const int64_t j = 2 * g + i, source = j < d.c ? j : j - d.c;
          const float *trig = (j < d.c ? cosine.data() : sine.data()) + (source - first) * d.hw;
          const float *in = xs + source * d.hw;
          const float b = move[j];
          float *p = plane.data() + i * d.hw;
          for (int64_t q = 0; q < d.hw; ++q) {
            p[q] = in[q] * trig[q] + b;
            quantized[q] = binarize(p[q]);
          }
          line_conv_plane(quantized.data(), weight + (g * 2 + i) * taps, taps, kh == 1, h, w, out);
        }
        const auto ch = k.at(g);
        for (int64_t q = 0; q < d.hw; ++q) out[q] = ch(out[q], (plane[q] + plane[d.hw + q]) / 2.0f);
      }
    }
  });
  return 0;
}

// Mlp's first half and the binarized input of its second FC: h = act2(bn1(a) + act1(bn0(x
// tiled to C channels))), where x has C / r channels and the tile repeats the whole channel
// block r times; and rint(clip(h + move)).
int BnActTiledBinarize(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *a = static_cast<const float *>(params[0]), *x = static_cast<const float *>(params[1]);
  BnActParams shortcut = bn_act_from(params, 2), k = bn_act_from(params, 9);
  const float *move = static_cast<const float *>(params[16]);
  float *y = static_cast<float *>(params[17]), *yq = static_cast<float *>(params[18]);
  Dims d = dims_of(shapes[0]);
  const int64_t cin = shapes[1][1];
  for_each_plane(d, [&](int64_t n, int64_t c, int64_t o) {
    const auto ch = k.at(c), sc = shortcut.at(c);
    const float *xs = x + (n * cin + c % cin) * d.hw;
    const float b = move[c];
    for (int64_t i = 0; i < d.hw; ++i) {
      const float v = ch(a[o + i], sc(xs[i]));
      y[o + i] = v;
      yq[o + i] = binarize(v + b);
    }
  });
  return 0;
}

// GroupNorm(1, C), i.e. over each sample's C x H x W values, as MindSpore's CPU kernel
// computes it: sums in double in order, rstd = sqrt(1 / (var + eps)), and the output
// ((x - mean) * rstd) * gamma + beta in double, rounded to float32 (checked by the tests).
int GroupNorm1(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]), *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  const int64_t n = shapes[0][0], c = shapes[0][1], hw = shapes[0][2] * shapes[0][3], size = c * hw;
  parallel_for(n, size, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float *in = x + b * size;
      double sum = 0.0, sum_square = 0.0;
      for (int64_t i = 0; i < size; ++i) {
        const double v = in[i];
        sum += v;
        sum_square += v * v;
      }
      const double mean = sum / static_cast<double>(size);
      const double rstd = std::sqrt(1.0 / ((sum_square / static_cast<double>(size) - mean * mean) +
                                           static_cast<double>(kEps)));
      float *out = y + b * size;
      for (int64_t ch = 0; ch < c; ++ch) {
        const double g = gamma[ch], bt = beta[ch];
        for (int64_t i = ch * hw; i < (ch + 1) * hw; ++i)
          out[i] = static_cast<float>((static_cast<double>(in[i]) - mean) * rstd * g + bt);
      }
    }
  });
  return 0;
}

}  // extern "C"

namespace {

// 64-bit fingerprint of a buffer: four multiply-xorshift lanes over 64K-word chunks, the chunks'
// values combined in order, so the result does not depend on the thread count. Never 0.
uint64_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

uint64_t fingerprint(const void *data, int64_t bytes) {
  const int64_t words = bytes / 8, chunk = 1 << 16, chunks = (words + chunk - 1) / chunk;
  std::vector<uint64_t> per_chunk(chunks);
  parallel_for(chunks, chunk, [&](int64_t begin, int64_t end) {
    const uint64_t *w = static_cast<const uint64_t *>(data);
    for (int64_t c = begin; c < end; ++c) {
      uint64_t lane[4] = {1, 2, 3, 4};
      const int64_t from = c * chunk, to = std::min(words, from + chunk);
      int64_t i = from;
      for (; i + 4 <= to; i += 4)
        for (int l = 0; l < 4; ++l) lane[l] = (lane[l] ^ w[i + l]) * 0x9e3779b97f4a7c15ULL;
      for (; i < to; ++i) lane[0] = (lane[0] ^ w[i]) * 0x9e3779b97f4a7c15ULL;
      per_chunk[c] = mix(lane[0]) ^ mix(lane[1] + 1) ^ mix(lane[2] + 2) ^ mix(lane[3] + 3);
    }
  });
  uint64_t h = static_cast<uint64_t>(bytes);
  for (int64_t c = 0; c < chunks; ++c) h = mix(h ^ per_chunk[c]) + static_cast<uint64_t>(c);
  const unsigned char *tail = static_cast<const unsigned char *>(data) + words * 8;
  for (int64_t i = 0; i < bytes - words * 8; ++i) h = mix(h ^ tail[i]);
  return h == 0 ? 1 : h;
}

}  // namespace

extern "C" {

// The fingerprint src/weight_cache.py records for weights it binarized (called with ctypes).
uint64_t BimlpFingerprint(const void *data, int64_t bytes) { return fingerprint(data, bytes); }

// Guards a cached binarized weight: fails the graph when the latent weights w are no longer the
// ones whose fingerprint (an int64 of shape (1,)) was recorded with the cache. Output: one 0.
int WeightsUnchanged(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  int64_t bytes = 4;
  for (int i = 0; i < 4; ++i) bytes *= shapes[0][i];
  const uint64_t recorded = *static_cast<const uint64_t *>(params[1]);
  *static_cast<float *>(params[2]) = 0.0f;
  if (fingerprint(params[0], bytes) == recorded) return 0;
  std::fprintf(stderr, "error: BiMLP's binarized weights are out of date: its latent weights changed since "
                       "they were cached. Call the BiMLP network itself once (net(x) refreshes them) before "
                       "calling it inside another cell's graph.\n");
  return 1;
}

}  // extern "C"
