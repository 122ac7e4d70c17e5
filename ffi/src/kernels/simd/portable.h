// 8 fp32 lanes in plain C++, for any CPU: loops the compiler may vectorise for the baseline.
#pragma once

#include <cstdint>

namespace kernels {
namespace {

struct Vec {
  struct T {
    float v[8];
  };
  static constexpr int kLanes = 8;
  static T zero() { return set1(0.0f); }
  static T set1(float f) {
    T r;
    for (float& e : r.v) e = f;
    return r;
  }
  static T load(const float* p) {
    T r;
    for (int i = 0; i < 8; ++i) r.v[i] = p[i];
    return r;
  }
  static void store(float* p, T a) {
    for (int i = 0; i < 8; ++i) p[i] = a.v[i];
  }
  static T fma(T a, T b, T c) {
    for (int i = 0; i < 8; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
  }
  static float sum(T a) {
    float s = 0;
    for (float e : a.v) s += e;
    return s;
  }
  static T q4(const uint8_t* p) {
    T r;
    for (int i = 0; i < 4; ++i) {
      r.v[2 * i] = static_cast<float>(p[i] & 0xF);
      r.v[2 * i + 1] = static_cast<float>(p[i] >> 4);
    }
    return r;
  }
  // The low and the high nibbles of 8 bytes.
  static void q4_split(const uint8_t* p, T& lo, T& hi) {
    for (int i = 0; i < 8; ++i) {
      lo.v[i] = static_cast<float>(p[i] & 0xF);
      hi.v[i] = static_cast<float>(p[i] >> 4);
    }
  }
  static T q8(const uint8_t* p) {
    T r;
    for (int i = 0; i < 8; ++i) r.v[i] = static_cast<float>(p[i]);
    return r;
  }
  // IEEE half → float, subnormals, infinities and NaN included.
  static float half(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
    uint32_t exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF, bits;
    if (exponent == 0x1F) {
      bits = sign | 0x7F800000 | (mantissa << 13);
    } else if (exponent != 0) {
      bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
      bits = sign;
    } else {
      exponent = 113;
      while ((mantissa & 0x400) == 0) {
        mantissa <<= 1;
        --exponent;
      }
      bits = sign | (exponent << 23) | ((mantissa & 0x3FF) << 13);
    }
    float f;
    __builtin_memcpy(&f, &bits, sizeof(f));
    return f;
  }
  static T halves(const uint16_t* p) {
    T r;
    for (int i = 0; i < 8; ++i) r.v[i] = half(p[i]);
    return r;
  }
};

}  // namespace
}  // namespace kernels
