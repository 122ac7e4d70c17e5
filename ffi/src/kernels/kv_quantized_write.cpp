// The QuantizedCacheWrite primitive: a quantized KV cache's decode step written in one graph
// node. Composed, the step is about ten nodes a layer (the values' quantize, its three
// slice_updates and the three slices of the valid part attention reads; for keys per channel
// the float tail's astype and concatenate and the three slices of the coded groups); MLX runs
// each node's eval, allocation and dispatch, ~3-4 ms of CPU a step over 30 layers (bench/RESULTS.md,
// "Quantized attention on the codes"). Here the new value rows are quantized as mx::quantize does
// (bit for bit: the same float arithmetic per group) straight into the cache's buffers, in place
// where the cache holds the only reference to them, and the new keys join the tail. Where the
// keys and values come from our fused attention input, its task writes the same step
// (quantize_rows_into, append_rows_into; attention_input.cpp) and this node is not built.
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "bodies.h"
#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"

namespace kernels {
namespace {

float load(const char* p, mx::Dtype t) {
  if (t == mx::float32) return *reinterpret_cast<const float*>(p);
  if (t == mx::float16) return float(*reinterpret_cast<const mx::float16_t*>(p));
  return float(*reinterpret_cast<const mx::bfloat16_t*>(p));
}

// As MLX's astype rounds a float into `t`.
void store(char* p, mx::Dtype t, float value) {
  if (t == mx::float32)
    *reinterpret_cast<float*>(p) = value;
  else if (t == mx::float16)
    *reinterpret_cast<mx::float16_t*>(p) = mx::float16_t(value);
  else
    *reinterpret_cast<mx::bfloat16_t*>(p) = mx::bfloat16_t(value);
}

// One row of `dim` values (type `t`, contiguous) into codes (dim·bits/32 words) and a scale and
// bias per `group` values, stored in `t`: MLX's affine quantization (mx::quantize), the same
// operations in the same order, so the same bits. The bias is the group's edge value nearer to
// -∞ or +∞ by magnitude, the scale the step that maps it onto a whole code.
void quantize_row(const char* row, mx::Dtype t, int dim, int group, int bits, uint32_t* codes, char* scales,
                  char* biases) {
  const size_t item = mx::size_of(t);
  const float levels = float((1 << bits) - 1);
  const int per_word = 32 / bits;
  float values[128];
  for (int g = 0; g < dim / group; ++g) {
    float low = std::numeric_limits<float>::infinity(), high = -low;
    for (int j = 0; j < group; ++j) {
      values[j] = load(row + size_t(g * group + j) * item, t);
      high = std::max(high, values[j]);
      low = std::min(low, values[j]);
    }
    const bool negative_edge = std::abs(low) > std::abs(high);
    float scale = std::max((high - low) / levels, 1e-7f);
    scale = negative_edge ? scale : -scale;
    const float edge = negative_edge ? low : high;
    const float q0 = std::rint(edge / scale);
    float bias = 0;
    if (q0 != 0) {
      scale = edge / q0;
      bias = edge;
    }
    for (int w = 0; w < group / per_word; ++w) {
      uint32_t word = 0;
      for (int k = 0; k < per_word; ++k) {
        float code = std::rint((values[w * per_word + k] - bias) / scale);
        code = std::min(std::max(code, 0.0f), levels);
        word |= uint32_t(code) << (k * bits);
      }
      codes[g * group / per_word + w] = word;
    }
    store(scales + g * item, t, scale);
    store(biases + g * item, t, bias);
  }
}

struct WriteSpec {
  int at;          // the cache's column the new rows go to
  int group, bits;
  bool keys;       // keys per channel: the tail grows by the new keys, the coded groups are passed on
  int coded;       // keys per channel: the coded positions attention reads
  bool owned;      // the cache owns the values' buffers (see CacheRows::owned)
};

// A row-contiguous [B, H, L, D] array's strides, as quantize_rows_into and append_rows_into take them.
mx::Strides row_strides(const mx::array& a) {
  return {int64_t(a.shape(1)) * a.shape(2) * a.shape(3), int64_t(a.shape(2)) * a.shape(3), a.shape(3), 1};
}

// in: values [B, H, L, D], row-contiguous; with keys, keys [B, H, L, D] and the tail [B, H, n, D]
// likewise. out: the primitive's outputs, allocated (see quantized_cache_write).
void run(const std::vector<mx::array>& in, std::vector<mx::array>& out, const WriteSpec& spec) {
  const mx::array& values = in[0];
  quantize_rows_into(values.data<char>(), values.dtype(), row_strides(values), values.shape(), out.data(), spec.at,
                     spec.group, spec.bits);
  if (spec.keys) append_rows_into(in[2], in[1].data<char>(), in[1].dtype(), row_strides(in[1]), in[1].shape(), out[9]);
}

class QuantizedCacheWrite : public mx::Primitive {
 public:
  QuantizedCacheWrite(mx::Stream stream, WriteSpec spec) : mx::Primitive(stream), spec_(spec) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    // The value buffers become the outputs where nothing else holds them (checked before anything
    // here takes a reference): written in place, as MLX's slice_update is. Otherwise copied first.
    BufferCopies copies;
    for (int i = 0; i < 3; ++i) {
      adopt_or_copy(inputs[1 + i], outputs, i, stream(), copies, spec_.owned);
      set_prefix_view(outputs[i], outputs[3 + i]);
    }
    std::vector<mx::array> rows = {row_contiguous(inputs[0], stream())};
    if (spec_.keys) {
      rows.push_back(row_contiguous(inputs[4], stream()));
      rows.push_back(row_contiguous(inputs[5], stream()));
      for (int i = 0; i < 3; ++i) set_prefix_view(inputs[6 + i], outputs[6 + i]);
      outputs[9].set_data(mx::allocator::malloc(outputs[9].nbytes()));
    }
    auto& encoder = mx::cpu::get_command_encoder(stream());
    for (const auto& in : rows) encoder.set_input_array(in);
    for (auto& out : outputs) encoder.set_output_array(out);
    encoder.dispatch([rows = std::move(rows), copies = std::move(copies), outputs = outputs, spec = spec_]() mutable {
      for (const auto& [i, from] : copies) std::memcpy(outputs[i].data<char>(), from.data<char>(), from.nbytes());
      run(rows, outputs, spec);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("[kernels::QuantizedCacheWrite] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::QuantizedCacheWrite"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const QuantizedCacheWrite&>(other).spec_;
    return spec_.at == o.at && spec_.group == o.group && spec_.bits == o.bits && spec_.keys == o.keys &&
           spec_.coded == o.coded && spec_.owned == o.owned;
  }

 private:
  WriteSpec spec_;
};

// The same step in MLX's ops, as the cache composed it before: quantize, slice_update, slice,
// and for keys per channel astype, concatenate and slice.
std::vector<mx::array> composed(const mx::array& values, const QuantizedKV& buffers, int at,
                                const std::optional<ChannelKeyStep>& keys, int group, int bits) {
  const std::vector<mx::array> parts = mx::quantize(values, group, bits, "affine");
  const std::vector<mx::array> held = {std::get<0>(buffers), std::get<1>(buffers), std::get<2>(buffers)};
  const int B = values.shape(0), H = values.shape(1), stop = at + values.shape(2);
  std::vector<mx::array> out, views;
  for (int i = 0; i < 3; ++i) {
    const int width = held[i].shape(3);
    out.push_back(mx::slice_update(held[i], parts[i], mx::Shape{0, 0, at, 0}, mx::Shape{B, H, stop, width}));
    views.push_back(mx::slice(out.back(), {0, 0, 0, 0}, {B, H, stop, width}));
  }
  out.insert(out.end(), views.begin(), views.end());
  if (!keys) return out;
  const auto& [codes, scales, biases] = keys->buffers;
  out.push_back(mx::slice(codes, {0, 0, 0, 0}, {B, H, keys->coded, codes.shape(3)}));
  for (const mx::array* part : {&scales, &biases})
    out.push_back(mx::slice(*part, {0, 0, 0, 0}, {B, H, keys->coded / group, part->shape(3)}));
  out.push_back(mx::concatenate({keys->tail, mx::astype(keys->keys, keys->tail.dtype())}, 2));
  return out;
}

}  // namespace

void quantize_rows_into(const char* from, mx::Dtype type, const mx::Strides& strides, const mx::Shape& shape,
                        mx::array* buffers, int at, int group, int bits) {
  const int B = shape[0], H = shape[1], L = shape[2], D = shape[3];
  const size_t item = mx::size_of(type);
  const int words = D * bits / 32, groups = D / group, T = buffers[0].shape(2);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int l = 0; l < L; ++l) {
        const size_t column = (size_t(b) * H + h) * T + at + l;
        quantize_row(from + (b * strides[0] + h * strides[1] + l * strides[2]) * item, type, D, group, bits,
                     buffers[0].data<uint32_t>() + column * words, buffers[1].data<char>() + column * groups * item,
                     buffers[2].data<char>() + column * groups * item);
      }
}

void append_rows_into(const mx::array& tail, const char* from, mx::Dtype type, const mx::Strides& strides,
                      const mx::Shape& shape, mx::array& grown) {
  const int B = shape[0], H = shape[1], L = shape[2], D = shape[3], held = tail.shape(2);
  const size_t to_item = grown.itemsize(), from_item = mx::size_of(type);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      char* to = grown.data<char>() + (size_t(b) * H + h) * (held + L) * D * to_item;
      std::memcpy(to, tail.data<char>() + (size_t(b) * H + h) * held * D * to_item, held * D * to_item);
      to += size_t(held) * D * to_item;
      for (int l = 0; l < L; ++l, to += D * to_item) {
        const char* row = from + (b * strides[0] + h * strides[1] + l * strides[2]) * from_item;
        for (int d = 0; d < D; ++d) store(to + d * to_item, grown.dtype(), load(row + d * from_item, type));
      }
    }
}

bool quantized_write_covers(const mx::Shape& values, mx::Dtype type, const QuantizedKV& buffers, int at,
                            const ChannelKeyLayout* keys, int group, int bits) {
  const auto& [codes, scales, biases] = buffers;
  if (values.size() != 4 || codes.ndim() != 4 || scales.ndim() != 4 || biases.ndim() != 4)
    throw std::invalid_argument("[quantized_cache_write] values and the cache's buffers must be [B, H, T, ·]");
  const int B = values[0], H = values[1], L = values[2], D = values[3];
  for (const mx::array* part : {&codes, &scales, &biases}) {
    if (part->shape(0) != B || part->shape(1) != H || at < 0 || at + L > part->shape(2) ||
        part->shape(2) != codes.shape(2))
      throw std::invalid_argument("[quantized_cache_write] the cache's buffers have no room for the new rows");
  }
  if (keys && (keys->tail.ndim() != 4 || keys->tail.shape(0) != B || keys->tail.shape(1) != H ||
               keys->tail.shape(3) != D || keys->coded % group != 0))
    throw std::invalid_argument("[quantized_cache_write] the keys and their tail do not match the values");
  const bool value_layout = (bits == 4 || bits == 8) && (group == 32 || group == 64 || group == 128) &&
                            D % group == 0 && float_type(type) && codes.dtype() == mx::uint32 &&
                            codes.shape(3) == D * bits / 32 && scales.dtype() == type && biases.dtype() == type &&
                            scales.shape(3) == D / group && biases.shape(3) == D / group;
  const bool key_layout = !keys || (float_type(keys->type) && float_type(keys->tail.dtype()) &&
                                    std::get<0>(keys->buffers).shape(2) >= keys->coded &&
                                    std::get<1>(keys->buffers).shape(2) >= keys->coded / group);
  return value_layout && key_layout;
}

std::vector<mx::array> quantized_cache_write(const mx::array& values, const QuantizedKV& buffers, int at,
                                             const std::optional<ChannelKeyStep>& keys, int group, int bits,
                                             bool owned) {
  const auto& [codes, scales, biases] = buffers;
  if (keys && keys->keys.shape() != values.shape())
    throw std::invalid_argument("[quantized_cache_write] the keys and their tail do not match the values");
  std::optional<ChannelKeyLayout> key_layout;
  if (keys) key_layout = ChannelKeyLayout{keys->keys.dtype(), keys->tail, keys->buffers, keys->coded};
  mx::Stream stream = mx::default_stream(mx::default_device());
  const bool covered =
      quantized_write_covers(values.shape(), values.dtype(), buffers, at, key_layout ? &*key_layout : nullptr, group,
                             bits);
  if (!enabled_on(stream) || !covered) return composed(values, buffers, at, keys, group, bits);
  const int B = values.shape(0), H = values.shape(1), L = values.shape(2), D = values.shape(3);
  // inputs: values, the values' buffers; with keys, keys, the tail and the keys' buffers.
  // outputs: the values' buffers, their first at + L columns (views); with keys, the coded
  // groups (views of the keys' buffers) and the tail grown by the new keys.
  std::vector<mx::array> inputs = {values, codes, scales, biases};
  std::vector<mx::Shape> shapes = {codes.shape(), scales.shape(), biases.shape()};
  std::vector<mx::Dtype> types = {codes.dtype(), scales.dtype(), biases.dtype()};
  for (int i = 0; i < 3; ++i) {
    mx::Shape valid = shapes[i];
    valid[2] = at + L;
    shapes.push_back(valid);
    types.push_back(types[i]);
  }
  if (keys) {
    inputs.insert(inputs.end(), {keys->keys, keys->tail, std::get<0>(keys->buffers), std::get<1>(keys->buffers),
                                 std::get<2>(keys->buffers)});
    for (int i = 0; i < 3; ++i) {
      const mx::array& part = inputs[6 + i];
      shapes.push_back({B, H, i == 0 ? keys->coded : keys->coded / group, part.shape(3)});
      types.push_back(part.dtype());
    }
    shapes.push_back({B, H, keys->tail.shape(2) + L, D});
    types.push_back(keys->tail.dtype());
  }
  const WriteSpec spec{at, group, bits, keys.has_value(), keys ? keys->coded : 0, owned};
  return mx::array::make_arrays(std::move(shapes), std::move(types),
                                std::make_shared<QuantizedCacheWrite>(stream, spec), std::move(inputs));
}

}  // namespace kernels
