// RMSNorm as one primitive. On the CPU, MLX evaluates fast::rms_norm as its composition (cast,
// square, mean, add, rsqrt, multiply, cast, multiply), each a graph node costing ~20 µs to
// evaluate here: two norms per layer made that a visible share of a decode step.
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
constexpr int kRowsPerTask = 64;

template <typename X, typename W, typename Out>
void normalize(const X* x, const W* weight, Out* out, int rows, int dim, float eps) {
  parallel_for((rows + kRowsPerTask - 1) / kRowsPerTask, [&](int task, int) {
    const int end = std::min(rows, (task + 1) * kRowsPerTask);
    for (int r = task * kRowsPerTask; r < end; ++r) {
      const X* in = x + size_t(r) * dim;
      float squares = 0;
      for (int d = 0; d < dim; ++d) squares += static_cast<float>(in[d]) * static_cast<float>(in[d]);
      const float inv = 1.0f / std::sqrt(squares / dim + eps);
      Out* o = out + size_t(r) * dim;
      for (int d = 0; d < dim; ++d) {
        const float w = weight ? static_cast<float>(weight[d]) : 1.0f;
        o[d] = static_cast<Out>(static_cast<float>(in[d]) * inv * w);
      }
    }
  });
}

// One float type from a dtype, for the templated loop.
template <typename F>
void with_type(mx::Dtype t, F&& f) {
  if (t == mx::float16) f(mx::float16_t{});
  else if (t == mx::bfloat16) f(mx::bfloat16_t{});
  else f(float{});
}

}  // namespace

void rms_norm_into(const mx::array& x, const mx::array* weight, mx::array& out, float eps) {
  const int dim = x.shape(-1);
  const int rows = static_cast<int>(x.size() / dim);
  with_type(x.dtype(), [&](auto xt) {
    using X = decltype(xt);
    with_type(out.dtype(), [&](auto ot) {
      using Out = decltype(ot);
      if (!weight) {
        normalize<X, float, Out>(x.data<X>(), nullptr, out.data<Out>(), rows, dim, eps);
        return;
      }
      with_type(weight->dtype(), [&](auto wt) {
        using W = decltype(wt);
        normalize<X, W, Out>(x.data<X>(), weight->data<W>(), out.data<Out>(), rows, dim, eps);
      });
    });
  });
}

namespace {

class RmsNorm : public mx::UnaryPrimitive {
 public:
  RmsNorm(mx::Stream stream, float eps) : mx::UnaryPrimitive(stream), eps_(eps) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    std::vector<mx::array> outputs = {out};
    dispatch_rows(stream(), inputs, outputs, [eps = eps_](const auto& in, auto& out) {
      rms_norm_into(in[0], in.size() > 1 ? &in[1] : nullptr, out[0], eps);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[kernels::RmsNorm] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::RmsNorm"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return eps_ == static_cast<const RmsNorm&>(other).eps_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override { return {inputs[0].shape()}; }

 private:
  float eps_;
};

}  // namespace

mx::array rms_norm(const mx::array& x, const std::optional<mx::array>& weight, float eps) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  const bool supported = x.ndim() >= 1 && x.size() > 0 && float_type(x.dtype()) &&
                         (!weight || (weight->ndim() == 1 && weight->shape(0) == x.shape(-1) && float_type(weight->dtype())));
  if (!enabled_on(stream) || !supported) return mx::fast::rms_norm(x, weight, eps);
  const mx::Dtype out_type = weight ? mx::promote_types(x.dtype(), weight->dtype()) : x.dtype();
  std::vector<mx::array> inputs = {x};
  if (weight) inputs.push_back(*weight);
  return mx::array(x.shape(), out_type, std::make_shared<RmsNorm>(stream, eps), std::move(inputs));
}

}  // namespace kernels
