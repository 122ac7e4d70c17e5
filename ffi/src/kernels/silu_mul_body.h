// One contiguous stretch of act(gate) · up, a vector at a time: the exponential through the
// attention kernels' vector e^x (Cephes' expf, about 1 ulp) rather than libm's, one element at a
// time, which was most of the activation's time (1536 of them per row and layer); GELU's tanh
// the same way, where MLX's ops called libm's powf and tanhf per element. The including file
// defines ATTENTION_VECTOR_BYTES and SILU_MUL_SPAN_FN (see silu_mul_<isa>.cpp).
#include <cstring>

#include "attention_vector.h"
#include "silu_mul_kernel.h"

namespace kernels {
namespace {

typedef uint32_t vu __attribute__((vector_size(kBytes)));

inline vu bits_of(vf v) {
  vu u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}
inline vf float_of(vu u) {
  vf v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

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

// Rounding to half precision, lane by lane the arithmetic of MLX's casts from float (fp16.h,
// bf16.h: round to nearest even, MLX's own NaN), so a vector stores the bits a scalar cast of the
// same floats would; F16C's conversion agrees on numbers but not on NaNs.
inline void put(float* p, vf v) { store(p, v); }
inline void put(_Float16* p, vf v) {
  const vu in = bits_of(v);
  const vu sign = (in & 0x80000000u) >> 16;
  vu exponent = in & 0x7f800000u;
  exponent = exponent < 0x38800000u ? vu{} + 0x38800000u : exponent;  // no smaller than half's normal range
  exponent += 15u << 23;
  // Adding the magnitude (scaled to overflow to inf past half's range) rounds it into the
  // mantissa bits a half keeps.
  const vf magnitude = float_of(in & 0x7fffffffu), to_inf = float_of(vu{} + 0x77800000u);
  const vu magic = bits_of(float_of(exponent) + magnitude * to_inf * float_of(vu{} + 0x08800000u));
  vu half = sign | (((magic >> 13) & 0x7c00u) + (magic & 0x0fffu));
  half = v != v ? sign | 0x7D00u : half;
  const vu16 narrow = __builtin_convertvector(half, vu16);
  std::memcpy(p, &narrow, sizeof narrow);
}
inline void put(BF16* p, vf v) {
  const vu in = bits_of(v);
  vu rounded = (in + ((in >> 16) & 1u) + 0x7fffu) >> 16;
  rounded = v != v ? vu{} + 0x7fc0u : rounded;
  const vu16 narrow = __builtin_convertvector(rounded, vu16);
  std::memcpy(p, &narrow, sizeof narrow);
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
