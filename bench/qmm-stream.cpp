// The int16 decode row (M = 1) on repacked 4-bit weights that stream from memory, one thread:
// the products of 30 layers of the default model's shapes (q/k/v, o, gate/up, down; 66 MB, twice
// the L3), each layer's matrices at their own addresses in huge pages, against one plain read of
// the same bytes. bench/qmm-repacked.cpp times the same kernel on weights that stay in cache;
// this is its rate from DRAM, to set against a decode step's (bench/decode-profile.ts). An
// optional gap of busy work between products (microseconds, first argument) stands in for a
// step's other ops, after which the hardware prefetchers start each product cold.
//
//   g++ -O3 -std=gnu++20 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c -Iffi/src/kernels bench/qmm-stream.cpp -o /tmp/qmm-stream
//   /tmp/qmm-stream; /tmp/qmm-stream 10
#include "quantized_matmul_vnni.cpp"

#include <sys/mman.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

volatile float sink;

// Arithmetic for `us` microseconds, touching no memory.
void busy(double us) {
  const double until = now() + us * 1e-6;
  float a = 1;
  while (now() < until)
    for (int i = 0; i < 100; ++i) a = a * 1.0000001f + 1e-7f;
  sink = a;
}

struct Matrix {
  int N, K;
  const uint8_t *w, *scales, *biases;
};
}  // namespace

int main(int argc, char** argv) {
  using namespace kernels;
  const double gap_us = argc > 1 ? std::atof(argv[1]) : 0;
  constexpr int kLayers = 30, kGroup = 32;
  constexpr long kHuge = 2 << 20;
  const int shapes[4][2] = {{960, 576}, {576, 576}, {3072, 576}, {576, 1536}};
  long total = 0;
  for (const auto& s : shapes) total += long(s[0]) * s[1] / 2 + 2L * s[0] * (s[1] / kGroup) * 2;
  total *= kLayers;
  auto* memory = static_cast<uint8_t*>(std::aligned_alloc(kHuge, (total + kHuge - 1) / kHuge * kHuge));
  madvise(memory, total, MADV_HUGEPAGE);
  // Codes of any value; scales and biases small half floats (the bytes' top bits cleared).
  for (long i = 0; i < total; ++i) memory[i] = uint8_t((i * 2654435761u) >> 24) & 0x3b;
  std::vector<Matrix> matrices;
  for (long l = 0, at = 0; l < kLayers; ++l)
    for (const auto& s : shapes) {
      const long codes = long(s[0]) * s[1] / 2, scales = long(s[0]) * (s[1] / kGroup) * 2;
      matrices.push_back({s[0], s[1], memory + at, memory + at + codes, memory + at + codes + scales});
      at += codes + 2 * scales;
    }
  std::vector<float> x(1536), steps(1536 / 32), sums(1536 / kGroup), y(3072);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * i);
  std::vector<int16_t> pairs(x.size());
  double best = 1e9, best_read = 1e9;
  for (int round = 0; round < 20; ++round) {
    const double started = now();
    for (const Matrix& m : matrices) {
      QmmProblem p{};
      p.x = x.data(), p.y = y.data(), p.w = m.w, p.scales = m.scales, p.biases = m.biases;
      p.scale_type = ScaleType::f16, p.repacked = true;
      p.M = 1, p.N = m.N, p.K = m.K, p.bits = 4, p.group = kGroup;
      p.x_int16 = pairs.data(), p.x_int16_steps = steps.data(), p.x_group_sums = sums.data();
      quantize_rows_int16_pairs(x.data(), 1, m.K, 4, kGroup, pairs.data(), steps.data(), sums.data());
      qmm_tile_int16_repacked_vnni(p, 0, m.N, nullptr);
      if (gap_us > 0) busy(gap_us);
    }
    best = std::min(best, now() - started - gap_us * 1e-6 * matrices.size());
    const double read_started = now();
    __m512i sum[4] = {};
    const auto* v = reinterpret_cast<const __m512i*>(memory);
    for (long i = 0; i + 4 <= total / 64; i += 4)
      for (int j = 0; j < 4; ++j) sum[j] = _mm512_add_epi32(sum[j], _mm512_load_si512(v + i + j));
    best_read = std::min(best_read, now() - read_started);
    sink = float(_mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32(sum[0], sum[1]), _mm512_add_epi32(sum[2], sum[3]))));
  }
  std::printf("%d products, %.1f MB, gaps of %.0f us between them: %.2f ms = %.1f GB/s; plain read %.2f ms = %.1f GB/s\n",
              int(matrices.size()), total / 1e6, gap_us, best * 1e3, total / best / 1e9, best_read * 1e3,
              total / best_read / 1e9);
}
