// Fused CPU kernels for BiMLP training (MindSpore "aot" custom operators), forward and
// backward. Each forward does in one pass what the network otherwise does in 5-20
// MindSpore CPU operators; each backward is its hand-written gradient, checked against
// MindSpore's autodiff of the unfused chain by the tests.
//
// Tensors are NCHW float32; per-channel parameters are float32 arrays of C values.
// Forward values follow the operators' order where that is cheap (the binarization, the
// line convolutions, the pooling); batch statistics are summed in double.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_threads.h"
#include "fused_common.h"
#include "pointwise_gemm.h"

namespace {

const float kRoundingMagic = 12582912.0f;  // 1.5 * 2^23: (x + M) - M is rint(x), ties to even
const float kEps = 1e-5f;

// The element-wise helpers below take a float or a vector of floats (GCC's vector extension, whose
// comparisons give lane masks and whose ?: selects lane by lane), with the same result in each lane as
// for a float: the 1-bit activation rint(clip(x, -1, 1)) (clip as std::min(std::max(x, -1), 1)),
// std::max(x, 0.0f), std::min(x, 0.0f), and the activation's straight-through gradient [|x| <= 1].
template <typename V>
V binarize(V x) {
  const V above = x < -1.0f ? V{} - 1.0f : x;
  const V clipped = 1.0f < above ? V{} + 1.0f : above;
  return (clipped + kRoundingMagic) - kRoundingMagic;
}

template <typename V>
V max0(V x) {
  return x < V{} ? V{} : x;
}

template <typename V>
V min0(V x) {
  return V{} < x ? V{} : x;
}

template <typename V>
V ste(V x) {
  return ((x >= -1.0f) & (x <= 1.0f)) ? V{} + 1.0f : V{};
}

template <typename T>
T *arg(void **params, int i) {
  return static_cast<T *>(params[i]);
}

// Runs body(i) for i in [0, count) on the kernel threads of cpu_threads.h; `work` is how many
// values one item touches, which decides whether more threads pay.
template <typename Body>
void parallel_for(int64_t count, int64_t work, Body body) {
  bimlp::parallel_for(count, work, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(i);
  });
}

struct Dims {
  int64_t n, c, hw;
  int64_t at(int64_t sample, int64_t channel) const { return (sample * c + channel) * hw; }
};

Dims dims_of(const int64_t *shape) { return {shape[0], shape[1], shape[2] * shape[3]}; }

// Training-mode batch norm of one channel followed by an optional shortcut and RPReLU:
// y = prelu(gamma * (a - mean) * rstd + beta + s + b1, w) + b2.
struct RPReLUParams {
  const float *gamma, *beta, *b1, *w, *b2;
};

RPReLUParams rprelu_params(void **params, int first) {
  return {arg<const float>(params, first), arg<const float>(params, first + 1), arg<const float>(params, first + 2),
          arg<const float>(params, first + 3), arg<const float>(params, first + 4)};
}

// Element-wise work goes kLanes elements at a time as one vector (a plane's tail one at a time):
// written as scalar code per element, GCC left most of these loops scalar.
constexpr int kLanes = 8;
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

// Where an element-wise term (for_elements, LaneSums::add) reads and writes its tensors: element i
// (V = float) or elements i to i + kLanes - 1 (V = Lanes). A term written once for both, as a
// generic lambda, is one vector loop plus a scalar tail.
template <typename V>
struct At {
  int64_t i;
  V operator()(const float *p) const {
    if constexpr (std::is_same_v<V, float>) {
      return p[i];
    } else {
      V v;
      std::memcpy(&v, p + i, sizeof v);
      return v;
    }
  }
  void put(float *p, V v) const {
    if constexpr (std::is_same_v<V, float>) {
      p[i] = v;
    } else {
      std::memcpy(p + i, &v, sizeof v);
    }
  }
};

// Calls f(at) for the elements [0, count): kLanes at a time, then one at a time.
template <typename F>
void for_elements(int64_t count, F f) {
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) f(At<Lanes>{i});
  for (; i < count; ++i) f(At<float>{i});
}

// Running sums of kTerms quantities over a channel's planes: kLanes float partial sums per quantity
// (a single running sum would be a serial dependency) that go into double totals after each plane.
// Batch statistics and their gradients need that precision: a variance is a difference of two of
// these sums, and so is a channel's input gradient when it is nearly affine in its normalized input.
template <int kTerms>
struct LaneSums {
  double totals[kTerms] = {};

  // Adds term(at, values) for the elements i in [0, count): at is At<Lanes> for kLanes elements at a
  // time, into the lanes, then At<float> for the rest, into the first lane; values holds the kTerms
  // values (of at's type). Lane l sums elements l, l + kLanes, ... in order, then the tail.
  template <typename Term>
  void add(int64_t count, Term term) {
    Lanes sums[kTerms] = {};
    int64_t i = 0;
    for (; i + kLanes <= count; i += kLanes) {
      Lanes values[kTerms];
      term(At<Lanes>{i}, values);
      for (int t = 0; t < kTerms; ++t) sums[t] += values[t];
    }
    for (; i < count; ++i) {
      float values[kTerms];
      term(At<float>{i}, values);
      for (int t = 0; t < kTerms; ++t) sums[t][0] += values[t];
    }
    // Lanes a plane smaller than kLanes leaves at +0 are skipped: adding them changes no total.
    const int plane_lanes = count >= kLanes ? kLanes : static_cast<int>(count > 0);
    for (int t = 0; t < kTerms; ++t)
      for (int l = 0; l < plane_lanes; ++l) totals[t] += sums[t][l];
  }

  // Adds the kLanes lane sums of a plane's term t, kept in registers by a caller that reads each chunk
  // once for several sums, lane by lane as add() does.
  void add_lanes(int t, const Lanes &lanes) {
    for (int l = 0; l < kLanes; ++l) totals[t] += lanes[l];
  }

  double total(int t) const { return totals[t]; }
};

// Kernels with per-channel state (batch statistics, parameter gradients) split the channels between
// the threads, and each thread sweeps its block of channels sample by sample: every channel still
// sees its samples in order, so its sums do not depend on the split, and each sample's planes of the
// block are one contiguous run of memory. A channel at a time would read one plane per sample with
// the sample's other channels skipped in between (784 bytes read, 50 KB skipped on a 64-channel
// 14x14 map), which the hardware prefetcher does not follow: 1.5-3.5x slower.
template <typename Block>
void channel_blocks(int64_t channels, int64_t work_per_channel, Block block) {
  bimlp::parallel_for(channels, work_per_channel, block);
}

// Batch means and biased variances of channels [c0, c1), into mean[c - c0] and var[c - c0].
void channel_moments(const float *a, const Dims &d, int64_t c0, int64_t c1, double *mean, double *var) {
  std::vector<LaneSums<2>> sums(c1 - c0);
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t c = c0; c < c1; ++c) {
      const float *p = a + d.at(n, c);
      sums[c - c0].add(d.hw, [&](auto at, auto *v) {
        const auto x = at(p);
        v[0] = x;
        v[1] = x * x;
      });
    }
  const double count = static_cast<double>(d.n * d.hw);
  for (int64_t c = c0; c < c1; ++c) {
    mean[c - c0] = sums[c - c0].total(0) / count;
    var[c - c0] = std::max(sums[c - c0].total(1) / count - mean[c - c0] * mean[c - c0], 0.0);
  }
}

// What a batch-norm chain adds to bn(a) before its RPReLU (the uni-shortcuts of the network):
// nothing, a tensor s of the output's shape, or the mean of groups of k consecutive channels of a
// tensor h with k times the output's channels, summed in order as the network does.
enum class Shortcut { kNone, kAdd, kGroupMean };

template <Shortcut kShortcut>
struct ShortcutRows {
  const float *s;
  int64_t group, hw, channels;  // group: k; channels: of s

  // Sample n, output channel c: where its row of hw values (its group's first row) starts in s.
  const float *row(int64_t n, int64_t c) const { return s + (n * channels + c * group) * hw; }

  // The values the chain adds to that row: s's own, or its group's mean computed into `mean` (hw
  // values), row by row so that the loop vectorizes.
  const float *values(int64_t n, int64_t c, float *mean) const {
    const float *first = row(n, c);
    if (kShortcut != Shortcut::kGroupMean) return first;
    for (int64_t i = 0; i < hw; ++i) mean[i] = first[i];
    for (int64_t g = 1; g < group; ++g)
      for (int64_t i = 0; i < hw; ++i) mean[i] = mean[i] + first[g * hw + i];
    for (int64_t i = 0; i < hw; ++i) mean[i] = mean[i] / static_cast<float>(group);
    return mean;
  }
};

// The layout of a chain's tensors: a (N, A, H, W) and y (N, C, H, W), C = the batch norm's channels.
// A < C: the input is a uni-shortcut that tiles a, output channel c reads input channel c mod A.
struct ChainDims {
  Dims in, out;
};

template <Shortcut kShortcut>
ChainDims chain_dims(int64_t **shapes) {
  const int first = kShortcut == Shortcut::kNone ? 1 : 2;  // gamma's position
  const Dims in = dims_of(shapes[0]);
  return {in, {in.n, shapes[first][0], in.hw}};
}

template <Shortcut kShortcut>
ShortcutRows<kShortcut> shortcut_rows(void **params, int64_t **shapes, const ChainDims &d) {
  if (kShortcut == Shortcut::kNone) return {nullptr, 1, d.out.hw, d.out.c};
  const int64_t channels = shapes[1][1];
  return {arg<const float>(params, 1), channels / d.out.c, d.out.hw, channels};
}

// What a batch-norm chain also computes for the next layer, from y and that layer's bias: nothing, its
// input y + next_bias (the float twin), or that input binarized, rint(clip(y + next_bias, -1, 1)).
enum class Next { kNone, kMoved, kBinarized };

// Forward of act(bn(a) [+ shortcut]); outputs y, the batch mean and the biased batch variance, and
// the next layer's input (kNext) as a fourth output: y is not read again to compute it.
template <Shortcut kShortcut, Next kNext = Next::kNone>
int bn_act_forward(void **params, int64_t **shapes) {
  const float *a = arg<const float>(params, 0);
  const int first = kShortcut == Shortcut::kNone ? 1 : 2;
  const RPReLUParams k = rprelu_params(params, first);
  constexpr bool kHasNext = kNext != Next::kNone;
  const float *next_bias = kHasNext ? arg<const float>(params, first + 5) : nullptr;
  const int out = first + 5 + kHasNext;
  float *y = arg<float>(params, out), *mean_out = arg<float>(params, out + 1), *var_out = arg<float>(params, out + 2);
  float *q = kHasNext ? arg<float>(params, out + 3) : nullptr;
  const ChainDims d = chain_dims<kShortcut>(shapes);
  const ShortcutRows<kShortcut> shortcut = shortcut_rows<kShortcut>(params, shapes, d);
  const int64_t copies = d.out.c / d.in.c;
  // By input channel: a tiled input's copies share their batch statistics, computed once.
  channel_blocks(d.in.c, 4 * copies * d.out.n * d.out.hw, [&](int64_t s0, int64_t s1) {
    const int64_t block = s1 - s0;
    std::vector<double> mean(block), var(block);
    channel_moments(a, d.in, s0, s1, mean.data(), var.data());
    // Per output channel of the block, at (copy, source) -> copy * block + source - s0.
    std::vector<float> scale(copies * block), group_mean(kShortcut == Shortcut::kGroupMean ? d.out.hw : 0);
    for (int64_t copy = 0; copy < copies; ++copy)
      for (int64_t source = s0; source < s1; ++source) {
        const int64_t c = copy * d.in.c + source;
        mean_out[c] = static_cast<float>(mean[source - s0]);
        var_out[c] = static_cast<float>(var[source - s0]);
        scale[copy * block + source - s0] = static_cast<float>(k.gamma[c] / std::sqrt(var[source - s0] + kEps));
      }
    for (int64_t n = 0; n < d.out.n; ++n)
      for (int64_t copy = 0; copy < copies; ++copy)
        for (int64_t source = s0; source < s1; ++source) {
          const int64_t c = copy * d.in.c + source;
          const float m = mean_out[c], sc = scale[copy * block + source - s0];
          const float beta = k.beta[c], b1 = k.b1[c], w = k.w[c], b2 = k.b2[c];
          const float nb = kHasNext ? next_bias[c] : 0.0f;
          const float *in = a + d.in.at(n, source);
          const float *s = kShortcut == Shortcut::kNone ? nullptr : shortcut.values(n, c, group_mean.data());
          float *y_row = y + d.out.at(n, c), *q_row = kHasNext ? q + d.out.at(n, c) : nullptr;
          for_elements(d.out.hw, [&](auto at) {
            auto u = (at(in) - m) * sc + beta;
            if (kShortcut != Shortcut::kNone) u = u + at(s);
            u = u + b1;
            const auto value = (max0(u) + min0(u) * w) + b2;
            at.put(y_row, value);
            if (kNext == Next::kMoved) at.put(q_row, value + nb);
            if (kNext == Next::kBinarized) at.put(q_row, binarize(value + nb));
          });
        }
  });
  return 0;
}

// Backward of bn_act_forward: inputs a, [s or h,] gamma, beta, b1, w, b2, [next_bias,] mean, var, dy,
// [dq]; outputs da, [ds or dh,] dgamma, dbeta, db1, dw, db2, [dnext_bias]. y's gradient is dy plus,
// with a next input, dq (through the quantizer's straight-through estimator; y recomputed from u; u comes
// from the stored float32 variance and may differ from the forward's in the last bit, which moves a
// mask only for a value within a rounding of its edge)). A tiled input's gradient is the sum of its
// copies' gradients, so the channels are split among threads by input channel.
template <Shortcut kShortcut, Next kNext = Next::kNone>
int bn_act_backward(void **params, int64_t **shapes) {
  const float *a = arg<const float>(params, 0);
  const bool has_shortcut = kShortcut != Shortcut::kNone;
  const int first = has_shortcut ? 2 : 1;
  const RPReLUParams k = rprelu_params(params, first);
  constexpr bool kHasNext = kNext != Next::kNone;
  const float *next_bias = kHasNext ? arg<const float>(params, first + 5) : nullptr;
  const int stats = first + 5 + kHasNext;
  const float *mean_in = arg<const float>(params, stats), *var_in = arg<const float>(params, stats + 1);
  const float *dy = arg<const float>(params, stats + 2);
  const float *dq = kHasNext ? arg<const float>(params, stats + 3) : nullptr;
  int out = stats + 3 + kHasNext;
  float *da = arg<float>(params, out++), *ds = has_shortcut ? arg<float>(params, out++) : nullptr;
  float *dgamma = arg<float>(params, out), *dbeta = arg<float>(params, out + 1), *db1 = arg<float>(params, out + 2);
  float *dw = arg<float>(params, out + 3), *db2 = arg<float>(params, out + 4);
  float *dnext_bias = kHasNext ? arg<float>(params, out + 5) : nullptr;
  const ChainDims d = chain_dims<kShortcut>(shapes);
  const ShortcutRows<kShortcut> shortcut = shortcut_rows<kShortcut>(params, shapes, d);
  const int64_t copies = d.out.c / d.in.c;
  channel_blocks(d.in.c, 4 * copies * d.out.n * d.out.hw, [&](int64_t s0, int64_t s1) {
    const int64_t block = s1 - s0;
    // Per output channel of the block, at (copy, source) -> copy * block + source - s0.
    struct Channel {
      float m, rstd, scale, beta, b1, w, b2, nb, mean_dz, mean_dz_xhat;
    };
    std::vector<Channel> channel(copies * block);
    for (int64_t copy = 0; copy < copies; ++copy)
      for (int64_t source = s0; source < s1; ++source) {
        const int64_t c = copy * d.in.c + source;
        const double rstd = 1.0 / std::sqrt(static_cast<double>(var_in[c]) + kEps);
        channel[copy * block + source - s0] = {mean_in[c], static_cast<float>(rstd),
                                               static_cast<float>(k.gamma[c] * rstd), k.beta[c], k.b1[c], k.w[c],
                                               k.b2[c], kHasNext ? next_bias[c] : 0.0f, 0.0f, 0.0f};
      }
    // dz is the shortcut's gradient itself for an added shortcut, else the block's scratch (kept by
    // the thread: a fresh vector per call was zero-filled for nothing).
    thread_local std::vector<float> scratch;
    thread_local std::vector<double> copies_sum;
    scratch.resize(kShortcut == Shortcut::kAdd ? 0 : copies * block * d.out.n * d.out.hw);
    copies_sum.resize(copies > 1 ? d.out.hw : 0);
    auto dz_row = [&](int64_t n, int64_t copy, int64_t source) {
      return kShortcut == Shortcut::kAdd ? ds + d.out.at(n, copy * d.in.c + source)
                                         : scratch.data() + ((copy * block + source - s0) * d.out.n + n) * d.out.hw;
    };
    // Pass 1: with g = y's gradient, dz = g * prelu'(u), and the channel sums of dz, dz * xhat, g,
    // g * min(u, 0) [and of the quantizer's gradient, for the next bias].
    std::vector<LaneSums<kHasNext ? 5 : 4>> sums(copies * block);
    std::vector<float> group_mean(kShortcut == Shortcut::kGroupMean ? d.out.hw : 0);
    for (int64_t n = 0; n < d.out.n; ++n)
      for (int64_t copy = 0; copy < copies; ++copy)
        for (int64_t source = s0; source < s1; ++source) {
          const int64_t c = copy * d.in.c + source;
          const Channel &p = channel[copy * block + source - s0];
          const float *in = a + d.in.at(n, source), *gy = dy + d.out.at(n, c);
          const float *gq = kHasNext ? dq + d.out.at(n, c) : nullptr;
          const float *s = has_shortcut ? shortcut.values(n, c, group_mean.data()) : nullptr;
          float *dz = dz_row(n, copy, source);
          sums[copy * block + source - s0].add(d.out.hw, [&](auto at, auto *v) {
            const auto centered = at(in) - p.m;
            const auto xhat = centered * p.rstd;
            auto u = centered * p.scale + p.beta;
            if (has_shortcut) u = u + at(s);
            u = u + p.b1;
            auto g = at(gy);
            if constexpr (kHasNext) {
              const auto through = kNext == Next::kMoved
                                       ? at(gq)
                                       : at(gq) * ste((max0(u) + min0(u) * p.w) + p.b2 + p.nb);
              g = g + through;
              v[4] = through;
            }
            const auto dz_i = u > 0.0f ? g : g * p.w;
            at.put(dz, dz_i);
            v[0] = dz_i;
            v[1] = dz_i * xhat;
            v[2] = g;
            v[3] = g * min0(u);
          });
        }
    const double count = static_cast<double>(d.out.n * d.out.hw);
    for (int64_t copy = 0; copy < copies; ++copy)
      for (int64_t source = s0; source < s1; ++source) {
        const int64_t c = copy * d.in.c + source;
        auto &sum = sums[copy * block + source - s0];
        Channel &p = channel[copy * block + source - s0];
        p.mean_dz = static_cast<float>(sum.total(0) / count);
        p.mean_dz_xhat = static_cast<float>(sum.total(1) / count);
        dgamma[c] = static_cast<float>(sum.total(1));
        dbeta[c] = static_cast<float>(sum.total(0));
        db1[c] = static_cast<float>(sum.total(0));
        dw[c] = static_cast<float>(sum.total(3));
        db2[c] = static_cast<float>(sum.total(2));
        if constexpr (kHasNext) dnext_bias[c] = static_cast<float>(sum.total(4));
      }
    // Pass 2: da = gamma * rstd * (dz - mean(dz) - xhat * mean(dz * xhat)), summed over a tiled
    // input's copies in double; the shortcut's gradient.
    for (int64_t n = 0; n < d.out.n; ++n)
      for (int64_t source = s0; source < s1; ++source) {
        const float *in = a + d.in.at(n, source);
        float *grad = da + d.in.at(n, source);
        for (int64_t copy = 0; copy < copies; ++copy) {
          const Channel &p = channel[copy * block + source - s0];
          const float *dz = dz_row(n, copy, source);
          const auto term = [&](auto at) {
            return p.scale * ((at(dz) - p.mean_dz) - (at(in) - p.m) * p.rstd * p.mean_dz_xhat);
          };
          if (copies == 1) {
            for_elements(d.out.hw, [&](auto at) { at.put(grad, term(at)); });
          } else {
            for (int64_t i = 0; i < d.out.hw; ++i) {
              const float value = term(At<float>{i});
              copies_sum[i] = copy == 0 ? value : copies_sum[i] + value;
              if (copy == copies - 1) grad[i] = static_cast<float>(copies_sum[i]);
            }
          }
          if (kShortcut == Shortcut::kGroupMean) {
            const int64_t c = copy * d.in.c + source;
            float *dh = ds + (shortcut.row(n, c) - shortcut.s);
            for (int64_t g = 0; g < shortcut.group; ++g)
              for (int64_t i = 0; i < d.out.hw; ++i) dh[g * d.out.hw + i] = dz[i] / static_cast<float>(shortcut.group);
          }
        }
      }
  });
  return 0;
}

// Grouped 1xK / Kx1 convolutions with one output channel per group, zero padding (K - 1) / 2 on
// both sides, stride 1. A plane is laid out with its padding in a buffer so that tap t is one
// contiguous shift by t * step for the whole plane (step 1 along rows, whose padded width is
// w + K - 1, or w along columns): each tap is one long vectorizable loop. The padding's zeros add
// +0 to sums that never are -0, so results equal the unpadded sums.
struct LineLayout {
  int64_t h, w, taps, half, width, step, size;
  bool horizontal;
  LineLayout(const int64_t *x_shape, const int64_t *w_shape)
      : h(x_shape[2]), w(x_shape[3]), taps(w_shape[2] * w_shape[3]), half((taps - 1) / 2),
        width(w_shape[2] == 1 ? w + taps - 1 : w), step(w_shape[2] == 1 ? 1 : w),
        size(h * width), horizontal(w_shape[2] == 1) {}
  int64_t padded_size() const { return horizontal ? size + taps - 1 : (h + taps - 1) * w; }
  // Position of input (r, c) in the padded buffer, and of output (r, c) in an accumulator:
  // output j reads tap t at padded position j + t * step.
  int64_t padded(int64_t r, int64_t c) const { return horizontal ? r * width + c + half : (r + half) * w + c; }
  int64_t acc(int64_t r, int64_t c) const { return r * width + c; }
};

// Copies a plane into / out of a padded buffer (positions outside the plane keep their zeros).
void pad_plane(const LineLayout &l, const float *plane, float *buffer) {
  for (int64_t r = 0; r < l.h; ++r) bimlp::copy_floats(buffer + l.padded(r, 0), plane + r * l.w, l.w);
}

void unpad_plane(const LineLayout &l, const float *buffer, float *plane) {
  for (int64_t r = 0; r < l.h; ++r) bimlp::copy_floats(plane + r * l.w, buffer + l.padded(r, 0), l.w);
}

void put_acc(const LineLayout &l, const float *plane, float *acc) {
  for (int64_t r = 0; r < l.h; ++r) bimlp::copy_floats(acc + l.acc(r, 0), plane + r * l.w, l.w);
}

void take_acc(const LineLayout &l, const float *acc, float *plane) {
  for (int64_t r = 0; r < l.h; ++r) bimlp::copy_floats(plane + r * l.w, acc + l.acc(r, 0), l.w);
}

// One plane of the gradient of a weighted sum of three tensors, y = k0 x0 + k1 x1 + k2 x2 + (terms
// without weights): dxj = dy kj, and the plane's sums of dy xj (the weights' gradients) added to `sums`.
void weighted_sum_grad(int64_t hw, const float *dy, std::array<const float *, 3> x, std::array<float, 3> k,
                       std::array<float *, 3> dx, LaneSums<3> &sums) {
  sums.add(hw, [&](auto at, auto *v) {
    const auto g = at(dy);
    for (int j = 0; j < 3; ++j) {
      at.put(dx[j], g * k[j]);
      v[j] = g * at(x[j]);
    }
  });
}

// out[j] = sum over taps t, in order, of in[j + offset[t]] * weight[t], for j in [0, count). A chunk
// of outputs stays in one vector register while every tap is added (one store per output, not one
// per tap); `in` must be readable kChunk values past count + max(offset). Written with GCC's vector
// type because left to itself the compiler vectorizes across the taps, with gathers.
constexpr int64_t kChunk = 16;
constexpr int64_t kTapGroup = 8;  // LineConvGrad's weight sums held in registers at once
typedef float Chunk __attribute__((vector_size(kChunk * sizeof(float))));

void shifted_sum(int64_t count, const float *in, const std::vector<int64_t> &offset, const float *weight,
                 float *out) {
  for (int64_t j = 0; j < count; j += kChunk) {
    Chunk acc = {};
    for (size_t t = 0; t < offset.size(); ++t) {
      Chunk p;
      std::memcpy(&p, in + offset[t] + j, sizeof p);
      acc = acc + p * weight[t];
    }
    if (count - j >= kChunk) {
      std::memcpy(out + j, &acc, sizeof acc);
    } else {
      float tail[kChunk];
      std::memcpy(tail, &acc, sizeof acc);
      bimlp::copy_floats(out + j, tail, count - j);
    }
  }
}

// PATM's phase input p (PhaseMoveTrain below), channel by channel.
struct PhaseChannels {
  const float *x, *cosine, *sine, *bias;
  Dims d;
  // Channel j of p in sample n as p = x * f + b: the rows of x and of its cos or sin factor.
  struct Row {
    const float *x, *f;
    float b;
    template <typename At>
    auto at(At at) const {
      return at(x) * at(f) + b;
    }
  };
  Row row(int64_t n, int64_t j) const {
    const int64_t source = d.at(n, j < d.c ? j : j - d.c);
    return {x + source, (j < d.c ? cosine : sine) + source, bias[j]};
  }
};

std::atomic<int64_t> kernel_calls[2];

}  // namespace

extern "C" {

void BimlpCountCall(int kind) { kernel_calls[kind].fetch_add(1, std::memory_order_relaxed); }

int64_t BimlpKernelCalls(int kind) { return kernel_calls[kind].load(); }

// BnActTrain also takes an input with fewer channels than its batch norm, tiled (a uni-shortcut).
int BnActTrain(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  return bn_act_forward<Shortcut::kNone>(params, shapes);
}

int BnActAddTrain(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  return bn_act_forward<Shortcut::kAdd>(params, shapes);
}

int BnActAddMoveTrain(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  return bn_act_forward<Shortcut::kAdd, Next::kMoved>(params, shapes);
}

int BnActAddBinarizeTrain(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  return bn_act_forward<Shortcut::kAdd, Next::kBinarized>(params, shapes);
}

int BnActGroupMeanTrain(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  return bn_act_forward<Shortcut::kGroupMean>(params, shapes);
}

int BnActTrainGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return bn_act_backward<Shortcut::kNone>(params, shapes);
}

int BnActAddTrainGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return bn_act_backward<Shortcut::kAdd>(params, shapes);
}

int BnActAddMoveTrainGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return bn_act_backward<Shortcut::kAdd, Next::kMoved>(params, shapes);
}

int BnActAddBinarizeTrainGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return bn_act_backward<Shortcut::kAdd, Next::kBinarized>(params, shapes);
}

int BnActGroupMeanTrainGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  return bn_act_backward<Shortcut::kGroupMean>(params, shapes);
}

// t = x + bias, q = rint(clip(t, -1, 1)): a LearnableBias and the 1-bit activation quantizer.
int MoveBinarizeTrain(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  const float *x = arg<const float>(params, 0), *bias = arg<const float>(params, 1);
  float *t = arg<float>(params, 2), *q = arg<float>(params, 3);
  const Dims d = dims_of(shapes[0]);
  parallel_for(d.n * d.c, 3 * d.hw, [&](int64_t plane) {
    const float b = bias[plane % d.c];
    const int64_t o = plane * d.hw;
    for (int64_t i = 0; i < d.hw; ++i) {
      const float v = x[o + i] + b;
      t[o + i] = v;
      q[o + i] = binarize(v);
    }
  });
  return 0;
}

// Inputs t, dt, dq; outputs dx = dt + dq * [|t| <= 1] and dbias = its sum per channel.
int MoveBinarizeTrainGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *t = arg<const float>(params, 0), *dt = arg<const float>(params, 1), *dq = arg<const float>(params, 2);
  float *dx = arg<float>(params, 3), *dbias = arg<float>(params, 4);
  const Dims d = dims_of(shapes[0]);
  channel_blocks(d.c, 4 * d.n * d.hw, [&](int64_t c0, int64_t c1) {
    std::vector<LaneSums<1>> sums(c1 - c0);
    for (int64_t n = 0; n < d.n; ++n)
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t o = d.at(n, c);
        sums[c - c0].add(d.hw, [&](auto at, auto *v) {
          v[0] = at(dt + o) + at(dq + o) * ste(at(t + o));
          at.put(dx + o, v[0]);
        });
      }
    for (int64_t c = c0; c < c1; ++c) dbias[c] = static_cast<float>(sums[c - c0].total(0));
  });
  return 0;
}

// PATM's phase input p = concat(x cos(theta), x sin(theta)) + bias, 2C channels, which the
// network uses twice: binarized, q = rint(clip(p, -1, 1)), and as the mean of channel pairs,
// m[g] = (p[2g] + p[2g + 1]) / 2 (its uni-shortcut). Channel j of p comes from channel j mod C
// of x, times cos below C and sin from C on. Outputs q, m, cos, sin (MindSpore's Cos and Sin
// values, kept for the gradient); p itself is recomputed there, bit for bit.
int PhaseMoveTrain(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  const float *x = arg<const float>(params, 0), *theta = arg<const float>(params, 1);
  const float *bias = arg<const float>(params, 2);
  float *q = arg<float>(params, 3), *m = arg<float>(params, 4), *cosine = arg<float>(params, 5);
  float *sine = arg<float>(params, 6);
  const Dims d = dims_of(shapes[0]);
  bimlp::parallel_for(d.n * d.c, 4 * d.hw, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> unsure(d.hw);
    for (int64_t plane = begin; plane < end; ++plane)
      sincos_rounded(theta + plane * d.hw, sine + plane * d.hw, cosine + plane * d.hw, unsure.data(), d.hw);
  });
  const PhaseChannels p{x, cosine, sine, bias, d};
  // Plane (n, g) of m, and planes (n, 2g), (n, 2g + 1) of q.
  parallel_for(d.n * d.c, 8 * d.hw, [&](int64_t plane) {
    const int64_t n = plane / d.c, g = plane % d.c;
    float *q0 = q + 2 * plane * d.hw, *q1 = q0 + d.hw, *mean = m + plane * d.hw;
    const PhaseChannels::Row r0 = p.row(n, 2 * g), r1 = p.row(n, 2 * g + 1);
    // Outputs never alias inputs; without the pragma GCC gives up on vectorizing a loop that
    // reads and writes this many arrays rather than check all of their overlaps at run time.
#pragma GCC ivdep
    for (int64_t i = 0; i < d.hw; ++i) {
      const float p0 = r0.at(At<float>{i}), p1 = r1.at(At<float>{i});
      q0[i] = binarize(p0);
      q1[i] = binarize(p1);
      mean[i] = (p0 + p1) / 2.0f;
    }
  });
  return 0;
}

// Inputs x, cos, sin, bias, dq, dm; outputs dx, dtheta, dbias (2C).
int PhaseMoveTrainGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *x = arg<const float>(params, 0), *cosine = arg<const float>(params, 1);
  const float *sine = arg<const float>(params, 2), *bias = arg<const float>(params, 3);
  const float *dq = arg<const float>(params, 4), *dm = arg<const float>(params, 5);
  float *dx = arg<float>(params, 6), *dtheta = arg<float>(params, 7), *dbias = arg<float>(params, 8);
  const Dims d = dims_of(shapes[0]);
  const PhaseChannels p{x, cosine, sine, bias, d};
  channel_blocks(d.c, 4 * d.n * d.hw, [&](int64_t c0, int64_t c1) {
    std::vector<LaneSums<2>> channel_sums(c1 - c0);
    for (int64_t n = 0; n < d.n; ++n)
      for (int64_t c = c0; c < c1; ++c) {
        LaneSums<2> &sums = channel_sums[c - c0];
        const int64_t js = d.c + c;  // channel c of p is x cos, channel C + c is x sin
        const int64_t o = d.at(n, c);
        const float *dqc = dq + (n * 2 * d.c + c) * d.hw, *dqs = dq + (n * 2 * d.c + js) * d.hw;
        const float *dmc = dm + d.at(n, c / 2), *dms = dm + d.at(n, js / 2);
        const PhaseChannels::Row rc = p.row(n, c), rs = p.row(n, js);
        const float *xc = x + o, *cc = cosine + o, *sc = sine + o;
        float *dxc = dx + o, *dthetac = dtheta + o;
        sums.add(d.hw, [&](auto at, auto *v) {
          const auto gc = at(dmc) / 2.0f + at(dqc) * ste(rc.at(at));
          const auto gs = at(dms) / 2.0f + at(dqs) * ste(rs.at(at));
          at.put(dxc, gc * at(cc) + gs * at(sc));
          at.put(dthetac, at(xc) * (gs * at(cc) - gc * at(sc)));
          v[0] = gc;
          v[1] = gs;
        });
      }
    for (int64_t c = c0; c < c1; ++c) {
      dbias[c] = static_cast<float>(channel_sums[c - c0].total(0));
      dbias[d.c + c] = static_cast<float>(channel_sums[c - c0].total(1));
    }
  });
  return 0;
}

// The WaveBlock's second residual: y = x + ((w0 b + w1 c) + (1 - w0 - w1) a).
int WaveMixTrain(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  const float *x = arg<const float>(params, 0), *a = arg<const float>(params, 1);
  const float *b = arg<const float>(params, 2), *c = arg<const float>(params, 3);
  const float *weight = arg<const float>(params, 4);
  float *y = arg<float>(params, 5);
  const Dims d = dims_of(shapes[0]);
  const float w0 = weight[0], w1 = weight[1], rest = (1.0f - w0) - w1;
  parallel_for(d.n * d.c, 5 * d.hw, [&](int64_t plane) {
    const int64_t o = plane * d.hw;
    for (int64_t i = 0; i < d.hw; ++i) y[o + i] = x[o + i] + ((w0 * b[o + i] + w1 * c[o + i]) + rest * a[o + i]);
  });
  return 0;
}

// Inputs a, b, c, weight, dy; outputs da, db, dc, dweight (the gradient for x is dy itself).
int WaveMixTrainGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *a = arg<const float>(params, 0), *b = arg<const float>(params, 1);
  const float *c = arg<const float>(params, 2), *weight = arg<const float>(params, 3);
  const float *dy = arg<const float>(params, 4);
  float *da = arg<float>(params, 5), *db = arg<float>(params, 6), *dc = arg<float>(params, 7);
  float *dweight = arg<float>(params, 8);
  const Dims d = dims_of(shapes[0]);
  const float w0 = weight[0], w1 = weight[1], rest = (1.0f - w0) - w1;
  std::vector<LaneSums<3>> sums(d.c);  // per channel: dy a, dy b, dy c
  channel_blocks(d.c, 4 * d.n * d.hw, [&](int64_t c0, int64_t c1) {
    for (int64_t n = 0; n < d.n; ++n)
      for (int64_t ch = c0; ch < c1; ++ch) {
        const int64_t o = d.at(n, ch);
        weighted_sum_grad(d.hw, dy + o, {a + o, b + o, c + o}, {rest, w0, w1}, {da + o, db + o, dc + o}, sums[ch]);
      }
  });
  double ay = 0.0, by = 0.0, cy = 0.0;
  for (auto &s : sums) {
    ay += s.total(0);
    by += s.total(1);
    cy += s.total(2);
  }
  dweight[0] = static_cast<float>(by - ay);
  dweight[1] = static_cast<float>(cy - ay);
  return 0;
}

// PATM's reweighting: y = ((h a0 + w a1) + c a2) + u, with per-(sample, channel) weights a of
// shape (3, N, C).
int Mix3Train(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  const float *h = arg<const float>(params, 0), *w = arg<const float>(params, 1);
  const float *c = arg<const float>(params, 2), *u = arg<const float>(params, 3);
  const float *a = arg<const float>(params, 4);
  float *y = arg<float>(params, 5);
  const Dims d = dims_of(shapes[0]);
  const int64_t stride = d.n * d.c;
  parallel_for(stride, 5 * d.hw, [&](int64_t plane) {
    const float a0 = a[plane], a1 = a[stride + plane], a2 = a[2 * stride + plane];
    const int64_t o = plane * d.hw;
    for (int64_t i = 0; i < d.hw; ++i) y[o + i] = ((h[o + i] * a0 + w[o + i] * a1) + c[o + i] * a2) + u[o + i];
  });
  return 0;
}

// Inputs h, w, c, a, dy; outputs dh, dw, dc, da (the gradient for u is dy itself).
int Mix3TrainGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *h = arg<const float>(params, 0), *w = arg<const float>(params, 1);
  const float *c = arg<const float>(params, 2), *a = arg<const float>(params, 3);
  const float *dy = arg<const float>(params, 4);
  float *dh = arg<float>(params, 5), *dw = arg<float>(params, 6), *dc = arg<float>(params, 7);
  float *da = arg<float>(params, 8);
  const Dims d = dims_of(shapes[0]);
  const int64_t stride = d.n * d.c;
  parallel_for(stride, 5 * d.hw, [&](int64_t plane) {
    const float a0 = a[plane], a1 = a[stride + plane], a2 = a[2 * stride + plane];
    const int64_t o = plane * d.hw;
    LaneSums<3> sums;
    weighted_sum_grad(d.hw, dy + o, {h + o, w + o, c + o}, {a0, a1, a2}, {dh + o, dw + o, dc + o}, sums);
    for (int j = 0; j < 3; ++j) da[j * stride + plane] = static_cast<float>(sums.total(j));
  });
  return 0;
}

// 1x1 convolution, stride 1, one group (pointwise_gemm.h): inputs x (N, K, H, W) and w (M, K, 1, 1);
// output y (N, M, H, W).
int PointwiseConvTrain(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  const int64_t *x = shapes[0], *w = shapes[1];
  bimlp::PointwiseGemm(arg<const float>(params, 1), w[0], w[1], w[1], 1)
      .run(arg<const float>(params, 0), arg<float>(params, 2), x[0], x[2] * x[3]);
  return 0;
}

// Its input gradient: inputs dy (N, M, H, W) and w (M, K, 1, 1); output dx (N, K, H, W) = w^T dy.
int PointwiseConvTrainInputGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  const int64_t *dy = shapes[0], *w = shapes[1];
  bimlp::PointwiseGemm(arg<const float>(params, 1), w[1], w[0], 1, w[1])
      .run(arg<const float>(params, 0), arg<float>(params, 2), dy[0], dy[2] * dy[3]);
  return 0;
}

// Its weight gradient: inputs dy (N, M, H, W) and x (N, K, H, W); output dw (M, K, 1, 1).
int PointwiseConvTrainFilterGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  const int64_t *dy = shapes[0], *x = shapes[1];
  bimlp::pointwise_filter_grad(arg<const float>(params, 0), arg<const float>(params, 1), arg<float>(params, 2), dy[0],
                               dy[1], x[1], dy[2] * dy[3]);
  return 0;
}

// out[n, g] = sum_i sum_t w[g, i, t] * x[n, g * per_group + i, . + t - half], summed input
// channel by input channel and taps in order, as oneDNN's kernel for these layers.
int LineConv(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  const float *x = arg<const float>(params, 0), *weight = arg<const float>(params, 1);
  float *y = arg<float>(params, 2);
  const int64_t batch = shapes[0][0], cin = shapes[0][1], cout = shapes[1][0], per_group = shapes[1][1];
  const LineLayout l(shapes[0], shapes[1]);
  const int64_t hw = l.h * l.w;
  // Output plane (n, g) for plane = n * cout + g.
  bimlp::parallel_for(batch * cout, 4 * per_group * l.size, [&](int64_t begin, int64_t end) {
    std::vector<float> padded(l.padded_size(), 0.0f), acc(l.size);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / cout, g = plane % cout;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t i = 0; i < per_group; ++i) {
        pad_plane(l, x + (n * cin + g * per_group + i) * hw, padded.data());
        const float *wt = weight + (g * per_group + i) * l.taps;
        for (int64_t t = 0; t < l.taps; ++t) {
          const float v = wt[t];
          const float *in = padded.data() + t * l.step;
          for (int64_t j = 0; j < l.size; ++j) acc[j] = acc[j] + in[j] * v;
        }
      }
      take_acc(l, acc.data(), y + plane * hw);
    }
  });
  return 0;
}

// Inputs x, weight, dy; outputs dx (x's shape) and dweight (weight's shape). dx gathers, for each
// padded position, the taps that read it; each chunk of dy is read once for every tap's weight sum.
int LineConvGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *x = arg<const float>(params, 0), *weight = arg<const float>(params, 1);
  const float *dy = arg<const float>(params, 2);
  float *dx = arg<float>(params, 3), *dweight = arg<float>(params, 4);
  const int64_t batch = shapes[0][0], cin = shapes[0][1], cout = shapes[1][0], per_group = shapes[1][1];
  const LineLayout l(shapes[0], shapes[1]);
  const int64_t hw = l.h * l.w, lead = (l.taps - 1) * l.step;
  channel_blocks(cout, 4 * batch * per_group * l.size, [&](int64_t g0, int64_t g1) {
    // grad: dy in the accumulator layout after `lead` zeros, so that padded position p reads tap t's
    // gradient at p + lead - t * step.
    std::vector<float> padded(l.padded_size(), 0.0f), grad(lead + l.padded_size() + kChunk, 0.0f);
    std::vector<float> dpadded(l.padded_size());
    std::vector<LaneSums<1>> dw((g1 - g0) * per_group * l.taps);
    std::vector<int64_t> offset;
    for (int64_t t = 0; t < l.taps; ++t) offset.push_back(lead - t * l.step);
    const float *g_acc = grad.data() + lead;
    for (int64_t n = 0; n < batch; ++n)
      for (int64_t g = g0; g < g1; ++g) {
        put_acc(l, dy + (n * cout + g) * hw, grad.data() + lead);  // columns past w stay 0
        for (int64_t i = 0; i < per_group; ++i) {
          pad_plane(l, x + (n * cin + g * per_group + i) * hw, padded.data());
          const float *wt = weight + (g * per_group + i) * l.taps;
          shifted_sum(l.padded_size(), grad.data(), offset, wt, dpadded.data());
          unpad_plane(l, dpadded.data(), dx + (n * cin + g * per_group + i) * hw);
          // The plane's tap sums, up to kTapGroup taps at a time in registers: each chunk of the gradient
          // is read once for all of them.
          LaneSums<1> *sums = dw.data() + ((g - g0) * per_group + i) * l.taps;
          for (int64_t t0 = 0; t0 < l.taps; t0 += kTapGroup) {
            const int64_t group = std::min(kTapGroup, l.taps - t0);
            const float *taps = padded.data() + t0 * l.step;
            Lanes acc[kTapGroup] = {};
            int64_t j = 0;
            for (; j + kLanes <= l.size; j += kLanes) {
              Lanes grad_j, tap;
              std::memcpy(&grad_j, g_acc + j, sizeof grad_j);
              for (int64_t k = 0; k < kTapGroup; ++k)
                if (k < group) {
                  std::memcpy(&tap, taps + k * l.step + j, sizeof tap);
                  acc[k] += grad_j * tap;
                }
            }
            for (; j < l.size; ++j)
              for (int64_t k = 0; k < group; ++k) acc[k][0] += g_acc[j] * taps[k * l.step + j];
            for (int64_t k = 0; k < group; ++k) sums[t0 + k].add_lanes(0, acc[k]);
          }
        }
      }
    for (int64_t k = 0; k < (g1 - g0) * per_group * l.taps; ++k)
      dweight[g0 * per_group * l.taps + k] = static_cast<float>(dw[k].total(0));
  });
  return 0;
}

// Forward of Downsample's pooling (Pool4Planes of fused_common.h); outputs y (N, C, ceil(H/2),
// ceil(W/2)) and the argmax indices (int32, shape (N, C, 4, OH*OW)), where the backward routes dy / 4.
int Pool4Train(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  BimlpCountCall(1);
  const float *x = arg<const float>(params, 0);
  float *y = arg<float>(params, 1);
  int32_t *argmax = arg<int32_t>(params, 2);
  const int64_t planes = shapes[0][0] * shapes[0][1], h = shapes[0][2], w = shapes[0][3];
  const int64_t size = ((h + 1) / 2) * ((w + 1) / 2);
  bimlp::parallel_for(planes, 8 * h * w, [&](int64_t begin, int64_t end) {
    Pool4Planes pool(h, w);
    for (int64_t plane = begin; plane < end; plane += Pool4Planes::kBlock)
      pool.run(x + plane * h * w, y + plane * size, argmax + plane * 4 * size,
               std::min(Pool4Planes::kBlock, end - plane));
  });
  return 0;
}

// Inputs x (for its shape), argmax, dy; output dx: each dy / 4 added at its four maxima.
int Pool4TrainGrad(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const int32_t *argmax = arg<const int32_t>(params, 1);
  const float *dy = arg<const float>(params, 2);
  float *dx = arg<float>(params, 3);
  const int64_t planes = shapes[0][0] * shapes[0][1], h = shapes[0][2], w = shapes[0][3];
  const int64_t size = ((h + 1) / 2) * ((w + 1) / 2);
  parallel_for(planes, 8 * h * w, [&](int64_t plane) {
    float *out = dx + plane * h * w;
    std::fill(out, out + h * w, 0.0f);
    const int32_t *index = argmax + plane * 4 * size;
    const float *grad = dy + plane * size;
    for (int j = 0; j < 4; ++j)
      for (int64_t i = 0; i < size; ++i)
        if (index[j * size + i] >= 0) out[index[j * size + i]] += grad[i] / 4.0f;
  });
  return 0;
}

}  // extern "C"
