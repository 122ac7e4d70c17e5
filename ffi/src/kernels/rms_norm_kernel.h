// The RMSNorm primitive's per-instruction-set part (rms_norm_<isa>.cpp, all compiled from
// rms_norm_body.h): rows normalized a vector at a time.
#pragma once

#include <cstdint>

#include "attention_kernel.h"

namespace kernels {

// The element types of one RMSNorm: its input, its weight (none: a norm without one) and its output.
struct NormTypes {
  Element x, weight, out;
  bool has_weight;
};

// out[r] = x[r] / sqrt(mean(x[r]²) + eps) · weight for `rows` contiguous rows of `dim`, in fp32,
// rounded once to the output's type as MLX's casts round. A row's result depends on that row
// alone (the same bits in any batch, in any split of the rows).
using RmsNormRows = void (*)(NormTypes types, const void* x, const void* weight, void* out, int64_t rows, int dim,
                             float eps);

void rms_norm_rows_portable(NormTypes, const void*, const void*, void*, int64_t, int, float);
#if defined(KERNELS_HAVE_AVX2)
void rms_norm_rows_avx2(NormTypes, const void*, const void*, void*, int64_t, int, float);
#endif
#if defined(KERNELS_HAVE_AVX512)
void rms_norm_rows_avx512(NormTypes, const void*, const void*, void*, int64_t, int, float);
#endif
#if defined(KERNELS_HAVE_NEON)
void rms_norm_rows_neon(NormTypes, const void*, const void*, void*, int64_t, int, float);
#endif

}  // namespace kernels
