// 8 fp32 lanes as two Advanced SIMD registers (arm64). Include only from *_neon.cpp translation units.
#pragma once

#include <arm_neon.h>

#include <cstdint>

namespace kernels {
namespace {

struct Vec {
  struct T {
    float32x4_t lo, hi;
  };
  static constexpr int kLanes = 8;
  static T zero() { return {vdupq_n_f32(0), vdupq_n_f32(0)}; }
  static T set1(float f) { return {vdupq_n_f32(f), vdupq_n_f32(f)}; }
  static T load(const float* p) { return {vld1q_f32(p), vld1q_f32(p + 4)}; }
  static void store(float* p, T v) {
    vst1q_f32(p, v.lo);
    vst1q_f32(p + 4, v.hi);
  }
  static T fma(T a, T b, T c) { return {vfmaq_f32(c.lo, a.lo, b.lo), vfmaq_f32(c.hi, a.hi, b.hi)}; }
  static float sum(T v) { return vaddvq_f32(vaddq_f32(v.lo, v.hi)); }
  // 8 nibbles from 4 bytes, low nibble first.
  static T q4(const uint8_t* p) {
    uint32_t word;
    __builtin_memcpy(&word, p, sizeof(word));
    const uint32x4_t w = vdupq_n_u32(word), mask = vdupq_n_u32(0xF);
    const int32x4_t lo_shifts = {0, -4, -8, -12}, hi_shifts = {-16, -20, -24, -28};
    return {vcvtq_f32_u32(vandq_u32(vshlq_u32(w, lo_shifts), mask)), vcvtq_f32_u32(vandq_u32(vshlq_u32(w, hi_shifts), mask))};
  }
  // The low and the high nibbles of 8 bytes.
  static void q4_split(const uint8_t* p, T& lo, T& hi) {
    const uint8x8_t bytes = vld1_u8(p);
    const uint16x8_t l = vmovl_u8(vand_u8(bytes, vdup_n_u8(0xF))), h = vmovl_u8(vshr_n_u8(bytes, 4));
    lo = {vcvtq_f32_u32(vmovl_u16(vget_low_u16(l))), vcvtq_f32_u32(vmovl_u16(vget_high_u16(l)))};
    hi = {vcvtq_f32_u32(vmovl_u16(vget_low_u16(h))), vcvtq_f32_u32(vmovl_u16(vget_high_u16(h)))};
  }
  static T q8(const uint8_t* p) {
    const uint16x8_t h = vmovl_u8(vld1_u8(p));
    return {vcvtq_f32_u32(vmovl_u16(vget_low_u16(h))), vcvtq_f32_u32(vmovl_u16(vget_high_u16(h)))};
  }
  static float half(uint16_t h) {
    __fp16 f;
    __builtin_memcpy(&f, &h, sizeof(f));
    return static_cast<float>(f);
  }
  static T halves(const uint16_t* p) {
    return {vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))), vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p + 4)))};
  }
};

}  // namespace
}  // namespace kernels
