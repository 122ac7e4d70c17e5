// The input half of attention, x [B, L, ·] → rotated queries [B, H, L, D], rotated keys and
// values [B, Hkv, L, D] (RMSNorm, the fused q/k/v product, the split into heads, RoPE on the
// queries and keys), as one primitive. Composed, it is a dozen graph nodes per layer (norm,
// product, three slices, three reshapes, three transposes, two rotations); here one task runs
// the same kernels back to back, with the same rounding of every intermediate, so the result
// is the composition's. Given a float KV cache's buffers, it also writes the new keys and values
// into them at their column (the cache's two slice_updates, and the two slices of its valid part
// that attention reads, four nodes fewer): in place where the cache holds the only reference to
// a buffer, as MLX's slice_update is. Given a quantized cache's (keys per channel), it writes the
// step quantized_cache_write would (the values quantized into their buffers, the keys joining
// the float tail) in the same task: a quantized cache's decode step is then two nodes a layer
// (this and the block's second half), as a float cache's is. Its outputs are the buffers and the
// tail only: attention reads the buffers whole, with the length held (no views to build).
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

// The composition's intermediates, as our kernels (or MLX's ops) build them.
struct Composition {
  mx::array normed, projected, queries, keys, values;
};

Composition compose(const mx::array& x, const mx::array& norm_weight, float eps, const QuantizedLinear& qkv,
                    const AttentionHeads& heads, const Rotation& rotation) {
  mx::array normed = rms_norm(x, norm_weight, eps);
  mx::array all = quantized_matmul(normed, qkv.weight, qkv.scales, qkv.biases, true, qkv.group, qkv.bits, "affine");
  const int B = all.shape(0), L = all.shape(1);
  const int queries = heads.heads * heads.head_dim, keys = heads.kv_heads * heads.head_dim;
  const auto split = [&](int start, int stop, int n) {
    mx::array part = mx::slice(all, {0, 0, start}, {B, L, stop});
    return mx::transpose(mx::reshape(part, {B, L, n, -1}), {0, 2, 1, 3});
  };
  const auto rotate = [&](const mx::array& t) {
    return rope(t, rotation.dims, rotation.traditional, rotation.base, rotation.scale, rotation.offset, rotation.freqs);
  };
  return {normed, all, rotate(split(0, queries, heads.heads)), rotate(split(queries, queries + keys, heads.kv_heads)),
          split(queries + keys, all.shape(2), heads.kv_heads)};
}

// The cache's buffers with rows [B, Hkv, L, D] written at column `at` (slice_update, in the
// buffer's type as the cache's astype gives it), and their first at + L columns.
std::vector<mx::array> write_composed(const mx::array& queries, const mx::array& keys, const mx::array& values,
                                      const CacheRows& cache) {
  std::vector<mx::array> out = {queries};
  std::vector<mx::array> valid;
  for (const auto& [held, rows] : {std::pair{cache.keys, keys}, std::pair{cache.values, values}}) {
    const mx::Shape start = {0, 0, cache.at, 0};
    mx::Shape stop = rows.shape();
    stop[2] += cache.at;
    const mx::array written = mx::slice_update(
        held, rows.dtype() == held.dtype() ? rows : mx::astype(rows, held.dtype()), start, stop);
    out.push_back(written);
    valid.push_back(mx::slice(written, {0, 0, 0, 0}, stop));
  }
  out.insert(out.end(), valid.begin(), valid.end());
  return out;
}

// D values of type From at `from` into D of type To at `to`, rounded as MLX's astype rounds them.
template <typename From, typename To>
void convert_row(const char* from, char* to, int D) {
  const From* src = reinterpret_cast<const From*>(from);
  To* dst = reinterpret_cast<To*>(to);
  for (int d = 0; d < D; ++d) dst[d] = To(float(src[d]));
}

using ConvertRow = void (*)(const char*, char*, int);

template <typename From>
ConvertRow converter_to(mx::Dtype to) {
  if (to == mx::float32) return convert_row<From, float>;
  if (to == mx::float16) return convert_row<From, mx::float16_t>;
  return convert_row<From, mx::bfloat16_t>;
}

// rows [B, H, L, D] of `from`'s type, read through `strides` (elements), into buffer [B, H, T, D]
// (row-contiguous) at column `at`, converted to the buffer's type as MLX's astype rounds them.
void write_rows(const char* from, mx::Dtype from_type, const mx::Strides& strides, const mx::Shape& shape,
                mx::array& buffer, int at) {
  const int B = shape[0], H = shape[1], L = shape[2], D = shape[3], T = buffer.shape(2);
  const size_t from_item = mx::size_of(from_type), item = buffer.itemsize();
  // The conversion is chosen once: a decode step writes 2 · B · H rows of D values a layer.
  const ConvertRow convert = from_type == buffer.dtype() ? nullptr
                             : from_type == mx::float32  ? converter_to<float>(buffer.dtype())
                             : from_type == mx::float16  ? converter_to<mx::float16_t>(buffer.dtype())
                                                         : converter_to<mx::bfloat16_t>(buffer.dtype());
  char* to = buffer.data<char>();
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int l = 0; l < L; ++l) {
        const char* src = from + (b * strides[0] + h * strides[1] + l * strides[2]) * from_item;
        char* dst = to + (((size_t(b) * H + h) * T + at + l) * D) * item;
        if (convert)
          convert(src, dst, D);
        else
          std::memcpy(dst, src, D * item);
      }
}

struct InputSpec {
  float eps;
  int group, bits;
  AttentionHeads heads;
  RopeSpec rope;
  mx::Dtype normed, projected;
  int at;  // the cache's column the new rows go to; -1: no cache (keys and values are outputs)
  bool owned;  // CacheRows::owned
  // A quantized cache (QuantizedCacheRows), its group and bits.
  bool quantized = false;
  int cache_group = 0, cache_bits = 0;
};

// inputs: x, the norm's weight, the product's weight, scales, biases, then the rotation's
// offsets and frequencies where the spec has them, then the cache's keys and values where it
// has a column (a quantized cache's: the values' codes, scales and biases, the keys' float tail).
// outputs: queries, keys, values; or with a cache, queries, the keys and values buffers
// (allocated, holding the cache's positions) and their valid parts (views of them); or with a
// quantized cache, queries, the values' three buffers (as the float cache's) and the keys' tail
// grown by the new keys.
void run(const std::vector<mx::array>& in, std::vector<mx::array>& out, const InputSpec& spec) {
  const mx::array& x = in[0];
  const int B = x.shape(0), L = x.shape(1), N = in[2].shape(0);
  const int H = spec.heads.heads, Hkv = spec.heads.kv_heads, D = spec.heads.head_dim;
  mx::array normed = scratch_array(x.shape(), spec.normed);
  rms_norm_into(x, &in[1], normed, spec.eps);
  mx::array all = scratch_array({B, L, N}, spec.projected);
  quantized_matmul_into(normed, in[2], in[3], in[4], all, spec.group, spec.bits);
  // Head h of row (b, l) starts at ((b·L + l)·N + first + h·D): [B, heads, L, D] through strides.
  const mx::Strides strides = {int64_t(L) * N, D, N, 1};
  const size_t item = all.itemsize();
  const char* row = all.data<char>();
  const mx::array* offsets = spec.rope.offset_array ? &in[5] : nullptr;
  const mx::array* freqs = spec.rope.freqs ? &in[5 + spec.rope.offset_array] : nullptr;
  rope_into(row, {B, H, L, D}, strides, spec.rope, offsets, freqs, out[0]);
  const char* keys = row + size_t(H) * D * item;
  const char* values = row + size_t(H + Hkv) * D * item;
  if (spec.at < 0) {
    rope_into(keys, {B, Hkv, L, D}, strides, spec.rope, offsets, freqs, out[1]);
    write_rows(values, spec.projected, strides, {B, Hkv, L, D}, out[2], 0);
    return;
  }
  mx::array rotated = scratch_array({B, Hkv, L, D}, spec.projected);
  rope_into(keys, {B, Hkv, L, D}, strides, spec.rope, offsets, freqs, rotated);
  const mx::Strides rotated_strides = {int64_t(Hkv) * L * D, int64_t(L) * D, D, 1};
  if (spec.quantized) {
    quantize_rows_into(values, spec.projected, strides, {B, Hkv, L, D}, &out[1], spec.at, spec.cache_group,
                       spec.cache_bits);
    append_rows_into(in.back(), rotated.data<char>(), spec.projected, rotated_strides, {B, Hkv, L, D}, out[4]);
    return;
  }
  write_rows(rotated.data<char>(), spec.projected, rotated_strides, {B, Hkv, L, D}, out[1], spec.at);
  write_rows(values, spec.projected, strides, {B, Hkv, L, D}, out[2], spec.at);
}

// A quantized cache's inputs, last: the values' codes, scales and biases, the keys' tail.
constexpr size_t kQuantizedCacheInputs = 4;

class AttentionInput : public mx::Primitive {
 public:
  AttentionInput(mx::Stream stream, InputSpec spec) : mx::Primitive(stream), spec_(spec) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    if (spec_.at < 0) {
      dispatch_rows(stream(), inputs, outputs, [spec = spec_](const auto& in, auto& out) { run(in, out, spec); });
      return;
    }
    // The cache's buffers become the outputs where nothing else holds them (checked before
    // anything here takes a reference) or the cache owns them: the rows are written in place, as
    // MLX's slice_update does. Otherwise the task copies them first.
    const size_t cache = inputs.size() - (spec_.quantized ? kQuantizedCacheInputs : 2);
    BufferCopies copies;
    const int buffers = spec_.quantized ? 3 : 2;
    for (int i = 1; i <= buffers; ++i) {
      adopt_or_copy(inputs[cache + i - 1], outputs, i, stream(), copies, spec_.owned);
      if (!spec_.quantized) set_prefix_view(outputs[i], outputs[2 + i]);
    }
    if (spec_.quantized) outputs[4].set_data(mx::allocator::malloc(outputs[4].nbytes()));  // the grown tail
    outputs[0].set_data(mx::allocator::malloc(outputs[0].nbytes()));
    std::vector<mx::array> rows;
    for (size_t i = 0; i < cache; ++i) rows.push_back(row_contiguous(inputs[i], stream()));
    if (spec_.quantized) rows.push_back(row_contiguous(inputs.back(), stream()));  // the keys' tail
    queue_task(stream(), outputs,
        [rows = std::move(rows), copies = std::move(copies), outputs = outputs, spec = spec_]() mutable {
          for (const auto& [i, from] : copies) std::memcpy(outputs[i].data<char>(), from.data<char>(), from.nbytes());
          run(rows, outputs, spec);
        });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("[kernels::AttentionInput] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::AttentionInput"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    const InputSpec& o = static_cast<const AttentionInput&>(other).spec_;
    const RopeSpec &r = spec_.rope, &s = o.rope;
    return spec_.eps == o.eps && spec_.group == o.group && spec_.bits == o.bits && spec_.heads.heads == o.heads.heads &&
           spec_.heads.kv_heads == o.heads.kv_heads && spec_.heads.head_dim == o.heads.head_dim &&
           spec_.normed == o.normed && spec_.projected == o.projected && r.dims == s.dims &&
           r.traditional == s.traditional && r.base == s.base && r.scale == s.scale && r.offset == s.offset &&
           r.offset_array == s.offset_array && r.freqs == s.freqs && spec_.at == o.at && spec_.owned == o.owned &&
           spec_.quantized == o.quantized && spec_.cache_group == o.cache_group &&
           spec_.cache_bits == o.cache_bits;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    const int B = inputs[0].shape(0), L = inputs[0].shape(1);
    const int Hkv = spec_.heads.kv_heads, D = spec_.heads.head_dim;
    const mx::Shape queries = {B, spec_.heads.heads, L, D};
    if (spec_.at < 0) return {queries, {B, Hkv, L, D}, {B, Hkv, L, D}};
    if (spec_.quantized) {
      const size_t cache = inputs.size() - kQuantizedCacheInputs;
      const mx::array& tail = inputs.back();
      return {queries, inputs[cache].shape(), inputs[cache + 1].shape(), inputs[cache + 2].shape(),
              {B, Hkv, tail.shape(2) + L, D}};
    }
    const mx::Shape& buffer = inputs.back().shape();
    return {queries, buffer, buffer, {B, Hkv, spec_.at + L, D}, {B, Hkv, spec_.at + L, D}};
  }

 private:
  InputSpec spec_;
};

// What composing tells (the intermediates' types, the outputs' shapes), for the inputs' shapes
// and types seen supported: it depends on nothing else (see signature_memo.h).
struct Told {
  mx::Dtype normed, projected;
  mx::Shape queries, keys, values;
};

// What our primitive needs to know of these arguments, where our kernels run them; else nothing,
// and `composition` holds MLX's ops for them. Checks the arguments.
std::optional<Told> tell(const mx::array& x, const mx::array& norm_weight, float eps, const QuantizedLinear& qkv,
                         const AttentionHeads& heads, const Rotation& rotation, mx::Stream stream,
                         std::optional<Composition>& composition) {
  if (x.ndim() != 3) throw std::invalid_argument("[attention_input] x must be [batch, length, features]");
  if (qkv.weight.ndim() != 2 || qkv.weight.shape(0) != (heads.heads + 2 * heads.kv_heads) * heads.head_dim)
    throw std::invalid_argument("[attention_input] the q/k/v product's outputs are not the heads' queries, keys and values");
  const auto* offset_array = std::get_if<mx::array>(&rotation.offset);
  static SignatureMemo<Told> memo;
  Signature signature;
  signature << x << norm_weight << qkv.weight << qkv.scales << qkv.biases << qkv.group << qkv.bits << heads.heads
            << heads.kv_heads << heads.head_dim << rotation.dims << static_cast<int64_t>(rotation.traditional)
            << static_cast<int64_t>(rotation.base.has_value()) << static_cast<int64_t>(offset_array != nullptr)
            << static_cast<int64_t>(rotation.freqs.has_value());
  if (offset_array) signature << *offset_array;
  if (rotation.freqs) signature << *rotation.freqs;
  std::optional<Told> told = enabled_on(stream) ? memo.find(signature) : std::nullopt;
  if (told) return told;
  // Built first where not seen: it checks the arguments and gives every intermediate's type.
  const Composition& c = composition.emplace(compose(x, norm_weight, eps, qkv, heads, rotation));
  const bool supported =
      x.size() > 0 && float_type(x.dtype()) && norm_weight.ndim() == 1 && norm_weight.shape(0) == x.shape(-1) &&
      float_type(norm_weight.dtype()) &&
      quantized_matmul_covers(c.normed, qkv.weight, qkv.scales, qkv.biases, true, qkv.group, qkv.bits, "affine") &&
      rope_covers(c.queries, rotation.dims, rotation.base, rotation.offset, rotation.freqs) &&
      c.queries.dtype() == c.projected.dtype() && c.keys.dtype() == c.projected.dtype();
  if (!enabled_on(stream) || !supported) return std::nullopt;
  told = Told{c.normed.dtype(), c.projected.dtype(), c.queries.shape(), c.keys.shape(), c.values.shape()};
  memo.remember(signature, *told);
  return told;
}

InputSpec spec_of(float eps, const QuantizedLinear& qkv, const AttentionHeads& heads, const Rotation& rotation,
                  const Told& told, int at, bool owned) {
  const bool offset_array = std::holds_alternative<mx::array>(rotation.offset);
  return {eps,
          qkv.group,
          qkv.bits,
          heads,
          {rotation.dims, rotation.traditional, rotation.base.value_or(0.0f), rotation.scale,
           offset_array ? 0 : std::get<int>(rotation.offset), offset_array, rotation.freqs.has_value()},
          told.normed,
          told.projected,
          at,
          owned};
}

// The primitive's inputs before a cache's (see run).
std::vector<mx::array> inputs_of(const mx::array& x, const mx::array& norm_weight, const QuantizedLinear& qkv,
                                 const Rotation& rotation) {
  std::vector<mx::array> inputs = {x, norm_weight, qkv.weight, qkv.scales, qkv.biases};
  if (const auto* offsets = std::get_if<mx::array>(&rotation.offset))
    inputs.push_back(mx::astype(mx::flatten(*offsets), mx::int32));
  if (rotation.freqs) inputs.push_back(mx::astype(mx::contiguous(*rotation.freqs), mx::float32));
  return inputs;
}

}  // namespace

std::vector<mx::array> attention_input(const mx::array& x, const mx::array& norm_weight, float eps,
                                       const QuantizedLinear& qkv, const AttentionHeads& heads,
                                       const Rotation& rotation, const std::optional<CacheRows>& cache) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  std::optional<Composition> c;
  const std::optional<Told> told = tell(x, norm_weight, eps, qkv, heads, rotation, stream, c);
  if (cache) {
    const mx::Shape& keys = told ? told->keys : c->keys.shape();
    const mx::Shape& buffer = cache->keys.shape();
    const bool fits = buffer.size() == 4 && cache->values.shape() == buffer && buffer[0] == keys[0] &&
                      buffer[1] == heads.kv_heads && buffer[3] == heads.head_dim && cache->at >= 0 &&
                      cache->at + keys[2] <= buffer[2] && float_type(cache->keys.dtype()) &&
                      cache->values.dtype() == cache->keys.dtype();
    if (!fits)
      throw std::invalid_argument("[attention_input] the cache's buffers have no room for the new keys and values");
  }
  if (!told)
    return cache ? write_composed(c->queries, c->keys, c->values, *cache) : std::vector{c->queries, c->keys, c->values};
  const auto primitive =
      std::make_shared<AttentionInput>(stream, spec_of(eps, qkv, heads, rotation, *told, cache ? cache->at : -1,
                                                       cache && cache->owned));
  std::vector<mx::array> inputs = inputs_of(x, norm_weight, qkv, rotation);
  const mx::Dtype projected = told->projected;
  if (!cache)
    return mx::array::make_arrays({told->queries, told->keys, told->values},
                                  {projected, projected, projected}, primitive, inputs);
  inputs.push_back(cache->keys);
  inputs.push_back(cache->values);
  const mx::Dtype held = cache->keys.dtype();
  mx::Shape valid = told->keys;
  valid[2] += cache->at;
  return mx::array::make_arrays({told->queries, cache->keys.shape(), cache->values.shape(), valid, valid},
                                {projected, held, held, held, held}, primitive, inputs);
}

std::vector<mx::array> attention_input(const mx::array& x, const mx::array& norm_weight, float eps,
                                       const QuantizedLinear& qkv, const AttentionHeads& heads,
                                       const Rotation& rotation, const QuantizedCacheRows& cache) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  std::optional<Composition> c;
  const std::optional<Told> told = tell(x, norm_weight, eps, qkv, heads, rotation, stream, c);
  ChannelKeyLayout keys = cache.keys;
  if (told) keys.type = told->projected;
  if (!told || !quantized_write_covers(told->values, told->projected, cache.values, cache.at, &keys, cache.group,
                                       cache.bits)) {
    // The two ops: the keys and values, then the cache's write (which checks the cache).
    const std::vector<mx::array> qkv_rows =
        c ? std::vector{c->queries, c->keys, c->values} : attention_input(x, norm_weight, eps, qkv, heads, rotation);
    const std::vector<mx::array> step =
        quantized_cache_write(qkv_rows[2], cache.values, cache.at,
                              ChannelKeyStep{qkv_rows[1], keys.tail, keys.buffers, keys.coded}, cache.group,
                              cache.bits, cache.owned);
    return {qkv_rows[0], step[0], step[1], step[2], step[9]};  // the queries, the values' buffers, the tail
  }
  InputSpec spec = spec_of(eps, qkv, heads, rotation, *told, cache.at, cache.owned);
  spec.quantized = true;
  spec.cache_group = cache.group;
  spec.cache_bits = cache.bits;
  std::vector<mx::array> inputs = inputs_of(x, norm_weight, qkv, rotation);
  const auto& [codes, scales, biases] = cache.values;
  inputs.insert(inputs.end(), {codes, scales, biases, keys.tail});
  mx::Shape tail = told->values;
  tail[2] += keys.tail.shape(2);
  return mx::array::make_arrays({told->queries, codes.shape(), scales.shape(), biases.shape(), tail},
                                {told->projected, codes.dtype(), scales.dtype(), biases.dtype(), keys.tail.dtype()},
                                std::make_shared<AttentionInput>(stream, spec), std::move(inputs));
}

}  // namespace kernels
