// What the AVX-512 kernels of decode rows share (quantized_matmul_avx512.cpp's exact fp32 4-bit
// rows and quantized_matmul_vnni.cpp's int16 rows): both read the weights in chunks of 64-byte
// vectors, each 32-bit lane holding weights of one group. Include
// only from translation units built with AVX-512 (F, BW, VL) and F16C.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "quantized_matmul.h"

namespace kernels {
namespace {

// How far ahead nibble_rows prefetches, in bytes of weights (rounded to whole blocks of rows,
// at least one): 8 KB (two blocks of 4 rows at K = 2048) ran the 1B shapes' decode products
// 7-12% faster than direct_rows' four blocks (16 KB there), and as fast as four at K = 576.
constexpr long kNibblePrefetchBytes = 8192;

// Blocks of `nc` rows follow each other in memory, and each chunk of a block prefetches its share
// of the block this many rows further on. Prefetches the first of them (rows n0 .. n1 of `w`).
inline long prefetch_rows_ahead(const uint8_t* w, int n0, int n1, long row_bytes, int nc) {
  const long ahead_rows = std::max<long>(1, kNibblePrefetchBytes / (nc * row_bytes)) * nc;
  const uint8_t* first = w + static_cast<long>(n0) * row_bytes;
  const long first_bytes = std::min<long>(ahead_rows, n1 - n0) * row_bytes;
  for (long b = 0; b < first_bytes; b += 64) __builtin_prefetch(first + b);
  return ahead_rows;
}

// The group of each lane, counted from the chunk's first: lane l holds elements per_lane · l ..
// per_lane · (l + 1) - 1 of the chunk.
inline __m512i lane_groups(int group, int per_lane = 8) {
  const __m512i first = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(per_lane));
  return _mm512_srli_epi32(first, __builtin_ctz(group));
}

// The scale of each lane's group for the chunk whose first group is `g` (`count` groups, at
// most 8, of the chunk lie inside the row: the rest read nothing).
template <ScaleType S>
inline __m512 lane_scales(const void* base, long g, int count, const __m512i& lane_group) {
  const __mmask8 valid = static_cast<__mmask8>((1u << count) - 1);
  __m256 s;
  if constexpr (S == ScaleType::f32) {
    s = _mm256_maskz_loadu_ps(valid, static_cast<const float*>(base) + g);
  } else {
    const __m128i h = _mm_maskz_loadu_epi16(valid, static_cast<const uint16_t*>(base) + g);
    if constexpr (S == ScaleType::f16) s = _mm256_cvtph_ps(h);
    else s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  return _mm512_permutexvar_ps(lane_group, _mm512_castps256_ps512(s));
}

// 16 biases from `at` as floats (zeros outside `valid`).
template <ScaleType S>
inline __m512 lane_biases(const void* base, long at, __mmask16 valid) {
  if constexpr (S == ScaleType::f32) return _mm512_maskz_loadu_ps(valid, static_cast<const float*>(base) + at);
  const __m256i h = _mm256_maskz_loadu_epi16(valid, static_cast<const uint16_t*>(base) + at);
  if constexpr (S == ScaleType::f16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Σ over the groups of weight row `row` of its bias · the sum of x over the group
// (x_group_sums, [MR, groups]), for each of MR rows of x: the biases' share of an output.
template <ScaleType S, int MR>
inline void bias_shares(const void* biases, long row, int groups, const float* x_group_sums, float* shares) {
  __m512 share[MR];
  for (int r = 0; r < MR; ++r) share[r] = _mm512_setzero_ps();
  for (int g = 0; g < groups; g += 16) {
    const __mmask16 valid = groups - g >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (groups - g)) - 1);
    const __m512 b = lane_biases<S>(biases, row * groups + g, valid);
    for (int r = 0; r < MR; ++r)
      share[r] = _mm512_fmadd_ps(b, _mm512_maskz_loadu_ps(valid, x_group_sums + r * groups + g), share[r]);
  }
  for (int r = 0; r < MR; ++r) shares[r] = _mm512_reduce_add_ps(share[r]);
}

}  // namespace
}  // namespace kernels
