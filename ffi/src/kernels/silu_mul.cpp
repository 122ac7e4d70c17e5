// act(gate) * up, the gated activation of SwiGLU (SiLU) and GeGLU (GELU's tanh approximation), as
// one primitive: MLX runs it as three ops (sigmoid and two multiplies; GELU's take ten), each a
// graph node and a pass over the intermediate activations. The
// inputs are read in place through their strides (e.g. two halves of a fused projection), a
// vector at a time (silu_mul_<isa>.cpp), and the work is split over the pool by elements, so a
// few long rows (a decode step's) use every thread too.
#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#include "bodies.h"
#include "isa.h"
#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "silu_mul_kernel.h"
#include "thread_pool.h"

namespace kernels {
namespace {

// Elements per task at least: fewer, and handing them to another thread costs more than
// working them out here.
constexpr int64_t kMinTask = 4096;
// Elements of a strided row gathered at a time.
constexpr int kGather = 256;

SiluMulSpan span_for(Isa isa) {
  switch (isa) {
#if defined(KERNELS_HAVE_AVX512)
    case Isa::avx512: return silu_mul_span_avx512;
#endif
#if defined(KERNELS_HAVE_AVX2)
    case Isa::avx2: return silu_mul_span_avx2;
#endif
#if defined(KERNELS_HAVE_NEON)
    case Isa::neon: return silu_mul_span_neon;
#endif
    default: return silu_mul_span_portable;
  }
}

template <typename T>
constexpr Element element_of() {
  if constexpr (std::is_same_v<T, mx::float16_t>) return Element::f16;
  else if constexpr (std::is_same_v<T, mx::bfloat16_t>) return Element::bf16;
  else return Element::f32;
}

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

// out[c0, c1) of one row: contiguous gate and up are read in place; strided ones (a transposed
// view) are gathered a block at a time, so that every element goes through the same arithmetic.
template <typename T>
void activate_part(GateActivation act, const T* g, int64_t g_step, const T* u, int64_t u_step, T* o, int64_t c0,
                   int64_t c1) {
  static const SiluMulSpan span = span_for(best_isa());
  constexpr Element type = element_of<T>();
  if (g_step == 1 && u_step == 1) return span(act, type, g + c0, u + c0, o + c0, c1 - c0);
  T gathered_g[kGather], gathered_u[kGather];
  for (int64_t c = c0; c < c1; c += kGather) {
    const int n = static_cast<int>(std::min<int64_t>(kGather, c1 - c));
    for (int i = 0; i < n; ++i) {
      gathered_g[i] = g[(c + i) * g_step];
      gathered_u[i] = u[(c + i) * u_step];
    }
    span(act, type, gathered_g, gathered_u, o + c, n);
  }
}

// out[r, i] = silu(g[r, i]) * u[r, i] over `rows` rows of `width`, where row r of g starts at
// g + g_row(r) and its elements are g_step apart (likewise u). The rows' elements, taken in
// order, are cut into one stretch per thread (at least kMinTask each, a whole number of vectors
// of any width), crossing rows where they fall.
template <typename T, typename GateRow, typename UpRow>
void activate_rows(GateActivation act, const T* g, GateRow g_row, int64_t g_step, const T* u, UpRow u_row,
                   int64_t u_step, T* o, int64_t rows, int64_t width) {
  const int64_t total = rows * width;
  const int tasks = static_cast<int>(std::clamp<int64_t>(total / kMinTask, 1, thread_count()));
  const int64_t stretch = ((total + tasks - 1) / tasks + 63) / 64 * 64;
  parallel_for(tasks, [&](int task, int) {
    const int64_t end = std::min(total, (task + 1) * stretch);
    for (int64_t at = task * stretch; at < end;) {
      const int64_t r = at / width, c0 = at % width, c1 = std::min(width, c0 + end - at);
      activate_part(act, g + g_row(r), g_step, u + u_row(r), u_step, o + r * width, c0, c1);
      at += c1 - c0;
    }
  });
}

template <typename T>
void activate(GateActivation act, const mx::array& gate, const mx::array& up, mx::array& out) {
  const int64_t width = out.shape(-1);
  activate_rows(
      act, gate.data<T>(), [&](int64_t r) { return row_start(gate, r); }, gate.strides().back(), up.data<T>(),
      [&](int64_t r) { return row_start(up, r); }, up.strides().back(), out.data<T>(),
      static_cast<int64_t>(out.size()) / width, width);
}

// The gate's half and the up half of each row of `halves` (row-contiguous), as the fused MLP's
// product leaves them.
template <typename T>
void activate_halves(const mx::array& halves, mx::array& out) {
  const int64_t width = out.shape(-1);
  const auto row = [width](int64_t r) { return r * 2 * width; };
  const T* g = halves.data<T>();
  activate_rows(GateActivation::silu, g, row, 1, g + width, row, 1, out.data<T>(),
                static_cast<int64_t>(out.size()) / width, width);
}

class GatedActivation : public mx::UnaryPrimitive {
 public:
  GatedActivation(mx::Stream stream, GateActivation act) : mx::UnaryPrimitive(stream), act_(act) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : inputs) encoder.set_input_array(in);
    encoder.set_output_array(out);
    queue_task(stream(), {out}, [act = act_, gate = inputs[0], up = inputs[1], out = out]() mutable {
      if (out.dtype() == mx::float16) activate<mx::float16_t>(act, gate, up, out);
      else if (out.dtype() == mx::bfloat16) activate<mx::bfloat16_t>(act, gate, up, out);
      else activate<float>(act, gate, up, out);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[kernels::GatedActivation] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::GatedActivation"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    return static_cast<const GatedActivation&>(other).act_ == act_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override { return {inputs[0].shape()}; }

 private:
  GateActivation act_;
};

bool supported_pair(const mx::array& gate, const mx::array& up) {
  const mx::Dtype t = gate.dtype();
  return (t == mx::float32 || t == mx::float16 || t == mx::bfloat16) && up.dtype() == t && up.shape() == gate.shape() &&
         gate.size() > 0;
}

}  // namespace

void silu_mul_halves_into(const mx::array& halves, mx::array& out) {
  if (out.dtype() == mx::float16) activate_halves<mx::float16_t>(halves, out);
  else if (out.dtype() == mx::bfloat16) activate_halves<mx::bfloat16_t>(halves, out);
  else activate_halves<float>(halves, out);
}

mx::array silu_mul(const mx::array& gate, const mx::array& up) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  if (!enabled_on(stream) || !supported_pair(gate, up)) return mx::multiply(mx::multiply(gate, mx::sigmoid(gate)), up);
  return mx::array(gate.shape(), gate.dtype(), std::make_shared<GatedActivation>(stream, GateActivation::silu),
                   {gate, up});
}

mx::array gelu_approx_mul(const mx::array& gate, const mx::array& up) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  if (!enabled_on(stream) || !supported_pair(gate, up)) {
    // mlx.nn.gelu_approx's ops, in its order: 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))), scalars in x's type.
    const auto scalar = [&](double v) { return mx::array(v, gate.dtype()); };
    const mx::array cubic = mx::add(gate, mx::multiply(scalar(0.044715), mx::power(gate, scalar(3))));
    const mx::array tanh = mx::tanh(mx::multiply(scalar(std::sqrt(2 / M_PI)), cubic));
    return mx::multiply(mx::multiply(mx::multiply(gate, scalar(0.5)), mx::add(scalar(1), tanh)), up);
  }
  return mx::array(gate.shape(), gate.dtype(), std::make_shared<GatedActivation>(stream, GateActivation::gelu_tanh),
                   {gate, up});
}

}  // namespace kernels
