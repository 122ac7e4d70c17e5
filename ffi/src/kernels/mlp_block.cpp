// The MLP half of a pre-norm block, h + down(silu(gate) · up) with [gate, up] =
// gate_up(rms_norm(h)), as one primitive. Composed, it is seven graph nodes per layer (norm,
// product, two slices, SiLU·mul, product, add), each evaluated on its own and handed to the
// stream's thread; here one task runs the same kernels back to back, with the same arithmetic
// and the same rounding of every intermediate, so the result is the composition's. The same
// primitive may start from attention's heads (attention_output_mlp), or from the attention's
// own inputs (our attention on a float or a quantized cache), computing the heads first.
#include <memory>
#include <string>
#include <vector>

#include "bodies.h"
#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "signature_memo.h"

namespace kernels {
namespace {

// The composition's intermediates, as our kernels (or MLX's ops) build them.
struct Composition {
  mx::array normed, gate_up, activated, projected, out;
};

Composition compose(const mx::array& h, const mx::array& norm_weight, float eps, const QuantizedLinear& gate_up,
                    const QuantizedLinear& down) {
  mx::array normed = rms_norm(h, norm_weight, eps);
  mx::array both = quantized_matmul(normed, gate_up.weight, gate_up.scales, gate_up.biases, true, gate_up.group,
                                    gate_up.bits, "affine");
  const int width = both.shape(-1) / 2;
  mx::Shape start(both.ndim(), 0), middle = both.shape();
  middle.back() = width;
  mx::Shape up_start = start;
  up_start.back() = width;
  mx::array activated = silu_mul(mx::slice(both, start, middle), mx::slice(both, up_start, both.shape()));
  mx::array projected =
      quantized_matmul(activated, down.weight, down.scales, down.biases, true, down.group, down.bits, "affine");
  mx::array out = mx::add(h, projected);
  return {normed, both, activated, projected, out};
}

struct MlpSpec {
  float eps;
  int gate_up_group, gate_up_bits, down_group, down_bits;
  mx::Dtype normed, hidden;  // the norm's output type; the products' and the activation's
  // attention_output_mlp: the block's input h = x + o_proj(heads) is computed first, in the task;
  // with `attention`, the heads too, from the attention's own inputs: a float cache's
  // (attention_spec), or a quantized one's (`quantized`, quantized_spec).
  bool attention_output = false;
  int o_group = 0, o_bits = 0;
  bool attention = false, quantized = false;
  AttentionSpec attention_spec{};
  QuantizedAttentionSpec quantized_spec{};

  bool operator==(const MlpSpec&) const = default;
};

mx::Shape with_last(mx::Shape shape, int last) {
  shape.back() = last;
  return shape;
}

// inputs: h, the norm's weight, gate_up's weight, scales, biases, down's weight, scales, biases.
void run_mlp(const std::vector<mx::array>& in, mx::array& out, const MlpSpec& spec) {
  const mx::array& h = in[0];
  mx::array normed = scratch_array(h.shape(), spec.normed);
  rms_norm_into(h, &in[1], normed, spec.eps);
  mx::array both = scratch_array(with_last(h.shape(), in[2].shape(0)), spec.hidden);
  quantized_matmul_into(normed, in[2], in[3], in[4], both, spec.gate_up_group, spec.gate_up_bits);
  mx::array activated = scratch_array(with_last(h.shape(), in[2].shape(0) / 2), spec.hidden);
  silu_mul_halves_into(both, activated);
  // The down product lands in out, then h is added to it in place (h, the product and out
  // share one type: see mlp_block).
  quantized_matmul_into(activated, in[5], in[6], in[7], out, spec.down_group, spec.down_bits);
  add_into(h, out, out);
}

// With spec.attention_output, the inputs are x, o_proj's weight, scales and biases, then run_mlp's
// but h (the norm's weight, gate_up's three, down's three), then from kHeads the heads, or with
// spec.attention the attention's inputs: queries and sinks (row-contiguous), then the rest in the
// attention primitive's order (keys, values and mask; quantized, the keys' three parts, the
// values' three and the keys' float tail before the mask), read through their strides.
constexpr size_t kHeads = 11;

bool has_sinks(const MlpSpec& spec) {
  return spec.quantized ? spec.quantized_spec.has_sinks : spec.attention_spec.has_sinks;
}

// The heads [B, Hq, Lq, Dv] (float32) from the attention's inputs at kHeads.
mx::array attend(const std::vector<mx::array>& in, const MlpSpec& spec) {
  const mx::array& q = in[kHeads];
  const bool sinks = has_sinks(spec);
  // In the attention primitive's order: q, the rest, then the sinks.
  std::vector<mx::array> attention = {q};
  attention.insert(attention.end(), in.begin() + kHeads + (sinks ? 2 : 1), in.end());
  if (sinks) attention.push_back(in[kHeads + 1]);
  if (spec.quantized) {
    const int width = attention[4].shape(3) * 32 / spec.quantized_spec.bits;  // the values' codes
    mx::array heads = scratch_array({q.shape(0), q.shape(1), q.shape(2), width}, mx::float32);
    quantized_attention_into(attention, heads, spec.quantized_spec);
    return heads;
  }
  mx::array heads = scratch_array({q.shape(0), q.shape(1), q.shape(2), attention[2].shape(3)}, mx::float32);
  attention_into(attention, heads, spec.attention_spec);
  return heads;
}

void run(const std::vector<mx::array>& in, mx::array& out, const MlpSpec& spec) {
  if (!spec.attention_output) return run_mlp(in, out, spec);
  const mx::array heads = spec.attention ? attend(in, spec) : in[kHeads];
  mx::array h = scratch_array(in[0].shape(), in[0].dtype());
  attention_output_into(in[0], heads, in[1], in[2], in[3], h, spec.o_group, spec.o_bits);
  std::vector<mx::array> mlp_inputs = {h};
  mlp_inputs.insert(mlp_inputs.end(), in.begin() + 4, in.begin() + kHeads);
  run_mlp(mlp_inputs, out, spec);
}

class MlpBlock : public mx::UnaryPrimitive {
 public:
  MlpBlock(mx::Stream stream, MlpSpec spec) : mx::UnaryPrimitive(stream), spec_(spec) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    std::vector<mx::array> outputs = {out};
    // The attention's keys, values and mask are read in place (a cache's views).
    const size_t contiguous = spec_.attention ? kHeads + (has_sinks(spec_) ? 2 : 1) : inputs.size();
    dispatch_rows(
        stream(), inputs, outputs, [spec = spec_](const auto& in, auto& out) { run(in, out[0], spec); }, contiguous);
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[kernels::MlpBlock] CPU only: built for CPU streams");
  }

  const char* name() const override {
    return spec_.quantized          ? "kernels::QuantizedAttentionMlp"
           : spec_.attention        ? "kernels::AttentionMlp"
           : spec_.attention_output ? "kernels::AttentionOutputMlp"
                                    : "kernels::MlpBlock";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    return spec_ == static_cast<const MlpBlock&>(other).spec_;
  }

  const MlpSpec& spec() const { return spec_; }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override { return {inputs[0].shape()}; }

 private:
  MlpSpec spec_;
};

template <typename T>
void add(const mx::array& a, const mx::array& b, mx::array& out) {
  const T *x = a.data<T>(), *y = b.data<T>();
  T* o = out.data<T>();
  for (size_t i = 0; i < out.size(); ++i) o[i] = static_cast<T>(static_cast<float>(x[i]) + static_cast<float>(y[i]));
}

}  // namespace

void add_into(const mx::array& a, const mx::array& b, mx::array& out) {
  if (out.dtype() == mx::float16) add<mx::float16_t>(a, b, out);
  else if (out.dtype() == mx::bfloat16) add<mx::bfloat16_t>(a, b, out);
  else add<float>(a, b, out);
}

mx::array mlp_block(const mx::array& h, const mx::array& norm_weight, float eps, const QuantizedLinear& gate_up,
                    const QuantizedLinear& down) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  // The norm's output type and the products', for the inputs' shapes and types seen supported.
  struct Types {
    mx::Dtype normed, hidden;
  };
  static SignatureMemo<Types> memo;
  Signature signature;
  signature << h << norm_weight << gate_up.weight << gate_up.scales << gate_up.biases << gate_up.group << gate_up.bits
            << down.weight << down.scales << down.biases << down.group << down.bits;
  std::optional<Types> types = enabled_on(stream) ? memo.find(signature) : std::nullopt;
  if (!types) {
    // Built first where not seen: it checks the arguments and gives every intermediate's type.
    const Composition c = compose(h, norm_weight, eps, gate_up, down);
    const bool supported =
        h.ndim() >= 1 && h.size() > 0 && float_type(h.dtype()) && norm_weight.ndim() == 1 &&
        norm_weight.shape(0) == h.shape(-1) && float_type(norm_weight.dtype()) && gate_up.weight.shape(0) % 2 == 0 &&
        quantized_matmul_covers(c.normed, gate_up.weight, gate_up.scales, gate_up.biases, true, gate_up.group,
                                gate_up.bits, "affine") &&
        quantized_matmul_covers(c.activated, down.weight, down.scales, down.biases, true, down.group, down.bits,
                                "affine") &&
        c.activated.dtype() == c.gate_up.dtype() && c.projected.dtype() == h.dtype() && c.out.dtype() == h.dtype() &&
        c.out.shape() == h.shape();
    if (!enabled_on(stream) || !supported) return c.out;
    types = Types{c.normed.dtype(), c.gate_up.dtype()};
    memo.remember(signature, *types);
  }
  const MlpSpec spec{eps, gate_up.group, gate_up.bits, down.group, down.bits, types->normed, types->hidden};
  return mx::array(h.shape(), h.dtype(), std::make_shared<MlpBlock>(stream, spec),
                   {h, norm_weight, gate_up.weight, gate_up.scales, gate_up.biases, down.weight, down.scales,
                    down.biases});
}

mx::array attention_output_mlp(const mx::array& x, const mx::array& heads, const QuantizedLinear& o_proj,
                               const mx::array& norm_weight, float eps, const QuantizedLinear& gate_up,
                               const QuantizedLinear& down) {
  mx::array h = attention_output(x, heads, o_proj);
  mx::array out = mlp_block(h, norm_weight, eps, gate_up, down);
  // Both halves ours (each decides alone where it applies): one node runs both tasks.
  const bool ours = h.has_primitive() && std::string(h.primitive().name()) == "kernels::AttentionOutput" &&
                    out.has_primitive() && out.inputs()[0].id() == h.id();
  auto* mlp = ours ? dynamic_cast<MlpBlock*>(&out.primitive()) : nullptr;
  if (!mlp) return out;
  MlpSpec spec = mlp->spec();
  spec.attention_output = true;
  spec.o_group = o_proj.group;
  spec.o_bits = o_proj.bits;
  // x and o_proj's three (the heads go last), then the MLP's but h.
  const std::vector<mx::array>& output_half = h.inputs();
  std::vector<mx::array> inputs = {output_half[0], output_half[2], output_half[3], output_half[4]};
  inputs.insert(inputs.end(), out.inputs().begin() + 1, out.inputs().end());
  // Heads that our attention will compute: it runs in the same task (a node fewer a layer), from
  // its own inputs, in run()'s order.
  const std::optional<AttentionSpec> attention = attention_spec(heads);
  const std::optional<QuantizedAttentionSpec> quantized = quantized_attention_spec(heads);
  if (attention || quantized) {
    spec.attention = true;
    if (attention) spec.attention_spec = *attention;
    spec.quantized = quantized.has_value();
    if (quantized) spec.quantized_spec = *quantized;
    // q, the rest (keys, values, [tail], [mask]), [sinks]: q and the sinks first (row-contiguous).
    const std::vector<mx::array>& a = heads.inputs();
    const bool sinks = has_sinks(spec);
    inputs.push_back(a[0]);
    if (sinks) inputs.push_back(a.back());
    inputs.insert(inputs.end(), a.begin() + 1, a.end() - (sinks ? 1 : 0));
  } else {
    inputs.push_back(output_half[1]);
  }
  return mx::array(x.shape(), x.dtype(), std::make_shared<MlpBlock>(mlp->stream(), spec), std::move(inputs));
}

}  // namespace kernels
