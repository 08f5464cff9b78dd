// 1x1 convolutions of NCHW tensors as one matrix product, for the training kernels: y[n, m, p] =
// sum_k a(m, k) x[n, k, p], the columns (n, p) of all samples flattened into one long dimension so
// that 2x2 and 4x4 maps fill the vector registers as well as 14x14 ones do.
//
// The weights are packed once per call in tiles of kRows rows; the input in panels of kCols
// columns, each panel computed for every row tile while it is in the L1 cache, a tile's kRows x kCols sums held in registers. Each sum runs over k in order with fused
// multiply-adds (as oneDNN's convolutions do; the sums are not bit-identical to theirs). Panels
// are split between the kernel threads; every value is computed by the same code whichever thread
// runs it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef __FMA__
#include <immintrin.h>
#endif

#include "cpu_threads.h"

namespace bimlp {

typedef float Vec8 __attribute__((vector_size(8 * sizeof(float))));

inline Vec8 load8(const float *p) {
  Vec8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store8(float *p, Vec8 v) { std::memcpy(p, &v, sizeof v); }

inline Vec8 broadcast(float v) { return Vec8{v, v, v, v, v, v, v, v}; }

inline Vec8 multiply_add(Vec8 a, Vec8 b, Vec8 c) {
#ifdef __FMA__
  return reinterpret_cast<Vec8>(_mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b),
                                                reinterpret_cast<__m256>(c)));
#else
  return a * b + c;
#endif
}

class PointwiseGemm {
 public:
  static constexpr int64_t kRows = 6, kCols = 16;
  static constexpr int64_t kBlockValues = 1 << 16;  // packed input per block: 256 KB, within L2

  // a(m, k) = weights[m * row_stride + k * column_stride]: a (M, K) matrix or a transposed (K, M) one.
  PointwiseGemm(const float *weights, int64_t rows, int64_t depth, int64_t row_stride, int64_t column_stride)
      : rows_(rows), depth_(depth), tiles_((rows + kRows - 1) / kRows), a_(tiles_ * depth * kRows, 0.0f) {
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t k = 0; k < depth; ++k)
        a_[((m / kRows) * depth + k) * kRows + m % kRows] = weights[m * row_stride + k * column_stride];
  }

  // y (samples, rows, positions) = a x for x (samples, depth, positions). The columns go in blocks
  // of whole panels, packed together; each row tile then runs over the block's panels, so that y
  // (usually not in any cache) is written along its rows, which the hardware prefetches, rather
  // than kRows partial lines at a time in rows far apart.
  void run(const float *x, float *y, int64_t samples, int64_t positions) const {
    const int64_t columns = samples * positions;
    const int64_t block = std::max<int64_t>(1, kBlockValues / (depth_ * kCols)) * kCols;
    parallel_for((columns + block - 1) / block, (depth_ + rows_) * block, [&](int64_t begin, int64_t end) {
      thread_local std::vector<float> panels;
      panels.resize(depth_ * block);
      float out[kRows * kCols];
      for (int64_t b = begin; b < end; ++b) {
        const int64_t first = b * block, count = std::min(block, columns - first);
        for (int64_t j = 0; j < count; j += kCols)
          pack(x, positions, first + j, std::min(kCols, count - j), panels.data() + j * depth_);
        for (int64_t t = 0; t < tiles_; ++t) {
          const int64_t m0 = t * kRows, valid_rows = std::min(kRows, rows_ - m0);
          for (int64_t j = 0; j < count; j += kCols) {
            tile(a_.data() + t * depth_ * kRows, panels.data() + j * depth_, out);
            for_each_sample(positions, first + j, std::min(kCols, count - j),
                            [&](int64_t i0, int64_t n, int64_t p, int64_t run) {
                              for (int64_t i = 0; i < valid_rows; ++i)
                                std::memcpy(y + (n * rows_ + m0 + i) * positions + p, out + i * kCols + i0,
                                            run * sizeof(float));
                            });
          }
        }
      }
    });
  }

 private:
  // Calls body(j, n, p, run) for the runs of columns [first, first + count) within one sample:
  // columns first + j ... first + j + run - 1 are positions p ... p + run - 1 of sample n.
  template <typename Body>
  static void for_each_sample(int64_t positions, int64_t first, int64_t count, Body body) {
    for (int64_t j = 0; j < count;) {
      const int64_t n = (first + j) / positions, p = (first + j) % positions;
      const int64_t run = std::min(count - j, positions - p);
      body(j, n, p, run);
      j += run;
    }
  }

  // panel[k * kCols + j] = x's column first + j at depth k, for j < count. A column's sums use only
  // that column, so the ones past the count (whatever the buffer held) are computed and dropped.
  void pack(const float *x, int64_t positions, int64_t first, int64_t count, float *panel) const {
    for_each_sample(positions, first, count, [&](int64_t j, int64_t n, int64_t p, int64_t run) {
      const float *source = x + n * depth_ * positions + p;
      for (int64_t k = 0; k < depth_; ++k) std::memcpy(panel + k * kCols + j, source + k * positions, run * sizeof(float));
    });
  }

  // out (kRows x kCols) = the packed row tile a times the panel b.
  void tile(const float *a, const float *b, float *out) const {
    Vec8 c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {};
    Vec8 c30 = {}, c31 = {}, c40 = {}, c41 = {}, c50 = {}, c51 = {};
    for (int64_t k = 0; k < depth_; ++k, a += kRows, b += kCols) {
      const Vec8 b0 = load8(b), b1 = load8(b + 8);
      Vec8 ai = broadcast(a[0]);
      c00 = multiply_add(ai, b0, c00), c01 = multiply_add(ai, b1, c01);
      ai = broadcast(a[1]);
      c10 = multiply_add(ai, b0, c10), c11 = multiply_add(ai, b1, c11);
      ai = broadcast(a[2]);
      c20 = multiply_add(ai, b0, c20), c21 = multiply_add(ai, b1, c21);
      ai = broadcast(a[3]);
      c30 = multiply_add(ai, b0, c30), c31 = multiply_add(ai, b1, c31);
      ai = broadcast(a[4]);
      c40 = multiply_add(ai, b0, c40), c41 = multiply_add(ai, b1, c41);
      ai = broadcast(a[5]);
      c50 = multiply_add(ai, b0, c50), c51 = multiply_add(ai, b1, c51);
    }
    const Vec8 sums[kRows][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    for (int64_t i = 0; i < kRows; ++i)
      for (int64_t v = 0; v < 2; ++v) store8(out + i * kCols + 8 * v, sums[i][v]);
  }

  int64_t rows_, depth_, tiles_;
  std::vector<float> a_;  // [tile][k][row in tile], rows past the last one zero
};

}  // namespace bimlp
