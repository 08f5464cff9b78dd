// Shared by the inference (fused_cpu.cc) and training (fused_train.cc) kernels.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

// Counts kernel calls by kind (0: inference, 1: training), so tests can tell which path a
// network ran: both give the same values, so equal outputs cannot tell.
extern "C" void BimlpCountCall(int kind);

namespace {

// Downsample's stride-2 max-pools, kernels 2, 3, 5 and 7, with MindSpore's "same" padding: an
// output of ceil(n / 2), the padding split with its extra row or column at the bottom or right.
const int kPoolKernels[4] = {2, 3, 5, 7};

// Where output i's window starts along an axis of length n: 2 i - pad.
inline int64_t pool_pad(int64_t n, int64_t kernel) {
  return std::max<int64_t>(((n + 1) / 2 - 1) * 2 + kernel - n, 0) / 2;
}

inline int64_t floor_half(int64_t d) { return (d - (d & 1)) / 2; }

// Downsample's pooling of H x W planes: (((p2 + p3) + p5) + p7) / 4 of the four max-pools and,
// when asked, per pool and output the flat index in the plane of its window's first maximum in
// row-major order (where the gradient goes; -1: nowhere).
//
// A stride-2 window's taps along an axis alternate between the even and the odd positions, so
// each plane is stored split by row and column parity, its rows and planes separated by two
// columns and rows of -inf (a tap reaches at most two positions past either end, so one gap
// serves the row or plane before it and the one after): every tap of every window is then the
// same shift of one part for all outputs of a block of planes at once, one long branch-free loop
// that vectorizes, and the padding never wins a strict comparison. The maxima are exact, so values
// equal the plain window loops' (for inputs without NaN, which a maximum here skips).
class Pool4Planes {
 public:
  static constexpr int64_t kBlock = 16;  // planes per pass

  Pool4Planes(int64_t h, int64_t w)
      : h_(h), w_(w), oh_((h + 1) / 2), ow_((w + 1) / 2), cols_(ow_ + 2), frame_((oh_ + 2) * cols_),
        parity_((kBlock * (oh_ + 2) + 3) * cols_), parts_(4 * parity_, -kInf), row_max_(2 * parity_, -kInf),
        best_(parity_), row_index_(2 * parity_), index_(parity_), twice_col_(parity_), twice_row_(parity_) {
    for (int64_t p = 0; p < parity_; ++p) {
      twice_col_[p] = static_cast<int32_t>(2 * (p % cols_ - 2));
      twice_row_[p] = static_cast<int32_t>(2 * ((p / cols_ - 2) % (oh_ + 2)) * w_);
    }
  }

  // Pools planes [0, count) of in (count <= kBlock) into out; argmax may be null.
  void run(const float *in, float *out, int32_t *argmax, int64_t count) {
    if (argmax == nullptr) {
      pool<false>(in, out, argmax, count);
    } else {
      pool<true>(in, out, argmax, count);
    }
  }

 private:
  template <bool kTaps>
  void pool(const float *in, float *out, int32_t *argmax, int64_t count) {
    for (int64_t plane = 0; plane < count; ++plane)
      for (int64_t r = 0; r < h_; ++r) {
        const float *line = in + (plane * h_ + r) * w_;
        float *even = parts_.data() + at(plane, r, 0), *odd = even + 2 * parity_;
        for (int64_t i = 0; i < w_ / 2; ++i) {
          even[i] = line[2 * i];
          odd[i] = line[2 * i + 1];
        }
        if (w_ & 1) even[w_ / 2] = line[w_ - 1];
      }
    const int64_t end = count * frame_;  // past the last output row
    for (int j = 0; j < 4; ++j) {
      const int64_t kernel = kPoolKernels[j], pad_rows = pool_pad(h_, kernel), pad_cols = pool_pad(w_, kernel);
      // Separable: each window's maximum along its rows first (both row parities), with the column of
      // its first maximum, then down its columns over those, with the flat index in the plane of the
      // first row's maximum: the taps in order keep the first maximum of the window in row-major order.
      for (int64_t parity = 0; parity < 2; ++parity) {
        const int64_t half = parity * parity_;
        max_over_taps<kTaps>(
            kernel, half + 2 * cols_, half + end, row_max_.data(), row_index_.data(),
            [&](int64_t t) {
              const int64_t d = t - pad_cols;
              return parts_.data() + (d & 1) * 2 * parity_ + floor_half(d);
            },
            [&](int64_t t, int64_t p) { return twice_col_[p - half] + static_cast<int32_t>(t - pad_cols); });
      }
      max_over_taps<kTaps>(
          kernel, 2 * cols_, end, best_.data(), index_.data(),
          [&](int64_t t) {
            const int64_t d = t - pad_rows;
            return row_max_.data() + (d & 1) * parity_ + floor_half(d) * cols_;
          },
          [&](int64_t t, int64_t p) {
            const int64_t d = t - pad_rows;
            const int32_t *row_col = row_index_.data() + (d & 1) * parity_ + floor_half(d) * cols_;
            return twice_row_[p] + static_cast<int32_t>(d * w_) + row_col[p];
          });
      for (int64_t plane = 0; plane < count; ++plane)
        for (int64_t o = 0; o < oh_; ++o)
          for (int64_t i = 0; i < ow_; ++i) {
            const int64_t q = at(plane, 2 * o, i), y = (plane * oh_ + o) * ow_ + i;
            out[y] = j == 0 ? best_[q] : out[y] + best_[q];
            if (!kTaps) continue;
            // A window of -inf alone has no maximum above kLowest: MaxPool's gradient then goes to
            // the window's first position, or nowhere (-1) when that is padding.
            const int64_t row = 2 * o - pad_rows, col = 2 * i - pad_cols;
            const int32_t index = index_[q];
            argmax[((plane * 4 + j) * oh_ + o) * ow_ + i] =
                index >= 0 ? index : (row >= 0 && col >= 0 ? static_cast<int32_t>(row * w_ + col) : -1);
          }
    }
    for (int64_t i = 0; i < count * oh_ * ow_; ++i) out[i] = out[i] / 4.0f;
  }

  static constexpr float kInf = std::numeric_limits<float>::infinity();
  // Where MindSpore's MaxPool starts a window's maximum: a window of -inf alone pools to it.
  static constexpr float kLowest = std::numeric_limits<float>::lowest();

  // m[p] = the maximum of source(t)[p] over the taps t < kernel and index[p] = candidate(t, p) of
  // the first t reaching it (-1 if none is above kLowest), for p in [begin, end). Strict comparisons
  // keep the first maximum. Both are stored on every tap, with the index chosen by a bit mask: a
  // conditional store becomes a masked store skipped by a data-dependent branch, which mispredicts.
  template <bool kTaps, typename Source, typename Candidate>
  static void max_over_taps(int64_t kernel, int64_t begin, int64_t end, float *m, int32_t *index, Source source,
                            Candidate candidate) {
    std::fill(m + begin, m + end, kLowest);
    if (kTaps) std::fill(index + begin, index + end, -1);
    for (int64_t t = 0; t < kernel; ++t) {
      const float *values = source(t);
#pragma GCC ivdep
      for (int64_t p = begin; p < end; ++p) {
        const float value = values[p], current = m[p];
        m[p] = std::max(current, value);
        if (kTaps) {
          const int32_t was = index[p], larger = -static_cast<int32_t>(value > current);
          index[p] = was ^ ((was ^ candidate(t, p)) & larger);
        }
      }
    }
  }

  // Where row `row` (of the plane) and column `col` of a column-parity part lie: the row parity's
  // half (two rows of -inf, then each plane's rows followed by two more), then the plane's rows.
  int64_t at(int64_t plane, int64_t row, int64_t col) const {
    return (row & 1) * parity_ + plane * frame_ + ((row >> 1) + 2) * cols_ + col + 2;
  }

  int64_t h_, w_, oh_, ow_, cols_, frame_, parity_;
  // parts_: [column parity][row parity][plane][frame]; row_max_, row_index_: [row parity][plane][frame];
  // best_, index_: [plane][frame]. At each place of a row parity's half: 2 i for output column i
  // and 2 o w for output row o.
  std::vector<float> parts_, row_max_, best_;
  std::vector<int32_t> row_index_, index_, twice_col_, twice_row_;
};

// sin and cos of float32 angles, equal to MindSpore's Sin/Cos: glibc's double-precision
// functions rounded to float32. A vectorizable double-precision approximation (fdlibm's
// reduction and kernels, error well below 2^-40 relative) decides the float32 result
// whenever every value within 2^-40 of it rounds to the same float32, which then includes
// glibc's value; the rare others (about 1 in 30,000) and |x| >= 2^16 call glibc itself.
void sincos_rounded(const float *x, float *sine, float *cosine, int32_t *unsure, int64_t n) {
  const double two_over_pi = 6.36619772367581382433e-01, shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double pio2_1 = 1.57079632673412561417e+00, pio2_2 = 6.07710050630396597660e-11,
               pio2_3 = 2.02226624871116645580e-21;
  const double s1 = -1.66666666666666324348e-01, s2 = 8.33333333332248946124e-03,
               s3 = -1.98412698298579493134e-04, s4 = 2.75573137070700676789e-06,
               s5 = -2.50507602534068634195e-08, s6 = 1.58969099521155010221e-10;
  const double c1 = 4.16666666666666019037e-02, c2 = -1.38888888888741095749e-03,
               c3 = 2.48015872894767294178e-05, c4 = -2.75573143513906633035e-07,
               c5 = 2.08757232129817482790e-09, c6 = -1.13596475577881948265e-11;
  const double tolerance = 9.094947017729282e-13;  // 2^-40
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    const double shifted = v * two_over_pi + shifter;
    const double k = shifted - shifter;  // nearest integer to v / (pi / 2)
    const double quadrant = k - 4.0 * std::floor(k * 0.25);  // k mod 4, exactly
    const double r = ((v - k * pio2_1) - k * pio2_2) - k * pio2_3;
    const double z = r * r;
    const double sin_r = r + r * z * (s1 + z * (s2 + z * (s3 + z * (s4 + z * (s5 + z * s6)))));
    const double cos_r = 1.0 - 0.5 * z + z * z * (c1 + z * (c2 + z * (c3 + z * (c4 + z * (c5 + z * c6)))));
    const double sin_v = quadrant == 0.0 ? sin_r : quadrant == 1.0 ? cos_r : quadrant == 2.0 ? -sin_r : -cos_r;
    const double cos_v = quadrant == 0.0 ? cos_r : quadrant == 1.0 ? -sin_r : quadrant == 2.0 ? -cos_r : sin_r;
    const double ts = std::fabs(sin_v) * tolerance + 1e-300, tc = std::fabs(cos_v) * tolerance + 1e-300;
    sine[i] = static_cast<float>(sin_v);
    cosine[i] = static_cast<float>(cos_v);
    unsure[i] = (static_cast<float>(sin_v - ts) != static_cast<float>(sin_v + ts)) |
                (static_cast<float>(cos_v - tc) != static_cast<float>(cos_v + tc)) | (std::fabs(v) >= 65536.0);
  }
  for (int64_t i = 0; i < n; ++i) {
    if (unsure[i]) {
      double s, c;
      sincos(static_cast<double>(x[i]), &s, &c);
      sine[i] = static_cast<float>(s);
      cosine[i] = static_cast<float>(c);
    }
  }
}

}  // namespace
