// Can AMX run the int16 prompt rows exactly? A feasibility measurement, not a kernel: one
// thread, the default model's 4-bit shapes (group 32) at 8 and 16 rows, timed by the thread's
// CPU time (fastest of 9 rounds), weights in L2 as in qmm-repacked.cpp, so the two compare.
//
// Our prompt and batch rows round x to int16 per block of 32 and sum code · x in int32 with
// vpdpwssd (ffi/src/kernels/quantized_matmul_vnni.cpp). AMX has no int16 product, but an int16
// is hi · 256 + lo with hi a signed byte and lo an unsigned one, so a block's sum is
// 256 · (hi · codes) + (lo · codes): two int8 tile products (TDPBSSD, TDPBUSD), exact in int32
// as the vpdpwssd sum is. The float work after each block (its sum converted, scaled by the
// columns' scales times the row's step, the group's biases times the row's sum) is the kernel's,
// in the same order, so the outputs are checked bit for bit against a scalar loop doing that.
// The codes are unpacked from nibbles into the tile's layout per 16 columns (a block of 16
// columns × 32 codes is 256 bytes of nibbles, 512 of tile). Results: bench/RESULTS.md, "An
// Intel host".
//
//   g++ -O3 -std=gnu++20 -march=sapphirerapids bench/amx-int16.cpp -o /tmp/amx-int16 && /tmp/amx-int16
//   (beside: bench/qmm-repacked.cpp's "8 x (3072, 576) 4-bit" line, the vpdpwssd kernel)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <random>
#include <vector>

namespace {

constexpr int kColumns = 16;  // a tile's int32 columns
constexpr int kBlock = 32;    // x's rounding block, and the group here

// Linux gives a process AMX's tile data only when asked (arch_prctl ARCH_REQ_XCOMP_PERM).
bool request_amx() {
  constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Tiles: 0 x's hi bytes, 1 x's lo bytes (rows × 32), 2 the codes (8 rows of 16 columns × 4),
// 3 and 4, 5 and 6 two pairs of int32 sums (rows × 16), used in turn.
void configure(int rows) {
  TileConfig c;
  for (int t : {0, 1}) c.bytes_per_row[t] = kBlock, c.rows[t] = rows;
  c.bytes_per_row[2] = 64, c.rows[2] = kBlock / 4;
  for (int t : {3, 4, 5, 6}) c.bytes_per_row[t] = 64, c.rows[t] = rows;
  // Not _tile_loadconfig: GCC 12 drops the stores to `c` before it (the config then read back
  // has every tile empty, and the first tile load faults).
  asm volatile("ldtilecfg %0" : : "m"(c));
}

struct Problem {
  int M, N, K;
  std::vector<int8_t> hi;                // [M, K]
  std::vector<uint8_t> lo;               // [M, K]
  std::vector<float> steps, group_sums;  // [M, K / 32]
  std::vector<uint8_t> nibbles;          // per 16 columns, per block: 256 bytes
  std::vector<float> scales, biases;     // [N / 16, K / 32, 16]
};

Problem make(int M, int N, int K, std::mt19937& rng) {
  Problem p{M, N, K};
  const int blocks = K / kBlock;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  p.hi.resize(static_cast<size_t>(M) * K);
  p.lo.resize(static_cast<size_t>(M) * K);
  p.steps.resize(static_cast<size_t>(M) * blocks);
  p.group_sums.resize(static_cast<size_t>(M) * blocks);
  for (int r = 0; r < M; ++r)
    for (int b = 0; b < blocks; ++b) {
      float x[kBlock], top = 0;
      for (float& v : x) top = std::max(top, std::fabs(v = u(rng) * (1 + 7 * (b % 3))));
      const float step = top / 32767;
      int sum = 0;
      for (int k = 0; k < kBlock; ++k) {
        const int q = static_cast<int>(std::lrint(x[k] / step));
        const size_t at = static_cast<size_t>(r) * K + b * kBlock + k;
        p.hi[at] = static_cast<int8_t>(q >> 8);  // arithmetic: q = hi · 256 + lo
        p.lo[at] = static_cast<uint8_t>(q & 0xFF);
        sum += q;
      }
      p.steps[r * blocks + b] = step;
      p.group_sums[r * blocks + b] = step * static_cast<float>(sum);
    }
  p.nibbles.resize(static_cast<size_t>(N) * K / 2);
  for (auto& v : p.nibbles) v = static_cast<uint8_t>(rng());
  p.scales.resize(static_cast<size_t>(N) * blocks);
  p.biases.resize(static_cast<size_t>(N) * blocks);
  for (auto& v : p.scales) v = 0.01f * (1 + u(rng));
  for (auto& v : p.biases) v = 0.1f * u(rng);
  return p;
}

// Code k of column n in block `block` of column block `cb`: the tile's byte (k / 4) · 64 + n · 4
// + k % 4, whose low nibble is in byte t of the block's 256 and high nibble in byte t - 256.
int code(const Problem& p, int cb, int block, int n, int k) {
  const int t = (k / 4) * 64 + n * 4 + k % 4;
  const uint8_t byte = p.nibbles[(static_cast<size_t>(cb) * (p.K / kBlock) + block) * 256 + t % 256];
  return t < 256 ? byte & 0xF : byte >> 4;
}

// The scalar reference: exact int32 sums, then the kernel's float steps in its order.
void reference(const Problem& p, float* out) {
  const int blocks = p.K / kBlock;
  for (int r = 0; r < p.M; ++r)
    for (int n = 0; n < p.N; ++n) {
      const int cb = n / kColumns, c = n % kColumns;
      float acc = 0;
      for (int b = 0; b < blocks; ++b) {
        int32_t sum = 0;
        for (int k = 0; k < kBlock; ++k) {
          const size_t at = static_cast<size_t>(r) * p.K + b * kBlock + k;
          sum += (p.hi[at] * 256 + p.lo[at]) * code(p, cb, b, c, k);
        }
        const size_t s = (static_cast<size_t>(cb) * blocks + b) * kColumns + c;
        acc = std::fma(static_cast<float>(sum), p.scales[s] * p.steps[r * blocks + b], acc);
        acc = std::fma(p.biases[s], p.group_sums[r * blocks + b], acc);
      }
      out[static_cast<size_t>(r) * p.N + n] = acc;
    }
}

// AMX: per 16 columns, the codes of every block unpacked into tile layout first (a tile load
// right behind the vector stores that wrote it waits for them to retire, which chained each
// block to the last), then per block two int8 products into one of two pairs of sum tiles in
// turn (so a block's products run while the last block's sums go through the float work), and
// the float work on the rows' int32 sums; the rows' accumulators stay in registers.
template <int Rows>
void amx_rows(const Problem& p, float* out) {
  const int blocks = p.K / kBlock;
  const __m512i low = _mm512_set1_epi8(0x0F);
  static thread_local std::vector<uint8_t> codes;
  codes.resize(static_cast<size_t>(blocks) * 512 + 64);
  uint8_t* tiles = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(codes.data()) + 63) & ~uintptr_t{63});
  alignas(64) int32_t sums[2][2][Rows][kColumns];  // [turn][high, low][row][column]
  for (int cb = 0; cb < p.N / kColumns; ++cb) {
    const uint8_t* packed = &p.nibbles[static_cast<size_t>(cb) * blocks * 256];
    for (int v = 0; v < 4 * blocks; ++v) {
      const __m512i bytes = _mm512_loadu_si512(packed + 64 * v);
      uint8_t* tile = tiles + (v / 4) * 512 + (v % 4) * 64;
      _mm512_store_si512(tile, _mm512_and_si512(bytes, low));
      _mm512_store_si512(tile + 256, _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low));
    }
    __m512 acc[Rows];
    for (auto& a : acc) a = _mm512_setzero_ps();
    // GCC's tile intrinsics paste their tile number into the instruction: literals only, so the
    // two turns' sum tiles (3 and 4, 5 and 6) are named by a macro.
#define BLOCK_PRODUCTS(high, low_, turn)                                \
  _tile_zero(high);                                                     \
  _tile_zero(low_);                                                     \
  _tile_dpbssd(high, 0, 2); /* hi (signed) · codes */                   \
  _tile_dpbusd(low_, 1, 2); /* lo (unsigned) · codes */                 \
  _tile_stored(high, sums[turn][0], 64);                                \
  _tile_stored(low_, sums[turn][1], 64)
    const auto products = [&](int b) {
      _tile_loadd(0, p.hi.data() + b * kBlock, p.K);
      _tile_loadd(1, p.lo.data() + b * kBlock, p.K);
      _tile_loadd(2, tiles + b * 512, 64);
      if (b % 2 == 0) {
        BLOCK_PRODUCTS(3, 4, 0);
      } else {
        BLOCK_PRODUCTS(5, 6, 1);
      }
    };
#undef BLOCK_PRODUCTS
    const auto scale_in = [&](int b, int turn) {
      const size_t s = (static_cast<size_t>(cb) * blocks + b) * kColumns;
      const __m512 scale = _mm512_loadu_ps(&p.scales[s]), bias = _mm512_loadu_ps(&p.biases[s]);
#pragma GCC unroll 16
      for (int r = 0; r < Rows; ++r) {
        const __m512i sum = _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512(sums[turn][0][r]), 8),
                                             _mm512_load_si512(sums[turn][1][r]));
        const __m512 step = _mm512_set1_ps(p.steps[r * blocks + b]);
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(scale, step), acc[r]);
        acc[r] = _mm512_fmadd_ps(bias, _mm512_set1_ps(p.group_sums[r * blocks + b]), acc[r]);
      }
    };
    products(0);
    for (int b = 1; b < blocks; ++b) {
      products(b);
      scale_in(b - 1, (b - 1) % 2);
    }
    scale_in(blocks - 1, (blocks - 1) % 2);
    for (int r = 0; r < Rows; ++r) _mm512_storeu_ps(out + static_cast<size_t>(r) * p.N + cb * kColumns, acc[r]);
  }
}

double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

template <int Rows>
void measure(int N, int K, std::mt19937& rng) {
  const Problem p = make(Rows, N, K, rng);
  std::vector<float> want(static_cast<size_t>(Rows) * N), got(want.size());
  reference(p, want.data());
  configure(Rows);
  amx_rows<Rows>(p, got.data());
  const bool same = std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0;
  double best = 1e9;
  for (int round = 0; round < 9; ++round) {
    const double t0 = thread_seconds();
    for (int i = 0; i < 20; ++i) amx_rows<Rows>(p, got.data());
    best = std::min(best, (thread_seconds() - t0) / 20);
  }
  std::printf("%2d x (%5d, %5d) 4-bit: %8.1f us  %6.1f GMAC/s  outputs %s the scalar loop's\n", Rows, N, K, best * 1e6,
              static_cast<double>(Rows) * N * K / best / 1e9, same ? "bit-identical to" : "DIFFER from");
}

}  // namespace

int main() {
  if (!__builtin_cpu_supports("amx-int8") || !request_amx()) {
    std::printf("no AMX int8 here (or the kernel refused it)\n");
    return 1;
  }
  std::mt19937 rng(7);
  measure<8>(960, 576, rng);
  measure<8>(576, 576, rng);
  measure<8>(3072, 576, rng);
  measure<8>(576, 1536, rng);
  measure<16>(3072, 576, rng);
  measure<16>(576, 1536, rng);
  _tile_release();
  return 0;
}
