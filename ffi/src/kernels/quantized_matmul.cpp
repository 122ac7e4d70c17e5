// The QuantizedMatmul primitive on the CPU: MLX's graph node for our kernels. Built like any
// MLX op (lazy, evaluated on its stream's thread in order); the work is spread over our pool.
#include "kernels.h"
#include "bodies.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "isa.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "quantized_matmul.h"
#include "thread_pool.h"

namespace kernels {
namespace {

QmmTile tile_for(Isa isa) {
  switch (isa) {
#if defined(KERNELS_HAVE_AVX512)
    case Isa::avx512: return qmm_tile_avx512;
#endif
#if defined(KERNELS_HAVE_AVX2)
    case Isa::avx2: return qmm_tile_avx2;
#endif
#if defined(KERNELS_HAVE_NEON)
    case Isa::neon: return qmm_tile_neon;
#endif
    default: return qmm_tile_portable;
  }
}

ScaleType scale_type_of(mx::Dtype t) {
  if (t == mx::float16) return ScaleType::f16;
  if (t == mx::bfloat16) return ScaleType::bf16;
  return ScaleType::f32;
}

template <typename T>
void to_float(const T* in, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

template <typename T>
void from_float(const float* in, T* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>(in[i]);
}

bool int8_activations(int M, int K, int bits) {
  return decode_activations() == DecodeActivations::int8 && bits == 4 && M <= kDirectMaxRows && K % kInt8Chunk == 0;
}

// Decode rows, and on repacked weights prompt rows too (the decode rows' kernel, 8 rows at a time).
bool int16_activations(int M, int bits, bool repacked) {
  return decode_activations() == DecodeActivations::int16 && (bits == 4 || bits == 8) &&
         (M <= kDirectMaxRows || repacked);
}

// Whether w is repacked (kRepackColumns): marked by its type, int32 rather than MLX's uint32,
// so that MLX's own ops refuse it rather than read it in their layout.
bool is_repacked(const mx::array& w) { return w.dtype() == mx::int32; }

// Whether our kernels read `bits`-bit weights of N rows repacked, on this CPU in this mode: the
// int16 decode rows (AVX-512 VNNI).
bool repack_readable(int N, int bits) {
  return decode_activations() == DecodeActivations::int16 && (bits == 4 || bits == 8) && N % kRepackColumns == 0;
}

// Outputs per task: enough tasks to balance the threads, few enough that waking them pays.
int columns_per_task(int M, int N, int K, int threads, bool repacked) {
  const int align = M > kDirectMaxRows ? kPanelMaxColumns : repacked ? kRepackColumns : 8;
  if (threads == 1 || static_cast<long>(M) * N * K < (1L << 16)) return N;
  int per_task = (N + threads * 4 - 1) / (threads * 4);
  per_task = (per_task + align - 1) / align * align;
  return std::max(per_task, align);
}

// Whether every bias is -2^(bits-1) times its scale, so that w = scale · (q - 2^(bits-1)): GGUF's
// Q4_0 and Q8_0 as MLX loads them. A kernel then skips the biases (a tenth of a Q4_0 layer's
// bytes). Checked once per pair of buffers and remembered while both live: the weights of a
// model are the same arrays token after token. The first group that differs ends the check, so
// other layouts cost next to nothing. Only the AVX-512 4-bit decode rows use it, so only they ask.
bool symmetric(const mx::array& scales, const mx::array& biases, int bits) {
  struct Verdict {
    std::weak_ptr<mx::array::Data> scales, biases;
    size_t size;
    bool symmetric;
  };
  static std::mutex mutex;
  static std::unordered_map<const void*, Verdict> verdicts;  // by the biases' first element
  const void* key = biases.data<void>();
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto found = verdicts.find(key);
    if (found != verdicts.end() && found->second.size == biases.size() &&
        found->second.scales.lock() == scales.data_shared_ptr() && found->second.biases.lock() == biases.data_shared_ptr())
      return found->second.symmetric;
  }
  const float offset = -static_cast<float>(1 << (bits - 1));
  auto check = [&](const auto* s, const auto* b) {
    for (size_t i = 0; i < scales.size(); ++i)
      if (static_cast<float>(b[i]) != offset * static_cast<float>(s[i])) return false;
    return true;
  };
  bool verdict;
  if (scales.dtype() == mx::float16) verdict = check(scales.data<mx::float16_t>(), biases.data<mx::float16_t>());
  else if (scales.dtype() == mx::bfloat16) verdict = check(scales.data<mx::bfloat16_t>(), biases.data<mx::bfloat16_t>());
  else verdict = check(scales.data<float>(), biases.data<float>());
  std::lock_guard<std::mutex> lock(mutex);
  // Forget the buffers freed since: a new one may take their address.
  for (auto it = verdicts.begin(); it != verdicts.end();)
    it = it->second.biases.expired() ? verdicts.erase(it) : std::next(it);
  verdicts[key] = {scales.data_shared_ptr(), biases.data_shared_ptr(), biases.size(), verdict};
  return verdict;
}

void run(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
         mx::array& out, int group, int bits) {
  const int K = x.shape(-1);
  const int M = static_cast<int>(x.size() / K);
  const int N = out.shape(-1);
  // Buffers of the stream's own thread, kept between calls: no allocation per token.
  thread_local std::vector<float> x_f32, y_f32, x_group_sums, x_split, x_int8_steps, x_block_sums, x_nibbles, scratch;
  thread_local std::vector<int8_t> x_int8;
  thread_local std::vector<int16_t> x_int16;
  thread_local std::vector<float> x_int16_steps, x_int16_lane_sums;

  const float* xp;
  if (x.dtype() == mx::float32) {
    xp = x.data<float>();
  } else {
    x_f32.resize(x.size());
    if (x.dtype() == mx::float16) to_float(x.data<mx::float16_t>(), x_f32.data(), x.size());
    else to_float(x.data<mx::bfloat16_t>(), x_f32.data(), x.size());
    xp = x_f32.data();
  }
  float* yp = out.dtype() == mx::float32 ? out.data<float>() : (y_f32.resize(out.size()), y_f32.data());

  const int threads = thread_count();
  const bool repacked = is_repacked(w);
  const bool int8 = !repacked && int8_activations(M, K, bits);
  if (int8) {
    x_int8.resize(static_cast<size_t>(M) * K);
    x_int8_steps.resize(static_cast<size_t>(M) * K / 4);
    x_block_sums.resize(static_cast<size_t>(M) * K / 32);
    quantize_rows_int8(xp, M, K, x_int8.data(), x_int8_steps.data(), x_block_sums.data());
  }
  const bool int16 = int16_activations(M, bits, repacked);
#if defined(KERNELS_HAVE_VNNI)
  if (int16 && repacked) {
    x_int16.resize(static_cast<size_t>(M) * K);
    x_int16_steps.resize(static_cast<size_t>(M) * (K / 32));
    x_group_sums.resize(static_cast<size_t>(M) * (K / group));
    quantize_rows_int16_pairs(xp, M, K, bits, group, x_int16.data(), x_int16_steps.data(), x_group_sums.data());
  } else if (int16) {
    x_int16.resize(static_cast<size_t>(M) * int16_padded(K, bits));
    x_int16_steps.resize(static_cast<size_t>(M) * 16 * int16_chunks(K, bits));
    x_int16_lane_sums.resize(x_int16_steps.size());
    x_group_sums.resize(static_cast<size_t>(M) * (K / group));
    quantize_rows_int16(xp, M, K, bits, group, x_int16.data(), x_int16_steps.data(), x_int16_lane_sums.data(),
                        x_group_sums.data());
  }
#endif
  // The AVX-512 4-bit decode rows (quantized_matmul_avx512.cpp) take x in their own order.
  const bool nibbles = bits == 4 && M <= kNibbleMaxRows && !int8 && !int16 && best_isa() == Isa::avx512;
  if (nibbles) {
    x_nibbles.assign(static_cast<size_t>(M) * ((K + 127) / 128 * 128), 0.0f);
    order_by_nibbles(xp, M, K, x_nibbles.data());
  }
  if (M > kDirectMaxRows && !int16) {
    scratch.resize(static_cast<size_t>(threads) * kPanelMaxColumns * K);
  } else if (!int16) {
    x_group_sums.assign(static_cast<size_t>(M) * (K / group), 0.0f);
    // The int8 kernel's bias term sums the quantized activations, so that its error is the
    // weights times the activations' rounding (Σ w·(x̂ - x)) rather than the scaled codes' times it.
    if (int8) {
      for (int b = 0; b < M * K / 32; ++b) x_group_sums[b * 32 / group] += x_block_sums[b];
    } else {
      for (int i = 0; i < M * K; ++i) x_group_sums[i / group] += xp[i];
    }
    if (bits == 4 && !int8 && !nibbles) {
      // Each block of 32 in its nibbles' order: even elements, then odd ones (see direct_rows).
      x_split.resize(static_cast<size_t>(M) * K);
      for (int i = 0; i < M * K; ++i) x_split[(i & ~31) + (i & 1) * 16 + (i & 31) / 2] = xp[i];
    }
  }
  const QmmProblem p{xp, w.data<uint8_t>(), scales.data<void>(), biases.data<void>(), scale_type_of(scales.dtype()),
                     x_group_sums.data(), x_split.data(), int8 ? x_int8.data() : nullptr, x_int8_steps.data(),
                     yp, M, N, K, bits, group, (nibbles || int16) && symmetric(scales, biases, bits),
                     nibbles ? x_nibbles.data() : nullptr, int16 ? x_int16.data() : nullptr, x_int16_steps.data(),
                     x_int16_lane_sums.data(), repacked};
#if defined(KERNELS_HAVE_VNNI)
  const QmmTile tile = int8                 ? qmm_tile_int8_vnni
                       : int16 && repacked ? qmm_tile_int16_repacked_vnni
                       : int16             ? qmm_tile_int16_vnni
                                           : tile_for(best_isa());
#else
  const QmmTile tile = tile_for(best_isa());
#endif
  const int per_task = columns_per_task(M, N, K, threads, repacked);
  float* scratch_base = scratch.data();
  parallel_for((N + per_task - 1) / per_task, [&](int task, int thread) {
    const int n0 = task * per_task;
    tile(p, n0, std::min(N, n0 + per_task), scratch_base + static_cast<size_t>(thread) * kPanelMaxColumns * K);
  });

  if (out.dtype() == mx::float16) from_float(yp, out.data<mx::float16_t>(), out.size());
  else if (out.dtype() == mx::bfloat16) from_float(yp, out.data<mx::bfloat16_t>(), out.size());
}

// x · wᵀ's shape: x's with its last dimension w's rows.
mx::Shape output_shape(const mx::array& x, const mx::array& w) {
  mx::Shape shape = x.shape();
  shape.back() = w.shape(0);
  return shape;
}

class QuantizedMatmul : public mx::UnaryPrimitive {
 public:
  QuantizedMatmul(mx::Stream stream, int group, int bits) : mx::UnaryPrimitive(stream), group_(group), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    // The inputs' buffers stay alive until the stream has run this task; the arrays are
    // captured by value so that their shapes and pointers are read on the stream's thread.
    queue_task(stream(), {out}, [x = row_contiguous(inputs[0], stream()), w = row_contiguous(inputs[1], stream()),
                      scales = row_contiguous(inputs[2], stream()), biases = row_contiguous(inputs[3], stream()), out = out,
                      group = group_, bits = bits_]() mutable { run(x, w, scales, biases, out, group, bits); });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[kernels::QuantizedMatmul] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::QuantizedMatmul"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const QuantizedMatmul&>(other);
    return group_ == o.group_ && bits_ == o.bits_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {output_shape(inputs[0], inputs[1])};
  }

 private:
  int group_;
  int bits_;
};

// The group sizes our kernels read for `bits`-bit rows of K: MLX's (32, 64, 128), and groups of
// 16 at 8 bits (kHalfGroup) where a row fills the int16 kernel's blocks of 32.
bool group_read(int group, int bits, int K) {
  return group == kHalfGroup ? bits == 8 && K % 32 == 0 : group == 32 || group == 64 || group == 128;
}

// The layouts our kernel covers; anything else goes to MLX's own op.
bool supported(const mx::array& x, const mx::array& w, const mx::array& scales, const std::optional<mx::array>& biases,
               bool transpose, int group, int bits, const std::string& mode) {
  if (mode != "affine" || !transpose || !biases || (bits != 4 && bits != 8)) return false;
  // Groups of 16: only the int16 kernel on repacked weights reads them.
  if (!group_read(group, bits, x.shape(-1)) || (group == kHalfGroup && !is_repacked(w))) return false;
  if (!float_type(x.dtype()) || !float_type(scales.dtype()) || biases->dtype() != scales.dtype()) return false;
  if (w.ndim() != 2 || scales.ndim() != 2 || x.ndim() < 1) return false;
  const int K = x.shape(-1), N = w.shape(0);
  if (w.dtype() != mx::uint32 && !(is_repacked(w) && repack_readable(N, bits))) return false;
  return K % group == 0 && w.shape(1) * 32 == K * bits && scales.shape() == biases->shape() &&
         scales.shape(0) == N && scales.shape(1) == K / group && x.size() > 0;
}

}  // namespace

void quantized_matmul_into(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
                           mx::array& out, int group, int bits) {
  run(x, w, scales, biases, out, group, bits);
}

bool quantized_matmul_covers(const mx::array& x, const mx::array& w, const mx::array& scales,
                             const std::optional<mx::array>& biases, bool transpose, int group, int bits,
                             const std::string& mode) {
  return supported(x, w, scales, biases, transpose, group, bits, mode);
}

// int16 by default where the CPU has AVX-512 VNNI: it changes outputs by the activations'
// rounding, ~1/65534 of a block's largest element, and greedy answers of the default model stay
// mlx-lm's (test/parity.test.ts). int8 (opt-in) rounds ~256x coarser, and they then differ
// (bench/RESULTS.md).
DecodeActivations decode_activations() {
#if defined(KERNELS_HAVE_VNNI)
  static const DecodeActivations mode = [] {
    auto set = [](const char* name) {
      const char* env = std::getenv(name);
      return env != nullptr && std::strcmp(env, "1") == 0;
    };
    if (set("MLX_CPU_EXACT") || !has_avx512_vnni()) return DecodeActivations::exact;
    return set("MLX_CPU_INT8") ? DecodeActivations::int8 : DecodeActivations::int16;
  }();
  return mode;
#else
  return DecodeActivations::exact;
#endif
}

void order_by_nibbles(const float* x, int M, int K, float* x_nibbles) {
  const long padded = (K + 127) / 128 * 128;
  for (int r = 0; r < M; ++r)
    for (int k = 0; k < K; ++k) x_nibbles[r * padded + (k & ~127) + 16 * (k & 7) + (k & 127) / 8] = x[static_cast<long>(r) * K + k];
}

void quantize_rows_int8(const float* x, int M, int K, int8_t* x_int8, float* steps, float* block_sums) {
  for (int r = 0; r < M; ++r) {
    for (int chunk = 0; chunk < K / kInt8Chunk; ++chunk) {
      const long at = static_cast<long>(r) * K + chunk * kInt8Chunk;
      const float* in = x + at;
      int8_t* out = x_int8 + at;
      float block_step[2];
      for (int b = 0; b < 2; ++b) {
        float largest = 0.0f;
        for (int i = 0; i < 32; ++i) largest = std::max(largest, std::fabs(in[32 * b + i]));
        block_step[b] = largest / 127.0f;
      }
      for (int i = 0; i < kInt8Chunk; ++i) {
        const int block = i / 32;
        const float inverse = block_step[block] > 0.0f ? 1.0f / block_step[block] : 0.0f;
        // Element i of the chunk goes where its weight's nibble lands (quantized_matmul.h).
        out[(i & 1) * 32 + block * 16 + (i & 31) / 2] = static_cast<int8_t>(std::nearbyint(in[i] * inverse));
      }
      for (int b = 0; b < 2; ++b) {
        int sum = 0;
        for (int i = 0; i < 32; ++i) sum += out[(i & 1) * 32 + b * 16 + i / 2];
        block_sums[at / 32 + b] = block_step[b] * static_cast<float>(sum);
      }
      // Each int32 lane (4 bytes) holds elements of one block.
      for (int lane = 0; lane < kInt8Chunk / 4; ++lane) steps[at / 4 + lane] = block_step[(lane / 4) % 2];
    }
  }
}

namespace {

// Rows [N, C] in blocks of kRepackColumns, each block's [16, C] transposed to [C, 16]; `back`
// undoes it.
mx::array interleave(const mx::array& a, bool back) {
  const int N = a.shape(0), C = a.shape(1), blocks = N / kRepackColumns;
  const mx::Shape from = back ? mx::Shape{blocks, C, kRepackColumns} : mx::Shape{blocks, kRepackColumns, C};
  return mx::reshape(mx::transpose(mx::reshape(a, from), {0, 2, 1}), {N, C});
}

}  // namespace

std::optional<QuantizedWeight> repack_for_kernels(const mx::array& w, const mx::array& scales,
                                                  const mx::array& biases, int group, int bits) {
  if (w.ndim() != 2 || w.dtype() != mx::uint32 || !repack_readable(w.shape(0), bits)) return std::nullopt;
  if (!enabled_on(mx::default_stream(mx::default_device()))) return std::nullopt;
  const int N = w.shape(0), K = w.shape(1) * 32 / bits;
  if (K % group != 0 || !group_read(group, bits, K) || !float_type(scales.dtype()) ||
      biases.dtype() != scales.dtype() || scales.shape() != mx::Shape{N, K / group} || biases.shape() != scales.shape())
    return std::nullopt;
  return QuantizedWeight{mx::view(interleave(w, false), mx::int32), interleave(scales, false), interleave(biases, false)};
}

bool reads_half_groups(int rows) {
  return repack_readable(rows, 8) && enabled_on(mx::default_stream(mx::default_device()));
}

QuantizedWeight take_quantized_rows(const QuantizedWeight& weight, const mx::array& ids) {
  const auto& [w, scales, biases] = weight;
  if (!is_repacked(w)) return {mx::take(w, ids, 0), mx::take(scales, ids, 0), mx::take(biases, ids, 0)};
  // Row n is lane n % 16 of every dword of block n / 16.
  const mx::array flat = mx::astype(mx::flatten(ids), mx::int32);
  const mx::array blocks = mx::floor_divide(flat, mx::array(kRepackColumns)),
                  lanes = mx::reshape(mx::remainder(flat, mx::array(kRepackColumns)), {-1, 1, 1});
  mx::Shape shape = ids.shape();
  auto rows = [&](const mx::array& a) {
    const int N = a.shape(0), C = a.shape(1);
    const mx::array block = mx::take(mx::reshape(a, {N / kRepackColumns, C, kRepackColumns}), blocks, 0);
    mx::Shape out = shape;
    out.push_back(C);
    return mx::reshape(mx::take_along_axis(block, mx::broadcast_to(lanes, {flat.shape(0), C, 1}), 2), out);
  };
  return {mx::view(rows(w), mx::uint32), rows(scales), rows(biases)};
}

QuantizedWeight mlx_layout(const QuantizedWeight& weight) {
  const auto& [w, scales, biases] = weight;
  if (!is_repacked(w)) return weight;
  return {mx::view(interleave(w, true), mx::uint32), interleave(scales, true), interleave(biases, true)};
}

mx::array dequantize_affine(const mx::array& w, const mx::array& scales, const std::optional<mx::array>& biases,
                            int group, int bits, std::optional<mx::Dtype> dtype) {
  if (group != kHalfGroup || bits != 8 || !biases)
    return mx::dequantize(w, scales, biases, group, bits, "affine", std::nullopt, dtype);
  // As MLX's op, refuse what is not MLX's layout (repacked weights are marked int32).
  if (w.dtype() != mx::uint32 || w.ndim() < 2 || scales.shape() != biases->shape() ||
      static_cast<int64_t>(w.shape(-1)) * 4 != static_cast<int64_t>(scales.shape(-1)) * group)
    throw std::invalid_argument("[dequantize] 8-bit weights in groups of 16 must be uint32 words in MLX's layout");
  // Each byte a code, each group's codes times its scale plus its bias, in the scales' type.
  const mx::Dtype type = dtype.value_or(scales.dtype());
  mx::Shape grouped = scales.shape();
  grouped.push_back(group);
  const mx::array codes = mx::reshape(mx::astype(mx::view(w, mx::uint8), scales.dtype()), grouped);
  const mx::array values = mx::add(mx::multiply(codes, mx::expand_dims(scales, -1)), mx::expand_dims(*biases, -1));
  return mx::astype(mx::flatten(values, -2, -1), type);
}

namespace {

// Repacked weights in MLX's layout for MLX's own op, which reads them only where our kernels were
// switched off after the model loaded (tests and benchmarks comparing both on one model): put
// back once per weight, not once per product (a copy of every weight each token), and kept while
// our kernels stay off and the weight lives. Keyed by the repacked weight's buffer.
QuantizedWeight mlx_layout_for_mlx_op(const mx::array& w, const mx::array& scales, const mx::array& biases,
                                      bool kernels_on) {
  struct Copy {
    std::weak_ptr<mx::array::Data> w, scales, biases;
    QuantizedWeight mlx;
  };
  static std::mutex mutex;
  static std::unordered_map<const void*, Copy> copies;
  std::lock_guard<std::mutex> lock(mutex);
  if (kernels_on) copies.clear();
  // Unevaluated weights have no buffer to key: their copy is part of the graph.
  if (kernels_on || !w.is_available() || !scales.is_available() || !biases.is_available())
    return mlx_layout({w, scales, biases});
  for (auto it = copies.begin(); it != copies.end();) it = it->second.w.expired() ? copies.erase(it) : std::next(it);
  const void* key = w.data<void>();
  auto found = copies.find(key);
  if (found == copies.end() || found->second.w.lock() != w.data_shared_ptr() ||
      found->second.scales.lock() != scales.data_shared_ptr() || found->second.biases.lock() != biases.data_shared_ptr()) {
    QuantizedWeight mlx = mlx_layout({w, scales, biases});
    mx::eval({std::get<0>(mlx), std::get<1>(mlx), std::get<2>(mlx)});
    found = copies.insert_or_assign(key, Copy{w.data_shared_ptr(), scales.data_shared_ptr(), biases.data_shared_ptr(), mlx}).first;
  }
  return found->second.mlx;
}

}  // namespace

mx::array quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                           const std::optional<mx::array>& biases, bool transpose, int group, int bits,
                           const std::string& mode) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  const bool ours = enabled_on(stream) && supported(x, w, scales, biases, transpose, group, bits, mode);
  const bool repacked = is_repacked(w) && biases.has_value();
  if (group == kHalfGroup && mode == "affine" && transpose && biases) {
    // MLX's op refuses groups of 16: our kernel, or the product with the weights dequantized.
    if (ours)
      return mx::array(output_shape(x, w), mx::promote_types(x.dtype(), scales.dtype()),
                       std::make_shared<QuantizedMatmul>(stream, group, bits), {x, w, scales, *biases});
    const auto [mlx_w, mlx_scales, mlx_biases] = mlx_layout({w, scales, *biases});
    return mx::matmul(x, mx::transpose(dequantize_affine(mlx_w, mlx_scales, mlx_biases, group, bits, std::nullopt)));
  }
  if (repacked && !ours) {
    const auto [mlx_w, mlx_scales, mlx_biases] = mlx_layout_for_mlx_op(w, scales, *biases, enabled_on(stream));
    return mx::quantized_matmul(x, mlx_w, mlx_scales, mlx_biases, transpose, group, bits, mode);
  }
  // MLX's op checks the arguments and gives the output's shape and type (of repacked weights, from
  // their bytes seen as its type); left unevaluated, it costs a graph node or two.
  mx::array reference =
      mx::quantized_matmul(x, repacked ? mx::view(w, mx::uint32) : w, scales, biases, transpose, group, bits, mode);
  if (!ours) return reference;
  return mx::array(reference.shape(), reference.dtype(), std::make_shared<QuantizedMatmul>(stream, group, bits),
                   {x, w, scales, *biases});
}

}  // namespace kernels
