// The float attention kernel alone (ffi/src/kernels/attention_body.h, avx512 build), one
// thread, one decode step of the default model: 30 layers × 3 kv heads × 9 query heads of 64
// over a float16 KV cache of `context` positions, each layer's keys and values a separate
// buffer as the cache holds them (the used part of a buffer grown 256 positions at a time).
// Timed by the thread's CPU time, so other processes on a shared machine move it little; the
// caches are flushed (128 MB written) before every step, as the weights' products flush them
// in a real step. Also times a plain read of the same bytes: the memory's bound. `cached` as a
// third argument leaves the caches as they are (a context of 500, 11.5 MB, then stays in L3):
// the kernel's own arithmetic, which other processes' memory traffic moves less. `pool` as a
// further argument splits each layer over our thread pool as the primitive does
// (attention_tiles.h; MLX_CPU_THREADS threads) and times the whole process's CPU and the wall
// clock: whether two threads stream K/V faster than one. The fastest step is printed beside the
// median: on a shared machine it is the steadier figure to compare.
//
// Built against a kernel directory, so two versions compare side by side:
//
//   mkdir -p /tmp/main-kernels
//   for f in attention_body.h attention_vector.h attention_kernel.h attention_tiles.h thread_pool.h thread_pool.cpp; do git show main:ffi/src/kernels/$f > /tmp/main-kernels/$f; done
//   for k in /tmp/main-kernels ffi/src/kernels; do
//     g++ -O3 -std=c++17 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c -I$k bench/attention-decode.cpp $k/thread_pool.cpp -lpthread -o /tmp/attention-decode-$(basename $k)
//   done
//   for i in 1 2 3; do /tmp/attention-decode-main-kernels 2000; /tmp/attention-decode-kernels 2000; done
//   for i in 1 2 3; do /tmp/attention-decode-main-kernels 500 300 cached; /tmp/attention-decode-kernels 500 300 cached; done
//   for t in 1 2 1 2; do MLX_CPU_THREADS=$t /tmp/attention-decode-kernels 2000 30 flushed pool; done
#define ATTENTION_VECTOR_BYTES 64
#define ATTENTION_TILE_FN attend_tile_avx512
#include "attention_body.h"
#include "attention_tiles.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "thread-cpu.h"

using namespace kernels;

int main(int argc, char** argv) {
  const int context = argc > 1 ? std::atoi(argv[1]) : 2000;
  const int steps = argc > 2 ? std::atoi(argv[2]) : 15;
  const auto option = [&](const char* name) {
    for (int i = 3; i < argc; ++i)
      if (std::string(argv[i]) == name) return true;
    return false;
  };
  const bool flushed = !option("cached"), pooled = option("pool");
  const int layers = 30, q_heads = 9, kv_heads = 3, dim = 64;
  const int capacity = (context + 256) / 256 * 256;
  const size_t elements = size_t(kv_heads) * capacity * dim;
  std::mt19937 random(1);
  std::normal_distribution<float> normal;
  std::vector<std::vector<_Float16>> keys(layers), values(layers);
  for (int l = 0; l < layers; ++l) {
    for (auto* held : {&keys[l], &values[l]}) {
      held->resize(elements);
      for (auto& x : *held) x = static_cast<_Float16>(normal(random));
    }
  }
  std::vector<float> q(q_heads * dim), out(q_heads * dim);
  for (auto& x : q) x = normal(random);
  std::vector<char> flush(128 << 20);
  const int64_t strides[4] = {int64_t(elements), int64_t(capacity) * dim, dim, 1};

  // With the pool: the CPU of every thread (the caller and the workers), and the wall clock.
  const auto clock_ms = [](clockid_t clock) {
    timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
  };
  const auto kernel_cpu_ms = [&] { return pooled ? clock_ms(CLOCK_PROCESS_CPUTIME_ID) : thread_cpu_ms(); };
  std::vector<double> kernel, wall, read;
  volatile float sink = 0;
  for (int step = 0; step < steps; ++step) {
    if (flushed) std::fill(flush.begin(), flush.end(), char(step));
    double start = kernel_cpu_ms();
    const double wall_start = clock_ms(CLOCK_MONOTONIC);
    for (int l = 0; l < layers; ++l) {
      AttentionProblem p{};
      p.batch = 1, p.q_heads = q_heads, p.kv_heads = kv_heads, p.q_len = 1, p.kv_len = context;
      p.dim = p.value_dim = dim;
      p.scale = 0.125f, p.q = q.data(), p.out = out.data();
      p.keys = {keys[l].data(), Element::f16, {strides[0], strides[1], strides[2], strides[3]}};
      p.values = {values[l].data(), Element::f16, {strides[0], strides[1], strides[2], strides[3]}};
      if (pooled) {
        run_attention_tiles(p, [&](const AttentionTile& t, float* partial) { ATTENTION_TILE_FN(p, t, partial); });
      } else {
        for (int h = 0; h < kv_heads; ++h) ATTENTION_TILE_FN(p, AttentionTile{0, h, 0, 1, 0, context}, nullptr);
      }
    }
    kernel.push_back(kernel_cpu_ms() - start);
    wall.push_back(clock_ms(CLOCK_MONOTONIC) - wall_start);

    if (flushed) std::fill(flush.begin(), flush.end(), char(step + 1));
    start = thread_cpu_ms();
    __m512 sum = _mm512_setzero_ps();
    for (int l = 0; l < layers; ++l)
      for (const auto* held : {&keys[l], &values[l]})
        for (int h = 0; h < kv_heads; ++h)
          for (size_t at = 0; at < size_t(context) * dim; at += 16) {
            const auto* row = held->data() + size_t(h) * capacity * dim + at;
            sum = _mm512_add_ps(sum, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row))));
          }
    sink = sink + _mm512_reduce_add_ps(sum);
    read.push_back(thread_cpu_ms() - start);
  }
  const double megabytes = 2.0 * layers * kv_heads * context * dim * sizeof(_Float16) / 1e6;
  std::printf(
      "context %d, %.1f MB of float16 K/V%s: kernel %.2f ms CPU (%.1f GB/s; fastest %.3f ms), plain read %.2f ms (%.1f GB/s; "
      "fastest %.3f ms)\n",
      context, megabytes, flushed ? "" : ", cached", median(kernel), megabytes / median(kernel),
      *std::min_element(kernel.begin(), kernel.end()), median(read), megabytes / median(read),
      *std::min_element(read.begin(), read.end()));
  if (pooled) {
    std::printf("  on the pool's %d threads: kernel %.2f ms of wall (%.1f GB/s; fastest %.3f ms)\n", thread_count(),
                median(wall), megabytes / median(wall), *std::min_element(wall.begin(), wall.end()));
  }
}
