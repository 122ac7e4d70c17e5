// The attention kernel, written once with GCC/Clang vector types and compiled per instruction
// set: attention_<isa>.cpp defines ATTENTION_VECTOR_BYTES (the vector width) and
// ATTENTION_TILE_FN (the function's name), and is built with that set's flags (kernels.cmake).
//
// Flash-attention style: keys are taken in chunks; for every query row of the tile the chunk's
// scores are computed, the running max and sum rescaled, and the chunk's values accumulated,
// all in fp32. Every query head of a key/value head shares each chunk while it is in L1, so
// grouped-query attention reads K and V once per tile and never repeats them. Keys and values
// in fp32, float16 or bfloat16 rows are read where they lie and widened a vector at a time; other
// layouts are copied to fp32 a chunk at a time first.
#include <type_traits>
#include <vector>

#include "attention_vector.h"
#include "with_count.h"

namespace kernels {
namespace {

// Per-thread buffers, kept between calls (pool threads and stream threads are long-lived).
struct Scratch {
  std::vector<float> queries, keys_t, keys, values, wide_values, scores, out, max, sum;
};

// Query rows up to which a tile scores each key row directly (one dot product per key and row)
// rather than transposing the chunk's keys first: decode has a group's few rows (3 on the
// default model), for which the transposition, a scalar move per key element, costs more than
// the products it lines up.
constexpr int kDirectRows = 8;

// Query rows are padded with zeros to whole vectors (and a key row's last part vector is widened
// with zeros past it): no tail loops.
inline int padded(int D) { return (D + kLanes - 1) / kLanes * kLanes; }

// Keys scored a few at a time: each key row is widened straight into registers and multiplied
// by the rows' queries, and every kSubKeys keys' sums are folded two rounds of sum_lanes down at
// once, so a block of kLanes keys leaves kLanes / kSubKeys vectors per row to finish. The
// additions are sum_lanes' own, in its order; no widened copy of the keys is stored and read back.
constexpr int kSubKeys = 4;

// p[0, count) widened, the lanes past it zero (a head size that is not a whole number of vectors).
template <class T>
inline vf load_first(const T* p, int count) {
  vf v{};
  for (int i = 0; i < count; ++i) v[i] = to_float(p[i]);
  return v;
}

// score[r * kChunk + j] = q_r · k_j for M rows (scaled queries, Dp floats apart; M a constant, so
// the sums stay in registers) and n key rows. Past the n-th key the last one is scored again:
// the caller hides every score past n.
template <int M, class T>
void score_rows(const float* q, int Dp, int D, const T* keys, int64_t key_stride, int n, float* score) {
  constexpr int kLeft = kLanes / kSubKeys;
  const int whole = D - D % kLanes;
  for (int first = 0; first < n; first += kLanes) {
    vf folded[M][kLeft];
    for (int sub = 0; sub < kLeft; ++sub) {
      const T* key[kSubKeys];
      for (int j = 0; j < kSubKeys; ++j) key[j] = keys + int64_t(std::min(first + sub * kSubKeys + j, n - 1)) * key_stride;
      vf acc[M][kSubKeys] = {};
      const auto add = [&](int d, const vf* k) {
        for (int r = 0; r < M; ++r) {
          const vf qd = load(q + size_t(r) * Dp + d);
          for (int j = 0; j < kSubKeys; ++j) acc[r][j] += qd * k[j];
        }
      };
      for (int d = 0; d < whole; d += kLanes) {
        vf k[kSubKeys];
        for (int j = 0; j < kSubKeys; ++j) k[j] = load(key[j] + d);
        add(d, k);
      }
      if (whole < D) {
        vf k[kSubKeys];
        for (int j = 0; j < kSubKeys; ++j) k[j] = load_first(key[j] + whole, D - whole);
        add(whole, k);
      }
      for (int r = 0; r < M; ++r) {
        const vf low = fold<kLanes>(acc[r][0], acc[r][1], std::make_index_sequence<kLanes>());
        const vf high = fold<kLanes>(acc[r][2], acc[r][3], std::make_index_sequence<kLanes>());
        folded[r][sub] = fold<kLanes / 2>(low, high, std::make_index_sequence<kLanes>());
      }
    }
    for (int r = 0; r < M; ++r) {
      if constexpr (kLeft == 1) store(score + size_t(r) * kChunk + first, folded[r][0]);
      else store(score + size_t(r) * kChunk + first, sum_lanes<kLeft>(folded[r], kLeft));
    }
  }
}

// The tile's rows three at a time (their sums, three rows' folded vectors and a few keys fill
// AVX-512's 32 registers).
template <class T>
void score_direct(const float* q, int rows, int D, const T* keys, int64_t key_stride, int n, float* score) {
  const int Dp = padded(D);
  for (int first = 0; first < rows; first += 3) {
    const float* qr = q + size_t(first) * Dp;
    float* out = score + size_t(first) * kChunk;
    switch (std::min(3, rows - first)) {
      case 1: score_rows<1>(qr, Dp, D, keys, key_stride, n, out); break;
      case 2: score_rows<2>(qr, Dp, D, keys, key_stride, n, out); break;
      default: score_rows<3>(qr, Dp, D, keys, key_stride, n, out); break;
    }
  }
}

// The same through the keys transposed to [D][chunk]: a score row is then plain multiply-adds,
// no sums across lanes, which pays when many rows share the chunk (prefill). The chunk's keys are
// transposed kLanes × kLanes at a time in registers (transpose_block), each key row's part
// widened by one vector load. Only the vectors of scores that hold one of the n keys are computed
// (a chunk at the causal edge is often part full); hide_scores sets the rest.
template <class T>
void score_transposed(const float* q, int rows, int D, const T* keys, int64_t key_stride, int n, float* kt,
                      float* score) {
  const int Dp = padded(D);
  const int blocks_end = (n + kLanes - 1) / kLanes * kLanes;
  for (int j0 = 0; j0 < blocks_end; j0 += kLanes) {
    for (int d0 = 0; d0 < D; d0 += kLanes) {
      const int width = std::min(kLanes, D - d0);
      vf block[kLanes];
#pragma GCC unroll 16
      for (int l = 0; l < kLanes; ++l) {
        const T* k = keys + int64_t(std::min(j0 + l, n - 1)) * key_stride + d0;
        const vf row = width == kLanes ? load(k) : load_first(k, width);
        block[l] = j0 + l < n ? row : vf{};
      }
      transpose_block(block);
      for (int l = 0; l < width; ++l) store(kt + size_t(d0 + l) * kChunk + j0, block[l]);
    }
  }
  // The rows' products over the chunk's vectors of keys that hold any of its n keys, two rows at a
  // time: each vector of keys read once for both (the transposed keys, 32 KB at D = 64, need not
  // stay in L1 with the scores beside them). Each row's sums are formed in the same order.
  const auto products = [&]<int V>() {
    const auto pass = [&]<int M>(int first) {
      vf acc[M][V] = {};
      for (int d = 0; d < D; ++d) {
        vf qd[M];
        for (int m = 0; m < M; ++m) qd[m] = splat(q[size_t(first + m) * Dp + d]);
        const float* k = kt + size_t(d) * kChunk;
        for (int v = 0; v < V; ++v) {
          const vf kv = load(k + v * kLanes);
          for (int m = 0; m < M; ++m) acc[m][v] += qd[m] * kv;
        }
      }
      for (int m = 0; m < M; ++m)
        for (int v = 0; v < V; ++v) store(score + size_t(first + m) * kChunk + v * kLanes, acc[m][v]);
    };
    int r = 0;
    for (; r + 2 <= rows; r += 2) pass.template operator()<2>(r);
    if (r < rows) pass.template operator()<1>(r);
  };
  with_count<8>(blocks_end / kLanes, products);
}

// Value rows of a chunk as accumulate_values reads them: where they start and how many elements
// apart.
struct ValueRows {
  const float* rows;
  int64_t stride;
};

// The chunk's n value rows widened to fp32 rows of Dv into `wide` (once for a tile's many rows,
// rather than once per row as they are read); fp32 values are read where they lie.
template <class T>
ValueRows widened_values(const T* values, int64_t value_stride, int n, int Dv, std::vector<float>& wide) {
  if constexpr (std::is_same_v<T, float>) {
    return {values, value_stride};
  } else {
    wide.resize(size_t(kChunk) * Dv);
    const int whole = Dv - Dv % kLanes;
    for (int j = 0; j < n; ++j) {
      const T* from = values + j * value_stride;
      float* to = wide.data() + size_t(j) * Dv;
      for (int d = 0; d < whole; d += kLanes) store(to + d, load(from + d));
      for (int d = whole; d < Dv; ++d) to[d] = to_float(from[d]);
    }
    return {wide.data(), Dv};
  }
}

// The tile over keys [t.key_begin, key_end) whose rows are `keys` / `values` (element T, rows
// key_stride / value_stride apart, position 0 at the pointer), or, when `to_rows` is given, rows
// it copies a chunk at a time into fp32 scratch (any other layout).
template <class T, class ToRows>
void attend_keys(const AttentionProblem& p, const AttentionTile& t, Scratch& s, int key_end, const T* keys,
                 int64_t key_stride, const T* values, int64_t value_stride, ToRows to_rows) {
  const int group = p.q_heads / p.kv_heads;
  const int positions = t.row_end - t.row_begin;
  const int rows = group * positions;
  const int D = p.dim, Dv = p.value_dim;
  const int shift = p.kv_len - p.q_len;
  const int first_head = t.kv_head * group;
  for (int start = t.key_begin; start < key_end; start += kChunk) {
    const int n = std::min(kChunk, key_end - start);
    const bool copied = to_rows(start, n);
    const T* chunk_keys = copied ? reinterpret_cast<const T*>(s.keys.data()) : keys + start * key_stride;
    const T* chunk_values = copied ? reinterpret_cast<const T*>(s.values.data()) : values + start * value_stride;
    const bool direct = rows <= kDirectRows;
    if (direct) {
      score_direct(s.queries.data(), rows, D, chunk_keys, key_stride, n, s.scores.data());
    } else {
      score_transposed(s.queries.data(), rows, D, chunk_keys, key_stride, n, s.keys_t.data(), s.scores.data());
    }
    // Weights first, then each value row read once for a few rows at a time (their sums in
    // registers); many rows read every value row of the chunk, widened once for all of them.
    for (int r = 0; r < rows; ++r) {
      const int head = first_head + r / positions, i = t.row_begin + r % positions;
      float* score = s.scores.data() + size_t(r) * kChunk;
      hide_scores(score, start, n, t.b, head, i, shift, p.causal, p.has_mask, p.bool_mask, p.mask);
      softmax_weights(score, n, Dv, s.max[r], s.sum[r], s.out.data() + size_t(r) * Dv);
    }
    if (direct) {
      accumulate_values(s.scores.data(), rows, n, chunk_values, value_stride, Dv, s.out.data());
    } else {
      const ValueRows wide = widened_values(chunk_values, value_stride, n, Dv, s.wide_values);
      accumulate_values(s.scores.data(), rows, n, wide.rows, wide.stride, Dv, s.out.data());
    }
  }
}

// Rows of a [B, H, T, ·] input at (b, head) when they are contiguous rows of element T, else null.
template <class T>
const T* rows_of(const StridedView& v, Element type, int b, int head) {
  if (v.type != type || v.stride[3] != 1) return nullptr;
  return static_cast<const T*>(v.data) + b * v.stride[0] + head * v.stride[1];
}

}  // namespace

void ATTENTION_TILE_FN(const AttentionProblem& p, const AttentionTile& t, float* partial) {
  thread_local Scratch s;
  const int group = p.q_heads / p.kv_heads;
  const int positions = t.row_end - t.row_begin;
  const int rows = group * positions;
  const int D = p.dim, Dv = p.value_dim;
  const int shift = p.kv_len - p.q_len;
  s.queries.assign(size_t(rows) * padded(D), 0.0f);
  s.keys_t.resize(size_t(D) * kChunk);
  s.scores.resize(size_t(rows) * kChunk);
  s.out.assign(size_t(rows) * Dv, 0.0f);
  s.max.assign(rows, kMinusInf);
  s.sum.assign(rows, 0.0f);

  // Row r is query head (first head of the group + r / positions), position row_begin + r % positions.
  const int first_head = t.kv_head * group;
  for (int r = 0; r < rows; ++r) {
    const int head = first_head + r / positions, i = t.row_begin + r % positions;
    const float* q = p.q + ((size_t(t.b) * p.q_heads + head) * p.q_len + i) * D;
    for (int d = 0; d < D; ++d) s.queries[size_t(r) * padded(D) + d] = q[d] * p.scale;
    // A head's sink starts its rows' softmax (once: in the part that holds the first keys).
    if (p.sinks != nullptr && t.first_part) {
      s.max[r] = p.sinks[head];
      s.sum[r] = 1.0f;
    }
  }
  // Causal: no row of the tile sees keys past its last position.
  const int key_end = p.causal ? std::min(t.key_end, t.row_end + shift) : t.key_end;

  const auto in_place = [](int, int) { return false; };
  const auto same_rows = [&](auto tag, Element type) {
    using T = decltype(tag);
    const T* keys = rows_of<T>(p.keys, type, t.b, t.kv_head);
    const T* values = rows_of<T>(p.values, type, t.b, t.kv_head);
    if (keys == nullptr || values == nullptr) return false;
    attend_keys(p, t, s, key_end, keys, p.keys.stride[2], values, p.values.stride[2], in_place);
    return true;
  };
  if (!same_rows(float{}, Element::f32) && !same_rows(_Float16{}, Element::f16) && !same_rows(BF16{}, Element::bf16)) {
    // Another layout (strided rows, keys and values of different types): fp32 copies per chunk.
    s.keys.resize(size_t(kChunk) * D);
    s.values.resize(size_t(kChunk) * Dv);
    const int64_t key_base = t.b * p.keys.stride[0] + t.kv_head * p.keys.stride[1];
    const int64_t value_base = t.b * p.values.stride[0] + t.kv_head * p.values.stride[1];
    const auto copy = [&](int start, int n) {
      for (int j = 0; j < n; ++j) {
        const int64_t key = key_base + int64_t(start + j) * p.keys.stride[2];
        const int64_t value = value_base + int64_t(start + j) * p.values.stride[2];
        for (int d = 0; d < D; ++d) s.keys[size_t(j) * D + d] = element(p.keys, key + d * p.keys.stride[3]);
        for (int d = 0; d < Dv; ++d) s.values[size_t(j) * Dv + d] = element(p.values, value + d * p.values.stride[3]);
      }
      return true;
    };
    attend_keys<float>(p, t, s, key_end, nullptr, D, nullptr, Dv, copy);
  }

  for (int r = 0; r < rows; ++r) {
    const int head = first_head + r / positions, i = t.row_begin + r % positions;
    float* state = partial ? partial + size_t(r) * partial_stride(p) : nullptr;
    float* dst = p.out + ((size_t(t.b) * p.q_heads + head) * p.q_len + i) * Dv;
    finish_row(s.out.data() + size_t(r) * Dv, s.max[r], s.sum[r], Dv, state, dst);
  }
}

}  // namespace kernels
