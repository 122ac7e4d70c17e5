// One stretch of an fp32 row's logsumexp, a vector at a time: the exponentials through the
// attention kernels' vector e^x (Cephes' expf, about 1 ulp) rather than libm's, one element at a
// time, which was most of the sampler's time at 8 rows (393,216 of them a step). The including
// file defines ATTENTION_VECTOR_BYTES and LOGSUMEXP_PART_FN (see logsumexp_<isa>.cpp).
#include <algorithm>
#include <cmath>

#include "attention_vector.h"
#include "logsumexp_kernel.h"

namespace kernels {

LogSumExpPartial LOGSUMEXP_PART_FN(const float* x, int64_t n) {
  const int64_t whole = n / kLanes * kLanes;
  vf top = splat(kMinusInf);
  for (int64_t i = 0; i < whole; i += kLanes) top = max(top, load(x + i));
  float m = reduce_max(top);
  for (int64_t i = whole; i < n; ++i) m = std::max(m, x[i]);
  if (std::isinf(m)) return {m, 0.0f};  // all -inf (a fully masked row), or +inf: nothing to sum
  // Two sums, so that adding one vector does not wait on the last.
  vf even{}, odd{};
  int64_t i = 0;
  for (; i + 2 * kLanes <= whole; i += 2 * kLanes) {
    even += exp(load(x + i) - m);
    odd += exp(load(x + i + kLanes) - m);
  }
  if (i < whole) even += exp(load(x + i) - m);
  float sum = reduce_sum(even + odd);
  for (int64_t j = whole; j < n; ++j) sum += std::exp(x[j] - m);
  return {m, sum};
}

}  // namespace kernels
