// The quantized matmul kernel, written once over a SIMD vector type `Vec` that the including
// translation unit defines (simd/<isa>.h) and compiled once per instruction set. Everything here
// has internal linkage, so code built with one set's flags never leaks into another's callers.
//
// Vec provides: T, its register type; kLanes; zero(), set1(f), load(const float*), store(float*, v), fma(a, b, c) = a·b + c,
// sum(v); q4(bytes) and q8(bytes): the next kLanes packed weights as floats; q4_split(bytes, lo, hi): the low and
// the high nibbles of the next kLanes bytes as floats; half(uint16_t) → float; halves(const uint16_t*): kLanes of them.
#pragma once

#include <algorithm>

#include "quantized_matmul.h"

namespace kernels {
namespace {

constexpr int L = Vec::kLanes;

template <ScaleType S>
inline float scale_at(const void* base, int i) {
  if constexpr (S == ScaleType::f32) return static_cast<const float*>(base)[i];
  if constexpr (S == ScaleType::f16) return Vec::half(static_cast<const uint16_t*>(base)[i]);
  if constexpr (S == ScaleType::bf16) {
    uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16;
    float f;
    __builtin_memcpy(&f, &bits, sizeof(f));
    return f;
  }
}

// Scales (or biases) [from, from + n) as floats: vector conversions rather than one per group.
template <ScaleType S>
inline void scales_to_float(const void* base, int from, int n, float* out) {
  int i = 0;
  if constexpr (S == ScaleType::f16)
    for (; i + L <= n; i += L) Vec::store(out + i, Vec::halves(static_cast<const uint16_t*>(base) + from + i));
  for (; i < n; ++i) out[i] = scale_at<S>(base, from + i);
}

inline float dot(const float* a, const float* b, int n) {
  auto acc = Vec::zero();
  int i = 0;
  for (; i + L <= n; i += L) acc = Vec::fma(Vec::load(a + i), Vec::load(b + i), acc);
  float sum = Vec::sum(acc);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Groups whose scales and biases direct_rows converts at once (its stack buffers).
constexpr int kGroupBlock = 64;

template <int Bits>
inline auto unpack(const uint8_t* row, int k) {
  if constexpr (Bits == 4) return Vec::q4(row + (static_cast<unsigned>(k) >> 1));
  else return Vec::q8(row + k);
}

// How many blocks of NC weight rows ahead direct_rows prefetches (2 and 4 measured: 4 ran the
// decode step in ~7% less CPU time than 2, ~15% less than none; bench/RESULTS.md).
constexpr int kPrefetchBlocks = 4;

// y[0 .. MR, n .. n + NC) for n in [n0, n1), weights unpacked in registers and read once for all
// rows. Per group it sums x·q and applies the scale once; the biases' share is bias · Σx over the
// group (p.x_group_sums), one dot product per row and column, so a weight costs one multiply-add
// per row. Scales and biases are converted to floats kGroupBlock groups at a time. NC output columns go side by
// side so that MR · NC independent multiply-add chains hide the FMA latency: with one row and one
// column the loop waits on its own accumulator (measured: NC = 4 at M = 1 is ~1.5× faster).
// 4-bit weights are split into their low nibbles (even k) and high ones (odd k), multiplied with
// x in the same order (p.x_split), which spares the shuffle that puts nibbles back in k order.
template <int Bits, ScaleType S, int MR, int NC>
void direct_rows(const QmmProblem& p, int n0, int n1) {
  const int K = p.K, groups = K / p.group, row_bytes = K * Bits / 8;
  // A row is a few hundred bytes (288 for K = 576 at 4 bits), too short for the hardware's
  // prefetchers to pick up before it ends, so the loads of every block of rows waited on memory.
  // The blocks follow each other in memory: while a block runs its groups, each group prefetches
  // its share (NC groups' bytes) of the block kPrefetchBlocks further on.
  const int ahead_bytes = NC * p.group * Bits / 8;
  // The first blocks have no block before them to prefetch them.
  const uint8_t* first = p.w + static_cast<long>(n0) * row_bytes;
  const long first_bytes = std::min<long>(static_cast<long>(kPrefetchBlocks) * NC, n1 - n0) * row_bytes;
  for (long b = 0; b < first_bytes; b += 64) __builtin_prefetch(first + b);
  for (int n = n0; n < n1; n += NC) {
    const uint8_t* rows[NC];
    for (int c = 0; c < NC; ++c) rows[c] = p.w + static_cast<long>(n + c) * row_bytes;
    typename Vec::T acc[MR][NC];
    float bias_share[MR][NC];
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NC; ++c) {
        acc[r][c] = Vec::zero();
        bias_share[r][c] = 0.0f;
      }
    for (int g0 = 0; g0 < groups; g0 += kGroupBlock) {
      const int block = groups - g0 < kGroupBlock ? groups - g0 : kGroupBlock;
      alignas(64) float scales[NC][kGroupBlock];
      alignas(64) float biases[NC][kGroupBlock];
      for (int c = 0; c < NC; ++c) {
        scales_to_float<S>(p.scales, (n + c) * groups + g0, block, scales[c]);
        scales_to_float<S>(p.biases, (n + c) * groups + g0, block, biases[c]);
      }
      for (int g = g0; g < g0 + block; ++g) {
        const uint8_t* ahead = rows[0] + static_cast<long>(kPrefetchBlocks) * NC * row_bytes + g * ahead_bytes;
        for (int b = 0; b < ahead_bytes; b += 64) __builtin_prefetch(ahead + b);
        typename Vec::T dot[MR][NC];
        for (int r = 0; r < MR; ++r)
          for (int c = 0; c < NC; ++c) dot[r][c] = Vec::zero();
        if constexpr (Bits == 4) {
          for (int k = g * p.group, end = k + p.group; k < end; k += 2 * L) {
            typename Vec::T lo[NC], hi[NC];
            for (int c = 0; c < NC; ++c) Vec::q4_split(rows[c] + k / 2, lo[c], hi[c]);
            // The even elements of k's block of 32 from (k mod 32) / 2, the odd ones 16 further.
            const int at = (k & ~31) + (k & 31) / 2;
            for (int r = 0; r < MR; ++r) {
              const auto even = Vec::load(p.x_split + r * K + at), odd = Vec::load(p.x_split + r * K + at + 16);
              for (int c = 0; c < NC; ++c) dot[r][c] = Vec::fma(hi[c], odd, Vec::fma(lo[c], even, dot[r][c]));
            }
          }
        } else {
          for (int k = g * p.group, end = k + p.group; k < end; k += L) {
            typename Vec::T q[NC];
            for (int c = 0; c < NC; ++c) q[c] = unpack<Bits>(rows[c], k);
            for (int r = 0; r < MR; ++r) {
              const auto xv = Vec::load(p.x + r * K + k);
              for (int c = 0; c < NC; ++c) dot[r][c] = Vec::fma(q[c], xv, dot[r][c]);
            }
          }
        }
        for (int c = 0; c < NC; ++c) {
          const auto scale = Vec::set1(scales[c][g - g0]);
          for (int r = 0; r < MR; ++r) acc[r][c] = Vec::fma(dot[r][c], scale, acc[r][c]);
        }
      }
      for (int r = 0; r < MR; ++r)
        for (int c = 0; c < NC; ++c) bias_share[r][c] += dot(biases[c], p.x_group_sums + r * groups + g0, block);
    }
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NC; ++c) p.y[static_cast<long>(r) * p.N + n + c] = Vec::sum(acc[r][c]) + bias_share[r][c];
  }
}

// Columns in blocks of NC, the few left over one at a time.
template <int Bits, ScaleType S, int MR, int NC>
void direct_columns(const QmmProblem& p, int n0, int n1) {
  const int blocked = n0 + (n1 - n0) / NC * NC;
  direct_rows<Bits, S, MR, NC>(p, n0, blocked);
  if (blocked < n1) direct_rows<Bits, S, MR, 1>(p, blocked, n1);
}

// The weight rows of one panel: kNR of them side by side, dequantized to fp32 and interleaved
// by k (panel[k · kNR + j] = w[n0 + j, k]), so that one vector load reads kNR/L outputs' weights.
constexpr int kNR = 2 * L;
constexpr int kMR = 6;
static_assert(kNR <= kPanelMaxColumns, "the scratch a thread gets holds one panel");

// Weights [k0, k0 + kc) of rows [n0, n0 + columns) into a panel (zeros past `columns`).
template <int Bits, ScaleType S>
void pack_panel(const QmmProblem& p, int n0, int columns, int k0, int kc, float* panel) {
  const int groups = p.K / p.group, row_bytes = p.K * Bits / 8;
  alignas(64) float chunk[L];
  for (int j = 0; j < columns; ++j) {
    const int n = n0 + j;
    const uint8_t* row = p.w + static_cast<long>(n) * row_bytes;
    for (int g = k0 / p.group; g < (k0 + kc) / p.group; ++g) {
      const auto s = Vec::set1(scale_at<S>(p.scales, n * groups + g));
      const auto b = Vec::set1(scale_at<S>(p.biases, n * groups + g));
      for (int k = g * p.group, end = k + p.group; k < end; k += L) {
        Vec::store(chunk, Vec::fma(unpack<Bits>(row, k), s, b));
        for (int i = 0; i < L; ++i) panel[(k - k0 + i) * kNR + j] = chunk[i];
      }
    }
  }
  for (int j = columns; j < kNR; ++j)
    for (int k = 0; k < kc; ++k) panel[k * kNR + j] = 0.0f;
}

// y[MR rows, kNR columns] (+)= x[MR rows, kc] · panel: outer products of broadcast activations
// and weight vectors, no horizontal sums.
template <int MR>
void micro(const float* x, int ldx, int kc, const float* panel, float* y, int ldy, bool accumulate) {
  typename Vec::T acc[MR][2];
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = accumulate ? Vec::load(y + r * ldy) : Vec::zero();
    acc[r][1] = accumulate ? Vec::load(y + r * ldy + L) : Vec::zero();
  }
  for (int k = 0; k < kc; ++k, panel += kNR) {
    const auto w0 = Vec::load(panel), w1 = Vec::load(panel + L);
    for (int r = 0; r < MR; ++r) {
      const auto xv = Vec::set1(x[r * ldx + k]);
      acc[r][0] = Vec::fma(xv, w0, acc[r][0]);
      acc[r][1] = Vec::fma(xv, w1, acc[r][1]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    Vec::store(y + r * ldy, acc[r][0]);
    Vec::store(y + r * ldy + L, acc[r][1]);
  }
}

template <int MR>
void micro_into(const QmmProblem& p, int m, int n0, int columns, int k0, int kc, const float* panel) {
  const float* x = p.x + static_cast<long>(m) * p.K + k0;
  float* y = p.y + static_cast<long>(m) * p.N + n0;
  if (columns == kNR) {
    micro<MR>(x, p.K, kc, panel, y, p.N, k0 > 0);
    return;
  }
  alignas(64) float tile[MR * kNR];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < columns; ++j) tile[r * kNR + j] = k0 > 0 ? y[static_cast<long>(r) * p.N + j] : 0.0f;
  micro<MR>(x, p.K, kc, panel, tile, kNR, true);
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < columns; ++j) y[static_cast<long>(r) * p.N + j] = tile[r * kNR + j];
}

// The K-block of a panel: 512 weights of kNR rows are 64 KB of floats on AVX-512, which stay in
// the L2 cache while every row of x reads them. A whole K of 8192 (the MLP's down projection)
// made a 1 MB panel, the size of the L2 itself.
constexpr int kPanelDepth = 512;

// The rows of x against panels of weights, each dequantized once per K-block by `pack`
// (pack_panel's signature) and read by every row.
template <typename Pack>
void panels(const QmmProblem& p, int n0, int n1, float* scratch, Pack pack) {
  for (int nb = n0; nb < n1; nb += kNR) {
    const int columns = n1 - nb < kNR ? n1 - nb : kNR;
    for (int k0 = 0; k0 < p.K; k0 += kPanelDepth) {
      // A whole number of groups: kPanelDepth is a multiple of every group size.
      const int kc = p.K - k0 < kPanelDepth ? p.K - k0 : kPanelDepth;
      pack(p, nb, columns, k0, kc, scratch);
      int m = 0;
      for (; m + kMR <= p.M; m += kMR) micro_into<kMR>(p, m, nb, columns, k0, kc, scratch);
      switch (p.M - m) {
        case 1: micro_into<1>(p, m, nb, columns, k0, kc, scratch); break;
        case 2: micro_into<2>(p, m, nb, columns, k0, kc, scratch); break;
        case 3: micro_into<3>(p, m, nb, columns, k0, kc, scratch); break;
        case 4: micro_into<4>(p, m, nb, columns, k0, kc, scratch); break;
        case 5: micro_into<5>(p, m, nb, columns, k0, kc, scratch); break;
        default: break;
      }
    }
  }
}

// Columns side by side for one or two rows. 8-bit rows stay one at a time: on the 49152 × 576
// output layer two or four of them side by side ran 0.7–0.8× as fast (bench/qmm-builds.ts).
template <int Bits>
constexpr int kSmallColumns = Bits == 4 ? 4 : 1;

// Columns of the weights taken in turn by the first four rows and the rest (below).
constexpr int kRowSplitColumns = 32;

// Five to eight rows: the first four rows, then the others, over each block of
// kRowSplitColumns weight rows while it is in L1. Eight rows side by side left room for one
// column at a time, so every activation vector loaded fed one multiply-add; four rows take two
// columns side by side (half the loads per multiply-add). Each output is computed by the same
// operations in the same order as with any other row count, so rows stay bit-identical to a
// batch of one.
template <int Bits, ScaleType S>
void four_and_rest(const QmmProblem& p, int n0, int n1) {
  QmmProblem first = p, rest = p;
  first.M = 4;
  rest.M = p.M - 4;
  rest.x += 4L * p.K;
  rest.x_group_sums += 4L * (p.K / p.group);
  if (rest.x_split) rest.x_split += 4L * p.K;
  rest.y += 4L * p.N;
  for (int c0 = n0; c0 < n1; c0 += kRowSplitColumns) {
    const int c1 = std::min(n1, c0 + kRowSplitColumns);
    direct_columns<Bits, S, 4, 2>(first, c0, c1);
    switch (rest.M) {
      case 1: direct_columns<Bits, S, 1, kSmallColumns<Bits>>(rest, c0, c1); break;
      case 2: direct_columns<Bits, S, 2, kSmallColumns<Bits>>(rest, c0, c1); break;
      case 3: direct_columns<Bits, S, 3, 2>(rest, c0, c1); break;
      default: direct_columns<Bits, S, 4, 2>(rest, c0, c1); break;
    }
  }
}

template <int Bits, ScaleType S>
void tile(const QmmProblem& p, int n0, int n1, float* scratch) {
  if (p.M <= kDirectMaxRows) {
    switch (p.M) {
      case 1: direct_columns<Bits, S, 1, kSmallColumns<Bits>>(p, n0, n1); break;
      case 2: direct_columns<Bits, S, 2, kSmallColumns<Bits>>(p, n0, n1); break;
      case 3: direct_columns<Bits, S, 3, 2>(p, n0, n1); break;
      case 4: direct_columns<Bits, S, 4, 2>(p, n0, n1); break;
      default: four_and_rest<Bits, S>(p, n0, n1); break;
    }
    return;
  }
  // Each panel of weight rows is dequantized once, then read by every row of x.
  panels(p, n0, n1, scratch, pack_panel<Bits, S>);
}

template <int Bits>
void tile_for_scales(const QmmProblem& p, int n0, int n1, float* scratch) {
  switch (p.scale_type) {
    case ScaleType::f32: tile<Bits, ScaleType::f32>(p, n0, n1, scratch); break;
    case ScaleType::f16: tile<Bits, ScaleType::f16>(p, n0, n1, scratch); break;
    case ScaleType::bf16: tile<Bits, ScaleType::bf16>(p, n0, n1, scratch); break;
  }
}

inline void qmm_tile(const QmmProblem& p, int n0, int n1, float* scratch) {
  if (p.bits == 4) tile_for_scales<4>(p, n0, n1, scratch);
  else tile_for_scales<8>(p, n0, n1, scratch);
}

}  // namespace
}  // namespace kernels
