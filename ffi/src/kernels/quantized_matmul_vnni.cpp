// Decode rows (M <= kDirectMaxRows) of the 4-bit quantized matmul on AVX-512 VNNI, and prompt
// rows on repacked weights (the decode rows' kernel, 8 rows at a time), with the activations as
// integers: the weights' codes are exact small integers, so once x is an integer
// too, a product of 32 weights and 32 activations is one VNNI instruction summing exactly in int32
// lanes instead of 32 float multiply-adds after converting each weight to a float.
//
// int16 (the default, see quantize_rows_int16): x in blocks of 32, each rounded to int16 with
// its own step (max |x| / 32767), and vpdpwssd (int16 × int16 pairs into int32). Each x_k moves
// by at most half its step, 1/65534 of its block's largest element: ~256× less than int8, small
// enough that greedy answers stay mlx-lm's (bench/RESULTS.md).
//
// int8 (MLX_CPU_INT8=1): llama.cpp's method. x quantized to int8 in blocks of 32 (step max |x| /
// 127, see quantize_rows_int8), 64 weights times 64 activations one vpdpbusd (unsigned 4-bit
// weights × signed 8-bit activations). Faster still, but its rounding changes greedy answers.
//
// Only the activations are rounded (weights are exact), so |y - exact| <= Σ_k |w_k|·step_k/2.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "quantized_matmul.h"
#include "quantized_matmul_nibbles.h"
#include "with_count.h"

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

// The scale of each lane's group for a chunk whose first group is `g` (`count` groups, at most
// 16, of the chunk lie inside the row: the rest read nothing); lane_group as lane_groups gives it.
template <ScaleType S>
inline __m512 int16_lane_scales(const void* base, long g, int count, const __m512i& lane_group) {
  const __mmask16 valid = static_cast<__mmask16>((1u << count) - 1);
  return _mm512_permutexvar_ps(lane_group, lane_biases<S>(base, g, valid));
}

// Lane l of vector i of `lanes` = dword D·l + i of the chunk's D vectors `v` (D = 1, 2 or 4): each
// lane then holds D dwords in a row, one per vector. Two permutes a pair of vectors per halving.
template <int D>
inline void lanes_of(const __m512i* v, __m512i* lanes) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  if constexpr (D == 1) {
    lanes[0] = v[0];
  } else if constexpr (D == 2) {
    lanes[0] = _mm512_permutex2var_epi32(v[0], even, v[1]);
    lanes[1] = _mm512_permutex2var_epi32(v[0], odd, v[1]);
  } else {
    // Dwords 0, 2, 4 .. and 1, 3, 5 .. of each pair, then of those the even and odd again.
    const __m512i e0 = _mm512_permutex2var_epi32(v[0], even, v[1]), o0 = _mm512_permutex2var_epi32(v[0], odd, v[1]);
    const __m512i e1 = _mm512_permutex2var_epi32(v[2], even, v[3]), o1 = _mm512_permutex2var_epi32(v[2], odd, v[3]);
    lanes[0] = _mm512_permutex2var_epi32(e0, even, e1);
    lanes[1] = _mm512_permutex2var_epi32(o0, even, o1);
    lanes[2] = _mm512_permutex2var_epi32(e0, odd, e1);
    lanes[3] = _mm512_permutex2var_epi32(o0, odd, o1);
  }
}

// Whether the int16 kernel adds the biases' share lane by lane, chunk by chunk (4 bits: a lane
// sums 32 products, so one more multiply-add a lane is cheap, and an output is then one horizontal
// sum), or once per output from the sums of x over each group (8 bits: a lane sums 4 products).
constexpr bool lane_biases(int bits) { return bits == 4; }

// One chunk of D dwords a lane (x_int16's order, see quantized_matmul.h) for MR rows and NC
// columns from n: the rows' products into acc. `x`, `steps` and `sums` are the chunk's in
// x_int16, x_int16_steps and x_int16_lane_sums (row 0's; the other rows follow at fixed offsets).
// Masking each 16-bit word of a dword to its low Bits bits after a shift by Bits · t leaves
// weights t and t + p/2 of the dword (p = 32 / Bits) as two int16 words, the pair vpdpwssd
// multiplies with x's pair: per dword vector, p/2 shifts and masks shared by all rows and p/2
// vpdpwssd a row. Each lane's int32 sum is scaled by its group's scale times its block's step
// once per chunk, so the more weights a lane covers, the fewer float operations a row costs; at
// 4 bits (lane_biases) the lane's share of the biases (its group's bias times the sum of its
// rounded x) is added there too. At 4 bits the sum converts to a float exactly
// (at most 32 products, |sum| <= 32 · 15 · 32767 < 2^24); at 8 bits it may round, by 2^-24 of it.
template <int Bits, ScaleType S, bool Symmetric, int MR, int NC, int D>
inline void int16_chunk_into(const QmmProblem& p, int n, const uint8_t* const* rows, const uint8_t* ahead, int k0,
                             const int16_t* x, const float* steps, const float* sums, __m512 (&acc)[MR][NC]) {
  constexpr int per_dword = 32 / Bits, half = per_dword / 2, per_lane = D * per_dword;
  constexpr int chunk = 16 * per_lane, chunk_bytes = 64 * D;
  const int K = p.K, groups = K / p.group;
  const __m512i pair_mask = _mm512_set1_epi32(Bits == 4 ? 0x000F000F : 0x00FF00FF);
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c)
#pragma GCC unroll 4
    for (int i = 0; i < D; ++i) __builtin_prefetch(ahead + static_cast<long>(k0) * Bits / 8 * NC + c * chunk_bytes + 64 * i);
  const int dwords = std::min(16 * D, (K - k0) / per_dword);
  __m512i lanes[NC][D];  // each column's dwords of every lane, in the order of x's vectors
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) {
    const uint8_t* at = rows[c] + static_cast<long>(k0) * Bits / 8;
    __m512i v[D];
#pragma GCC unroll 4
    for (int i = 0; i < D; ++i) {
      const int in = std::clamp(dwords - 16 * i, 0, 16);
      v[i] = _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << in) - 1), at + 64 * i);
    }
    lanes_of<D>(v, lanes[c]);
  }
  __m512i dot[MR][NC];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) dot[r][c] = _mm512_setzero_si512();
#pragma GCC unroll 32
  for (int v = 0; v < D * half; ++v) {
    const int d = v / half, t = v % half;
    __m512i w[NC];
#pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      // The top pair of each word needs no mask: a 16-bit shift leaves it alone.
      if (t == half - 1 && t > 0) w[c] = _mm512_srli_epi16(lanes[c][d], Bits * t);
      else w[c] = _mm512_and_si512(t == 0 ? lanes[c][d] : _mm512_srli_epi32(lanes[c][d], Bits * t), pair_mask);
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512i xv = _mm512_loadu_si512(x + r * chunk + 32 * v);
#pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) dot[r][c] = _mm512_dpwssd_epi32(dot[r][c], w[c], xv);
    }
  }
  // The groups the chunk spans (a chunk of 64 8-bit weights lies inside one group of 128).
  const int shift = __builtin_ctz(p.group);
  const int g = k0 >> shift, count = std::min(std::max(1, chunk >> shift), groups - g);
  const __m512i lane_group = lane_groups(p.group, per_lane);
#pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) {
    const long at = static_cast<long>(n + c) * groups + g;
    const __m512 s = int16_lane_scales<S>(p.scales, at, count, lane_group);
    // The codes are unsigned: symmetric weights' offset, -2^(Bits-1) · scale, is their bias.
    __m512 b = _mm512_setzero_ps();
    if constexpr (lane_biases(Bits))
      b = Symmetric ? _mm512_mul_ps(s, _mm512_set1_ps(-static_cast<float>(1 << (Bits - 1))))
                    : int16_lane_scales<S>(p.biases, at, count, lane_group);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 step = _mm512_loadu_ps(steps + 16 * r);
      acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r][c]), _mm512_mul_ps(s, step), acc[r][c]);
      if constexpr (lane_biases(Bits)) acc[r][c] = _mm512_fmadd_ps(b, _mm512_loadu_ps(sums + 16 * r), acc[r][c]);
    }
  }
}

// y[0 .. MR, n .. n + NC) for n in [n0, n1) (MR = p.M): the whole chunks of
// int16_lane_dwords(Bits) dwords a lane, then the rest in chunks of one.
template <int Bits, ScaleType S, bool Symmetric, int MR, int NC>
void int16_rows(const QmmProblem& p, int n0, int n1) {
  constexpr int D = int16_lane_dwords(Bits), C = int16_chunk(Bits), T = int16_tail_chunk(Bits);
  const int K = p.K, groups = K / p.group, row_bytes = K * Bits / 8;
  const int whole = K / C, chunks = int16_chunks(K, Bits);
  const long ahead_rows = prefetch_rows_ahead(p.w, n0, n1, row_bytes, NC);
  for (int n = n0; n < n1; n += NC) {
    const uint8_t* rows[NC];
    for (int c = 0; c < NC; ++c) rows[c] = p.w + static_cast<long>(n + c) * row_bytes;
    const uint8_t* ahead = rows[0] + ahead_rows * row_bytes;
    __m512 acc[MR][NC];
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int chunk = 0; chunk < chunks; ++chunk) {
      const long lanes = 16L * MR * chunk;
      const float *steps = p.x_int16_steps + lanes, *sums = p.x_int16_lane_sums + lanes;
      if (chunk < whole) {
        const int k0 = chunk * C;
        int16_chunk_into<Bits, S, Symmetric, MR, NC, D>(p, n, rows, ahead, k0, p.x_int16 + MR * k0, steps, sums, acc);
      } else {
        const int k0 = whole * C + (chunk - whole) * T;
        int16_chunk_into<Bits, S, Symmetric, MR, NC, 1>(p, n, rows, ahead, k0, p.x_int16 + MR * k0, steps, sums, acc);
      }
    }
    for (int c = 0; c < NC; ++c) {
      float share[MR] = {};
      if constexpr (!lane_biases(Bits)) {
        // The codes are unsigned: the offset (-2^(Bits-1) · scale when symmetric) is in the biases'
        // share, summed over the rounded x (p.x_group_sums).
        bias_shares<S, MR>(Symmetric ? p.scales : p.biases, n + c, groups, p.x_group_sums, share);
        for (int r = 0; r < MR; ++r) share[r] *= Symmetric ? -static_cast<float>(1 << (Bits - 1)) : 1.0f;
      }
      for (int r = 0; r < MR; ++r) p.y[static_cast<long>(r) * p.N + n + c] = _mm512_reduce_add_ps(acc[r][c]) + share[r];
    }
  }
}

template <int Bits, ScaleType S, bool Symmetric, int MR, int NC>
void int16_columns(const QmmProblem& p, int n0, int n1) {
  const int blocked = n0 + (n1 - n0) / NC * NC;
  int16_rows<Bits, S, Symmetric, MR, NC>(p, n0, blocked);
  if (blocked < n1) int16_rows<Bits, S, Symmetric, MR, 1>(p, blocked, n1);
}

// All rows at once, so each chunk of weights is unpacked once per product: with integer products
// a row costs a few instructions a chunk and eight rows fit the registers with one column. A
// row's sums are formed in the same order whatever the row count, so it gives the same bits
// alone as in a batch.
template <int Bits, ScaleType S, bool Symmetric>
void int16_tile(const QmmProblem& p, int n0, int n1) {
  with_count<kDirectMaxRows>(p.M, [&]<int MR>() {
    // Few rows take several columns at once (NC), so that the products' latency hides.
    if constexpr (MR <= 4) int16_columns<Bits, S, Symmetric, MR, MR <= 2 ? 4 : 2>(p, n0, n1);
    else int16_rows<Bits, S, Symmetric, MR, 1>(p, n0, n1);
  });
}

template <ScaleType S>
void int16_tile(const QmmProblem& p, int n0, int n1) {
  if (p.bits == 4) {
    if (p.symmetric) int16_tile<4, S, true>(p, n0, n1);
    else int16_tile<4, S, false>(p, n0, n1);
  } else {
    if (p.symmetric) int16_tile<8, S, true>(p, n0, n1);
    else int16_tile<8, S, false>(p, n0, n1);
  }
}

// The int16 decode rows on repacked weights (kRepackColumns in quantized_matmul.h): y[0 .. MR,
// n .. n + 16) for each block of 16 columns n in [n0, n1). A 64-byte vector holds one dword of
// each of the 16 columns; masking its words after a shift by Bits · t leaves, in lane j, column
// j's weights t and t + p/2 of the dword (p = 32 / Bits) as two int16 words, which vpdpwssd
// multiplies with the row's matching pair of x (quantize_rows_int16_pairs' order) broadcast to
// every lane. A block of 32 weights is Bits vectors; its int32 sums are converted once and scaled
// by the 16 columns' scales times the row's step, and each group adds its biases times the row's
// sum of rounded x over the group. Fewer rows split a block's products over more int32 sums, so
// that vpdpwssd's latency hides: integer sums are exact in any order, so a row gives the same
// bits alone and in a batch (every float operation is the same for any row count). At 4 bits a
// block's sum converts to a float exactly (|sum| <= 32 · 15 · 32767 < 2^24); at 8 bits it may
// round, by 2^-24 of it (|sum| <= 32 · 255 · 32767 < 2^31: no overflow). NC = 2 (prompt rows):
// two blocks of 16 columns side by side, so each row's broadcast pair of x serves two vpdpwssd
// (the rows' float accumulators, touched once per block, are kept on the stack instead). Each
// column's operations are the same whatever NC, so NC changes no bit. Faster on weights in L2
// (a prompt's slices), slower on weights streamed from memory (a decode step's; bench/RESULTS.md).
// HalfGroups (8 bits, groups of kHalfGroup): each half of a block is a group, its int32 sums
// converted and scaled on their own, and its bias added at once.
template <int Bits, ScaleType S, bool Symmetric, int MR, int NC, bool HalfGroups = false>
void repacked_rows(const QmmProblem& p, int n0, int n1) {
  static_assert(!HalfGroups || Bits == 8, "groups of 16 are 8-bit only");
  constexpr int per_dword = 32 / Bits, pairs = per_dword / 2, block_vectors = Bits;
  constexpr int parts = HalfGroups ? 2 : 1, part_vectors = block_vectors / parts;
  constexpr int chains = MR * NC >= 4 ? 1 : 4 / (MR * NC);
  const int K = p.K, groups = K / p.group, vectors = K / per_dword, blocks = K / 32;
  // Blocks of 32 per group, a power of two (groups of 32, 64 or 128; a half group counts as one).
  const int group_blocks = HalfGroups ? 1 : p.group / 32;
  const __m512i mask = _mm512_set1_epi32(Bits == 4 ? 0x000F000F : 0x00FF00FF);
  // Row r's pairs of x as dwords, from r · K / 2.
  const int32_t* x = reinterpret_cast<const int32_t*>(p.x_int16);
  constexpr long ahead = kNibblePrefetchBytes / 64;
  for (int n = n0; n < n1; n += NC * kRepackColumns) {
    const int b = n / kRepackColumns;
    const __m512i* w = reinterpret_cast<const __m512i*>(p.w) + static_cast<long>(b) * vectors;
    __m512 acc[MR][NC];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int block = 0; block < blocks; ++block) {
#pragma GCC unroll 2
      for (int part = 0; part < parts; ++part) {
        __m512i dot[MR][NC][chains];
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
          for (int c = 0; c < NC; ++c)
#pragma GCC unroll 4
            for (int h = 0; h < chains; ++h) dot[r][c][h] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int i = part * part_vectors; i < (part + 1) * part_vectors; ++i) {
          const int vector = block * block_vectors + i;
          __m512i v[NC];
#pragma GCC unroll 2
          for (int c = 0; c < NC; ++c) {
            _mm_prefetch(reinterpret_cast<const char*>(w + c * vectors + vector + ahead), _MM_HINT_T0);
            v[c] = _mm512_loadu_si512(w + c * vectors + vector);
          }
#pragma GCC unroll 4
          for (int t = 0; t < pairs; ++t) {
            __m512i q[NC];
#pragma GCC unroll 2
            for (int c = 0; c < NC; ++c)
              // The top pair of each word needs no mask: a 16-bit shift leaves it alone.
              q[c] = t == 0           ? _mm512_and_si512(v[c], mask)
                     : t == pairs - 1 ? _mm512_srli_epi16(v[c], Bits * t)
                                      : _mm512_and_si512(_mm512_srli_epi32(v[c], Bits * t), mask);
            const int pair = vector * pairs + t, h = (i * pairs + t) % chains;
#pragma GCC unroll 8
            for (int r = 0; r < MR; ++r) {
              const __m512i xr = _mm512_set1_epi32(x[static_cast<long>(r) * K / 2 + pair]);
#pragma GCC unroll 2
              for (int c = 0; c < NC; ++c) dot[r][c][h] = _mm512_dpwssd_epi32(dot[r][c][h], q[c], xr);
            }
          }
        }
        const int g = HalfGroups ? 2 * block + part : block / group_blocks;
        // Where block b + c's scales and biases of group g start.
        const auto at = [&](int c) { return ((static_cast<long>(b) + c) * groups + g) * kRepackColumns; };
        __m512 s[NC];
#pragma GCC unroll 2
        for (int c = 0; c < NC; ++c) s[c] = lane_biases<S>(p.scales, at(c), 0xFFFF);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
          const __m512 step = _mm512_set1_ps(p.x_int16_steps[static_cast<long>(r) * blocks + block]);
#pragma GCC unroll 2
          for (int c = 0; c < NC; ++c) {
            __m512i sum = dot[r][c][0];
#pragma GCC unroll 4
            for (int h = 1; h < chains; ++h) sum = _mm512_add_epi32(sum, dot[r][c][h]);
            acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(s[c], step), acc[r][c]);
          }
        }
        if ((block + 1) % group_blocks != 0) continue;
        // The codes are unsigned: symmetric weights' offset, -2^(Bits-1) · scale, is their bias.
        __m512 bias[NC];
#pragma GCC unroll 2
        for (int c = 0; c < NC; ++c)
          bias[c] = Symmetric ? _mm512_mul_ps(s[c], _mm512_set1_ps(-static_cast<float>(1 << (Bits - 1))))
                              : lane_biases<S>(p.biases, at(c), 0xFFFF);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
          const __m512 sums = _mm512_set1_ps(p.x_group_sums[static_cast<long>(r) * groups + g]);
#pragma GCC unroll 2
          for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_fmadd_ps(bias[c], sums, acc[r][c]);
        }
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
      for (int c = 0; c < NC; ++c) _mm512_storeu_ps(p.y + static_cast<long>(r) * p.N + n + c * kRepackColumns, acc[r][c]);
  }
}

// repacked_rows of a whole chunk of prompt rows over [n0, n1) by pairs of blocks of columns, a
// block left over alone.
template <int Bits, ScaleType S, bool Symmetric>
void repacked_pairs(const QmmProblem& p, int n0, int n1) {
  const int paired = n0 + (n1 - n0) / (2 * kRepackColumns) * (2 * kRepackColumns);
  repacked_rows<Bits, S, Symmetric, kDirectMaxRows, 2>(p, n0, paired);
  if (paired < n1) repacked_rows<Bits, S, Symmetric, kDirectMaxRows, 1>(p, paired, n1);
}

template <int Bits, ScaleType S, bool Symmetric, bool HalfGroups>
void repacked_decode_rows(const QmmProblem& p, int n0, int n1) {
  with_count<kDirectMaxRows>(p.M, [&]<int MR>() { repacked_rows<Bits, S, Symmetric, MR, 1, HalfGroups>(p, n0, n1); });
}

// The weights of a slice of columns that prompt rows read while they stay in L2.
constexpr long kPromptSliceBytes = 256 * 1024;

// Prompt rows (M > kDirectMaxRows): the decode rows' kernel on chunks of kDirectMaxRows rows,
// over slices of columns whose weights stay in L2 while every chunk reads them (4-bit chunks of 8
// by pairs of blocks). Each row takes the operations it takes alone, so a prompt's row gives the
// bits a decode step gives it.
template <int Bits, ScaleType S, bool Symmetric, bool HalfGroups>
void repacked_tile(const QmmProblem& p, int n0, int n1) {
  if (p.M <= kDirectMaxRows) return repacked_decode_rows<Bits, S, Symmetric, HalfGroups>(p, n0, n1);
  const long column_bytes = static_cast<long>(p.K) * Bits / 8;
  // Whole pairs of blocks (repacked_pairs), as the tasks' columns are (kPanelMaxColumns).
  const int slice = std::max<long>(1, kPromptSliceBytes / column_bytes / (2 * kRepackColumns)) * 2 * kRepackColumns;
  const int blocks = p.K / 32, groups = p.K / p.group;
  for (int s0 = n0; s0 < n1; s0 += slice) {
    const int s1 = std::min(n1, s0 + slice);
    for (int r0 = 0; r0 < p.M; r0 += kDirectMaxRows) {
      QmmProblem rows = p;
      rows.M = std::min(kDirectMaxRows, p.M - r0);
      rows.x_int16 += static_cast<long>(r0) * p.K;
      rows.x_int16_steps += static_cast<long>(r0) * blocks;
      rows.x_group_sums += static_cast<long>(r0) * groups;
      rows.y += static_cast<long>(r0) * p.N;
      if (Bits == 4 && rows.M == kDirectMaxRows) repacked_pairs<Bits, S, Symmetric>(rows, s0, s1);
      else repacked_decode_rows<Bits, S, Symmetric, HalfGroups>(rows, s0, s1);
    }
  }
}

template <ScaleType S>
void repacked_tile(const QmmProblem& p, int n0, int n1) {
  if (p.bits == 4) {
    if (p.symmetric) repacked_tile<4, S, true, false>(p, n0, n1);
    else repacked_tile<4, S, false, false>(p, n0, n1);
  } else if (p.group == kHalfGroup) {
    if (p.symmetric) repacked_tile<8, S, true, true>(p, n0, n1);
    else repacked_tile<8, S, false, true>(p, n0, n1);
  } else {
    if (p.symmetric) repacked_tile<8, S, true, false>(p, n0, n1);
    else repacked_tile<8, S, false, false>(p, n0, n1);
  }
}

}  // namespace

namespace {

// Where quantize_rows_int16 puts a block of 32 elements within a chunk of `lane_dwords` dwords a
// lane: `order` gives, vector by vector, the block's elements for its lanes, `run` of them a vector.
struct BlockOrder {
  __m512i order;
  int per_lane, vectors, run;
};

// A block of 32 elements of x rounded to int16 (elements 0-15 into qa, 16-31 into qb, as int32
// lanes) with the step max |x| / 32767, which it returns. Every int16 kernel's activations are
// rounded here, so a row's integers are the same whichever layout of weights it meets.
inline float round_block(const float* in, __m512i& qa, __m512i& qb) {
  const __m512 a = _mm512_loadu_ps(in), b = _mm512_loadu_ps(in + 16);
  const float step = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b))) / 32767.0f;
  const __m512 inverse = _mm512_set1_ps(step > 0.0f ? 1.0f / step : 0.0f);
  const __m512i limit = _mm512_set1_epi32(32767);
  // Rounded to nearest (even on ties); |x · inverse| <= 32767 up to the inverse's rounding.
  auto rounded = [&](__m512 v) {
    const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inverse));
    return _mm512_max_epi32(_mm512_min_epi32(q, limit), _mm512_sub_epi32(_mm512_setzero_si512(), limit));
  };
  qa = rounded(a);
  qb = rounded(b);
  return step;
}

BlockOrder block_order(int bits, int lane_dwords) {
  // Elements per dword of weights, per int32 lane, the vectors of a chunk and a block's share of each.
  const int per_dword = 32 / bits, half = per_dword / 2, per_lane = lane_dwords * per_dword;
  const int vectors = per_lane / 2, run = 32 / vectors;
  // Vector v of a chunk takes, from each lane, elements d·per_dword + t and d·per_dword + t + half
  // of the lane (d = v / half, t = v % half): for a block, its run elements in that order.
  alignas(64) int16_t order[32];
  for (int v = 0; v < vectors; ++v)
    for (int i = 0; i < run; ++i)
      order[v * run + i] = static_cast<int16_t>((i / 2) * per_lane + (v / half) * per_dword + v % half + (i % 2) * half);
  return {_mm512_load_si512(order), per_lane, vectors, run};
}

}  // namespace

void quantize_rows_int16(const float* x, int M, int K, int bits, int group, int16_t* x_int16, float* lane_steps,
                         float* lane_sums, float* group_sums) {
  const int chunk = int16_chunk(bits), tail = int16_tail_chunk(bits), whole = K / chunk * chunk;
  const long padded = int16_padded(K, bits), whole_lanes = 16L * M * (K / chunk), lanes = 16L * M * int16_chunks(K, bits);
  const BlockOrder in_whole = block_order(bits, int16_lane_dwords(bits)), in_tail = block_order(bits, 1);
  // The chunks of one dword a lane: zeros where no element lands.
  std::fill(x_int16 + M * whole, x_int16 + M * padded, int16_t{0});
  std::fill(lane_steps + whole_lanes, lane_steps + lanes, 0.0f);
  std::fill(lane_sums + whole_lanes, lane_sums + lanes, 0.0f);
  std::fill(group_sums, group_sums + static_cast<long>(M) * (K / group), 0.0f);
  for (int r = 0; r < M; ++r) {
    for (int k0 = 0; k0 < K; k0 += 32) {
      __m512i qa, qb;
      const float step = round_block(x + static_cast<long>(r) * K + k0, qa, qb);
      const __m512i words =
          _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(qa)), _mm512_cvtepi32_epi16(qb), 1);
      // The block's chunk (its first element, its index and its layout) and the block's place in it.
      const bool in_tail_chunks = k0 >= whole;
      const BlockOrder& o = in_tail_chunks ? in_tail : in_whole;
      const int size = in_tail_chunks ? tail : chunk;
      const int first = in_tail_chunks ? whole + (k0 - whole) / tail * tail : k0 / chunk * chunk;
      const int index = in_tail_chunks ? K / chunk + (k0 - whole) / tail : k0 / chunk;
      const int e0 = k0 - first, lane = e0 / o.per_lane;
      int16_t* out = x_int16 + static_cast<long>(M) * first + static_cast<long>(r) * size;
      alignas(64) int16_t ordered[32];
      _mm512_store_si512(ordered, _mm512_permutexvar_epi16(o.order, words));
      for (int v = 0; v < o.vectors; ++v) std::copy(ordered + v * o.run, ordered + (v + 1) * o.run, out + 32 * v + 2 * lane);
      // Each lane the block fills: its step, and the sum of its rounded elements (in a row).
      alignas(64) int32_t q[32];
      _mm512_store_si512(q, qa);
      _mm512_store_si512(q + 16, qb);
      const long at = 16L * (static_cast<long>(index) * M + r) + lane;
      for (int l = 0; l < 32 / o.per_lane; ++l) {
        lane_steps[at + l] = step;
        if (!lane_biases(bits)) continue;
        int sum = 0;
        for (int i = 0; i < o.per_lane; ++i) sum += q[l * o.per_lane + i];
        lane_sums[at + l] = step * static_cast<float>(sum);
      }
      if (!lane_biases(bits))
        group_sums[static_cast<long>(r) * (K / group) + k0 / group] +=
            step * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb)));
    }
  }
}

void qmm_tile_int16_vnni(const QmmProblem& p, int n_begin, int n_end, float*) {
  switch (p.scale_type) {
    case ScaleType::f32: int16_tile<ScaleType::f32>(p, n_begin, n_end); break;
    case ScaleType::f16: int16_tile<ScaleType::f16>(p, n_begin, n_end); break;
    case ScaleType::bf16: int16_tile<ScaleType::bf16>(p, n_begin, n_end); break;
  }
}

void quantize_rows_int16_pairs(const float* x, int M, int K, int bits, int group, int16_t* x_pairs, float* steps,
                               float* group_sums) {
  // Within every 8 elements (4 bits) or 4 (8 bits), the pairs' order.
  alignas(64) int16_t order[32];
  const int run = 32 / bits, half = run / 2;
  for (int i = 0; i < 32; ++i) order[i] = static_cast<int16_t>(i / run * run + (i % run) / 2 + (i % 2) * half);
  const __m512i pair_order = _mm512_load_si512(order);
  const int blocks = K / 32, groups = K / group;
  std::fill(group_sums, group_sums + static_cast<long>(M) * groups, 0.0f);
  for (int r = 0; r < M; ++r) {
    for (int block = 0; block < blocks; ++block) {
      const long at = static_cast<long>(r) * K + 32 * block;
      __m512i qa, qb;
      const float step = round_block(x + at, qa, qb);
      const __m512i words =
          _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(qa)), _mm512_cvtepi32_epi16(qb), 1);
      _mm512_storeu_si512(x_pairs + at, _mm512_permutexvar_epi16(pair_order, words));
      steps[static_cast<long>(r) * blocks + block] = step;
      float* sums = group_sums + static_cast<long>(r) * groups;
      if (group == kHalfGroup) {
        sums[2 * block] = step * static_cast<float>(_mm512_reduce_add_epi32(qa));
        sums[2 * block + 1] = step * static_cast<float>(_mm512_reduce_add_epi32(qb));
      } else {
        sums[32 * block / group] += step * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb)));
      }
    }
  }
}

void qmm_tile_int16_repacked_vnni(const QmmProblem& p, int n_begin, int n_end, float*) {
  switch (p.scale_type) {
    case ScaleType::f32: repacked_tile<ScaleType::f32>(p, n_begin, n_end); break;
    case ScaleType::f16: repacked_tile<ScaleType::f16>(p, n_begin, n_end); break;
    case ScaleType::bf16: repacked_tile<ScaleType::bf16>(p, n_begin, n_end); break;
  }
}

void qmm_tile_int8_vnni(const QmmProblem& p, int n_begin, int n_end, float*) {
  switch (p.scale_type) {
    case ScaleType::f32: int8_tile<ScaleType::f32>(p, n_begin, n_end); break;
    case ScaleType::f16: int8_tile<ScaleType::f16>(p, n_begin, n_end); break;
    case ScaleType::bf16: int8_tile<ScaleType::bf16>(p, n_begin, n_end); break;
  }
}

}  // namespace kernels
