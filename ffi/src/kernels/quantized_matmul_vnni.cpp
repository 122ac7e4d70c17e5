// Decode rows (M <= kDirectMaxRows) of the 4-bit quantized matmul with int8 activations, on
// AVX-512 VNNI: llama.cpp's method. x is quantized once per product to int8 in blocks of 32 (a float
// step per block, see quantize_rows_int8), so 64 weights times 64 activations are one vpdpbusd
// (unsigned 4-bit weights × signed 8-bit activations, summed exactly in int32) instead of 64
// float multiply-adds after unpacking each weight to a float. Only the activations are rounded
// (weights are exact), each by at most half its block's step, so |y - exact| <= Σ_k |w_k|·step_k/2.
#include <immintrin.h>

#include <cstdint>

#include "quantized_matmul.h"

namespace kernels {
namespace {

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

template <ScaleType S>
inline float scale_at(const void* base, int i) {
  if constexpr (S == ScaleType::f32) return static_cast<const float*>(base)[i];
  if constexpr (S == ScaleType::f16) return half_to_float(static_cast<const uint16_t*>(base)[i]);
  if constexpr (S == ScaleType::bf16) {
    uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16;
    float f;
    __builtin_memcpy(&f, &bits, sizeof(f));
    return f;
  }
}

// The 32-block (0: the first, 1: the second) whose weights each int32 lane of a chunk's product
// sums; see kInt8Chunk in quantized_matmul.h for the order.
inline __m512i lane_blocks() { return _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1); }

// A chunk's 64 weights (32 bytes) as bytes in the order of its activations: the low nibbles of
// both blocks, then their high nibbles.
inline __m512i chunk_weights(const uint8_t* w) {
  const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m256i low = _mm256_set1_epi8(0xF);
  const __m256i lo = _mm256_and_si256(bytes, low), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// The weight scale of each lane of chunk `chunk` of output column n.
template <ScaleType S>
inline __m512 chunk_scales(const QmmProblem& p, int n, int chunk, int groups) {
  if (p.group == 32) {
    const int g = n * groups + 2 * chunk;
    __m128 pair;
    if constexpr (S == ScaleType::f16) {
      uint32_t two;
      __builtin_memcpy(&two, static_cast<const uint16_t*>(p.scales) + g, sizeof(two));
      pair = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(two)));
    } else {
      pair = _mm_setr_ps(scale_at<S>(p.scales, g), scale_at<S>(p.scales, g + 1), 0.0f, 0.0f);
    }
    return _mm512_permutexvar_ps(lane_blocks(), _mm512_castps128_ps512(pair));
  }
  return _mm512_set1_ps(scale_at<S>(p.scales, n * groups + chunk * kInt8Chunk / p.group));
}

// Σ over groups of bias · (sum of x over the group), for row r and column n.
template <ScaleType S>
inline float bias_share(const QmmProblem& p, int r, int n, int groups) {
  const float* sums = p.x_group_sums + r * groups;
  if constexpr (S == ScaleType::f16) {
    const uint16_t* b = static_cast<const uint16_t*>(p.biases) + n * groups;
    __m512 acc = _mm512_setzero_ps();
    for (int g = 0; g < groups; g += 16) {
      const __mmask16 m = groups - g >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (groups - g)) - 1);
      const __m512 bias = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, b + g));
      acc = _mm512_fmadd_ps(bias, _mm512_maskz_loadu_ps(m, sums + g), acc);
    }
    return _mm512_reduce_add_ps(acc);
  } else {
    float share = 0.0f;
    for (int g = 0; g < groups; ++g) share += scale_at<S>(p.biases, n * groups + g) * sums[g];
    return share;
  }
}

// y[0 .. MR, n .. n + NC) for n in [n0, n1): NC columns side by side share each activation load.
template <ScaleType S, int MR, int NC>
void int8_rows(const QmmProblem& p, int n0, int n1) {
  const int K = p.K, groups = K / p.group, chunks = K / kInt8Chunk, row_bytes = K / 2;
  constexpr int chunk_bytes = kInt8Chunk / 2;
  for (int n = n0; n < n1; n += NC) {
    __m512 acc[MR][NC];
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int chunk = 0; chunk < chunks; ++chunk) {
      __m512i q[NC];
      __m512 s[NC];
      for (int c = 0; c < NC; ++c) {
        q[c] = chunk_weights(p.w + static_cast<long>(n + c) * row_bytes + chunk * chunk_bytes);
        s[c] = chunk_scales<S>(p, n + c, chunk, groups);
      }
      for (int r = 0; r < MR; ++r) {
        const long at = static_cast<long>(r) * K + chunk * kInt8Chunk;
        const __m512i xq = _mm512_loadu_si512(p.x_int8 + at);
        const __m512 step = _mm512_loadu_ps(p.x_int8_steps + at / 4);
        for (int c = 0; c < NC; ++c) {
          const __m512 dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q[c], xq));
          acc[r][c] = _mm512_fmadd_ps(dot, _mm512_mul_ps(s[c], step), acc[r][c]);
        }
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NC; ++c)
        p.y[static_cast<long>(r) * p.N + n + c] = _mm512_reduce_add_ps(acc[r][c]) + bias_share<S>(p, r, n + c, groups);
  }
}

template <ScaleType S, int MR, int NC>
void int8_columns(const QmmProblem& p, int n0, int n1) {
  const int blocked = n0 + (n1 - n0) / NC * NC;
  int8_rows<S, MR, NC>(p, n0, blocked);
  if (blocked < n1) int8_rows<S, MR, 1>(p, blocked, n1);
}

template <ScaleType S>
void int8_tile(const QmmProblem& p, int n0, int n1) {
  switch (p.M) {
    case 1: int8_columns<S, 1, 4>(p, n0, n1); break;
    case 2: int8_columns<S, 2, 4>(p, n0, n1); break;
    case 3: int8_columns<S, 3, 2>(p, n0, n1); break;
    case 4: int8_columns<S, 4, 2>(p, n0, n1); break;
    case 5: int8_rows<S, 5, 1>(p, n0, n1); break;
    case 6: int8_rows<S, 6, 1>(p, n0, n1); break;
    case 7: int8_rows<S, 7, 1>(p, n0, n1); break;
    default: int8_rows<S, 8, 1>(p, n0, n1); break;
  }
}

}  // namespace

void qmm_tile_int8_vnni(const QmmProblem& p, int n_begin, int n_end, float*) {
  switch (p.scale_type) {
    case ScaleType::f32: int8_tile<ScaleType::f32>(p, n_begin, n_end); break;
    case ScaleType::f16: int8_tile<ScaleType::f16>(p, n_begin, n_end); break;
    case ScaleType::bf16: int8_tile<ScaleType::bf16>(p, n_begin, n_end); break;
  }
}

}  // namespace kernels
