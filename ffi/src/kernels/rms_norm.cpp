// RMSNorm as one primitive. On the CPU, MLX evaluates fast::rms_norm as its composition (cast,
// square, mean, add, rsqrt, multiply, cast, multiply), each a graph node costing ~20 µs to
// evaluate here: two norms per layer made that a visible share of a decode step. Each row is
// worked a vector at a time (rms_norm_<isa>.cpp): one element at a time, in a prompt's rows, the
// norms had grown to ~5% of its time.
#include <algorithm>
#include <memory>
#include <vector>

#include "bodies.h"
#include "isa.h"
#include "kernels.h"
#include "rms_norm_kernel.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "thread_pool.h"

namespace kernels {
namespace {

// Rows per task: enough work to be worth waking a thread.
constexpr int kRowsPerTask = 64;

RmsNormRows rows_for(Isa isa) {
  switch (isa) {
#if defined(KERNELS_HAVE_AVX512)
    case Isa::avx512: return rms_norm_rows_avx512;
#endif
#if defined(KERNELS_HAVE_AVX2)
    case Isa::avx2: return rms_norm_rows_avx2;
#endif
#if defined(KERNELS_HAVE_NEON)
    case Isa::neon: return rms_norm_rows_neon;
#endif
    default: return rms_norm_rows_portable;
  }
}

}  // namespace

void rms_norm_into(const mx::array& x, const mx::array* weight, mx::array& out, float eps) {
  static const RmsNormRows normalize = rows_for(best_isa());
  const int dim = x.shape(-1);
  const int64_t rows = static_cast<int64_t>(x.size() / dim);
  const NormTypes types{element_of(x.dtype()), weight ? element_of(weight->dtype()) : Element::f32,
                        element_of(out.dtype()), weight != nullptr};
  const char* in = static_cast<const char*>(x.data<void>());
  char* dst = static_cast<char*>(out.data<void>());
  const size_t in_row = x.itemsize() * size_t(dim), out_row = out.itemsize() * size_t(dim);
  const void* w = weight ? weight->data<void>() : nullptr;
  parallel_for(static_cast<int>((rows + kRowsPerTask - 1) / kRowsPerTask), [&](int task, int) {
    const int64_t first = int64_t(task) * kRowsPerTask;
    normalize(types, in + first * in_row, w, dst + first * out_row, std::min<int64_t>(kRowsPerTask, rows - first), dim,
              eps);
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
