// Shared by the inference (fused_cpu.cc) and training (fused_train.cc) kernels.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

// Counts kernel calls by kind (0: inference, 1: training), so tests can tell which path a
// network ran: both give the same values, so equal outputs cannot tell.
extern "C" void BimlpCountCall(int kind);

namespace {

// Downsample's stride-2 max-pools, kernels 2, 3, 5 and 7, with MindSpore's "same" padding: an
// output of ceil(n / 2), the padding split with its extra row or column at the bottom or right.
const int kPoolKernels[4] = {2, 3, 5, 7};

// The input range [begin(i), end(i)) of output i's window along one axis of length n.
struct PoolWindows {
  int64_t n, kernel, pad;
  PoolWindows(int64_t n, int64_t kernel)
      : n(n), kernel(kernel), pad(std::max<int64_t>(((n + 1) / 2 - 1) * 2 + kernel - n, 0) / 2) {}
  int64_t begin(int64_t i) const { return std::max<int64_t>(i * 2 - pad, 0); }
  int64_t end(int64_t i) const { return std::min<int64_t>(i * 2 - pad + kernel, n); }
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
