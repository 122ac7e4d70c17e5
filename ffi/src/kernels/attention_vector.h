// What the float and the quantized attention kernels share, written with GCC/Clang vector types
// and compiled per instruction set: the including file defines ATTENTION_VECTOR_BYTES (the vector
// width) and is built with that set's flags (kernels.cmake). Everything here has internal
// linkage, so code built with one set's flags never leaks into another's callers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#include "attention_kernel.h"

#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

namespace kernels {
namespace {

constexpr int kBytes = ATTENTION_VECTOR_BYTES;
constexpr int kLanes = kBytes / 4;
typedef float vf __attribute__((vector_size(kBytes)));
typedef int32_t vi __attribute__((vector_size(kBytes)));
// Keys per chunk: one row of scores is 8 vectors, kept in registers while it is summed over D.
constexpr int kChunk = 8 * kLanes;
constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Half-precision keys and values (a float16 or bfloat16 KV cache), widened to fp32 a vector at a
// time as they are read (F16C's vcvtph2ps where the instruction set has it).
struct BF16 {
  uint16_t bits;
};
typedef uint16_t vu16 __attribute__((vector_size(kBytes / 2)));
// GCC turns a vector conversion from _Float16 into one conversion per lane: the instruction
// set's own widening load is ~10x faster.
inline vf load(const _Float16* p) {
  vf v;
#if defined(__AVX512F__)
  if constexpr (kLanes == 16) {
    const __m512 wide = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    std::memcpy(&v, &wide, sizeof v);
    return v;
  }
#endif
#if defined(__F16C__)
  if constexpr (kLanes == 8) {
    const __m256 wide = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    std::memcpy(&v, &wide, sizeof v);
    return v;
  }
#endif
#if defined(__aarch64__)
  if constexpr (kLanes == 4) {
    const float32x4_t wide = vcvt_f32_f16(vld1_f16(reinterpret_cast<const float16_t*>(p)));
    std::memcpy(&v, &wide, sizeof v);
    return v;
  }
#endif
  for (int i = 0; i < kLanes; ++i) v[i] = static_cast<float>(p[i]);
  return v;
}
inline vf load(const BF16* p) {
  vu16 h;
  std::memcpy(&h, p, sizeof h);
  const vi bits = __builtin_convertvector(h, vi) << 16;
  vf v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
inline float to_float(float f) { return f; }
inline float to_float(_Float16 h) { return static_cast<float>(h); }
inline float to_float(BF16 h) {
  const uint32_t bits = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float f) { return vf{} + f; }
inline vf max(vf a, vf b) { return a > b ? a : b; }
inline vf min(vf a, vf b) { return a < b ? a : b; }

// e^x to about 1 ulp (Cephes' expf), and 0 for -inf (a masked score).
inline vf exp(vf x) {
  const vf masked = x;
  x = min(max(x, splat(-87.33654f)), splat(88.37626f));
  vf fx = x * 1.44269504088896341f + 0.5f;
  vf whole = __builtin_convertvector(__builtin_convertvector(fx, vi), vf);
  whole = whole > fx ? whole - 1.0f : whole;  // floor
  x = x - whole * 0.693359375f + whole * 2.12194440e-4f;
  vf y = splat(1.9875691500e-4f);
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * (x * x) + x + 1.0f;
  const vi bits = (__builtin_convertvector(whole, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return masked > kMinusInf ? y * scale : vf{};
}

inline float reduce_max(vf v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = std::max(m, v[i]);
  return m;
}
inline float reduce_sum(vf v) {
  float s = 0;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}
// The same sum added pairwise (halves, then quarters...): a short dependency chain for the decode
// path's dot products, which sum one vector per key and query row.
inline float pairwise_sum(vf v) {
#if defined(__AVX512F__)
  if constexpr (kLanes == 16) {
    __m512 x;
    std::memcpy(&x, &v, sizeof x);
    return _mm512_reduce_add_ps(x);
  }
#endif
#if defined(__AVX__)
  if constexpr (kLanes == 8) {
    __m256 x;
    std::memcpy(&x, &v, sizeof x);
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    return _mm_cvtss_f32(_mm_add_ss(sum, _mm_movehdup_ps(sum)));
  }
#endif
  float lanes[kLanes];
  std::memcpy(lanes, &v, sizeof v);
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int i = 0; i < width; ++i) lanes[i] += lanes[i + width];
  return lanes[0];
}

// Lane i of fold<S>(x, y): x and y each hold kLanes / S keys' partial sums, S lanes per key;
// the result holds twice the keys, S / 2 lanes each: every key's lower half plus its upper half.
template <int S, bool Upper>
constexpr int fold_index(int i) {
  const int half = S / 2, key = i / half, keys_in_x = kLanes / S, at = i % half + (Upper ? half : 0);
  return key < keys_in_x ? key * S + at : kLanes + (key - keys_in_x) * S + at;
}
template <int S, size_t... I>
inline vf fold(vf x, vf y, std::index_sequence<I...>) {
  return __builtin_shufflevector(x, y, fold_index<S, false>(I)...) +
         __builtin_shufflevector(x, y, fold_index<S, true>(I)...);
}
// Sums each of the kLanes vectors acc[0..kLanes) into lane j of one vector (acc is overwritten):
// a transpose and add in log2(kLanes) rounds of shuffles, instead of a horizontal sum per key.
template <int S = kLanes>
inline vf sum_lanes(vf* acc, int count = kLanes) {
  for (int i = 0; i < count / 2; ++i) acc[i] = fold<S>(acc[2 * i], acc[2 * i + 1], std::make_index_sequence<kLanes>());
  if constexpr (S > 2) return sum_lanes<S / 2>(acc, count / 2);
  return acc[0];
}

// transpose_block's shuffles: with rows a = r[i] and b = r[i + H] (bit H of i clear), the first
// result keeps a's lanes whose bit H is clear and takes b's H lanes lower in the others; the
// second takes a's lanes H higher, then keeps b's. Lanes of b count from kLanes.
template <int H, bool Second>
constexpr int swap_index(int lane) {
  if constexpr (Second) return (lane & H) ? kLanes + lane : lane + H;
  return (lane & H) ? kLanes + lane - H : lane;
}
template <int H, bool Second, size_t... I>
inline vf swap_blocks(vf a, vf b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, swap_index<H, Second>(I)...);
}
// r[0 .. kLanes) transposed in registers: the off-diagonal H × H blocks swapped between each pair
// of rows H apart, for H = kLanes / 2 down to 1 (log2(kLanes) rounds of two shuffles a pair).
template <int H = kLanes / 2>
inline void transpose_block(vf* r) {
  for (int i = 0; i < kLanes; ++i) {
    if (i & H) continue;
    const vf a = r[i], b = r[i + H];
    r[i] = swap_blocks<H, false>(a, b, std::make_index_sequence<kLanes>());
    r[i + H] = swap_blocks<H, true>(a, b, std::make_index_sequence<kLanes>());
  }
  if constexpr (H > 1) transpose_block<H / 2>(r);
}

// score[r * kChunk + j] = q_r · keys[j] for the tile's rows (scaled queries, D floats apart) and
// the kLanes key rows of a block (D floats each, in fp32 and in L1 once for all the rows; D a
// whole number of vectors): each row's kLanes dot products run side by side and are finished
// together (sum_lanes), not reduced across lanes per key.
inline void score_block(const float* q, int rows, const float* keys, int D, float* score) {
  for (int r = 0; r < rows; ++r) {
    const float* qr = q + size_t(r) * D;
    vf acc[kLanes] = {};
    for (int d = 0; d < D; d += kLanes) {
      const vf qd = load(qr + d);
      for (int l = 0; l < kLanes; ++l) acc[l] += qd * load(keys + size_t(l) * D + d);
    }
    store(score + size_t(r) * kChunk, sum_lanes(acc));
  }
}

inline float element(const StridedView& v, int64_t index) {
  switch (v.type) {
    case Element::f32: return static_cast<const float*>(v.data)[index];
    case Element::f16: return static_cast<float>(static_cast<const _Float16*>(v.data)[index]);
    case Element::bf16: {
      const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(v.data)[index]) << 16;
      float f;
      std::memcpy(&f, &bits, sizeof f);
      return f;
    }
  }
  return 0;
}

// Hides, in a chunk's row of kChunk scores for keys [start, start + n), what query position i of
// query head `head` (batch row b) may not see: past the chunk, the future (causal: keys after
// i + shift), the mask. Returns how many keys the causal limit leaves.
inline int hide_scores(float* score, int start, int n, int b, int head, int i, int shift, bool causal,
                       bool has_mask, bool bool_mask, const StridedView& mask) {
  int visible = n;
  if (causal) visible = std::clamp(i + shift + 1 - start, 0, n);
  std::fill(score + visible, score + kChunk, kMinusInf);
  if (has_mask) {
    const int64_t base = b * mask.stride[0] + head * mask.stride[1] + int64_t(i) * mask.stride[2];
    for (int j = 0; j < visible; ++j) {
      const int64_t at = base + int64_t(start + j) * mask.stride[3];
      if (bool_mask) {
        if (!static_cast<const bool*>(mask.data)[at]) score[j] = kMinusInf;
      } else {
        score[j] += static_cast<const float*>(mask.data)[at];
      }
    }
  }
  return visible;
}

// Online softmax over one chunk for one query row, first half: with the chunk's scores (kChunk
// of them, the hidden ones -inf) rescales what the row summed so far (max, sum, its Dv outputs)
// to the new running max and turns the scores into weights exp(score - max) (0 while nothing
// is visible yet). Only the vectors that hold one of the chunk's n keys are taken: past them every
// score is hidden, so their weights are 0.
inline void softmax_weights(float* score, int n, int Dv, float& row_max, float& row_sum, float* out) {
  const int vectors = (n + kLanes - 1) / kLanes;
  vf top = splat(kMinusInf);
  for (int v = 0; v < vectors; ++v) top = max(top, load(score + v * kLanes));
  const float new_max = std::max(row_max, reduce_max(top));
  if (new_max == kMinusInf) {  // nothing visible yet
    std::fill(score, score + kChunk, 0.0f);
    return;
  }
  const float rescale = std::exp(row_max - new_max);
  vf total{};
  for (int v = 0; v < vectors; ++v) {
    const vf e = exp(load(score + v * kLanes) - new_max);
    store(score + v * kLanes, e);
    total += e;
  }
  std::fill(score + vectors * kLanes, score + kChunk, 0.0f);
  row_max = new_max;
  row_sum = row_sum * rescale + reduce_sum(total);
  if (rescale != 1.0f)
    for (int d = 0; d < Dv; ++d) out[d] *= rescale;
}

// Second half, for M rows at once (M a constant, so their sums stay in registers): adds the
// chunk's n value rows times their weights (kChunk apart) to each row's outputs (Dv apart).
// `vectors(j, e, x)` puts value row j's NV vectors from element e into x: every value vector is
// read once for all the rows, and each weight once per NV vectors.
template <int M, int NV, class Vectors>
inline int accumulate_weighted(const float* w, int n, int Dv, float* o, int d, Vectors vectors) {
  for (; d + NV * kLanes <= Dv; d += NV * kLanes) {
    vf acc[M][NV];
    for (int r = 0; r < M; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = load(o + size_t(r) * Dv + d + v * kLanes);
    for (int j = 0; j < n; ++j) {
      vf x[NV];
      vectors(j, d, x);
      for (int r = 0; r < M; ++r) {
        const vf weight = splat(w[size_t(r) * kChunk + j]);
        for (int v = 0; v < NV; ++v) acc[r][v] += weight * x[v];
      }
    }
    for (int r = 0; r < M; ++r)
      for (int v = 0; v < NV; ++v) store(o + size_t(r) * Dv + d + v * kLanes, acc[r][v]);
  }
  return d;
}

// The value rows value_stride elements apart (fp32, float16 or bfloat16, widened as they are read).
template <int M, int NV, class T>
inline int accumulate_vectors(const float* w, int n, const T* values, int64_t value_stride, int Dv, float* o, int d) {
  return accumulate_weighted<M, NV>(w, n, Dv, o, d, [&](int j, int e, vf* x) {
    for (int v = 0; v < NV; ++v) x[v] = load(values + j * value_stride + e + v * kLanes);
  });
}

template <int M, class T>
inline void accumulate_rows(const float* w, int n, const T* values, int64_t value_stride, int Dv, float* o) {
  // Up to 12 sums in registers: 4 vectors of each of up to 3 rows, 2 of 4.
  int d = accumulate_vectors<M, M <= 3 ? 4 : 2>(w, n, values, value_stride, Dv, o, 0);
  d = accumulate_vectors<M, 1>(w, n, values, value_stride, Dv, o, d);
  for (; d < Dv; ++d)
    for (int r = 0; r < M; ++r) {
      float sum = o[size_t(r) * Dv + d];
      for (int j = 0; j < n; ++j) sum += w[size_t(r) * kChunk + j] * to_float(values[j * value_stride + d]);
      o[size_t(r) * Dv + d] = sum;
    }
}

// The same for any number of rows (decode's few rows of a group), up to 4 at a time.
template <class T>
inline void accumulate_values(const float* weights, int rows, int n, const T* values, int64_t value_stride, int Dv,
                              float* out) {
  for (int first = 0; first < rows; first += 4) {
    const float* w = weights + size_t(first) * kChunk;
    float* o = out + size_t(first) * Dv;
    switch (std::min(4, rows - first)) {
      case 1: accumulate_rows<1>(w, n, values, value_stride, Dv, o); break;
      case 2: accumulate_rows<2>(w, n, values, value_stride, Dv, o); break;
      case 3: accumulate_rows<3>(w, n, values, value_stride, Dv, o); break;
      default: accumulate_rows<4>(w, n, values, value_stride, Dv, o); break;
    }
  }
}

// Leaves one row of a tile: its softmax state (max, sum, unnormalised outputs; see
// partial_stride) into `state` when the tile holds part of the keys, else normalised into dst.
inline void finish_row(const float* out, float row_max, float row_sum, int Dv, float* state, float* dst) {
  if (state != nullptr) {
    state[0] = row_max;
    state[1] = row_sum;
    std::memcpy(state + 2, out, sizeof(float) * Dv);
    return;
  }
  const float norm = row_sum > 0 ? 1.0f / row_sum : 0.0f;
  for (int d = 0; d < Dv; ++d) dst[d] = out[d] * norm;
}

}  // namespace
}  // namespace kernels
