// The attention kernel, written once with GCC/Clang vector types and compiled per instruction
// set: attention_<isa>.cpp defines ATTENTION_VECTOR_BYTES (the vector width) and
// ATTENTION_TILE_FN (the function's name), and is built with that set's flags (kernels.cmake).
//
// Flash-attention style: keys are taken in chunks; for every query row of the tile the chunk's
// scores are computed, the running max and sum rescaled, and the chunk's values accumulated,
// all in fp32. Every query head of a key/value head shares each chunk while it is in L1, so
// grouped-query attention reads K and V once per tile and never repeats them.
#include <vector>

#include "attention_vector.h"

namespace kernels {
namespace {

// Per-thread buffers, kept between calls (pool threads and stream threads are long-lived).
struct Scratch {
  std::vector<float> queries, keys_t, values, scores, out, max, sum;
};

}  // namespace

void ATTENTION_TILE_FN(const AttentionProblem& p, const AttentionTile& t, float* partial) {
  thread_local Scratch s;
  const int group = p.q_heads / p.kv_heads;
  const int positions = t.row_end - t.row_begin;
  const int rows = group * positions;
  const int D = p.dim, Dv = p.value_dim;
  const int shift = p.kv_len - p.q_len;
  s.queries.resize(size_t(rows) * D);
  s.keys_t.resize(size_t(D) * kChunk);
  s.values.resize(size_t(kChunk) * Dv);
  s.scores.resize(size_t(rows) * kChunk);
  s.out.assign(size_t(rows) * Dv, 0.0f);
  s.max.assign(rows, kMinusInf);
  s.sum.assign(rows, 0.0f);

  // Row r is query head (first head of the group + r / positions), position row_begin + r % positions.
  const int first_head = t.kv_head * group;
  for (int r = 0; r < rows; ++r) {
    const int head = first_head + r / positions, i = t.row_begin + r % positions;
    const float* q = p.q + ((size_t(t.b) * p.q_heads + head) * p.q_len + i) * D;
    for (int d = 0; d < D; ++d) s.queries[size_t(r) * D + d] = q[d] * p.scale;
  }

  const int64_t key_base = t.b * p.keys.stride[0] + t.kv_head * p.keys.stride[1];
  const int64_t value_base = t.b * p.values.stride[0] + t.kv_head * p.values.stride[1];
  const bool values_direct = p.values.type == Element::f32 && p.values.stride[3] == 1;
  // Causal: no row of the tile sees keys past its last position.
  const int key_end = p.causal ? std::min(t.key_end, t.row_end + shift) : t.key_end;

  for (int start = t.key_begin; start < key_end; start += kChunk) {
    const int n = std::min(kChunk, key_end - start);
    // Keys transposed to [D][chunk]: a score row is then plain multiply-adds, no horizontal sums.
    float* kt = s.keys_t.data();
    for (int j = 0; j < n; ++j) {
      const int64_t row = key_base + int64_t(start + j) * p.keys.stride[2];
      if (p.keys.type == Element::f32 && p.keys.stride[3] == 1) {
        const float* k = static_cast<const float*>(p.keys.data) + row;
        for (int d = 0; d < D; ++d) kt[size_t(d) * kChunk + j] = k[d];
      } else {
        for (int d = 0; d < D; ++d) kt[size_t(d) * kChunk + j] = element(p.keys, row + d * p.keys.stride[3]);
      }
    }
    for (int d = 0; d < D; ++d) std::fill(kt + size_t(d) * kChunk + n, kt + size_t(d + 1) * kChunk, 0.0f);
    // Value rows: in place when they are fp32 rows, else converted.
    const float* values;
    int64_t value_stride;
    if (values_direct) {
      values = static_cast<const float*>(p.values.data) + value_base + int64_t(start) * p.values.stride[2];
      value_stride = p.values.stride[2];
    } else {
      for (int j = 0; j < n; ++j) {
        const int64_t row = value_base + int64_t(start + j) * p.values.stride[2];
        for (int d = 0; d < Dv; ++d) s.values[size_t(j) * Dv + d] = element(p.values, row + d * p.values.stride[3]);
      }
      values = s.values.data();
      value_stride = Dv;
    }

    for (int r = 0; r < rows; ++r) {
      const int head = first_head + r / positions, i = t.row_begin + r % positions;
      float* score = s.scores.data() + size_t(r) * kChunk;
      const float* q = s.queries.data() + size_t(r) * D;
      vf acc[8] = {};
      for (int d = 0; d < D; ++d) {
        const vf qd = splat(q[d]);
        const float* k = kt + size_t(d) * kChunk;
        for (int v = 0; v < 8; ++v) acc[v] += qd * load(k + v * kLanes);
      }
      for (int v = 0; v < 8; ++v) store(score + v * kLanes, acc[v]);
      hide_scores(score, start, n, t.b, head, i, shift, p.causal, p.has_mask, p.bool_mask, p.mask);
      softmax_accumulate(score, n, values, value_stride, Dv, s.max[r], s.sum[r], s.out.data() + size_t(r) * Dv);
    }
  }

  for (int r = 0; r < rows; ++r) {
    const int head = first_head + r / positions, i = t.row_begin + r % positions;
    float* state = partial ? partial + size_t(r) * partial_stride(p) : nullptr;
    float* dst = p.out + ((size_t(t.b) * p.q_heads + head) * p.q_len + i) * Dv;
    finish_row(s.out.data() + size_t(r) * Dv, s.max[r], s.sum[r], Dv, state, dst);
  }
}

}  // namespace kernels
