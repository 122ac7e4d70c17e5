// Keys quantized per channel scored, and values summed, on their codes with AVX-512 VNNI
// (quantized_attention_vnni.cpp, through quantized_attention_body.h); the values' part is below
// CodeWeights. Within a group of G positions every key element is
// code · scale_d + bias_d with the channel's own scale and bias, so
//
//   q · k = Σ_d (q_d · scale_d) · code_d + Σ_d q_d · bias_d
//
// q' = q · scale and q · bias are made once per query row and group; each key then costs a dot
// product of q' with its codes, nothing dequantized. q' is rounded to an integer of 23 bits
// (step max |q'| / 127·2¹⁶) written as kQueryParts signed bytes, so the dot product is exact
// int32 sums of vpdpbusd (unsigned code bytes × signed query bytes, four a lane): each q'_d
// moves by at most 1/2²⁴ of the row's largest, the rounding of the fp32 dot product it replaces.
// (Two bytes for the queries and the weights below, int16's rounding, moved the outputs of
// bench/quantized-attention-decode.cpp by up to 4e-4 of their largest, 20× the tests' bound;
// three bytes by 2e-6, as the fp32 kernel.)
//
// 16 keys at a time are transposed so that each int32 lane holds one key: a vector of four
// code bytes from each key times four query bytes broadcast, no sums across lanes afterwards.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace kernels {
namespace {

constexpr int kQueryParts = 3;
// The largest |q'| as an integer whose top byte stays within a signed byte after the carries.
constexpr float kQueryLimit = 127.0f * (1 << (8 * (kQueryParts - 1)));

// Elements a piece of codes holds: one 64-byte vector at 8 bits, 32 bytes at 4.
constexpr int kPiece = 64;

// Where element e of a key row sits among the query bytes: the order in which the transposed
// codes meet them. 8 bits: in place. 4 bits: each piece's 32 bytes are 8 dwords; dword c gives
// two vectors, its low nibbles (elements 8c, 8c+2, 8c+4, 8c+6) then its high ones (8c+1...).
template <int Bits>
inline int code_position(int e) {
  if constexpr (Bits == 8) return e;
  const int within = e % kPiece, c = within / 8, r = within % 8;
  return e - within + (2 * c + r % 2) * 4 + r / 2;
}

// acc + Σ of four unsigned code bytes × four signed bytes, per int32 lane (vpdpbusd). In
// assembly, where GCC's intrinsic copies the sum to another register around every instruction
// (the sum, the instruction's destination, is not tied to its source).
inline __m512i dpbusd(__m512i acc, __m512i codes, __m512i bytes) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(codes), "v"(bytes));
  return acc;
}

// The same with the four signed bytes at `four` broadcast to every lane, read by the instruction
// (the operand names those bytes as one int32 that may alias them).
typedef int32_t four_bytes __attribute__((may_alias));
inline __m512i dpbusd_broadcast(__m512i acc, __m512i codes, const void* four) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(codes), "m"(*static_cast<const four_bytes*>(four)));
  return acc;
}

// 16 values (already divided by their step) rounded to the nearest integer and written as
// kQueryParts signed bytes, part p at parts + p · part_stride (the last part least
// significant): the digits in [-128, 127] of base 256. Adding 128 to every digit makes them the
// integer's plain bytes, so each part is a byte of v + 0x808080 with its top bit flipped.
inline void round_to_parts(__m512 x, int8_t* parts, size_t part_stride) {
  static_assert(kQueryParts == 3, "the offset below has one 0x80 per part");
  const __m512i biased = _mm512_add_epi32(_mm512_cvtps_epi32(x), _mm512_set1_epi32(0x808080));
  const __m512i digits = _mm512_xor_si512(biased, _mm512_set1_epi32(0x808080));
  for (int p = 0; p < kQueryParts; ++p)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(parts + p * part_stride),
                     _mm512_cvtepi32_epi8(_mm512_srli_epi32(digits, 8 * (kQueryParts - 1 - p))));
}

// One query row against a group's keys: q' in kQueryParts bytes a element (most significant
// first, each [P][padded D] in code order), q' = step · Σ_p 256^(P-1-p) · part_p.
struct CodeQueries {
  int index = -1;  // the group of keys they were made for
  int padded = 0;  // D rounded up to whole pieces
  std::vector<int8_t> parts;
  std::vector<float> step, bias;  // per row
};

// Makes the rows' q' and q · bias for a group: queries [rows, padded], the group's scales and
// biases [padded], all in code order with zeros past D.
inline void round_queries(const float* queries, int rows, int padded, const float* scales, const float* biases,
                          CodeQueries& c) {
  c.padded = padded;
  c.parts.resize(size_t(rows) * kQueryParts * padded);
  c.step.resize(rows);
  c.bias.resize(rows);
  for (int r = 0; r < rows; ++r) {
    const float* q = queries + size_t(r) * padded;
    __m512 largest = _mm512_setzero_ps(), bias = _mm512_setzero_ps();
    for (int d = 0; d < padded; d += 16) {
      const __m512 x = _mm512_loadu_ps(q + d);
      largest = _mm512_max_ps(largest, _mm512_abs_ps(_mm512_mul_ps(x, _mm512_loadu_ps(scales + d))));
      bias = _mm512_fmadd_ps(x, _mm512_loadu_ps(biases + d), bias);
    }
    const float top = _mm512_reduce_max_ps(largest);
    c.bias[r] = _mm512_reduce_add_ps(bias);
    c.step[r] = top / kQueryLimit;
    const __m512 inverse = _mm512_set1_ps(top > 0 ? kQueryLimit / top : 0.0f);
    int8_t* parts = c.parts.data() + size_t(r) * kQueryParts * padded;
    for (int d = 0; d < padded; d += 16)
      round_to_parts(_mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(scales + d)), inverse),
                     parts + d, padded);
  }
}

// The first two rounds of a dword transpose, for N (8 or 16) vectors: b[4i + k]'s 128-bit lane
// L holds dword 4L + k of x[4i..4i+3].
template <int N>
inline void transpose_within_lanes(const __m512i* x, __m512i* b) {
  __m512i a[N];
  for (int i = 0; i < N; i += 2) {
    a[i] = _mm512_unpacklo_epi32(x[i], x[i + 1]);
    a[i + 1] = _mm512_unpackhi_epi32(x[i], x[i + 1]);
  }
  for (int i = 0; i < N; i += 4) {
    b[i] = _mm512_unpacklo_epi64(a[i], a[i + 2]);
    b[i + 1] = _mm512_unpackhi_epi64(a[i], a[i + 2]);
    b[i + 2] = _mm512_unpacklo_epi64(a[i + 1], a[i + 3]);
    b[i + 3] = _mm512_unpackhi_epi64(a[i + 1], a[i + 3]);
  }
}

// 16 × 16 dwords: x[j] (key j's 16 dwords of codes) into t[c] (dword c of every key, key j in
// lane j), in four rounds of shuffles.
inline void transpose16(const __m512i* x, __m512i* t) {
  __m512i b[16];
  transpose_within_lanes<16>(x, b);
  for (int k = 0; k < 4; ++k) {
    const __m512i c0 = _mm512_shuffle_i32x4(b[k], b[4 + k], 0x44), c1 = _mm512_shuffle_i32x4(b[k], b[4 + k], 0xEE);
    const __m512i c2 = _mm512_shuffle_i32x4(b[8 + k], b[12 + k], 0x44), c3 = _mm512_shuffle_i32x4(b[8 + k], b[12 + k], 0xEE);
    t[k] = _mm512_shuffle_i32x4(c0, c2, 0x88);
    t[4 + k] = _mm512_shuffle_i32x4(c0, c2, 0xDD);
    t[8 + k] = _mm512_shuffle_i32x4(c1, c3, 0x88);
    t[12 + k] = _mm512_shuffle_i32x4(c1, c3, 0xDD);
  }
}

// 16 keys × 8 dwords of 4-bit codes (keys[j], the piece's first byte) into 16 vectors of code
// bytes, key j in lane j: dword c's low nibbles at t[2c], its high ones at t[2c + 1].
inline void transpose_nibbles(const uint8_t* const* keys, int offset, __mmask32 bytes, __m512i* t) {
  // x[j]: keys j and j + 4 (j < 4), keys j + 4 and j + 8 (j >= 4), so the rounds below leave
  // the keys in order.
  __m512i x[8], b[8];
  for (int j = 0; j < 8; ++j) {
    const int low = j < 4 ? j : j + 4;
    x[j] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_maskz_loadu_epi8(bytes, keys[low] + offset)),
                              _mm256_maskz_loadu_epi8(bytes, keys[low + 4] + offset), 1);
  }
  transpose_within_lanes<8>(x, b);
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  for (int k = 0; k < 4; ++k)
    for (int half = 0; half < 2; ++half) {
      const __m512i dword = _mm512_shuffle_i32x4(b[k], b[4 + k], half ? 0xDD : 0x88);
      const int c = 4 * half + k;
      t[2 * c] = _mm512_and_si512(dword, nibble);
      t[2 * c + 1] = _mm512_and_si512(_mm512_srli_epi16(dword, 4), nibble);
    }
}

// The scores of up to 16 keys of one group (keys[j], their rows of codes; past m repeat the
// last) against every row of c: score[r · score_stride + j] = q'_r · codes_j · step_r + q_r · bias
// for j < m. sums: rows · kQueryParts vectors of int32 scratch.
template <int Bits>
inline void score_codes(const CodeQueries& c, int rows, const uint8_t* const* keys, int D, int m, float* score,
                        int score_stride, int32_t* sums) {
  const auto sum = [&](int r, int p) { return reinterpret_cast<__m512i*>(sums + (r * kQueryParts + p) * 16); };
  const int pieces = c.padded / kPiece;
  for (int k = 0; k < pieces; ++k) {
    const int elements = std::min(kPiece, D - k * kPiece);
    __m512i t[16];
    if constexpr (Bits == 8) {
      const __mmask64 bytes = elements == 64 ? ~__mmask64(0) : (__mmask64(1) << elements) - 1;
      __m512i x[16];
      for (int j = 0; j < 16; ++j) x[j] = _mm512_maskz_loadu_epi8(bytes, keys[j] + k * kPiece);
      transpose16(x, t);
    } else {
      const int bytes = elements / 2;
      transpose_nibbles(keys, k * kPiece / 2, bytes == 32 ? ~__mmask32(0) : (__mmask32(1) << bytes) - 1, t);
    }
    for (int r = 0; r < rows; ++r) {
      const int32_t* parts = reinterpret_cast<const int32_t*>(c.parts.data() + size_t(r) * kQueryParts * c.padded) +
                             k * kPiece / 4;
      // Two sums a part (even and odd dwords): six independent chains of vpdpbusd.
      __m512i acc[kQueryParts][2];
#pragma GCC unroll 4
      for (int p = 0; p < kQueryParts; ++p) {
        acc[p][0] = k == 0 ? _mm512_setzero_si512() : _mm512_loadu_si512(sum(r, p));
        acc[p][1] = _mm512_setzero_si512();
      }
#pragma GCC unroll 16
      for (int u = 0; u < 16; ++u)
#pragma GCC unroll 4
        for (int p = 0; p < kQueryParts; ++p)
          acc[p][u % 2] = dpbusd_broadcast(acc[p][u % 2], t[u], parts + p * c.padded / 4 + u);
#pragma GCC unroll 4
      for (int p = 0; p < kQueryParts; ++p) _mm512_storeu_si512(sum(r, p), _mm512_add_epi32(acc[p][0], acc[p][1]));
    }
  }
  const __mmask16 stored = m == 16 ? 0xFFFF : static_cast<__mmask16>((1u << m) - 1);
  for (int r = 0; r < rows; ++r) {
    __m512 dot = _mm512_cvtepi32_ps(_mm512_loadu_si512(sum(r, 0)));
    for (int p = 1; p < kQueryParts; ++p)
      dot = _mm512_fmadd_ps(dot, _mm512_set1_ps(256.0f), _mm512_cvtepi32_ps(_mm512_loadu_si512(sum(r, p))));
    const __m512 s = _mm512_fmadd_ps(dot, _mm512_set1_ps(c.step[r]), _mm512_set1_ps(c.bias[r]));
    _mm512_mask_storeu_ps(score + size_t(r) * score_stride, stored, s);
  }
}

// Values (per row: value = code · scale_t + bias_t for row t and a group along D) summed on
// their codes the same way: for a row of weights w_t over a chunk,
//
//   Σ_t w_t · value_t,d = Σ_t (w_t · scale_t) · code_t,d + Σ_t w_t · bias_t
//
// w' = w · scale is rounded per query row, group along D and chunk to kQueryParts signed bytes
// (the step max |w'| / 127·2¹⁶: each moves by at most 1/2²⁴ of the chunk's largest) and the
// codes of four value rows are interleaved so that each int32 lane holds one element d of the
// four rows, times four weights broadcast. Groups along D of 64 elements or more, so that every
// piece of 64 elements has one weight per row.
struct CodeWeights {
  std::vector<int8_t> parts;      // [rows][groups][kQueryParts][kChunk]
  std::vector<float> step, bias;  // [rows][groups]
};

// The chunk's weights [rows][kChunk] (0 past its keys) times the value rows' scales, and the
// bias sums; scales and biases [groups][kChunk].
inline void round_weights(const float* weights, int rows, int groups, const float* scales, const float* biases,
                          CodeWeights& w) {
  w.parts.resize(size_t(rows) * groups * kQueryParts * kChunk);
  w.step.resize(size_t(rows) * groups);
  w.bias.resize(size_t(rows) * groups);
  for (int r = 0; r < rows; ++r)
    for (int g = 0; g < groups; ++g) {
      const float* x = weights + size_t(r) * kChunk;
      const float* scale = scales + size_t(g) * kChunk;
      __m512 largest = _mm512_setzero_ps(), bias = _mm512_setzero_ps();
      for (int t = 0; t < kChunk; t += 16) {
        const __m512 wt = _mm512_loadu_ps(x + t);
        // MLX's scales may be negative (the group's extreme is its minimum).
        largest = _mm512_max_ps(largest, _mm512_abs_ps(_mm512_mul_ps(wt, _mm512_loadu_ps(scale + t))));
        bias = _mm512_fmadd_ps(wt, _mm512_loadu_ps(biases + size_t(g) * kChunk + t), bias);
      }
      const float top = _mm512_reduce_max_ps(largest);
      const size_t at = size_t(r) * groups + g;
      w.bias[at] = _mm512_reduce_add_ps(bias);
      w.step[at] = top / kQueryLimit;
      const __m512 inverse = _mm512_set1_ps(top > 0 ? kQueryLimit / top : 0.0f);
      int8_t* parts = w.parts.data() + at * kQueryParts * kChunk;
      for (int t = 0; t < kChunk; t += 16)
        round_to_parts(_mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + t), _mm512_loadu_ps(scale + t)), inverse),
                       parts + t, kChunk);
    }
}

// Where element d of a value row sits among the outputs the code sums leave: piece k (64
// elements) holds 4 vectors; vector v's lane j is the element interleave_values put there.
template <int Bits>
inline int value_position(int d) {
  const int within = d % kPiece, piece = d - within;
  if constexpr (Bits == 8) {
    const int lane = within / 16, rest = within % 16;
    return piece + 16 * (rest / 4) + 4 * lane + rest % 4;
  }
  const int byte = within / 2, nibble = within % 2;
  // Bytes 0-7, 16-23, 8-15, 24-31 of the rows in the 128-bit lanes 0-3.
  constexpr int kLaneOf[4] = {0, 2, 1, 3};
  const int lane = kLaneOf[byte / 8], offset = byte % 8;
  return piece + 16 * (2 * nibble + offset / 4) + 4 * lane + offset % 4;
}

// Half h of piece k of four value rows interleaved: two vectors whose int32 lanes each hold one
// element's four codes (rows in order), the elements value_position gives.
template <int Bits>
inline void interleave_values(const uint8_t* const* rows, int k, int h, __m512i* x) {
  if constexpr (Bits == 8) {
    const auto load = [&](int i) { return _mm512_loadu_si512(rows[i] + k * kPiece); };
    const __m512i r0 = load(0), r1 = load(1), r2 = load(2), r3 = load(3);
    const __m512i u = h ? _mm512_unpackhi_epi8(r0, r1) : _mm512_unpacklo_epi8(r0, r1);
    const __m512i v = h ? _mm512_unpackhi_epi8(r2, r3) : _mm512_unpacklo_epi8(r2, r3);
    x[0] = _mm512_unpacklo_epi16(u, v);
    x[1] = _mm512_unpackhi_epi16(u, v);
  } else {
    const auto load = [&](int i) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[i] + k * kPiece / 2)); };
    const __m512i a = _mm512_inserti64x4(_mm512_castsi256_si512(load(0)), load(2), 1);
    const __m512i b = _mm512_inserti64x4(_mm512_castsi256_si512(load(1)), load(3), 1);
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    // h = 0: the low nibbles (even elements), 1: the high ones.
    const __m512i na = _mm512_and_si512(h ? _mm512_srli_epi16(a, 4) : a, nibble);
    const __m512i nb = _mm512_and_si512(h ? _mm512_srli_epi16(b, 4) : b, nibble);
    // 128-bit lanes: rows 0-1 paired (bytes 0-7, 16-23), then rows 2-3 (the same bytes); then 8-15, 24-31.
    const __m512i pairs = _mm512_unpacklo_epi8(na, nb), more = _mm512_unpackhi_epi8(na, nb);
    // Rows 0-1 and rows 2-3 of the same bytes side by side.
    const __m512i first = _mm512_shuffle_i32x4(pairs, more, 0x44), second = _mm512_shuffle_i32x4(pairs, more, 0xEE);
    x[0] = _mm512_unpacklo_epi16(first, second);
    x[1] = _mm512_unpackhi_epi16(first, second);
  }
}

// Adds the chunk's n value rows (from `packed`, row_bytes apart) times M rows' rounded weights
// (w, from row `first`) to their outputs (Dv apart, value_position's order): half H of piece k.
// Every loop over the sums is unrolled, so they all stay in registers (a loop left rolled makes
// GCC keep the array on the stack and store it back on every step).
template <int Bits, int M, int H>
inline void accumulate_value_half(const CodeWeights& w, int first, int groups, int g, int k, int n,
                                  const uint8_t* packed, int64_t row_bytes, int Dv, float* out) {
  __m512i acc[M][kQueryParts][2];
  const int8_t* weights[M];
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r) {
    weights[r] = w.parts.data() + (size_t(first + r) * groups + g) * kQueryParts * kChunk;
#pragma GCC unroll 4
    for (int p = 0; p < kQueryParts; ++p) acc[r][p][0] = acc[r][p][1] = _mm512_setzero_si512();
  }
  for (int t = 0; t < n; t += 4) {
    const uint8_t* rows[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) rows[i] = packed + std::min(t + i, n - 1) * row_bytes;
    __m512i x[2];
    interleave_values<Bits>(rows, k, H, x);
#pragma GCC unroll 4
    for (int r = 0; r < M; ++r)
#pragma GCC unroll 4
      for (int p = 0; p < kQueryParts; ++p) {
        const int8_t* four = weights[r] + size_t(p) * kChunk + t;
        acc[r][p][0] = dpbusd_broadcast(acc[r][p][0], x[0], four);
        acc[r][p][1] = dpbusd_broadcast(acc[r][p][1], x[1], four);
      }
  }
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r) {
    const size_t at = size_t(first + r) * groups + g;
#pragma GCC unroll 2
    for (int v = 0; v < 2; ++v) {
      __m512 sum = _mm512_cvtepi32_ps(acc[r][0][v]);
#pragma GCC unroll 4
      for (int p = 1; p < kQueryParts; ++p)
        sum = _mm512_fmadd_ps(sum, _mm512_set1_ps(256.0f), _mm512_cvtepi32_ps(acc[r][p][v]));
      float* o = out + size_t(r) * Dv + k * kPiece + (2 * H + v) * 16;
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), _mm512_fmadd_ps(sum, _mm512_set1_ps(w.step[at]),
                                                                             _mm512_set1_ps(w.bias[at]))));
    }
  }
}

template <int Bits, int M>
inline void accumulate_value_codes(const CodeWeights& w, int first, int groups, int group, int n,
                                   const uint8_t* packed, int64_t row_bytes, int Dv, float* out) {
  for (int k = 0; k < Dv / kPiece; ++k) {
    const int g = k * kPiece / group;
    accumulate_value_half<Bits, M, 0>(w, first, groups, g, k, n, packed, row_bytes, Dv, out);
    accumulate_value_half<Bits, M, 1>(w, first, groups, g, k, n, packed, row_bytes, Dv, out);
  }
}

// The same for any number of rows, up to 3 at a time (18 sums in registers).
template <int Bits>
inline void accumulate_value_codes(const CodeWeights& w, int rows, int groups, int group, int n,
                                   const uint8_t* packed, int64_t row_bytes, int Dv, float* out) {
  for (int first = 0; first < rows; first += 3) {
    float* o = out + size_t(first) * Dv;
    switch (std::min(3, rows - first)) {
      case 1: accumulate_value_codes<Bits, 1>(w, first, groups, group, n, packed, row_bytes, Dv, o); break;
      case 2: accumulate_value_codes<Bits, 2>(w, first, groups, group, n, packed, row_bytes, Dv, o); break;
      default: accumulate_value_codes<Bits, 3>(w, first, groups, group, n, packed, row_bytes, Dv, o); break;
    }
  }
}

}  // namespace
}  // namespace kernels
