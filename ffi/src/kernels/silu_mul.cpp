// silu(gate) * up, the SwiGLU activation, as one primitive: MLX runs it as three ops (sigmoid
// and two multiplies), each a graph node and a pass over the intermediate activations.
#include <cmath>
#include <memory>
#include <vector>

#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "thread_pool.h"

namespace kernels {
namespace {

// Elements per task: enough work to be worth waking a thread.
constexpr size_t kPerTask = 1 << 15;

template <typename T>
void activate(const T* gate, const T* up, T* out, size_t n) {
  parallel_for(static_cast<int>((n + kPerTask - 1) / kPerTask), [&](int task, int) {
    const size_t end = std::min(n, (task + 1) * kPerTask);
    for (size_t i = task * kPerTask; i < end; ++i) {
      const float g = static_cast<float>(gate[i]);
      out[i] = static_cast<T>(g / (1.0f + std::exp(-g)) * static_cast<float>(up[i]));
    }
  });
}

class SiluMul : public mx::UnaryPrimitive {
 public:
  explicit SiluMul(mx::Stream stream) : mx::UnaryPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    encoder.dispatch([gate = inputs[0], up = inputs[1], out = out]() mutable {
      if (out.dtype() == mx::float16) activate(gate.data<mx::float16_t>(), up.data<mx::float16_t>(), out.data<mx::float16_t>(), out.size());
      else if (out.dtype() == mx::bfloat16) activate(gate.data<mx::bfloat16_t>(), up.data<mx::bfloat16_t>(), out.data<mx::bfloat16_t>(), out.size());
      else activate(gate.data<float>(), up.data<float>(), out.data<float>(), out.size());
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

mx::array silu_mul(const mx::array& gate, const mx::array& up) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  const mx::Dtype t = gate.dtype();
  const bool supported = (t == mx::float32 || t == mx::float16 || t == mx::bfloat16) && up.dtype() == t &&
                         up.shape() == gate.shape() && gate.size() > 0;
  if (!enabled_on(stream) || !supported) return mx::multiply(mx::multiply(gate, mx::sigmoid(gate)), up);
  return mx::array(gate.shape(), t, std::make_shared<SiluMul>(stream), {mx::contiguous(gate), mx::contiguous(up)});
}

}  // namespace kernels
