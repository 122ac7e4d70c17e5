// The quantized attention kernel alone (ffi/src/kernels/quantized_attention_body.h), one thread,
// one decode step of the default model: 30 layers × 3 kv heads × 9 query heads of 64 over a
// 4- or 8-bit KV cache of `context` positions as the cache holds it (keys per channel in groups
// of 64 positions with scales and biases per channel, the newest positions in a float16 tail;
// values per row in groups along D; fp32 scales and biases), each layer a separate buffer. Timed by the thread's
// CPU time, caches flushed (128 MB written) before every step as in bench/attention-decode.cpp.
// Also prints the largest error against attention computed in double on the dequantized keys
// and values (relative to the largest output), the measure test/kernels-quantized-attention.test.ts
// bounds.
//
// Built against a kernel directory (an ISA's flags and its file's defines), so two versions
// compare side by side:
//
//   mkdir -p /tmp/main-kernels/simd
//   for f in quantized_attention_body.h quantized_attention_kernel.h attention_vector.h attention_kernel.h simd/avx512.h; do
//     git show main:ffi/src/kernels/$f > /tmp/main-kernels/$f; done
//   for k in /tmp/main-kernels ffi/src/kernels; do
//     g++ -O3 -std=c++17 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c -I$k
//       bench/quantized-attention-decode.cpp -o /tmp/qattn-$(basename $k)
//   done
//   for i in 1 2 3; do for bits in 4 8; do /tmp/qattn-main-kernels 8000 $bits; /tmp/qattn-kernels 8000 $bits; done; done
#define ATTENTION_VECTOR_BYTES 64
#define QUANTIZED_ATTENTION_TILE_FN quantized_attend_tile_avx512
#define QUANTIZED_ATTENTION_SIMD
#include "simd/avx512.h"
#include "quantized_attention_body.h"


#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "thread-cpu.h"

using namespace kernels;

// One layer's cache: codes one row per position (bits/8 bytes an element), key scales and
// biases per (head, group of positions, channel), value scales and biases per (head, position).
struct Layer {
  std::vector<uint8_t> key_codes, value_codes;
  std::vector<float> key_scales, key_biases, value_scales, value_biases;
  std::vector<_Float16> tail;
};

int main(int argc, char** argv) {
  const int context = argc > 1 ? std::atoi(argv[1]) : 8000;
  const int bits = argc > 2 ? std::atoi(argv[2]) : 4;
  const int steps = argc > 3 ? std::atoi(argv[3]) : 15;
  const int dim = argc > 4 ? std::atoi(argv[4]) : 64, group = argc > 5 ? std::atoi(argv[5]) : 64;
  const int layers = 30, q_heads = 9, kv_heads = 3;
  const int capacity = (context + 256) / 256 * 256, groups = capacity / group;
  const int coded = context / group * group;
  const int row_bytes = dim * bits / 8, levels = (1 << bits) - 1;
  std::mt19937 random(1);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> code(0, levels);
  std::vector<Layer> cache(layers);
  for (auto& l : cache) {
    l.key_codes.resize(size_t(kv_heads) * capacity * row_bytes);
    l.value_codes.resize(l.key_codes.size());
    for (auto* codes : {&l.key_codes, &l.value_codes})
      for (auto& byte : *codes) byte = bits == 8 ? code(random) : code(random) | code(random) << 4;
    // Scales and biases as a normal key's would be (a range of ~5 over the levels, from ~-2.5).
    l.key_scales.resize(size_t(kv_heads) * groups * dim);
    l.key_biases.resize(l.key_scales.size());
    for (auto& s : l.key_scales) s = (5.0f + normal(random) * 0.3f) / levels;
    for (auto& b : l.key_biases) b = -2.5f + normal(random) * 0.2f;
    l.value_scales.resize(size_t(kv_heads) * capacity * dim / group);
    l.value_biases.resize(l.value_scales.size());
    for (auto& s : l.value_scales) s = (5.0f + normal(random) * 0.3f) / levels;
    for (auto& b : l.value_biases) b = -2.5f + normal(random) * 0.2f;
    l.tail.resize(size_t(kv_heads) * group * dim);
    for (auto& x : l.tail) x = static_cast<_Float16>(normal(random));
  }
  std::vector<float> q(q_heads * dim), out(q_heads * dim);
  for (auto& x : q) x = 2 * normal(random);

  auto problem = [&](const Layer& l) {
    QuantizedAttentionProblem p{};
    p.batch = 1, p.q_heads = q_heads, p.kv_heads = kv_heads, p.q_len = 1, p.kv_len = context;
    p.dim = p.value_dim = dim, p.bits = bits, p.group = group;
    p.scale = 0.125f, p.q = q.data(), p.out = out.data();
    const int64_t codes[3] = {int64_t(kv_heads) * capacity * row_bytes, int64_t(capacity) * row_bytes, row_bytes};
    p.keys = {l.key_codes.data(), l.key_scales.data(), l.key_biases.data(), {codes[0], codes[1], codes[2]}, {},  {}};
    for (int64_t* s : {p.keys.scale_stride, p.keys.bias_stride}) {
      s[0] = int64_t(kv_heads) * groups * dim, s[1] = int64_t(groups) * dim, s[2] = dim;
    }
    p.values = {l.value_codes.data(), l.value_scales.data(), l.value_biases.data(), {codes[0], codes[1], codes[2]},
                {}, {}};
    for (int64_t* s : {p.values.scale_stride, p.values.bias_stride}) {
      s[0] = int64_t(kv_heads) * capacity * dim / group, s[1] = int64_t(capacity) * dim / group, s[2] = dim / group;
    }
    p.scale_type = Element::f32;
    if (std::getenv("ROWKEYS")) {  // keys per row: the values' scales serve
      p.keys.scales = l.value_scales.data(), p.keys.biases = l.value_biases.data();
      for (int i = 0; i < 3; ++i) p.keys.scale_stride[i] = p.keys.bias_stride[i] = p.values.scale_stride[i];
      return p;
    }
    p.channel_keys = true;
    p.tail_start = coded;
    p.tail = {l.tail.data(), Element::f16, {int64_t(kv_heads) * group * dim, int64_t(group) * dim, dim, 1}};
    return p;
  };

  // The error of the last layer's output against attention in double on the dequantized cache.
  auto error = [&](const Layer& l) {
    double worst = 0, largest = 0;
    std::vector<double> k(dim), score(context);
    for (int head = 0; head < q_heads; ++head) {
      const int h = head / (q_heads / kv_heads);
      for (int t = 0; t < context; ++t) {
        for (int d = 0; d < dim; ++d) {
          if (t >= coded && !std::getenv("ROWKEYS")) {
            k[d] = double(l.tail[(size_t(h) * group + t - coded) * dim + d]);
            continue;
          }
          const int e = d * bits, byte = l.key_codes[(size_t(h) * capacity + t) * row_bytes + e / 8];
          const int c = bits == 8 ? byte : (byte >> (e % 8)) & 15;
          const size_t at = (size_t(h) * groups + t / group) * dim + d;
          const size_t row = (size_t(h) * capacity + t) * (dim / group) + d / group;
          k[d] = std::getenv("ROWKEYS") ? double(c) * l.value_scales[row] + l.value_biases[row]
                                        : double(c) * l.key_scales[at] + l.key_biases[at];
        }
        double s = 0;
        for (int d = 0; d < dim; ++d) s += double(q[head * dim + d]) * 0.125 * k[d];
        score[t] = s;
      }
      const double top = *std::max_element(score.begin(), score.end());
      double sum = 0;
      for (auto& s : score) sum += (s = std::exp(s - top));
      for (int d = 0; d < dim; ++d) {
        double o = 0;
        for (int t = 0; t < context; ++t) {
          const int e = d * bits, byte = l.value_codes[(size_t(h) * capacity + t) * row_bytes + e / 8];
          const int c = bits == 8 ? byte : (byte >> (e % 8)) & 15;
          const size_t at = (size_t(h) * capacity + t) * (dim / group) + d / group;
          o += score[t] * (double(c) * l.value_scales[at] + l.value_biases[at]);
        }
        o /= sum;
        worst = std::max(worst, std::abs(o - out[head * dim + d]));
        largest = std::max(largest, std::abs(o));
      }
    }
    return worst / largest;
  };

  // The error with the keys split in three parts (as the pool splits a decode row), merged.
  if (std::getenv("SPLIT")) {
    const QuantizedAttentionProblem p = problem(cache.back());
    const int parts = 3, each = (context + parts - 1) / parts, stride = dim + 2, rows = q_heads / kv_heads;
    std::vector<float> state(size_t(parts) * rows * stride);
    for (int h = 0; h < kv_heads; ++h) {
      for (int s = 0; s < parts; ++s)
        QUANTIZED_ATTENTION_TILE_FN(p, AttentionTile{0, h, 0, 1, s * each, std::min(context, (s + 1) * each)},
                                    state.data() + size_t(s) * rows * stride);
      for (int r = 0; r < rows; ++r) {
        float top = -INFINITY, sum = 0;
        for (int s = 0; s < parts; ++s) top = std::max(top, state[(size_t(s) * rows + r) * stride]);
        float* o = out.data() + (h * rows + r) * dim;
        std::fill(o, o + dim, 0.0f);
        for (int s = 0; s < parts; ++s) {
          const float* st = state.data() + (size_t(s) * rows + r) * stride;
          const float w = std::exp(st[0] - top);
          sum += st[1] * w;
          for (int d = 0; d < dim; ++d) o[d] += st[2 + d] * w;
        }
        for (int d = 0; d < dim; ++d) o[d] /= sum;
      }
    }
    std::printf("split in %d: error %.2e\n", parts, error(cache.back()));
  }

  std::vector<char> flush(128 << 20);
  std::vector<double> kernel;
  for (int step = 0; step < steps; ++step) {
    std::fill(flush.begin(), flush.end(), char(step));
    const double start = thread_cpu_ms();
    for (const auto& l : cache) {
      const QuantizedAttentionProblem p = problem(l);
      for (int h = 0; h < kv_heads; ++h) QUANTIZED_ATTENTION_TILE_FN(p, AttentionTile{0, h, 0, 1, 0, context}, nullptr);
    }
    kernel.push_back(thread_cpu_ms() - start);
  }
  const double megabytes = 2.0 * layers * kv_heads * context * (row_bytes + 8) / 1e6;
  std::printf(
      "context %d, %d-bit, %.1f MB of K/V: kernel %.2f ms CPU (%.1f GB/s; fastest %.2f ms), error %.2e of the largest "
      "output\n",
      context, bits, megabytes, median(kernel), megabytes / median(kernel),
      *std::min_element(kernel.begin(), kernel.end()), error(cache.back()));
}
