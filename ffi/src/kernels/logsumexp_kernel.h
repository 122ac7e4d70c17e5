// The logsumexp primitive's per-instruction-set part (logsumexp_<isa>.cpp, all compiled from
// logsumexp_body.h): the maximum and the sum of exponentials of one stretch of an fp32 row.
#pragma once

#include <cstdint>

namespace kernels {

struct LogSumExpPartial {
  float max;
  float sum;  // Σ e^(x - max)
};

// Over x[0, n); max -inf (and sum 0) for an empty or fully masked stretch.
using LogSumExpPart = LogSumExpPartial (*)(const float* x, int64_t n);

LogSumExpPartial logsumexp_part_portable(const float*, int64_t);
#if defined(KERNELS_HAVE_AVX2)
LogSumExpPartial logsumexp_part_avx2(const float*, int64_t);
#endif
#if defined(KERNELS_HAVE_AVX512)
LogSumExpPartial logsumexp_part_avx512(const float*, int64_t);
#endif
#if defined(KERNELS_HAVE_NEON)
LogSumExpPartial logsumexp_part_neon(const float*, int64_t);
#endif

}  // namespace kernels
