// The quantized attention kernel's problem description, shared by the primitive
// (quantized_attention.cpp) and the per-instruction-set kernels (quantized_attention_<isa>.cpp,
// all compiled from quantized_attention_body.h).
#pragma once

#include <cstdint>

#include "attention_kernel.h"

namespace kernels {

// Keys or values [B, Hkv, T, width] as MLX affine-quantizes them: packed codes (uint32 words,
// element e of a row at bit e·bits, so byte e·bits/8 on a little-endian CPU), and a scale and a
// bias per group of `group` elements; value = code · scale + bias. Each part is read in place
// through its strides on axes 0–2 (the cache hands over views of a larger buffer); rows are
// contiguous.
struct QuantizedRows {
  const uint8_t* packed;
  const void* scales;
  const void* biases;
  int64_t packed_stride[3];  // in bytes
  int64_t scale_stride[3];   // in elements, scales and biases alike
  int64_t bias_stride[3];
};

// softmax(q kᵀ · scale + mask) v as AttentionProblem describes it, keys and values quantized
// with `bits` (4 or 8) in groups of `group` (32, 64 or 128); `sinks` [Hq], when given, is a
// logit per query head that joins each row's softmax without a value (gpt-oss).
struct QuantizedAttentionProblem {
  int batch, q_heads, kv_heads, q_len, kv_len, dim, value_dim, bits, group;
  float scale;
  bool causal;
  const float* q;  // row-contiguous
  QuantizedRows keys, values;
  Element scale_type;  // of the keys' and values' scales and biases
  StridedView mask;
  bool has_mask, bool_mask;
  const float* sinks;  // or null
  float* out;          // [B, Hq, Lq, Dv], row-contiguous
  // Keys quantized per channel (KIVI): keys.scales and keys.biases are [B, Hkv, groups, dim], one
  // per channel and group of `group` positions, for the positions below tail_start; the positions
  // from tail_start on are the float rows of `tail` [B, Hkv, kv_len - tail_start, dim].
  bool channel_keys;
  int tail_start;
  StridedView tail;
};

using QuantizedAttendTile = void (*)(const QuantizedAttentionProblem& p, const AttentionTile& tile, float* partial);

void quantized_attend_tile_portable(const QuantizedAttentionProblem&, const AttentionTile&, float*);
#if defined(KERNELS_HAVE_AVX2)
void quantized_attend_tile_avx2(const QuantizedAttentionProblem&, const AttentionTile&, float*);
#endif
#if defined(KERNELS_HAVE_AVX512)
void quantized_attend_tile_avx512(const QuantizedAttentionProblem&, const AttentionTile&, float*);
#endif
#if defined(KERNELS_HAVE_VNNI)
void quantized_attend_tile_vnni(const QuantizedAttentionProblem&, const AttentionTile&, float*);
#endif
#if defined(KERNELS_HAVE_NEON)
void quantized_attend_tile_neon(const QuantizedAttentionProblem&, const AttentionTile&, float*);
#endif

}  // namespace kernels
