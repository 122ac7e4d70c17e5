// silu(gate) * up, the SwiGLU activation, as one primitive: MLX runs it as three ops (sigmoid
// and two multiplies), each a graph node and a pass over the intermediate activations. The
// inputs are read in place through their strides (e.g. two halves of a fused projection).
#include <cmath>
#include <memory>
#include <vector>

#include "kernels.h"
#include "bodies.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "thread_pool.h"

namespace kernels {
namespace {

// Rows per task: enough work to be worth waking a thread.
constexpr int kRowsPerTask = 16;

// Where row r (over all dimensions but the last) starts in a, in elements: gate and up are
// often column slices of one fused projection, so rows are read through the strides.
int64_t row_start(const mx::array& a, int64_t r) {
  int64_t at = 0;
  for (int d = static_cast<int>(a.ndim()) - 2; d >= 0; --d) {
    at += (r % a.shape(d)) * a.strides()[d];
    r /= a.shape(d);
  }
  return at;
}

// out[r, i] = silu(g[r, i]) * u[r, i] over `rows` rows of `width`, where row r of g starts at
// g + g_row(r) and its elements are g_step apart (likewise u).
template <typename T, typename GateRow, typename UpRow>
void activate_rows(const T* g, GateRow g_row, int64_t g_step, const T* u, UpRow u_row, int64_t u_step, T* o, int rows,
                   int width) {
  parallel_for((rows + kRowsPerTask - 1) / kRowsPerTask, [&](int task, int) {
    for (int r = task * kRowsPerTask; r < std::min(rows, (task + 1) * kRowsPerTask); ++r) {
      const T* gr = g + g_row(r);
      const T* ur = u + u_row(r);
      T* orow = o + size_t(r) * width;
      for (int i = 0; i < width; ++i) {
        const float x = static_cast<float>(gr[i * g_step]);
        orow[i] = static_cast<T>(x / (1.0f + std::exp(-x)) * static_cast<float>(ur[i * u_step]));
      }
    }
  });
}

template <typename T>
void activate(const mx::array& gate, const mx::array& up, mx::array& out) {
  const int width = out.shape(-1);
  activate_rows(
      gate.data<T>(), [&](int64_t r) { return row_start(gate, r); }, gate.strides().back(), up.data<T>(),
      [&](int64_t r) { return row_start(up, r); }, up.strides().back(), out.data<T>(),
      static_cast<int>(out.size() / width), width);
}

// The gate's half and the up half of each row of `halves` (row-contiguous), as the fused MLP's
// product leaves them.
template <typename T>
void activate_halves(const mx::array& halves, mx::array& out) {
  const int width = out.shape(-1);
  const auto row = [width](int64_t r) { return r * 2 * width; };
  const T* g = halves.data<T>();
  activate_rows(g, row, 1, g + width, row, 1, out.data<T>(), static_cast<int>(out.size() / width), width);
}

class SiluMul : public mx::UnaryPrimitive {
 public:
  explicit SiluMul(mx::Stream stream) : mx::UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    queue_task(stream(), {out}, [gate = inputs[0], up = inputs[1], out = out]() mutable {
      if (out.dtype() == mx::float16) activate<mx::float16_t>(gate, up, out);
      else if (out.dtype() == mx::bfloat16) activate<mx::bfloat16_t>(gate, up, out);
      else activate<float>(gate, up, out);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[kernels::SiluMul] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::SiluMul"; }

  bool is_equivalent(const mx::Primitive&) const override { return true; }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override { return {inputs[0].shape()}; }
};

}  // namespace

void silu_mul_halves_into(const mx::array& halves, mx::array& out) {
  if (out.dtype() == mx::float16) activate_halves<mx::float16_t>(halves, out);
  else if (out.dtype() == mx::bfloat16) activate_halves<mx::bfloat16_t>(halves, out);
  else activate_halves<float>(halves, out);
}

mx::array silu_mul(const mx::array& gate, const mx::array& up) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  const mx::Dtype t = gate.dtype();
  const bool supported = (t == mx::float32 || t == mx::float16 || t == mx::bfloat16) && up.dtype() == t &&
                         up.shape() == gate.shape() && gate.size() > 0;
  if (!enabled_on(stream) || !supported) return mx::multiply(mx::multiply(gate, mx::sigmoid(gate)), up);
  return mx::array(gate.shape(), t, std::make_shared<SiluMul>(stream), {gate, up});
}

}  // namespace kernels
