// The quantized matmul kernel built for neon (see quantized_matmul_body.h).
#include "simd/neon.h"
#include "quantized_matmul_body.h"

namespace kernels {

void qmm_tile_neon(const QmmProblem& p, int n_begin, int n_end, float* scratch) {
  qmm_tile(p, n_begin, n_end, scratch);
}

}  // namespace kernels
