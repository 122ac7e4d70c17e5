// The attention kernel's problem description, shared by the primitive (attention.cpp) and the
// per-instruction-set kernels (attention_<isa>.cpp, all compiled from attention_body.h).
#pragma once

#include <cstdint>

namespace kernels {

enum class Element { f32, f16, bf16 };

// A 4-D input read in place through its strides (in elements): the KV cache's keys and values
// are views of a larger buffer, and a mask may be broadcast (stride 0).
struct StridedView {
  const void* data = nullptr;
  Element type = Element::f32;
  int64_t stride[4] = {0, 0, 0, 0};
};

// softmax(q kᵀ · scale + mask) v for queries [B, Hq, Lq, D] over keys [B, Hkv, Lk, D] and
// values [B, Hkv, Lk, Dv]: query head h reads key/value head h / (Hq / Hkv), without copies.
// Causal: query i sees keys j <= i + Lk - Lq (the queries are the last Lq positions).
struct AttentionProblem {
  int batch, q_heads, kv_heads, q_len, kv_len, dim, value_dim;
  float scale;
  bool causal;
  const float* q;  // row-contiguous
  StridedView keys, values;
  // [B, Hq, Lq, Lk] or absent: a bool mask (false hides a key) or an additive fp32 one.
  StridedView mask;
  bool has_mask, bool_mask;
  // [Hq] fp32 or null: a learned logit per head that joins the softmax without a value (gpt-oss).
  const float* sinks;
  float* out;  // [B, Hq, Lq, Dv], row-contiguous
};

// One task: query rows [row_begin, row_end) of every query head that reads kv head `kv_head` of
// batch row `b`, against keys [key_begin, key_end). `first_part`: the keys start at the rows'
// first visible one (a head's sink joins the softmax there, once).
struct AttentionTile {
  int b, kv_head, row_begin, row_end, key_begin, key_end;
  bool first_part;
};

// The softmax state a tile leaves when its keys are only part of the row (split-K decode): for
// each of its rows (query head major, then position) the running max, the sum of exponentials
// and the unnormalised output, value_dim + 2 floats.
template <class Problem>
inline int partial_stride(const Problem& p) {
  return p.value_dim + 2;
}

// Computes one tile: into `partial` when given, otherwise normalised straight into p.out.
using AttendTile = void (*)(const AttentionProblem& p, const AttentionTile& tile, float* partial);

void attend_tile_portable(const AttentionProblem&, const AttentionTile&, float*);
#if defined(KERNELS_HAVE_AVX2)
void attend_tile_avx2(const AttentionProblem&, const AttentionTile&, float*);
#endif
#if defined(KERNELS_HAVE_AVX512)
void attend_tile_avx512(const AttentionProblem&, const AttentionTile&, float*);
#endif
#if defined(KERNELS_HAVE_NEON)
void attend_tile_neon(const AttentionProblem&, const AttentionTile&, float*);
#endif

}  // namespace kernels
