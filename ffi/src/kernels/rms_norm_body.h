// Rows of RMSNorm, a vector at a time: the squares summed in vector lanes, then each element
// scaled and rounded to the output's type. The including file defines ATTENTION_VECTOR_BYTES and
// RMS_NORM_ROWS_FN (see rms_norm_<isa>.cpp).
#include <cmath>
#include <cstring>

#include "attention_vector.h"
#include "rms_norm_kernel.h"
#include "vector_put.h"

namespace kernels {
namespace {

// Elements [d, d + n) of a row, n < kLanes, as one vector padded with zeros.
template <class T>
inline vf load_part(const T* p, int n) {
  T part[kLanes] = {};
  std::memcpy(part, p, sizeof(T) * static_cast<size_t>(n));
  return load(part);
}

template <class X, class W, class Out>
void rows(const X* x, const W* weight, Out* out, int64_t count, int dim, float eps) {
  const int whole = dim - dim % kLanes;
  const int rest = dim - whole;
  for (int64_t r = 0; r < count; ++r) {
    const X* in = x + r * dim;
    Out* o = out + r * dim;
    vf squares{};
    for (int d = 0; d < whole; d += kLanes) {
      const vf v = load(in + d);
      squares += v * v;
    }
    if (rest) {
      const vf v = load_part(in + whole, rest);
      squares += v * v;
    }
    const vf inv = splat(1.0f / std::sqrt(pairwise_sum(squares) / dim + eps));
    const auto scale = [&](int d, vf v) { return weight ? v * inv * load(weight + d) : v * inv; };
    for (int d = 0; d < whole; d += kLanes) put(o + d, scale(d, load(in + d)));
    if (rest) {
      Out part[kLanes];
      const vf w = weight ? load_part(weight + whole, rest) : splat(1.0f);
      put(part, load_part(in + whole, rest) * inv * w);
      std::memcpy(o + whole, part, sizeof(Out) * static_cast<size_t>(rest));
    }
  }
}

// The pointer of a type's element, for the typed loop.
template <class F>
void with_element(Element type, const void* p, F&& f) {
  switch (type) {
    case Element::f32: return f(static_cast<const float*>(p));
    case Element::f16: return f(static_cast<const _Float16*>(p));
    case Element::bf16: return f(static_cast<const BF16*>(p));
  }
}

}  // namespace

void RMS_NORM_ROWS_FN(NormTypes types, const void* x, const void* weight, void* out, int64_t count, int dim,
                      float eps) {
  with_element(types.x, x, [&](auto in) {
    with_element(types.out, out, [&](auto o) {
      using Out = std::remove_const_t<std::remove_pointer_t<decltype(o)>>;
      Out* dst = const_cast<Out*>(o);
      if (!types.has_weight) return rows(in, static_cast<const float*>(nullptr), dst, count, dim, eps);
      with_element(types.weight, weight, [&](auto w) { rows(in, w, dst, count, dim, eps); });
    });
  });
}

}  // namespace kernels
