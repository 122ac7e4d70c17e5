// The quantized attention kernel, written once with GCC/Clang vector types and compiled per
// instruction set: quantized_attention_<isa>.cpp defines ATTENTION_VECTOR_BYTES (the vector
// width) and QUANTIZED_ATTENTION_TILE_FN (the function's name), and is built with that set's
// flags (kernels.cmake).
//
// As the float kernel (attention_body.h), flash-attention style over chunks of keys, in fp32,
// every query head of a key/value head sharing each chunk; but each chunk's keys and values are
// first dequantized into fp32 rows in L1, a vector of codes at a time (the cache is read at 4 or
// 8 bits, never expanded in memory), and scores are dot products along those rows.
#include <vector>

#include "attention_vector.h"
#include "quantized_attention_kernel.h"

namespace kernels {
namespace {

typedef uint8_t vb __attribute__((vector_size(kLanes)));

inline vb load_bytes(const uint8_t* p) {
  vb v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Elements that one vector of kLanes packed bytes holds.
template <int Bits>
constexpr int kBlock = Bits == 4 ? 2 * kLanes : kLanes;

// Where natural element e of a row sits in the kernel's order. 8 bits: in place. 4 bits: each
// block of 2·kLanes elements is split into its even elements, then its odd ones, the order of
// the low and the high nibbles of its kLanes bytes, so unpacking needs no shuffle; the queries
// are put in the same order (a dot product does not care), and so are the outputs until the end.
template <int Bits>
inline int kernel_position(int e) {
  if constexpr (Bits == 8) return e;
  const int within = e % kBlock<Bits>;
  return e - within + (within & 1) * kLanes + within / 2;
}

// n scales (or biases) from base + offset as floats.
inline void to_floats(const void* base, Element type, int64_t offset, int n, float* out) {
  const StridedView view{base, type, {}};
  for (int i = 0; i < n; ++i) out[i] = element(view, offset + i);
}

// Row `row` of head (b, h) of quantized keys or values, `width` elements, into out in the
// kernel's order: code · scale + bias.
template <int Bits>
inline void dequantize_row(const QuantizedRows& q, Element type, int group, int b, int h, int row, int width,
                           float* out) {
  constexpr int kMaxGroups = 64;
  float scales[kMaxGroups], biases[kMaxGroups];
  const int groups = width / group;
  to_floats(q.scales, type, b * q.scale_stride[0] + h * q.scale_stride[1] + int64_t(row) * q.scale_stride[2], groups,
            scales);
  to_floats(q.biases, type, b * q.bias_stride[0] + h * q.bias_stride[1] + int64_t(row) * q.bias_stride[2], groups,
            biases);
  const uint8_t* packed =
      q.packed + b * q.packed_stride[0] + h * q.packed_stride[1] + int64_t(row) * q.packed_stride[2];
  for (int e = 0; e < width; e += kBlock<Bits>) {
    const int g = e / group;  // a block never straddles groups: groups are multiples of 32 elements
    const vf scale = splat(scales[g]), bias = splat(biases[g]);
    const vb bytes = load_bytes(packed + e * Bits / 8);
    if constexpr (Bits == 8) {
      store(out + e, __builtin_convertvector(bytes, vf) * scale + bias);
    } else {
      store(out + e, __builtin_convertvector(bytes & 15, vf) * scale + bias);
      store(out + e + kLanes, __builtin_convertvector(bytes >> 4, vf) * scale + bias);
    }
  }
}

// score[j] = q · keys[j] for j < n (rows of D floats), four keys at a time.
inline void scores_of(const float* q, const float* keys, int n, int D, float* score) {
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    const float* k = keys + size_t(j) * D;
    vf a0{}, a1{}, a2{}, a3{};
    for (int d = 0; d < D; d += kLanes) {
      const vf qv = load(q + d);
      a0 += qv * load(k + d);
      a1 += qv * load(k + D + d);
      a2 += qv * load(k + 2 * D + d);
      a3 += qv * load(k + 3 * D + d);
    }
    score[j] = reduce_sum(a0);
    score[j + 1] = reduce_sum(a1);
    score[j + 2] = reduce_sum(a2);
    score[j + 3] = reduce_sum(a3);
  }
  for (; j < n; ++j) {
    const float* k = keys + size_t(j) * D;
    vf a{};
    for (int d = 0; d < D; d += kLanes) a += load(q + d) * load(k + d);
    score[j] = reduce_sum(a);
  }
}

// Per-thread buffers, kept between calls (pool threads and stream threads are long-lived).
struct Scratch {
  std::vector<float> queries, keys, values, scores, out, max, sum, row;
};

template <int Bits>
void attend(const QuantizedAttentionProblem& p, const AttentionTile& t, float* partial) {
  thread_local Scratch s;
  const int group = p.q_heads / p.kv_heads;
  const int positions = t.row_end - t.row_begin;
  const int rows = group * positions;
  const int D = p.dim, Dv = p.value_dim;
  const int shift = p.kv_len - p.q_len;
  s.queries.resize(size_t(rows) * D);
  s.keys.resize(size_t(kChunk) * D);
  s.values.resize(size_t(kChunk) * Dv);
  s.scores.resize(size_t(rows) * kChunk);
  s.out.assign(size_t(rows) * Dv, 0.0f);
  s.max.assign(rows, kMinusInf);
  s.sum.assign(rows, 0.0f);
  s.row.resize(Dv);

  // Row r is query head (first head of the group + r / positions), position row_begin + r % positions.
  const int first_head = t.kv_head * group;
  for (int r = 0; r < rows; ++r) {
    const int head = first_head + r / positions, i = t.row_begin + r % positions;
    const float* q = p.q + ((size_t(t.b) * p.q_heads + head) * p.q_len + i) * D;
    for (int d = 0; d < D; ++d) s.queries[size_t(r) * D + kernel_position<Bits>(d)] = q[d] * p.scale;
    // A head's sink starts its rows' softmax (once: in the part that holds the first keys).
    if (p.sinks != nullptr && t.key_begin == 0) {
      s.max[r] = p.sinks[head];
      s.sum[r] = 1.0f;
    }
  }

  // Causal: no row of the tile sees keys past its last position.
  const int key_end = p.causal ? std::min(t.key_end, t.row_end + shift) : t.key_end;
  for (int start = t.key_begin; start < key_end; start += kChunk) {
    const int n = std::min(kChunk, key_end - start);
    for (int j = 0; j < n; ++j) {
      dequantize_row<Bits>(p.keys, p.scale_type, p.group, t.b, t.kv_head, start + j, D, s.keys.data() + size_t(j) * D);
      dequantize_row<Bits>(p.values, p.scale_type, p.group, t.b, t.kv_head, start + j, Dv,
                           s.values.data() + size_t(j) * Dv);
    }
    for (int r = 0; r < rows; ++r) {
      const int head = first_head + r / positions, i = t.row_begin + r % positions;
      float* score = s.scores.data() + size_t(r) * kChunk;
      scores_of(s.queries.data() + size_t(r) * D, s.keys.data(), n, D, score);
      hide_scores(score, start, n, t.b, head, i, shift, p.causal, p.has_mask, p.bool_mask, p.mask);
      softmax_accumulate(score, n, s.values.data(), Dv, Dv, s.max[r], s.sum[r], s.out.data() + size_t(r) * Dv);
    }
  }

  for (int r = 0; r < rows; ++r) {
    const int head = first_head + r / positions, i = t.row_begin + r % positions;
    const float* out = s.out.data() + size_t(r) * Dv;
    for (int d = 0; d < Dv; ++d) s.row[d] = out[kernel_position<Bits>(d)];  // back to natural order
    float* state = partial ? partial + size_t(r) * partial_stride(p) : nullptr;
    float* dst = p.out + ((size_t(t.b) * p.q_heads + head) * p.q_len + i) * Dv;
    finish_row(s.row.data(), s.max[r], s.sum[r], Dv, state, dst);
  }
}

}  // namespace

void QUANTIZED_ATTENTION_TILE_FN(const QuantizedAttentionProblem& p, const AttentionTile& t, float* partial) {
  if (p.bits == 4) attend<4>(p, t, partial);
  else attend<8>(p, t, partial);
}

}  // namespace kernels
