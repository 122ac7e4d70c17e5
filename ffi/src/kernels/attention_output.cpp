// The output half of attention, x + o_proj(heads back into rows), as one primitive: composed,
// it is four graph nodes per layer (transpose, reshape, product, residual add). One task runs
// the same kernel with the same rounding, so the result is the composition's.
#include <cstring>
#include <memory>
#include <vector>

#include "bodies.h"
#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "signature_memo.h"

namespace kernels {
namespace {

struct Composition {
  mx::array rows, projected, out;
};

Composition compose(const mx::array& x, const mx::array& heads, const QuantizedLinear& o_proj) {
  const int B = heads.shape(0), L = heads.shape(2);
  mx::array rows = mx::reshape(mx::transpose(heads, {0, 2, 1, 3}), {B, L, -1});
  mx::array projected =
      quantized_matmul(rows, o_proj.weight, o_proj.scales, o_proj.biases, true, o_proj.group, o_proj.bits, "affine");
  return {rows, projected, mx::add(x, projected)};
}

class AttentionOutput : public mx::UnaryPrimitive {
 public:
  AttentionOutput(mx::Stream stream, int group, int bits) : mx::UnaryPrimitive(stream), group_(group), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    std::vector<mx::array> outputs = {out};
    dispatch_rows(stream(), inputs, outputs,
                  [group = group_, bits = bits_](const auto& in, auto& out) {
                    attention_output_into(in[0], in[1], in[2], in[3], in[4], out[0], group, bits);
                  });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[kernels::AttentionOutput] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::AttentionOutput"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const AttentionOutput&>(other);
    return group_ == o.group_ && bits_ == o.bits_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override { return {inputs[0].shape()}; }

 private:
  int group_, bits_;
};

}  // namespace

void attention_output_into(const mx::array& x, const mx::array& heads, const mx::array& w, const mx::array& scales,
                           const mx::array& biases, mx::array& out, int group, int bits) {
  const int B = heads.shape(0), H = heads.shape(1), L = heads.shape(2), D = heads.shape(3);
  // [B, H, L, D] → [B, L, H·D] (a few KB for a decode step).
  mx::array rows = scratch_array({B, L, H * D}, heads.dtype());
  const size_t item = heads.itemsize(), row = size_t(D) * item;
  const char* from = heads.data<char>();
  char* to = rows.data<char>();
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int l = 0; l < L; ++l)
        std::memcpy(to + ((size_t(b) * L + l) * H + h) * row, from + ((size_t(b) * H + h) * L + l) * row, row);
  quantized_matmul_into(rows, w, scales, biases, out, group, bits);
  add_into(x, out, out);
}

mx::array attention_output(const mx::array& x, const mx::array& heads, const QuantizedLinear& o_proj) {
  if (heads.ndim() != 4) throw std::invalid_argument("[attention_output] heads must be [batch, heads, length, dim]");
  mx::Stream stream = mx::default_stream(mx::default_device());
  // The inputs' shapes and types seen supported (what composing tells depends on nothing else).
  static SignatureMemo<bool> memo;
  Signature signature;
  signature << x << heads << o_proj.weight << o_proj.scales << o_proj.biases << o_proj.group << o_proj.bits;
  if (!enabled_on(stream) || !memo.find(signature)) {
    // Built first where not seen: it checks the arguments and gives the product's type.
    const Composition c = compose(x, heads, o_proj);
    const bool supported = heads.size() > 0 && float_type(heads.dtype()) &&
                           quantized_matmul_covers(c.rows, o_proj.weight, o_proj.scales, o_proj.biases, true,
                                                   o_proj.group, o_proj.bits, "affine") &&
                           float_type(x.dtype()) && x.dtype() == c.projected.dtype() && c.out.dtype() == x.dtype() &&
                           c.out.shape() == x.shape();
    if (!enabled_on(stream) || !supported) return c.out;
    memo.remember(signature, true);
  }
  return mx::array(x.shape(), x.dtype(), std::make_shared<AttentionOutput>(stream, o_proj.group, o_proj.bits),
                   {x, heads, o_proj.weight, o_proj.scales, o_proj.biases});
}

}  // namespace kernels
