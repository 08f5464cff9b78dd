// Binary 1x1 convolutions on packed bits for BiMLP's opt-in xnor engine (MindSpore "aot"
// custom operators, registered in src/fused.py; weights packed by src/weight_cache.py).
//
// A binary layer computes y[o, p] = sum_c q[c, p] * wb[o, c] with activations
// q = rint(clip(x + bias, -1, 1)) in {-1, 0, +1} and weights wb = sign(W) * scale[o]. Here the
// activations are two bit planes per position (nonzero, negative: 64 channels a word), the
// weights their sign bits (and, only for layers with exact zeros, a nonzero plane), and
//   sum_c q w = popcount(nonzero) - 2 popcount(nonzero & (negative ^ weight negative))
// is an exact integer, multiplied once by the channel's scale. oneDNN's float convolution rounds
// each partial sum instead, so the two differ by float rounding only.
//
// Vectorized with AVX2 where the compiler targets it (popcount of bytes by table lookup, 4
// positions a vector), portable C++ otherwise.
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "cpu_threads.h"

namespace {

using bimlp::parallel_for;

// Activations of one image: for each of `words` 64-channel words, a row of P positions.
struct PackedImage {
  std::vector<uint64_t> nonzero, negative;
  std::vector<int32_t> nonzero_count;  // per position: popcount of all its nonzero words
};

// The 8x8 bit matrix transposed: bit j of byte i becomes bit i of byte j.
inline uint64_t transpose_bits(uint64_t x) {
  uint64_t t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAULL;
  x = x ^ t ^ (t << 7);
  t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCULL;
  x = x ^ t ^ (t << 14);
  t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ULL;
  return x ^ t ^ (t << 28);
}

// Bits of one channel at one position: nonzero where v > 0.5 or v < -0.5, negative where
// v < -0.5, for v = x + bias rounded to float as MoveBinarize computes it (rint(clip(v, -1, 1))
// rounds the ties +-0.5 to 0).
inline void set_bits(float v, uint64_t bit, uint64_t *nonzero, uint64_t *negative) {
  *nonzero |= (v > 0.5f || v < -0.5f) ? bit : 0;
  *negative |= v < -0.5f ? bit : 0;
}

#ifdef __AVX2__
// Words of 8 positions p.. for the channels [c0, c0 + count) (count <= 64): for each channel
// a byte of the 8 positions' bits (compare and movemask), then per 8 channels the 8x8 bit
// matrix transposed, and the 8x8 byte matrix transposed so that word j holds position j.
void pack_eight_positions(const float *x, const float *bias, int64_t c0, int64_t count, int64_t positions,
                          int64_t p, uint64_t *nonzero, uint64_t *negative) {
  alignas(16) uint8_t nz_bytes[64] = {0}, neg_bytes[64] = {0};
  const __m256 half = _mm256_set1_ps(0.5f), minus_half = _mm256_set1_ps(-0.5f);
  for (int64_t c = 0; c < count; ++c) {
    const __m256 v = _mm256_add_ps(_mm256_loadu_ps(x + (c0 + c) * positions + p), _mm256_set1_ps(bias[c0 + c]));
    const __m256 neg = _mm256_cmp_ps(v, minus_half, _CMP_LT_OQ);
    nz_bytes[c] = static_cast<uint8_t>(_mm256_movemask_ps(_mm256_or_ps(_mm256_cmp_ps(v, half, _CMP_GT_OQ), neg)));
    neg_bytes[c] = static_cast<uint8_t>(_mm256_movemask_ps(neg));
  }
  const uint8_t *planes[2] = {nz_bytes, neg_bytes};
  uint64_t *outputs[2] = {nonzero, negative};
  for (int plane = 0; plane < 2; ++plane) {
    __m128i rows[8];
    for (int k = 0; k < 8; ++k) {  // row k: channels 8k..8k+7, byte j = their bits at position j
      uint64_t block;
      std::memcpy(&block, planes[plane] + 8 * k, 8);
      rows[k] = _mm_cvtsi64_si128(static_cast<int64_t>(transpose_bits(block)));
    }
    const __m128i a0 = _mm_unpacklo_epi8(rows[0], rows[1]), a1 = _mm_unpacklo_epi8(rows[2], rows[3]);
    const __m128i a2 = _mm_unpacklo_epi8(rows[4], rows[5]), a3 = _mm_unpacklo_epi8(rows[6], rows[7]);
    const __m128i b0 = _mm_unpacklo_epi16(a0, a1), b1 = _mm_unpackhi_epi16(a0, a1);
    const __m128i b2 = _mm_unpacklo_epi16(a2, a3), b3 = _mm_unpackhi_epi16(a2, a3);
    __m128i *out = reinterpret_cast<__m128i *>(outputs[plane] + p);
    _mm_storeu_si128(out, _mm_unpacklo_epi32(b0, b2));
    _mm_storeu_si128(out + 1, _mm_unpackhi_epi32(b0, b2));
    _mm_storeu_si128(out + 2, _mm_unpacklo_epi32(b1, b3));
    _mm_storeu_si128(out + 3, _mm_unpackhi_epi32(b1, b3));
  }
}
#endif

// Packs rint(clip(x + bias, -1, 1)) of one image (C x P floats) into PackedImage's bit planes.
void pack_image(const float *x, const float *bias, int64_t channels, int64_t positions, PackedImage *out) {
  const int64_t words = (channels + 63) / 64;
  out->nonzero.assign(words * positions, 0);
  out->negative.assign(words * positions, 0);
  for (int64_t w = 0; w < words; ++w) {
    const int64_t c0 = w * 64, count = std::min<int64_t>(64, channels - c0);
    uint64_t *nonzero = out->nonzero.data() + w * positions, *negative = out->negative.data() + w * positions;
    int64_t p = 0;
#ifdef __AVX2__
    for (; p + 8 <= positions; p += 8) pack_eight_positions(x, bias, c0, count, positions, p, nonzero, negative);
#endif
    for (int64_t c = 0; c < count; ++c) {
      const float b = bias[c0 + c], *row = x + (c0 + c) * positions;
      for (int64_t q = p; q < positions; ++q) set_bits(row[q] + b, uint64_t{1} << c, nonzero + q, negative + q);
    }
  }
  out->nonzero_count.assign(positions, 0);
  for (int64_t w = 0; w < words; ++w)
    for (int64_t q = 0; q < positions; ++q)
      out->nonzero_count[q] += __builtin_popcountll(out->nonzero[w * positions + q]);
}

#ifdef __AVX2__
inline __m256i popcount_bytes(__m256i v) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  return _mm256_add_epi8(_mm256_shuffle_epi8(table, _mm256_and_si256(v, low)),
                         _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
}

// sum_w popcount(nonzero & (negative ^ weight)) of 4 positions p.., one per 64-bit lane.
inline __m256i differing_four(const PackedImage &a, const uint64_t *weight_negative, int64_t words,
                              int64_t positions, int64_t p) {
  __m256i total = _mm256_setzero_si256();
  for (int64_t w0 = 0; w0 < words; w0 += 31) {  // bytes count at most 8 a word: 31 words fit
    __m256i bytes = _mm256_setzero_si256();
    for (int64_t w = w0; w < std::min(words, w0 + 31); ++w) {
      const __m256i nz = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(a.nonzero.data() + w * positions + p));
      const __m256i neg = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(a.negative.data() + w * positions + p));
      const __m256i wn = _mm256_set1_epi64x(static_cast<int64_t>(weight_negative[w]));
      bytes = _mm256_add_epi8(bytes, popcount_bytes(_mm256_and_si256(nz, _mm256_xor_si256(neg, wn))));
    }
    total = _mm256_add_epi64(total, _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
  }
  return total;
}

// y[p..p+7] = scale * (count - 2 differing) for 8 positions: the two halves' 64-bit sums
// interleaved into one vector of 8 int32 and converted at once.
inline void dense_eight(const PackedImage &a, const uint64_t *weight_negative, int64_t words, int64_t positions,
                        int64_t p, float scale, float *y) {
  const __m256i first = differing_four(a, weight_negative, words, positions, p);
  const __m256i second = differing_four(a, weight_negative, words, positions, p + 4);
  const __m256i both = _mm256_permutevar8x32_epi32(_mm256_or_si256(first, _mm256_slli_epi64(second, 32)),
                                                   _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
  const __m256i count = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(a.nonzero_count.data() + p));
  const __m256i k = _mm256_sub_epi32(count, _mm256_add_epi32(both, both));
  _mm256_storeu_ps(y + p, _mm256_mul_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(k)));
}
#endif

// One output channel of one image: y[p] = scale * sum_c q[c, p] wb[c] / scale, all positions.
void output_channel(const PackedImage &a, const uint64_t *weight_negative, const uint64_t *weight_nonzero,
                    int64_t channels, int64_t positions, float scale, float *y) {
  const int64_t words = (channels + 63) / 64;
  bool dense = true;  // no exact-zero weight: the nonzero plane is all ones over the channels
  for (int64_t w = 0; w < words; ++w) {
    const int64_t valid = std::min<int64_t>(64, channels - w * 64);
    const uint64_t mask = valid == 64 ? ~uint64_t{0} : (uint64_t{1} << valid) - 1;
    dense = dense && (weight_nonzero[w] & mask) == mask;
  }
  int64_t p = 0;
  if (dense) {
#ifdef __AVX2__
    for (; p + 8 <= positions; p += 8) dense_eight(a, weight_negative, words, positions, p, scale, y);
#endif
    for (; p < positions; ++p) {
      int64_t differ = 0;
      for (int64_t w = 0; w < words; ++w) {
        const int64_t at = w * positions + p;
        differ += __builtin_popcountll(a.nonzero[at] & (a.negative[at] ^ weight_negative[w]));
      }
      y[p] = scale * static_cast<float>(a.nonzero_count[p] - 2 * differ);
    }
    return;
  }
  for (; p < positions; ++p) {
    int64_t both = 0, differ = 0;
    for (int64_t w = 0; w < words; ++w) {
      const uint64_t nz = a.nonzero[w * positions + p] & weight_nonzero[w];
      both += __builtin_popcountll(nz);
      differ += __builtin_popcountll(nz & (a.negative[w * positions + p] ^ weight_negative[w]));
    }
    y[p] = scale * static_cast<float>(both - 2 * differ);
  }
}

}  // namespace

extern "C" {

// y = conv1x1(rint(clip(x + bias, -1, 1)), sign(W) * scale) from x (N, C, H, W), bias (C) and the
// packed weights: int64 words (O, 2, ceil(C / 64)), plane 0 the negative signs, plane 1 the
// nonzero weights (bit c % 64 of word c / 64), and scale (O). Output (N, O, H, W).
int XnorConv1x1(int, void **params, int *, int64_t **shapes, const char **, void *, void *) {
  const float *x = static_cast<const float *>(params[0]), *bias = static_cast<const float *>(params[1]);
  const uint64_t *bits = static_cast<const uint64_t *>(params[2]);
  const float *scale = static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  const int64_t n = shapes[0][0], channels = shapes[0][1], positions = shapes[0][2] * shapes[0][3];
  const int64_t outputs = shapes[2][0], words = shapes[2][2];
  // Kept across calls (per calling thread): the packed planes of a batch reach megabytes, which
  // fresh allocations would map and fault in again at every layer.
  thread_local std::vector<PackedImage> kept;
  if (static_cast<int64_t>(kept.size()) < n) kept.resize(n);
  std::vector<PackedImage> &images = kept;  // the worker threads must see this thread's buffers
  parallel_for(n, channels * positions, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      pack_image(x + i * channels * positions, bias, channels, positions, &images[i]);
  });
  parallel_for(n * outputs, words * positions * 4, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / outputs, o = item % outputs;
      output_channel(images[i], bits + o * 2 * words, bits + (o * 2 + 1) * words, channels, positions, scale[o],
                     y + item * positions);
    }
  });
  return 0;
}

}  // extern "C"
