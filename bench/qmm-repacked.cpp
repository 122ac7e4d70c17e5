// The int16 decode rows on repacked weights (ffi/src/kernels/quantized_matmul_vnni.cpp) alone,
// one thread, the default model's shapes at 8, 1 and a few other row counts: x rounded
// (quantize_rows_int16_pairs) and the product, timed by the thread's CPU time (the fastest of 9
// rounds: other processes on a shared machine move it little), in GMAC/s. The weights are random
// bytes (the layout does not matter to the time) and stay in L2/L3 between runs, except the
// 28 MB output layer: the kernel's arithmetic, not the memory. A file as the second argument
// receives every product's outputs, so two builds can be compared bit for bit (cmp).
//
// Built against a kernel directory, so two versions compare side by side:
//
//   mkdir -p /tmp/main-kernels
//   for f in quantized_matmul_vnni.cpp quantized_matmul.h quantized_matmul_nibbles.h; do git show main:ffi/src/kernels/$f > /tmp/main-kernels/$f; done
//   for k in /tmp/main-kernels ffi/src/kernels; do
//     g++ -O3 -std=gnu++20 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c -I$k bench/qmm-repacked.cpp -o /tmp/qmm-repacked-$(basename $k)
//   done
//   /tmp/qmm-repacked-main-kernels 3 /tmp/main.bin; /tmp/qmm-repacked-kernels 3 /tmp/new.bin; cmp /tmp/main.bin /tmp/new.bin
//   for i in 1 2 3; do /tmp/qmm-repacked-main-kernels; /tmp/qmm-repacked-kernels; done
#include "quantized_matmul_vnni.cpp"

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <vector>

namespace {
double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
}  // namespace

int main(int argc, char** argv) {
  using namespace kernels;
  const double work = (argc > 1 ? std::atof(argv[1]) : 60) * 3e6;  // multiply-adds a round, per row
  FILE* out = argc > 2 ? std::fopen(argv[2], "wb") : nullptr;
  struct Case {
    int M, N, K, bits;
  };
  // q/k/v, o, gate/up, down (4-bit) and the tied output layer (8-bit), at 8 rows, then 1 row, then others.
  const Case cases[] = {{8, 960, 576, 4},  {8, 576, 576, 4},   {8, 3072, 576, 4}, {8, 576, 1536, 4},
                        {8, 49152, 576, 8}, {1, 960, 576, 4},   {1, 3072, 576, 4}, {1, 576, 1536, 4},
                        {1, 49152, 576, 8}, {4, 3072, 576, 4},  {3, 3072, 576, 4}, {2, 3072, 576, 4},
                        {5, 3072, 576, 4},  {7, 576, 1536, 4}};
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const Case& c : cases) {
    const int group = 32, groups = c.K / group;
    std::vector<uint8_t> w(static_cast<size_t>(c.N) * c.K * c.bits / 8);
    for (auto& b : w) b = static_cast<uint8_t>(rng());
    std::vector<uint16_t> scales(static_cast<size_t>(c.N) * groups), biases(scales.size());
    for (auto& s : scales) s = _cvtss_sh(0.01f + 0.0001f * (rng() % 100), 0);
    for (auto& b : biases) b = _cvtss_sh(-0.001f * (rng() % 100), 0);
    std::vector<float> x(static_cast<size_t>(c.M) * c.K), steps(c.M * (c.K / 32)), sums(c.M * groups),
        y(static_cast<size_t>(c.M) * c.N);
    for (auto& v : x) v = normal(rng);
    std::vector<int16_t> pairs(x.size());
    QmmProblem p{};
    p.x = x.data();
    p.w = w.data();
    p.scales = scales.data();
    p.biases = biases.data();
    p.scale_type = ScaleType::f16;
    p.y = y.data();
    p.M = c.M, p.N = c.N, p.K = c.K, p.bits = c.bits, p.group = group;
    p.repacked = true;
    p.x_int16 = pairs.data(), p.x_int16_steps = steps.data(), p.x_group_sums = sums.data();
    auto product = [&] {
      quantize_rows_int16_pairs(x.data(), c.M, c.K, c.bits, group, pairs.data(), steps.data(), sums.data());
      qmm_tile_int16_repacked_vnni(p, 0, c.N, nullptr);
    };
    product();
    if (out) std::fwrite(y.data(), sizeof(float), y.size(), out);
    const int runs = std::max(3, static_cast<int>(work / (static_cast<double>(c.N) * c.K)));
    double best = 1e9;
    for (int round = 0; round < 9; ++round) {
      const double started = cpu_seconds();
      for (int i = 0; i < runs; ++i) product();
      best = std::min(best, (cpu_seconds() - started) / runs);
    }
    std::printf("%d x (%5d, %4d) %d-bit: %8.1f us  %6.1f GMAC/s\n", c.M, c.N, c.K, c.bits, best * 1e6,
                static_cast<double>(c.M) * c.N * c.K / best / 1e9);
  }
  if (out) std::fclose(out);
}
