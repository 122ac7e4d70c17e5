// The half-precision weight rows' per-instruction-set part (half_rows_<isa>.cpp, all compiled
// from half_rows_body.h): a few rows of fp32 activations against rows of float16 or bfloat16
// weights, the weights widened a vector at a time as they are read.
#pragma once

#include <cstdint>

#include "attention_kernel.h"

namespace kernels {

// y[m · ldy + n] = Σ_k x[m · K + k] · w[n · w_stride + k] for m in [0, M), n in [n0, n1): the
// weights of `type` (f16 or bf16), each row contiguous. Every output is one dot product whose
// order of additions depends on K alone, so a row of x gets the same bits alone or in a batch.
using HalfRows = void (*)(Element type, const float* x, int M, int K, const void* w, int64_t w_stride, int n0,
                          int n1, float* y, int64_t ldy);

// out[i] = w[i] widened to fp32, i in [0, n): a weight row converted for OpenBLAS (prompt rows),
// a vector at a time where MLX's float16 type converts one element at a time in software.
using HalfWiden = void (*)(Element type, const void* w, int64_t n, float* out);

// Each instruction set's pair.
struct HalfKernels {
  HalfRows rows;
  HalfWiden widen;
};

void half_rows_portable(Element, const float*, int, int, const void*, int64_t, int, int, float*, int64_t);
void half_widen_portable(Element, const void*, int64_t, float*);
#if defined(KERNELS_HAVE_AVX2)
void half_rows_avx2(Element, const float*, int, int, const void*, int64_t, int, int, float*, int64_t);
void half_widen_avx2(Element, const void*, int64_t, float*);
#endif
#if defined(KERNELS_HAVE_AVX512)
void half_rows_avx512(Element, const float*, int, int, const void*, int64_t, int, int, float*, int64_t);
void half_widen_avx512(Element, const void*, int64_t, float*);
#endif
#if defined(KERNELS_HAVE_NEON)
void half_rows_neon(Element, const float*, int, int, const void*, int64_t, int, int, float*, int64_t);
void half_widen_neon(Element, const void*, int64_t, float*);
#endif

}  // namespace kernels
