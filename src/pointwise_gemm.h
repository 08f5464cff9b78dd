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

typedef int32_t Index8 __attribute__((vector_size(8 * sizeof(int32_t))));

// column[j][i] = row[i][j] for an 8 x 8 block: pairs of rows interleaved, then pairs of pairs,
// then the 128-bit halves.
inline void transpose8(const Vec8 (&row)[8], Vec8 (&column)[8]) {
  const Index8 low = {0, 8, 1, 9, 4, 12, 5, 13}, high = {2, 10, 3, 11, 6, 14, 7, 15};
  const Index8 even = {0, 1, 8, 9, 4, 5, 12, 13}, odd = {2, 3, 10, 11, 6, 7, 14, 15};
  const Index8 first = {0, 1, 2, 3, 8, 9, 10, 11}, second = {4, 5, 6, 7, 12, 13, 14, 15};
  Vec8 pairs[8], quads[8];
  for (int i = 0; i < 8; i += 2) {
    pairs[i] = __builtin_shuffle(row[i], row[i + 1], low);
    pairs[i + 1] = __builtin_shuffle(row[i], row[i + 1], high);
  }
  for (int i = 0; i < 8; i += 4)
    for (int h = 0; h < 2; ++h) {
      quads[i + 2 * h] = __builtin_shuffle(pairs[i + h], pairs[i + h + 2], even);
      quads[i + 2 * h + 1] = __builtin_shuffle(pairs[i + h], pairs[i + h + 2], odd);
    }
  for (int j = 0; j < 4; ++j) {
    column[j] = __builtin_shuffle(quads[j], quads[j + 4], first);
    column[j + 4] = __builtin_shuffle(quads[j], quads[j + 4], second);
  }
}

// dst[(c / kWidth) * tile_stride + i * kWidth + c % kWidth] = src[c * src_stride + i] for channels
// c < channels and positions i < run: the channels become the lanes of tiles kWidth wide, a
// position's lanes together, through 8 x 8 transposes. A group of channels (8, or a whole tile if
// narrower) that the channels do not fill gets zeros in its other lanes; lanes past the last group
// keep what the buffer held.
template <int64_t kWidth>
void pack_transposed(const float *src, int64_t src_stride, int64_t channels, int64_t run, float *dst,
                     int64_t tile_stride) {
  constexpr int64_t kGroup = kWidth < 8 ? kWidth : 8;
  static_assert(kWidth % kGroup == 0, "a group of lanes lies in one tile");
  for (int64_t c0 = 0; c0 < channels; c0 += kGroup) {
    float *lanes = dst + (c0 / kWidth) * tile_stride + c0 % kWidth;
    const int64_t valid = std::min(kGroup, channels - c0);
    int64_t i = 0;
    for (; i + 8 <= run; i += 8) {
      Vec8 rows[8] = {}, columns[8];
      for (int64_t c = 0; c < valid; ++c) rows[c] = load8(src + (c0 + c) * src_stride + i);
      transpose8(rows, columns);
      for (int64_t k = 0; k < 8; ++k) std::memcpy(lanes + (i + k) * kWidth, &columns[k], kGroup * sizeof(float));
    }
    for (; i < run; ++i)
      for (int64_t c = 0; c < valid; ++c) lanes[i * kWidth + c] = src[(c0 + c) * src_stride + i];
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
      // this thread's rows. The sums of lanes past the last channel are dropped.
      for_each_sample(positions, first, count, [&](int64_t j, int64_t n, int64_t p, int64_t run) {
        pack_transposed<kTileCols>(b + n * cols * positions + p, positions, cols, run, b_packed.data() + j * kTileCols,
                                   block * kTileCols);
        const int64_t r0 = begin * kTileRows;
        pack_transposed<kTileRows>(a + (n * rows + r0) * positions + p, positions, std::min(end * kTileRows, rows) - r0,
                                   run, a_packed.data() + j * kTileRows, block * kTileRows);
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
