// One contiguous stretch of act(gate) · up, a vector at a time: the exponential through the
// attention kernels' vector e^x (Cephes' expf, about 1 ulp) rather than libm's, one element at a
// time, which was most of the activation's time (1536 of them per row and layer); GELU's tanh
// the same way, where MLX's ops called libm's powf and tanhf per element. The including file
// defines ATTENTION_VECTOR_BYTES and SILU_MUL_SPAN_FN (see silu_mul_<isa>.cpp).
#include <cstring>

#include "attention_vector.h"
#include "silu_mul_kernel.h"
#include "vector_put.h"

namespace kernels {
namespace {

// silu(g) · u = g / (1 + e^-g) · u, as the scalar form writes it.
inline vf silu_mul(vf g, vf u) { return g / (1.0f + exp(-g)) * u; }

// gelu_tanh(g) · u with gelu_tanh(g) = g/2 · (1 + tanh(y)), y = √(2/π) · (g + 0.044715 g³): since
// (1 + tanh(y)) / 2 = 1 / (1 + e^-2y), the same form as SiLU's.
inline vf gelu_tanh_mul(vf g, vf u) {
  const vf y = 0.7978845608028654f * (g + 0.044715f * g * g * g);
  return g / (1.0f + exp(-2.0f * y)) * u;
}

template <GateActivation Act>
inline vf activate(vf g, vf u) {
  if constexpr (Act == GateActivation::silu) return silu_mul(g, u);
  else return gelu_tanh_mul(g, u);
}

template <GateActivation Act, class T>
void span(const T* gate, const T* up, T* out, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) put(out + i, activate<Act>(load(gate + i), load(up + i)));
  if (i == n) return;
  // The last, partial vector through the same lanes, padded with zeros.
  T g[kLanes] = {}, u[kLanes] = {}, o[kLanes];
  const size_t bytes = sizeof(T) * static_cast<size_t>(n - i);
  std::memcpy(g, gate + i, bytes);
  std::memcpy(u, up + i, bytes);
  put(o, activate<Act>(load(g), load(u)));
  std::memcpy(out + i, o, bytes);
}

template <GateActivation Act>
void typed_span(Element type, const void* gate, const void* up, void* out, int64_t n) {
  switch (type) {
    case Element::f32:
      span<Act>(static_cast<const float*>(gate), static_cast<const float*>(up), static_cast<float*>(out), n);
      break;
    case Element::f16:
      span<Act>(static_cast<const _Float16*>(gate), static_cast<const _Float16*>(up), static_cast<_Float16*>(out), n);
      break;
    case Element::bf16:
      span<Act>(static_cast<const BF16*>(gate), static_cast<const BF16*>(up), static_cast<BF16*>(out), n);
      break;
  }
}

}  // namespace

void SILU_MUL_SPAN_FN(GateActivation act, Element type, const void* gate, const void* up, void* out, int64_t n) {
  if (act == GateActivation::silu) typed_span<GateActivation::silu>(type, gate, up, out, n);
  else typed_span<GateActivation::gelu_tanh>(type, gate, up, out, n);
}

}  // namespace kernels
