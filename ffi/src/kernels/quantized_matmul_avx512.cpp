// The quantized matmul kernel built for avx512 (see quantized_matmul_body.h), and its own path
// for 4-bit decode rows.
#include "simd/avx512.h"
#include "quantized_matmul_body.h"
#include "quantized_matmul_nibbles.h"

namespace kernels {
namespace {

// 4-bit decode rows (M <= kDirectMaxRows) read whole dwords of weights. The generic path widens
// each byte to an int32, splits off both nibbles and converts each to a float: five vector
// operations, the two conversions double-pumped on this CPU, for every 32 weights. Here a dword
// holds 8 consecutive weights (element k at bits 4k), and vpermps picks a float from a 16-entry
// table by the low 4 bits of each lane alone, so nibble j of all 16 dwords of a 64-byte chunk
// becomes 16 exact floats in one shift and one permute, with no mask and no conversion. The
// activations come in the matching order (p.x_nibbles): lane l of vector j is element 8l + j.
// Measured on the Llama-3.2-1B shapes (bench/RESULTS.md).

// y[0 .. MR, n .. n + NC) for n in [n0, n1): NC weight rows side by side, each dword of
// weights expanded once and applied to all MR rows of x. Symmetric weights (p.symmetric: every
// bias is -8 · its scale) take their offset in the table, q - 8, and never read the biases.
template <ScaleType S, bool Symmetric, int MR, int NC>
void nibble_rows(const QmmProblem& p, int n0, int n1) {
  const int K = p.K, groups = K / p.group, row_bytes = K / 2, chunks = (K + 127) / 128, padded = chunks * 128;
  const __m512 table = _mm512_sub_ps(_mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                     _mm512_set1_ps(Symmetric ? 8.0f : 0.0f));
  const __m512i lane_group = lane_groups(p.group);
  const int groups_per_chunk = 128 / p.group;
  const long ahead_rows = prefetch_rows_ahead(p.w, n0, n1, row_bytes, NC);
  for (int n = n0; n < n1; n += NC) {
    const uint8_t* rows[NC];
    for (int c = 0; c < NC; ++c) rows[c] = p.w + static_cast<long>(n + c) * row_bytes;
    const uint8_t* ahead = rows[0] + ahead_rows * row_bytes;
    __m512 acc[MR][NC];
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int chunk = 0; chunk < chunks; ++chunk) {
      for (int c = 0; c < NC; ++c) __builtin_prefetch(ahead + (static_cast<long>(chunk) * NC + c) * 64);
      const int k0 = chunk * 128;
      const int lanes = K - k0 >= 128 ? 16 : (K - k0) / 8;
      const __mmask16 valid = static_cast<__mmask16>((1u << lanes) - 1);
      __m512i q[NC];
      for (int c = 0; c < NC; ++c) q[c] = _mm512_maskz_loadu_epi32(valid, rows[c] + k0 / 2);
      __m512 dot[MR][NC];
      for (int r = 0; r < MR; ++r)
        for (int c = 0; c < NC; ++c) dot[r][c] = _mm512_setzero_ps();
      for (int j = 0; j < 8; ++j) {
        __m512 xv[MR];
        for (int r = 0; r < MR; ++r) xv[r] = _mm512_loadu_ps(p.x_nibbles + static_cast<long>(r) * padded + k0 + 16 * j);
        for (int c = 0; c < NC; ++c) {
          const __m512 w = _mm512_permutexvar_ps(j == 0 ? q[c] : _mm512_srli_epi32(q[c], 4 * j), table);
          for (int r = 0; r < MR; ++r) dot[r][c] = _mm512_fmadd_ps(w, xv[r], dot[r][c]);
        }
      }
      const int g = chunk * groups_per_chunk;
      const int count = std::min(groups_per_chunk, groups - g);
      for (int c = 0; c < NC; ++c) {
        const __m512 s = lane_scales<S>(p.scales, static_cast<long>(n + c) * groups + g, count, lane_group);
        for (int r = 0; r < MR; ++r) acc[r][c] = _mm512_fmadd_ps(dot[r][c], s, acc[r][c]);
      }
    }
    for (int c = 0; c < NC; ++c) {
      if constexpr (Symmetric) {
        for (int r = 0; r < MR; ++r) p.y[static_cast<long>(r) * p.N + n + c] = _mm512_reduce_add_ps(acc[r][c]);
        continue;
      }
      float share[MR];
      bias_shares<S, MR>(p.biases, n + c, groups, p.x_group_sums, share);
      for (int r = 0; r < MR; ++r) p.y[static_cast<long>(r) * p.N + n + c] = _mm512_reduce_add_ps(acc[r][c]) + share[r];
    }
  }
}

template <ScaleType S, bool Symmetric, int MR, int NC>
void nibble_columns(const QmmProblem& p, int n0, int n1) {
  const int blocked = n0 + (n1 - n0) / NC * NC;
  nibble_rows<S, Symmetric, MR, NC>(p, n0, blocked);
  if (blocked < n1) nibble_rows<S, Symmetric, MR, 1>(p, blocked, n1);
}

// Rows in blocks of up to four, each block reading the weights once. A row's sums are formed in
// the same order whatever its block, so it gives the same bits alone as in a batch (a batch
// decodes as each sequence would alone).
template <ScaleType S, bool Symmetric>
void nibble_tile(const QmmProblem& p, int n0, int n1) {
  static_assert(kNibbleMaxRows == kDirectMaxRows, "every decode row count");
  const long padded = (p.K + 127) / 128 * 128, groups = p.K / p.group;
  for (int r0 = 0; r0 < p.M; r0 += 4) {
    QmmProblem rows = p;
    rows.M = std::min(4, p.M - r0);
    rows.x_nibbles = p.x_nibbles + r0 * padded;
    if (p.x_group_sums != nullptr) rows.x_group_sums = p.x_group_sums + r0 * groups;
    rows.y = p.y + static_cast<long>(r0) * p.N;
    switch (rows.M) {
      case 1: nibble_columns<S, Symmetric, 1, 4>(rows, n0, n1); break;
      case 2: nibble_columns<S, Symmetric, 2, 4>(rows, n0, n1); break;
      case 3: nibble_columns<S, Symmetric, 3, 2>(rows, n0, n1); break;
      default: nibble_columns<S, Symmetric, 4, 2>(rows, n0, n1); break;
    }
  }
}

template <ScaleType S>
void nibble_tile(const QmmProblem& p, int n0, int n1) {
  if (p.symmetric) nibble_tile<S, true>(p, n0, n1);
  else nibble_tile<S, false>(p, n0, n1);
}

// pack_panel for 4-bit weights, by the same permute: one gather takes a dword (8 weights) from
// each of 16 rows, and each of its nibbles becomes the 16 rows' weights at one k, a vector store
// into the panel. The generic pack_panel converts a row at a time and scatters every float to
// its place in the panel: at 32 rows of x it took about as long as the products themselves.
template <ScaleType S>
void pack_nibbles(const QmmProblem& p, int n0, int columns, int k0, int kc, float* panel) {
  const int groups = p.K / p.group, row_bytes = p.K / 2, g0 = k0 / p.group, block_groups = kc / p.group;
  const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // The block's scales and biases as floats, by group then row; zeros past `columns`, so that
  // those rows of the panel are zeros.
  alignas(64) float scales[kPanelDepth / 32][kNR], biases[kPanelDepth / 32][kNR];
  for (int g = 0; g < block_groups; ++g)
    for (int j = 0; j < kNR; ++j) {
      const int n = n0 + j;
      const long at = static_cast<long>(n) * groups + g0 + g;
      scales[g][j] = j < columns ? scale_at<S>(p.scales, at) : 0.0f;
      biases[g][j] = j < columns ? scale_at<S>(p.biases, at) : 0.0f;
    }
  const uint8_t* base = p.w + static_cast<long>(n0) * row_bytes + k0 / 2;
  for (int half = 0; half < kNR / 16; ++half) {
    const int rows = std::min(16, std::max(0, columns - 16 * half));
    const __mmask16 valid = static_cast<__mmask16>((1u << rows) - 1);
    const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32(row_bytes));
    const uint8_t* first = base + static_cast<long>(16 * half) * row_bytes;
    for (int k = 0; k < kc; k += 8) {
      const __m512i q = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), valid, offsets, first + k / 2, 1);
      const __m512 s = _mm512_load_ps(scales[k / p.group] + 16 * half), b = _mm512_load_ps(biases[k / p.group] + 16 * half);
      for (int j = 0; j < 8; ++j) {
        const __m512 w = _mm512_permutexvar_ps(j == 0 ? q : _mm512_srli_epi32(q, 4 * j), table);
        _mm512_storeu_ps(panel + (k + j) * kNR + 16 * half, _mm512_fmadd_ps(w, s, b));
      }
    }
  }
}

template <ScaleType S>
void tile_4bit(const QmmProblem& p, int n0, int n1, float* scratch) {
  if (p.M > kDirectMaxRows) panels(p, n0, n1, scratch, pack_nibbles<S>);
  else if (p.x_nibbles != nullptr) nibble_tile<S>(p, n0, n1);
  else tile<4, S>(p, n0, n1, scratch);
}

}  // namespace

void qmm_tile_avx512(const QmmProblem& p, int n_begin, int n_end, float* scratch) {
  if (p.bits != 4) {
    qmm_tile(p, n_begin, n_end, scratch);
    return;
  }
  switch (p.scale_type) {
    case ScaleType::f32: tile_4bit<ScaleType::f32>(p, n_begin, n_end, scratch); break;
    case ScaleType::f16: tile_4bit<ScaleType::f16>(p, n_begin, n_end, scratch); break;
    case ScaleType::bf16: tile_4bit<ScaleType::bf16>(p, n_begin, n_end, scratch); break;
  }
}

}  // namespace kernels
