// The quantized attention kernel, written once with GCC/Clang vector types and compiled per
// instruction set: quantized_attention_<isa>.cpp defines ATTENTION_VECTOR_BYTES (the vector
// width) and QUANTIZED_ATTENTION_TILE_FN (the function's name), includes simd/<isa>.h and
// defines QUANTIZED_ATTENTION_SIMD where its Vec unpacks codes in our lanes, and is built with
// that set's flags (kernels.cmake).
//
// As the float kernel (attention_body.h), flash-attention style over chunks of keys, in fp32,
// every query head of a key/value head sharing each chunk; but keys and values are dequantized
// to fp32 a vector of codes at a time (the cache is read at 4 or 8 bits, never expanded in
// memory): keys kLanes rows at a time into L1, each block scored against all the group's rows,
// values in registers, each vector once for all the rows whose sums it adds to. Built with AVX-512
// VNNI (quantized_attention_vnni.cpp), keys per channel and values are not dequantized at all:
// their codes are summed as integers against rounded queries and weights
// (quantized_attention_codes.h).
#include <type_traits>
#include <vector>

#include "attention_vector.h"
#include "quantized_attention_kernel.h"
#if defined(__AVX512VNNI__)
#include "quantized_attention_codes.h"
#endif

namespace kernels {
namespace {

// kLanes packed bytes as floats: 8 bits, one code each (q8); 4 bits, their low nibbles, then
// their high ones (q4_split). With the instruction set's own widening (simd/<isa>.h) where its
// lanes are ours: GCC widens a vector of bytes one lane at a time.
#if defined(QUANTIZED_ATTENTION_SIMD)
static_assert(Vec::kLanes == kLanes, "simd/<isa>.h and the attention kernel have the same lanes");
inline vf as_vf(Vec::T v) {
  vf out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}
inline vf q8(const uint8_t* p) { return as_vf(Vec::q8(p)); }
inline void q4_split(const uint8_t* p, vf& lo, vf& hi) {
  Vec::T l, h;
  Vec::q4_split(p, l, h);
  lo = as_vf(l);
  hi = as_vf(h);
}
#else
typedef uint8_t vb __attribute__((vector_size(kLanes)));
inline vi widen(const uint8_t* p) {
  vb v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, vi);
}
inline vf q8(const uint8_t* p) { return __builtin_convertvector(widen(p), vf); }
inline void q4_split(const uint8_t* p, vf& lo, vf& hi) {
  const vi codes = widen(p);
  lo = __builtin_convertvector(codes & 15, vf);
  hi = __builtin_convertvector(codes >> 4, vf);
}
#endif

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

// n scales (or biases) from base + offset, `stride` elements apart, as floats (the type
// switched on once: these are read for every value row). One group along D (a head of 64
// elements in groups of 64) leaves them contiguous: copied, or widened, a vector at a time.
inline void strided_floats(const void* base, Element type, int64_t offset, int64_t stride, int n, float* out) {
  const auto read = [&](auto* typed) {
    if (stride == 1) {
      using T = std::remove_const_t<std::remove_pointer_t<decltype(typed)>>;
      if constexpr (std::is_same_v<T, float>) {
        std::memcpy(out, typed + offset, sizeof(float) * n);
        return;
      }
      int i = 0;
      for (; i + kLanes <= n; i += kLanes) store(out + i, load(typed + offset + i));
      for (; i < n; ++i) out[i] = to_float(typed[offset + i]);
      return;
    }
    for (int i = 0; i < n; ++i) out[i] = to_float(typed[offset + i * stride]);
  };
  switch (type) {
    case Element::f32: read(static_cast<const float*>(base)); break;
    case Element::f16: read(static_cast<const _Float16*>(base)); break;
    case Element::bf16: read(static_cast<const BF16*>(base)); break;
  }
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
  for (int g = 0; g < groups; ++g) {
    const vf scale = splat(scales[g]), bias = splat(biases[g]);
    // A block never straddles groups: groups are multiples of 32 elements.
    for (int e = g * group, end = e + group; e < end; e += kBlock<Bits>) {
      if constexpr (Bits == 8) {
        store(out + e, q8(packed + e) * scale + bias);
      } else {
        vf lo, hi;
        q4_split(packed + e / 2, lo, hi);
        store(out + e, lo * scale + bias);
        store(out + e + kLanes, hi * scale + bias);
      }
    }
  }
}

// Keys quantized per channel: one group's scales and biases in the kernel's order, loaded when
// the rows reach another group (rows come in order, so once per `group` rows).
struct ChannelGroup {
  int index = -1;
  std::vector<float> scales, biases;
  std::vector<float> natural;  // a tail row in its natural order
};

// Key row `row` of head (b, h) in the per-channel layout, p.dim elements in the kernel's order:
// a float row of the tail, or code · scale[channel] + bias[channel] of its group.
template <int Bits>
inline void channel_key_row(const QuantizedAttentionProblem& p, int b, int h, int row, ChannelGroup& g, float* out) {
  const int D = p.dim;
  if (row >= p.tail_start) {
    // Widened a vector at a time (every decode step reads the whole tail again), then put in the
    // kernel's order: 8 bits keep the natural one.
    const int64_t base = b * p.tail.stride[0] + h * p.tail.stride[1] + int64_t(row - p.tail_start) * p.tail.stride[2];
    if constexpr (Bits == 8) {
      strided_floats(p.tail.data, p.tail.type, base, p.tail.stride[3], D, out);
    } else {
      g.natural.resize(D);
      strided_floats(p.tail.data, p.tail.type, base, p.tail.stride[3], D, g.natural.data());
      for (int d = 0; d < D; ++d) out[kernel_position<Bits>(d)] = g.natural[d];
    }
    return;
  }
  const QuantizedRows& q = p.keys;
  const int index = row / p.group;
  if (g.index != index) {
    g.scales.resize(D);
    g.biases.resize(D);
    std::vector<float> natural(D);
    to_floats(q.scales, p.scale_type, b * q.scale_stride[0] + h * q.scale_stride[1] + int64_t(index) * q.scale_stride[2],
              D, natural.data());
    for (int d = 0; d < D; ++d) g.scales[kernel_position<Bits>(d)] = natural[d];
    to_floats(q.biases, p.scale_type, b * q.bias_stride[0] + h * q.bias_stride[1] + int64_t(index) * q.bias_stride[2],
              D, natural.data());
    for (int d = 0; d < D; ++d) g.biases[kernel_position<Bits>(d)] = natural[d];
    g.index = index;
  }
  const float *scale = g.scales.data(), *bias = g.biases.data();
  const uint8_t* packed = q.packed + b * q.packed_stride[0] + h * q.packed_stride[1] + int64_t(row) * q.packed_stride[2];
  for (int e = 0; e < D; e += kBlock<Bits>) {
    if constexpr (Bits == 8) {
      store(out + e, q8(packed + e) * load(scale + e) + load(bias + e));
    } else {
      vf lo, hi;
      q4_split(packed + e / 2, lo, hi);
      store(out + e, lo * load(scale + e) + load(bias + e));
      store(out + e + kLanes, hi * load(scale + e + kLanes) + load(bias + e + kLanes));
    }
  }
}

// Second half of the online softmax for M rows (a constant: their sums stay in registers): adds
// the chunk's n value rows, from `packed` (row_bytes apart) with each row's group scales and
// biases ([group][kChunk]), times their weights (kChunk apart) to each row's outputs (Dv apart, in
// the kernel's order). Every value vector is dequantized in registers once for all the rows.
template <int Bits, int M, int NV>
inline int accumulate_codes(const float* w, int n, const uint8_t* packed, int64_t row_bytes, const float* scales,
                            const float* biases, int groups, int group, int Dv, float* o, int d) {
  static_assert(NV * kLanes % kBlock<Bits> == 0, "whole blocks of codes");
  constexpr int kPerBlock = kBlock<Bits> / kLanes;
  return accumulate_weighted<M, NV>(w, n, Dv, o, d, [&](int j, int d0, vf* x) {
    const uint8_t* codes = packed + j * row_bytes;
    for (int v = 0; v < NV; v += kPerBlock) {
      const int e = d0 + v * kLanes;
      const vf scale = splat(scales[e / group * kChunk + j]), bias = splat(biases[e / group * kChunk + j]);
      if constexpr (Bits == 8) {
        x[v] = q8(codes + e) * scale + bias;
      } else {
        vf lo, hi;
        q4_split(codes + e / 2, lo, hi);
        x[v] = lo * scale + bias;
        x[v + 1] = hi * scale + bias;
      }
    }
  });
}

// The same for any number of rows, up to 4 at a time (Dv is whole blocks of codes: no tail).
template <int Bits>
inline void accumulate_quantized(const float* weights, int rows, int n, const uint8_t* packed, int64_t row_bytes,
                                 const float* scales, const float* biases, int groups, int group, int Dv,
                                 float* out) {
  constexpr int kPerBlock = kBlock<Bits> / kLanes;
  const auto some_rows = [&](auto m, const float* w, float* o) {
    constexpr int M = decltype(m)::value;
    // Up to 12 sums in registers: 4 vectors of each of up to 3 rows, 2 of 4.
    int d = accumulate_codes<Bits, M, (M <= 3 ? 4 : 2)>(w, n, packed, row_bytes, scales, biases, groups, group, Dv, o, 0);
    accumulate_codes<Bits, M, kPerBlock>(w, n, packed, row_bytes, scales, biases, groups, group, Dv, o, d);
  };
  for (int first = 0; first < rows; first += 4) {
    const float* w = weights + size_t(first) * kChunk;
    float* o = out + size_t(first) * Dv;
    switch (std::min(4, rows - first)) {
      case 1: some_rows(std::integral_constant<int, 1>{}, w, o); break;
      case 2: some_rows(std::integral_constant<int, 2>{}, w, o); break;
      case 3: some_rows(std::integral_constant<int, 3>{}, w, o); break;
      default: some_rows(std::integral_constant<int, 4>{}, w, o); break;
    }
  }
}

// Per-thread buffers, kept between calls (pool threads and stream threads are long-lived).
struct Scratch {
  std::vector<float> queries, keys, value_scales, value_biases, scores, out, max, sum, row;
#if defined(__AVX512VNNI__)
  // Keys per channel and values on their codes: the queries and a key group's scales and biases
  // in code order, the queries rounded for that group, a chunk's weights rounded, int32 sums.
  std::vector<float> natural, group_scales, group_biases, group_read;
  std::vector<int> code_order;  // code_position of each element
  CodeQueries rounded;
  CodeWeights weights;
  std::vector<int32_t> sums;
#endif
};

// This thread's buffers. Not inlined: the address is looked up once a call and kept, where a
// thread_local used all through attend is looked up again and again (__tls_get_addr in a
// shared library).
__attribute__((noinline)) Scratch& thread_scratch() {
  thread_local Scratch s;
  return s;
}

// Bytes per scale (or bias) of this type.
inline int64_t element_size(Element type) { return type == Element::f32 ? 4 : 2; }

// Asks for the cache lines of [p, p + bytes) ahead of their use.
inline void prefetch_span(const void* p, int64_t bytes) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p) & ~uintptr_t(63), end = reinterpret_cast<uintptr_t>(p) + bytes;
  for (uintptr_t line = begin; line < end; line += 64) __builtin_prefetch(reinterpret_cast<const void*>(line));
}

#if defined(__AVX512VNNI__)
// A key group's D scales (or biases) from natural order into code_position's. Its 4-bit order
// moves elements only within blocks of 8 (each block's even elements, then its odd ones), so
// one permutation a vector does it; D is whole vectors (a multiple of 32).
template <int Bits>
inline void in_code_order(const float* natural, int D, float* out) {
  if constexpr (Bits == 8) {
    std::memcpy(out, natural, sizeof(float) * D);
  } else {
    const __m512i order = _mm512_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
    for (int d = 0; d < D; d += 16) _mm512_storeu_ps(out + d, _mm512_permutexvar_ps(order, _mm512_loadu_ps(natural + d)));
  }
}

// Scores keys [block, block + m) of a group of keys per channel (all coded, m <= 16) against the
// tile's rows on their codes (quantized_attention_codes.h), into score (kChunk apart); rounds
// the queries for the group first when the previous block was in another.
template <int Bits>
inline void score_coded_block(const QuantizedAttentionProblem& p, const AttentionTile& t, int block, int m, int rows,
                              Scratch& s, float* score) {
  const QuantizedRows& k = p.keys;
  const int index = block / p.group, D = p.dim, padded = s.group_scales.size();
  if (s.rounded.index != index) {
    const auto at = [&](const int64_t* stride) { return t.b * stride[0] + t.kv_head * stride[1] + index * stride[2]; };
    float* natural = s.group_read.data();
    strided_floats(k.scales, p.scale_type, at(k.scale_stride), 1, D, natural);
    in_code_order<Bits>(natural, D, s.group_scales.data());
    strided_floats(k.biases, p.scale_type, at(k.bias_stride), 1, D, natural);
    in_code_order<Bits>(natural, D, s.group_biases.data());
    round_queries(s.natural.data(), rows, padded, s.group_scales.data(), s.group_biases.data(), s.rounded);
    s.rounded.index = index;
    // The next group's scales and biases: a miss each, 64 keys from now, where nothing else waits.
    const int64_t size = element_size(p.scale_type);
    prefetch_span(static_cast<const char*>(k.scales) + (at(k.scale_stride) + k.scale_stride[2]) * size, D * size);
    prefetch_span(static_cast<const char*>(k.biases) + (at(k.bias_stride) + k.bias_stride[2]) * size, D * size);
  }
  const uint8_t* keys = k.packed + t.b * k.packed_stride[0] + t.kv_head * k.packed_stride[1];
  // The next block's keys and this block's values are read soon: ask for them now (the kernel
  // no longer waits on its arithmetic, so the memory's latency shows).
  const QuantizedRows& v = p.values;
  const uint8_t* values = v.packed + t.b * v.packed_stride[0] + t.kv_head * v.packed_stride[1];
  for (int j = 0; j < 16; ++j) {
    _mm_prefetch(reinterpret_cast<const char*>(keys + int64_t(block + 16 + j) * k.packed_stride[2]), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(values + int64_t(block + j) * v.packed_stride[2]), _MM_HINT_T0);
  }
  const uint8_t* rows_of_codes[16];
  for (int j = 0; j < 16; ++j) rows_of_codes[j] = keys + int64_t(block + std::min(j, m - 1)) * k.packed_stride[2];
  score_codes<Bits>(s.rounded, rows, rows_of_codes, D, m, score, kChunk, s.sums.data());
}
#endif

template <int Bits>
void attend(const QuantizedAttentionProblem& p, const AttentionTile& t, float* partial) {
  Scratch& s = thread_scratch();
  const int group = p.q_heads / p.kv_heads;
  const int positions = t.row_end - t.row_begin;
  const int rows = group * positions;
  const int D = p.dim, Dv = p.value_dim;
  const int shift = p.kv_len - p.q_len;
  ChannelGroup channel;
  s.queries.resize(size_t(rows) * D);
  s.keys.resize(size_t(kLanes) * D);  // zeros at first: the rows past a block stay finite
  const int value_groups = Dv / p.group;
  const int64_t scale_size = element_size(p.scale_type);
  s.value_scales.resize(size_t(kChunk) * value_groups);
  s.value_biases.resize(size_t(kChunk) * value_groups);
  s.scores.resize(size_t(rows) * kChunk);
  s.out.assign(size_t(rows) * Dv, 0.0f);
  s.max.assign(rows, kMinusInf);
  s.sum.assign(rows, 0.0f);
  s.row.resize(Dv);

  // Values summed on their codes (quantized_attention_codes.h) where the groups along D allow.
#if defined(__AVX512VNNI__)
  const bool value_codes = p.group >= kPiece;
  const auto output_position = [&](int d) { return value_codes ? value_position<Bits>(d) : kernel_position<Bits>(d); };
#else
  const auto output_position = [](int d) { return kernel_position<Bits>(d); };
#endif

  // Row r is query head (first head of the group + r / positions), position row_begin + r % positions.
  const int first_head = t.kv_head * group;
  for (int r = 0; r < rows; ++r) {
    const int head = first_head + r / positions, i = t.row_begin + r % positions;
    const float* q = p.q + ((size_t(t.b) * p.q_heads + head) * p.q_len + i) * D;
    for (int d = 0; d < D; ++d) s.queries[size_t(r) * D + kernel_position<Bits>(d)] = q[d] * p.scale;
    // A head's sink starts its rows' softmax (once: in the part that holds the first keys).
    if (p.sinks != nullptr && t.first_part) {
      s.max[r] = p.sinks[head];
      s.sum[r] = 1.0f;
    }
  }

#if defined(__AVX512VNNI__)
  // Keys per channel are scored on their codes: the queries in code order, whole pieces.
  s.rounded.index = -1;
  if (p.channel_keys) {
    const int padded = (D + kPiece - 1) / kPiece * kPiece;
    s.code_order.resize(D);
    s.group_read.resize(D);
    for (int d = 0; d < D; ++d) s.code_order[d] = code_position<Bits>(d);
    s.natural.assign(size_t(rows) * padded, 0.0f);
    for (int r = 0; r < rows; ++r)
      for (int d = 0; d < D; ++d)
        s.natural[size_t(r) * padded + s.code_order[d]] = s.queries[size_t(r) * D + kernel_position<Bits>(d)];
    s.sums.resize(size_t(rows) * kQueryParts * 16);
    s.group_scales.assign(padded, 0.0f);
    s.group_biases.assign(padded, 0.0f);
  }
#endif

  // Causal: no row of the tile sees keys past its last position.
  const int key_end = p.causal ? std::min(t.key_end, t.row_end + shift) : t.key_end;
  // Per-channel keys: chunks start at multiples of kLanes (the first one ends at one), so each
  // block of kLanes keys lies within one group of keys and on one side of the float tail. Keys
  // per row: chunks start at the tile's first key, so they cover the same keys wherever the
  // columns lie (a batch's padding, a rotating cache's compactions).
  const bool aligned = p.channel_keys;
  for (int start = t.key_begin, n = 0; start < key_end; start += n) {
    n = std::min(key_end, aligned && start % kLanes ? (start / kLanes + 1) * kLanes : start + kChunk) - start;
    // kLanes keys at a time: dequantized into L1, then scored against every row of the group.
    for (int first = 0; first < n; first += kLanes) {
      const int m = std::min(kLanes, n - first), block = start + first;
#if defined(__AVX512VNNI__)
      if (p.channel_keys && block < p.tail_start) {
        score_coded_block<Bits>(p, t, block, m, rows, s, s.scores.data() + first);
        continue;
      }
#endif
      for (int j = 0; j < m; ++j) {
        const int row = block + j;
        float* key = s.keys.data() + size_t(j) * D;
        if (p.channel_keys) channel_key_row<Bits>(p, t.b, t.kv_head, row, channel, key);
        else dequantize_row<Bits>(p.keys, p.scale_type, p.group, t.b, t.kv_head, row, D, key);
      }
      score_block(s.queries.data(), rows, s.keys.data(), D, s.scores.data() + first);
    }
    const QuantizedRows& v = p.values;
    const int64_t first_row = t.b * v.scale_stride[0] + t.kv_head * v.scale_stride[1] + int64_t(start) * v.scale_stride[2];
    const int64_t first_bias = t.b * v.bias_stride[0] + t.kv_head * v.bias_stride[1] + int64_t(start) * v.bias_stride[2];
    for (int g = 0; g < value_groups; ++g) {
      strided_floats(v.scales, p.scale_type, first_row + g, v.scale_stride[2], n, s.value_scales.data() + g * kChunk);
      strided_floats(v.biases, p.scale_type, first_bias + g, v.bias_stride[2], n, s.value_biases.data() + g * kChunk);
    }
    // The next chunk's, where a line holds several rows' (a miss every few rows otherwise).
    if (v.scale_stride[2] * scale_size <= 16 && v.bias_stride[2] * scale_size <= 16) {
      prefetch_span(static_cast<const char*>(v.scales) + (first_row + n * v.scale_stride[2]) * scale_size,
                    kChunk * v.scale_stride[2] * scale_size);
      prefetch_span(static_cast<const char*>(v.biases) + (first_bias + n * v.bias_stride[2]) * scale_size,
                    kChunk * v.bias_stride[2] * scale_size);
    }
    for (int r = 0; r < rows; ++r) {
      const int head = first_head + r / positions, i = t.row_begin + r % positions;
      float* score = s.scores.data() + size_t(r) * kChunk;
      hide_scores(score, start, n, t.b, head, i, shift, p.causal, p.has_mask, p.bool_mask, p.mask);
      softmax_weights(score, n, Dv, s.max[r], s.sum[r], s.out.data() + size_t(r) * Dv);
    }
    const uint8_t* codes = v.packed + t.b * v.packed_stride[0] + t.kv_head * v.packed_stride[1] + start * v.packed_stride[2];
#if defined(__AVX512VNNI__)
    if (value_codes) {
      round_weights(s.scores.data(), rows, value_groups, s.value_scales.data(), s.value_biases.data(), s.weights);
      accumulate_value_codes<Bits>(s.weights, rows, value_groups, p.group, n, codes, v.packed_stride[2], Dv,
                                   s.out.data());
      continue;
    }
#endif
    // Each value row dequantized once for all the rows, their sums in registers.
    accumulate_quantized<Bits>(s.scores.data(), rows, n, codes, v.packed_stride[2], s.value_scales.data(),
                               s.value_biases.data(), value_groups, p.group, Dv, s.out.data());
  }

  for (int r = 0; r < rows; ++r) {
    const int head = first_head + r / positions, i = t.row_begin + r % positions;
    const float* out = s.out.data() + size_t(r) * Dv;
    for (int d = 0; d < Dv; ++d) s.row[d] = out[output_position(d)];  // back to natural order
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
