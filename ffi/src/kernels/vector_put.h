// Storing a vector of floats as float, float16 or bfloat16, rounded as MLX's casts round, for the
// kernels that write half-precision outputs a vector at a time (silu_mul_body.h, rms_norm_body.h),
// in the same per-instruction-set build as the including file.
#pragma once

#include <cstring>

#include "attention_vector.h"

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

}  // namespace
}  // namespace kernels
