// OpenBLAS (scipy-openblas32, scipy_-prefixed symbols) as our kernels call it.
#pragma once

#include "cblas.h"  // scipy-openblas32's header

namespace kernels {

// One row-major product c = alpha op(a) op(b) + beta c on the calling thread (one OpenBLAS thread).
void openblas_sgemm(CBLAS_TRANSPOSE trans_a, CBLAS_TRANSPOSE trans_b, blasint m, blasint n, blasint k, float alpha,
                    const float* a, blasint lda, const float* b, blasint ldb, float beta, float* c, blasint ldc);

}  // namespace kernels
