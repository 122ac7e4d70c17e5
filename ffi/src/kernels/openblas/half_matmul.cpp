// Matmuls with bfloat16/float16 operands (unquantized half-precision weights): MLX's CPU kernel
// for them ran at ~1 GFLOP/s here (bench/cpu-ops.ts).
// A few rows (decode steps) against a transposed weight (each output's weights contiguous): the
// half-rows kernel reads the weights in place, widening them in registers (half_rows_<isa>.cpp).
// Otherwise each task converts its block of the weight's columns to fp32 while they are in cache
// and multiplies with OpenBLAS (fp32 accumulation). The activations are converted once.
#include <algorithm>
#include <memory>
#include <vector>

#include "../half_rows_kernel.h"
#include "../isa.h"
#include "../kernels.h"
#include "../quantized_matmul.h"
#include "../thread_pool.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "openblas.h"

namespace kernels {
namespace {

// Output columns per task: a converted block of 64 x K fp32 stays in L2 for typical K.
constexpr int kColumnsPerTask = 64;
// Output columns per task of the half-rows kernel: its weights are read once, straight from memory.
constexpr int kRowsColumnsPerTask = 128;

HalfKernels half_kernels_for(Isa isa) {
  switch (isa) {
#if defined(KERNELS_HAVE_AVX512)
    case Isa::avx512: return {half_rows_avx512, half_widen_avx512};
#endif
#if defined(KERNELS_HAVE_AVX2)
    case Isa::avx2: return {half_rows_avx2, half_widen_avx2};
#endif
#if defined(KERNELS_HAVE_NEON)
    case Isa::neon: return {half_rows_neon, half_widen_neon};
#endif
    default: return {half_rows_portable, half_widen_portable};
  }
}

const HalfKernels& half_kernels() {
  static const HalfKernels kernels = half_kernels_for(best_isa());
  return kernels;
}

bool half_type(mx::Dtype t) { return t == mx::float16 || t == mx::bfloat16; }

float element(const mx::array& a, int64_t at) {
  if (a.dtype() == mx::float16) return static_cast<float>(a.data<mx::float16_t>()[at]);
  if (a.dtype() == mx::bfloat16) return static_cast<float>(a.data<mx::bfloat16_t>()[at]);
  return a.data<float>()[at];
}

// c [M, N] = a32 [M, K] · b [K, N] by blocks of b's columns converted to fp32 and OpenBLAS.
void multiply_blocks(const std::vector<float>& a32, const mx::array& b, float* c, int M, int K, int N) {
  const int64_t row_stride = b.strides()[0], column_stride = b.strides()[1];
  parallel_for((N + kColumnsPerTask - 1) / kColumnsPerTask, [&](int task, int) {
    const int n0 = task * kColumnsPerTask, count = std::min(kColumnsPerTask, N - n0);
    thread_local std::vector<float> block;
    block.resize(size_t(count) * K);
    // Column n of b as row n - n0 of the block: [count, K], used transposed by the product.
    auto convert = [&](auto* values) {
      for (int n = 0; n < count; ++n) {
        const auto* column = values + int64_t(n0 + n) * column_stride;
        for (int k = 0; k < K; ++k) block[size_t(n) * K + k] = static_cast<float>(column[k * row_stride]);
      }
    };
    if (row_stride == 1 && half_type(b.dtype())) {
      // A transposed weight: each column is a contiguous row of it, widened a vector at a time.
      const Element type = b.dtype() == mx::float16 ? Element::f16 : Element::bf16;
      const char* base = static_cast<const char*>(b.data<void>());
      for (int n = 0; n < count; ++n)
        half_kernels().widen(type, base + int64_t(n0 + n) * column_stride * b.itemsize(), K, &block[size_t(n) * K]);
    } else if (b.dtype() == mx::float16) convert(b.data<mx::float16_t>());
    else if (b.dtype() == mx::bfloat16) convert(b.data<mx::bfloat16_t>());
    else convert(b.data<float>());
    openblas_sgemm(CblasNoTrans, CblasTrans, M, count, K, 1.0f, a32.data(), K, block.data(), K, 0.0f, c + n0, N);
  });
}

// out [M, N] = a [M, K] · b [K, N]; b is read through its strides (a transposed weight is a view).
void multiply(const mx::array& a, const mx::array& b, mx::array& out) {
  const int M = a.shape(0), K = a.shape(1), N = b.shape(1);
  std::vector<float> a32(size_t(M) * K);
  for (size_t i = 0; i < a32.size(); ++i) a32[i] = element(a, int64_t(i));
  const bool direct = out.dtype() == mx::float32;
  std::vector<float> c32(direct ? 0 : size_t(M) * N);
  float* c = direct ? out.data<float>() : c32.data();
  const int64_t row_stride = b.strides()[0], column_stride = b.strides()[1];
  if (M <= kDirectMaxRows && row_stride == 1 && half_type(b.dtype())) {
    const HalfRows rows = half_kernels().rows;
    const Element type = b.dtype() == mx::float16 ? Element::f16 : Element::bf16;
    const void* w = b.data<void>();
    parallel_for((N + kRowsColumnsPerTask - 1) / kRowsColumnsPerTask, [&](int task, int) {
      const int n0 = task * kRowsColumnsPerTask;
      rows(type, a32.data(), M, K, w, column_stride, n0, std::min(N, n0 + kRowsColumnsPerTask), c, N);
    });
  } else {
    multiply_blocks(a32, b, c, M, K, N);
  }
  if (out.dtype() == mx::float16) std::copy(c32.begin(), c32.end(), out.data<mx::float16_t>());
  else if (out.dtype() == mx::bfloat16) std::copy(c32.begin(), c32.end(), out.data<mx::bfloat16_t>());
}

class HalfMatmul : public mx::UnaryPrimitive {
 public:
  explicit HalfMatmul(mx::Stream stream) : mx::UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    encoder.dispatch([a = inputs[0], b = inputs[1], out = out]() mutable { multiply(a, b, out); });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[kernels::HalfMatmul] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::HalfMatmul"; }

  bool is_equivalent(const mx::Primitive&) const override { return true; }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {{inputs[0].shape(0), inputs[1].shape(1)}};
  }
};

}  // namespace

mx::array matmul(const mx::array& a, const mx::array& b) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  const bool supported = a.ndim() >= 2 && b.ndim() == 2 && (half_type(a.dtype()) || half_type(b.dtype())) &&
                         float_type(a.dtype()) && float_type(b.dtype()) && a.shape(-1) == b.shape(0) && a.size() > 0 &&
                         b.size() > 0;
  if (!enabled_on(stream) || !supported) return mx::matmul(a, b);
  // Leading dimensions of a fold into rows: [..., M, K] → [rows, K].
  mx::Shape shape = a.shape();
  shape.back() = b.shape(1);
  const mx::array rows = mx::reshape(mx::contiguous(a), {static_cast<int>(a.size() / a.shape(-1)), a.shape(-1)});
  const mx::array out({rows.shape(0), b.shape(1)}, mx::promote_types(a.dtype(), b.dtype()),
                      std::make_shared<HalfMatmul>(stream), {rows, b});
  return mx::reshape(out, shape);
}

}  // namespace kernels
