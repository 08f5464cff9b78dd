"""The 1x1 convolutions' matrix products (src/pointwise_gemm.h) stay inside their tensors.

Their last row tile and column panel are usually partial: a pack or a store that handled a whole
tile there would read or write past the end of a tensor, and still give the right values in the
network whenever the memory after it happens to be mapped. Here every tensor ends at a page that
may not be touched, so such an access ends the program; each output starts as NaN, so a value
left unwritten shows too, and the values are compared with a plain double-precision loop.
"""
import os
import shutil
import subprocess

import pytest

from src import fused

HARNESS = r"""
#include <sys/mman.h>
#include <unistd.h>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <vector>

#include "pointwise_gemm.h"

// count floats that end where a page no access is allowed to begins.
float *guarded(int64_t count) {
  const int64_t page = sysconf(_SC_PAGESIZE), bytes = count * sizeof(float);
  const int64_t pages = (bytes + page - 1) / page + 1;
  char *base = static_cast<char *>(mmap(nullptr, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                                        -1, 0));
  if (base == MAP_FAILED || mprotect(base + (pages - 1) * page, page, PROT_NONE) != 0) std::exit(3);
  return reinterpret_cast<float *>(base + (pages - 1) * page - bytes);
}

float *random_tensor(int64_t count, std::mt19937 &rng) {
  std::normal_distribution<float> normal;
  float *p = guarded(count);
  for (int64_t i = 0; i < count; ++i) p[i] = normal(rng);
  return p;
}

float *nan_tensor(int64_t count) {
  float *p = guarded(count);
  for (int64_t i = 0; i < count; ++i) p[i] = std::numeric_limits<float>::quiet_NaN();
  return p;
}

bool close(const char *what, const float *got, const std::vector<double> &expected) {
  double scale = 1e-6, worst = 0.0;
  for (double e : expected) scale = std::max(scale, std::fabs(e));
  for (size_t i = 0; i < expected.size(); ++i) {
    const double diff = std::fabs(got[i] - expected[i]);
    if (!(diff <= worst)) worst = diff;  // NaN (never written) counts as the worst
  }
  if (worst <= 1e-5 * scale) return true;
  std::printf("%s: max |diff| %g over %g\n", what, worst, scale);
  return false;
}

int main(int argc, char **argv) {
  const int64_t n = std::atol(argv[1]), k = std::atol(argv[2]), p = std::atol(argv[3]), m = std::atol(argv[4]);
  std::mt19937 rng(7);
  const float *x = random_tensor(n * k * p, rng), *w = random_tensor(m * k, rng), *dy = random_tensor(n * m * p, rng);
  float *y = nan_tensor(n * m * p), *dx = nan_tensor(n * k * p), *dw = nan_tensor(m * k);
  bimlp::PointwiseGemm(w, m, k, k, 1).run(x, y, n, p);
  bimlp::PointwiseGemm(w, k, m, 1, k).run(dy, dx, n, p);
  bimlp::pointwise_filter_grad(dy, x, dw, n, m, k, p);
  std::vector<double> y_ref(n * m * p, 0.0), dx_ref(n * k * p, 0.0), dw_ref(m * k, 0.0);
  for (int64_t s = 0; s < n; ++s)
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < k; ++c)
        for (int64_t q = 0; q < p; ++q) {
          const double xv = x[(s * k + c) * p + q], gv = dy[(s * m + r) * p + q], wv = w[r * k + c];
          y_ref[(s * m + r) * p + q] += wv * xv;
          dx_ref[(s * k + c) * p + q] += wv * gv;
          dw_ref[r * k + c] += gv * xv;
        }
  const bool ok = close("forward", y, y_ref) & close("input gradient", dx, dx_ref) &
                  close("weight gradient", dw, dw_ref);
  std::printf(ok ? "ok\n" : "wrong values\n");
  return ok ? 0 : 1;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    assert compiler is not None, "the kernels' tests need a C++ compiler"
    folder = tmp_path_factory.mktemp("pointwise")
    source, binary = folder / "harness.cc", folder / "harness"
    source.write_text(HARNESS)
    flags = [flag for flag in fused.FLAGS if flag not in ("-shared", "-fPIC")]
    subprocess.run([compiler, *flags, "-I", os.path.dirname(fused.HEADERS[0]), "-o", str(binary), str(source)],
                   check=True)
    return binary


# (samples, input channels, positions, output channels): partial row tiles and column panels,
# panels that span samples, a single column, and inputs deep enough for several blocks.
@pytest.mark.parametrize("shape", [(3, 5, 7, 13), (2, 16, 1, 7), (1, 3, 17, 1), (5, 300, 4, 6), (4, 9, 49, 20),
                                   (1, 1, 1, 1)])
def test_products_stay_inside_their_tensors(harness, shape):
    result = subprocess.run([str(harness), *map(str, shape)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", \
        f"exit {result.returncode} (-11: an access past a tensor's end): {result.stdout}{result.stderr}"
