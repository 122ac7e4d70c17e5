// The attention kernel, written once with GCC/Clang vector types and compiled per instruction
// set: attention_<isa>.cpp defines ATTENTION_VECTOR_BYTES (the vector width) and
// ATTENTION_TILE_FN (the function's name), and is built with that set's flags (kernels.cmake).
//
// Flash-attention style: keys are taken in chunks; for every query row of the tile the chunk's
// scores are computed, the running max and sum rescaled, and the chunk's values accumulated,
// all in fp32. Every query head of a key/value head shares each chunk while it is in L1, so
// grouped-query attention reads K and V once per tile and never repeats them.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "attention_kernel.h"

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
      // Hide what the row may not see: past the chunk, the future (causal), the mask.
      int visible = n;
      if (p.causal) visible = std::clamp(i + shift + 1 - start, 0, n);
      std::fill(score + visible, score + kChunk, kMinusInf);
      if (p.has_mask) {
        const int64_t base = t.b * p.mask.stride[0] + head * p.mask.stride[1] + int64_t(i) * p.mask.stride[2];
        for (int j = 0; j < visible; ++j) {
          const int64_t at = base + int64_t(start + j) * p.mask.stride[3];
          if (p.bool_mask) {
            if (!static_cast<const bool*>(p.mask.data)[at]) score[j] = kMinusInf;
          } else {
            score[j] += static_cast<const float*>(p.mask.data)[at];
          }
        }
      }

      // Online softmax: rescale what was summed so far to the new running max.
      vf top = splat(kMinusInf);
      for (int v = 0; v < 8; ++v) top = max(top, load(score + v * kLanes));
      const float new_max = std::max(s.max[r], reduce_max(top));
      if (new_max == kMinusInf) continue;  // nothing visible yet
      const float rescale = std::exp(s.max[r] - new_max);
      vf total{};
      for (int v = 0; v < 8; ++v) {
        const vf e = exp(load(score + v * kLanes) - new_max);
        store(score + v * kLanes, e);
        total += e;
      }
      s.max[r] = new_max;
      s.sum[r] = s.sum[r] * rescale + reduce_sum(total);

      float* out = s.out.data() + size_t(r) * Dv;
      int d = 0;
      for (; d + 4 * kLanes <= Dv; d += 4 * kLanes) {
        vf o0 = load(out + d) * rescale, o1 = load(out + d + kLanes) * rescale;
        vf o2 = load(out + d + 2 * kLanes) * rescale, o3 = load(out + d + 3 * kLanes) * rescale;
        for (int j = 0; j < n; ++j) {
          const vf w = splat(score[j]);
          const float* v = values + j * value_stride + d;
          o0 += w * load(v);
          o1 += w * load(v + kLanes);
          o2 += w * load(v + 2 * kLanes);
          o3 += w * load(v + 3 * kLanes);
        }
        store(out + d, o0);
        store(out + d + kLanes, o1);
        store(out + d + 2 * kLanes, o2);
        store(out + d + 3 * kLanes, o3);
      }
      for (; d + kLanes <= Dv; d += kLanes) {
        vf o = load(out + d) * rescale;
        for (int j = 0; j < n; ++j) o += splat(score[j]) * load(values + j * value_stride + d);
        store(out + d, o);
      }
      for (; d < Dv; ++d) {
        float o = out[d] * rescale;
        for (int j = 0; j < n; ++j) o += score[j] * values[j * value_stride + d];
        out[d] = o;
      }
    }
  }

  for (int r = 0; r < rows; ++r) {
    const float* out = s.out.data() + size_t(r) * Dv;
    if (partial != nullptr) {
      float* state = partial + size_t(r) * partial_stride(p);
      state[0] = s.max[r];
      state[1] = s.sum[r];
      std::memcpy(state + 2, out, sizeof(float) * Dv);
      continue;
    }
    const int head = first_head + r / positions, i = t.row_begin + r % positions;
    float* dst = p.out + ((size_t(t.b) * p.q_heads + head) * p.q_len + i) * Dv;
    const float norm = s.sum[r] > 0 ? 1.0f / s.sum[r] : 0.0f;
    for (int d = 0; d < Dv; ++d) dst[d] = out[d] * norm;
  }
}

}  // namespace kernels
