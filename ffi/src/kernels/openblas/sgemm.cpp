// MLX's CPU matmul (float32, including the products inside MLX's attention) calls cblas_sgemm,
// which libmlx.so leaves for the dynamic linker to find; the wheel bundles the netlib reference
// BLAS for it (~1-2 GFLOP/s). The shim exports its own cblas_sgemm: libmlx.so is a dependency
// of the shim, so the shim comes first in the lookup order and receives MLX's calls.
//
// We answer with OpenBLAS (PyPI's scipy-openblas32, whose symbols carry a scipy_ prefix, so
// nothing else in the process binds to it by accident), one OpenBLAS thread per call and the
// call split across our own blocking pool: OpenBLAS's spinning threads collapse when the
// machine's cores are shared. With MLX_KERNELS=mlx the call goes on to the bundled BLAS.
#include <dlfcn.h>

#include <algorithm>
#include <mutex>

#include "../kernels.h"
#include "../thread_pool.h"
#include "openblas.h"

namespace {

using Sgemm = void (*)(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, blasint, blasint, blasint,
                       float, const float*, blasint, const float*, blasint, float, float*, blasint);

// The cblas_sgemm we would otherwise have received: the next definition after ours.
Sgemm bundled_sgemm() {
  static const Sgemm next = reinterpret_cast<Sgemm>(dlsym(RTLD_NEXT, "cblas_sgemm"));
  return next;
}

void openblas_single_threaded() {
  static std::once_flag once;
  std::call_once(once, [] { scipy_openblas_set_num_threads(1); });
}

// Below this many multiply-adds a split costs more than it saves.
constexpr double kMinSplitWork = 1 << 18;

}  // namespace

namespace kernels {

// A single row (a decode step) goes to sgemv: sgemm would pack all of B first, a copy as large
// as the product's whole work.
void openblas_sgemm(CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, blasint m, blasint n, blasint k, float alpha,
                    const float* a, blasint lda, const float* b, blasint ldb, float beta, float* c, blasint ldc) {
  // Also for callers other than MLX's (the half-precision products): a first call with OpenBLAS's
  // own threads on left them spinning beside our pool, a quarter of a prompt's CPU time.
  openblas_single_threaded();
  if (m == 1) {
    // c[n] = op(B)ᵀ-wise: with B [k, n] (no transpose) c = Bᵀ a; with B stored [n, k], c = B a.
    const blasint a_step = trans_a == CblasNoTrans ? 1 : lda;
    if (trans_b == CblasNoTrans) scipy_cblas_sgemv(CblasRowMajor, CblasTrans, k, n, alpha, b, ldb, a, a_step, beta, c, 1);
    else scipy_cblas_sgemv(CblasRowMajor, CblasNoTrans, n, k, alpha, b, ldb, a, a_step, beta, c, 1);
    return;
  }
  scipy_cblas_sgemm(CblasRowMajor, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace kernels

extern "C" __attribute__((visibility("default"))) void cblas_sgemm(
    CBLAS_ORDER order, CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, blasint m, blasint n,
    blasint k, float alpha, const float* a, blasint lda, const float* b, blasint ldb, float beta,
    float* c, blasint ldc) {
  if (!kernels::enabled()) {
    if (Sgemm next = bundled_sgemm()) return next(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  openblas_single_threaded();
  const int threads = kernels::thread_count();
  const double work = double(m) * n * k;
  if (order != CblasRowMajor) {
    scipy_cblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  if (threads == 1 || work < kMinSplitWork) {
    kernels::openblas_sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Split C (row-major, m x n) into blocks of whole rows or whole columns, whichever dimension
  // is longer, in multiples of 16 so every part keeps OpenBLAS's full-width micro-kernel.
  const bool by_rows = m >= n;
  const blasint extent = by_rows ? m : n;
  const blasint step = std::max<blasint>(16, (extent / threads + 15) / 16 * 16);
  const int parts = static_cast<int>((extent + step - 1) / step);
  kernels::parallel_for(parts, [&](int part, int) {
    const blasint start = part * step;
    const blasint count = std::min(step, extent - start);
    if (by_rows) {
      const float* a_part = trans_a == CblasNoTrans ? a + size_t(start) * lda : a + start;
      kernels::openblas_sgemm(trans_a, trans_b, count, n, k, alpha, a_part, lda, b, ldb, beta,
                              c + size_t(start) * ldc, ldc);
    } else {
      const float* b_part = trans_b == CblasNoTrans ? b + start : b + size_t(start) * ldb;
      kernels::openblas_sgemm(trans_a, trans_b, m, count, k, alpha, a, lda, b_part, ldb, beta, c + start, ldc);
    }
  });
}
