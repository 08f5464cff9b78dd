// 1x1 convolutions of NCHW tensors as matrix products, for the training kernels: y[n, m, p] =
// sum_k a(m, k) x[n, k, p], the columns (n, p) of all samples flattened into one long dimension so
// that 2x2 and 4x4 maps fill the vector registers as well as 14x14 ones do.
//
// The weights are packed once per call in tiles of kTileRows rows; the input in panels of
// kTileCols columns, packed together in blocks of columns; each row tile runs over a block's
// panels with its kTileRows x kTileCols sums held in registers. Each sum runs over its depth in
// order with fused multiply-adds where the CPU has them (else a multiply, then an add), as
// oneDNN's convolutions do, but the sums are not bit-identical to theirs. Blocks (or, for the
// weight gradient, row tiles) are split between the kernel threads; every value is computed by
// the same code whichever thread runs it.
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

// Copies n floats of one buffer into another. The kernels copy short rows (a 14-value row of a
// plane, a panel's 16 values), where a call to memcpy costs more than the copy: fixed-size moves
// only, which the compiler inlines. The last vector overlaps the one before it (which also keeps
// the compiler from turning the loop back into a memcpy call).
inline void copy_floats(float *dst, const float *src, int64_t n) {
  if (n >= 8) {
    for (int64_t i = 0; i < n; i += 8) {
      const int64_t at = std::min(i, n - 8);
      store8(dst + at, load8(src + at));
    }
    return;
  }
  for (int64_t part = 4; part > 0; part /= 2)
    if (n & part) {
      std::memcpy(dst, src, part * sizeof(float));
      dst += part;
      src += part;
    }
}

inline Vec8 multiply_add(Vec8 a, Vec8 b, Vec8 c) {
#ifdef __FMA__
  return reinterpret_cast<Vec8>(_mm256_fmadd_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b),
                                                reinterpret_cast<__m256>(c)));
#else
  return a * b + c;
#endif
}

// Register tiles of kTileRows x kTileCols sums.
constexpr int64_t kTileRows = 6, kTileCols = 16;

// Rows [0, rows) of out (kTileRows x kTileCols, rows `stride` apart) = a b (+ out if accumulate) for a
// packed as [depth][kTileRows] and b as [depth][kTileCols]; the sums run over depth in order.
inline void tile(int64_t depth, const float *a, const float *b, float *out, int64_t stride, int64_t rows,
                 bool accumulate) {
  Vec8 c[kTileRows][2] = {};
  if (accumulate)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t v = 0; v < 2; ++v) c[i][v] = load8(out + i * stride + 8 * v);
  Vec8 c00 = c[0][0], c01 = c[0][1], c10 = c[1][0], c11 = c[1][1], c20 = c[2][0], c21 = c[2][1];
  Vec8 c30 = c[3][0], c31 = c[3][1], c40 = c[4][0], c41 = c[4][1], c50 = c[5][0], c51 = c[5][1];
  for (int64_t k = 0; k < depth; ++k, a += kTileRows, b += kTileCols) {
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
  const Vec8 sums[kTileRows][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t v = 0; v < 2; ++v) store8(out + i * stride + 8 * v, sums[i][v]);
}

// Calls body(j, n, p, run) for the runs of columns [first, first + count) of an NCHW tensor's
// flattened (sample, position) columns that lie in one sample: columns first + j ... first + j +
// run - 1 are positions p ... p + run - 1 of sample n.
template <typename Body>
void for_each_sample(int64_t positions, int64_t first, int64_t count, Body body) {
  for (int64_t j = 0; j < count;) {
    const int64_t n = (first + j) / positions, p = (first + j) % positions;
    const int64_t run = std::min(count - j, positions - p);
    body(j, n, p, run);
    j += run;
  }
}

// Values packed per block of columns, for one row tile: about 256 KB, within L2, unless a block is
// held at its minimum of kTileCols columns (inputs deeper than 4,096 channels).
constexpr int64_t kBlockValues = 1 << 16;

class PointwiseGemm {
 public:
  // a(m, k) = weights[m * row_stride + k * column_stride]: a (M, K) matrix or a transposed (K, M) one.
  PointwiseGemm(const float *weights, int64_t rows, int64_t depth, int64_t row_stride, int64_t column_stride)
      : rows_(rows), depth_(depth), tiles_((rows + kTileRows - 1) / kTileRows), a_(tiles_ * depth * kTileRows, 0.0f) {
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t k = 0; k < depth; ++k)
        a_[((m / kTileRows) * depth + k) * kTileRows + m % kTileRows] = weights[m * row_stride + k * column_stride];
  }

  // y (samples, rows, positions) = a x for x (samples, depth, positions). The columns go in blocks
  // of whole panels, packed together; each row tile then runs over the block's panels, so that y
  // (usually not in any cache) is written along its rows, which the hardware prefetches, rather
  // than kTileRows partial lines at a time in rows far apart.
  void run(const float *x, float *y, int64_t samples, int64_t positions) const {
    const int64_t columns = samples * positions;
    const int64_t block = std::max<int64_t>(1, kBlockValues / (depth_ * kTileCols)) * kTileCols;
    parallel_for((columns + block - 1) / block, (depth_ + rows_) * block, [&](int64_t begin, int64_t end) {
      thread_local std::vector<float> panels;
      panels.resize(depth_ * block);
      float out[kTileRows * kTileCols];
      for (int64_t b = begin; b < end; ++b) {
        const int64_t first = b * block, count = std::min(block, columns - first);
        for (int64_t j = 0; j < count; j += kTileCols)
          pack(x, positions, first + j, std::min(kTileCols, count - j), panels.data() + j * depth_);
        for (int64_t t = 0; t < tiles_; ++t) {
          const int64_t m0 = t * kTileRows, valid_rows = std::min(kTileRows, rows_ - m0);
          for (int64_t j = 0; j < count; j += kTileCols) {
            const float *a = a_.data() + t * depth_ * kTileRows, *b = panels.data() + j * depth_;
            // A whole panel within one sample is stored straight into y's rows.
            const int64_t n = (first + j) / positions, p = (first + j) % positions;
            if (count - j >= kTileCols && p + kTileCols <= positions) {
              tile(depth_, a, b, y + (n * rows_ + m0) * positions + p, positions, valid_rows, false);
              continue;
            }
            tile(depth_, a, b, out, kTileCols, kTileRows, false);
            for_each_sample(positions, first + j, std::min(kTileCols, count - j),
                            [&](int64_t i0, int64_t n, int64_t p, int64_t run) {
                              for (int64_t i = 0; i < valid_rows; ++i)
                                copy_floats(y + (n * rows_ + m0 + i) * positions + p, out + i * kTileCols + i0, run);
                            });
          }
        }
      }
    });
  }

 private:
  // panel[k * kTileCols + j] = x's column first + j at depth k, for j < count. A column's sums use only
  // that column, so the ones past the count (whatever the buffer held) are computed and dropped.
  void pack(const float *x, int64_t positions, int64_t first, int64_t count, float *panel) const {
    for_each_sample(positions, first, count, [&](int64_t j, int64_t n, int64_t p, int64_t run) {
      const float *source = x + n * depth_ * positions + p;
      for (int64_t k = 0; k < depth_; ++k)
        copy_floats(panel + k * kTileCols + j, source + k * positions, run);
    });
  }

  int64_t rows_, depth_, tiles_;
  std::vector<float> a_;  // [tile][k][row in tile], rows past the last one zero
};


// The weight gradient of a 1x1 convolution: dw (M, K) = sum over every sample and position of
// dy[n, m, p] x[n, k, p], for dy (N, M, P) and x (N, K, P). As c = a b^T over the columns (n, p),
// the rows of c split between the threads: the larger of M and K, so that the other operand,
// which every thread packs for itself, is the smaller one. Per block of columns, both operands
// are packed transposed (a column's kTileRows or kTileCols values together) and each thread adds
// the block to its register tiles, which stay in a buffer of their own between blocks: every sum
// runs over the columns in order.
inline void pointwise_filter_grad(const float *dy, const float *x, float *dw, int64_t samples, int64_t m, int64_t k,
                                  int64_t positions) {
  const bool rows_are_m = m >= k;
  const float *a = rows_are_m ? dy : x, *b = rows_are_m ? x : dy;
  const int64_t rows = rows_are_m ? m : k, cols = rows_are_m ? k : m;
  const int64_t row_tiles = (rows + kTileRows - 1) / kTileRows, col_tiles = (cols + kTileCols - 1) / kTileCols;
  const int64_t columns = samples * positions;
  const int64_t block = std::max<int64_t>(kTileCols, kBlockValues / (col_tiles * kTileCols + kTileRows));
  parallel_for(row_tiles, columns * (kTileRows + cols), [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> a_packed, b_packed;
    a_packed.resize((end - begin) * block * kTileRows);
    b_packed.resize(col_tiles * block * kTileCols);
    std::vector<float> sums((end - begin) * col_tiles * kTileRows * kTileCols, 0.0f);
    for (int64_t first = 0; first < columns; first += block) {
      const int64_t count = std::min(block, columns - first);
      // b_packed[s][j][v] = b's channel s * kTileCols + v at column first + j; a_packed likewise for
      // this thread's rows. Channels past the last one keep what the buffers held: their sums are
      // dropped.
      for_each_sample(positions, first, count, [&](int64_t j, int64_t n, int64_t p, int64_t run) {
        for (int64_t c = 0; c < cols; ++c) {
          const float *source = b + (n * cols + c) * positions + p;
          float *target = b_packed.data() + ((c / kTileCols) * block + j) * kTileCols + c % kTileCols;
          for (int64_t i = 0; i < run; ++i) target[i * kTileCols] = source[i];
        }
        for (int64_t r = begin * kTileRows; r < std::min(end * kTileRows, rows); ++r) {
          const float *source = a + (n * rows + r) * positions + p;
          float *target = a_packed.data() + ((r / kTileRows - begin) * block + j) * kTileRows + r % kTileRows;
          for (int64_t i = 0; i < run; ++i) target[i * kTileRows] = source[i];
        }
      });
      for (int64_t t = 0; t < end - begin; ++t)
        for (int64_t s = 0; s < col_tiles; ++s)
          tile(count, a_packed.data() + t * block * kTileRows, b_packed.data() + s * block * kTileCols,
               sums.data() + (t * col_tiles + s) * kTileRows * kTileCols, kTileCols, kTileRows, true);
    }
    for (int64_t r = begin * kTileRows; r < std::min(end * kTileRows, rows); ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t t = r / kTileRows - begin, s = c / kTileCols;
        const float value = sums[((t * col_tiles + s) * kTileRows + r % kTileRows) * kTileCols + c % kTileCols];
        dw[rows_are_m ? r * cols + c : c * rows + r] = value;
      }
  });
}

}  // namespace bimlp
