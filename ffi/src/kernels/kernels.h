// Our CPU kernels as MLX ops: each one builds a graph node of our own primitive when the default
// stream is on the CPU and the layout is one we cover, and MLX's own op otherwise (a GPU, other
// layouts, or our kernels turned off with MLX_KERNELS=mlx).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include "attention_kernel.h"
#include "mlx/mlx.h"

namespace kernels {

namespace mx = mlx::core;

// Turns our kernels on or off for the ops built from now on (and for MLX's float32 matmuls run
// from now on, see openblas/sgemm.cpp); returns the previous setting. Starts on unless
// MLX_KERNELS=mlx.
bool set_enabled(bool on);
bool enabled();

// Our kernels are on and the stream runs on the CPU: build our primitive rather than MLX's op.
bool enabled_on(const mx::Stream& stream);

// For a primitive's eval_cpu: `a` as it is when row-contiguous, else a row-contiguous copy the
// stream makes before the primitive's task (the encoder holds it until that task has run). Our
// primitives take their inputs as they come and call this, rather than wrapping each input in
// mx::contiguous when the graph is built: that is a graph node per input even when nothing is
// copied (a weight, a fresh output), four per quantized product, hundreds per decode step.
mx::array row_contiguous(const mx::array& a, mx::Stream stream);

// Queues a primitive's task on the stream's thread, in order with whatever the stream's encoder
// queues. MLX's evaluation stops walking the graph while more than ~100 of the encoder's
// dispatches wait, and counts two per node (the task, then the hand-off that holds the node's
// buffers), so async_eval of a decode step (~130 nodes) returned only when the step was nearly
// done, and the next step's graph was built while the stream's thread stood idle. The task of a
// node whose outputs are small (a decode step's rows) is queued without the count, so its caller
// walks twice as far ahead; large outputs (a prompt's chunk) stay counted, as that throttle also
// bounds the memory allocated for outputs not computed yet.
void queue_task(mx::Stream stream, const std::vector<mx::array>& outputs, std::function<void()> task);

// A primitive's eval_cpu in one call: allocates `outputs`, registers inputs and outputs with the
// stream's encoder, and queues `task` on the stream with the inputs made row-contiguous (see
// row_contiguous) and the outputs, for kernels that take every input row by row. Inputs from
// `contiguous` on are passed as they are (an attention's keys and values, read through their
// strides in place).
using RowsTask = std::function<void(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs)>;
void dispatch_rows(mx::Stream stream, const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs,
                   RowsTask task, size_t contiguous = SIZE_MAX);

// Inputs a primitive's task copies into its outputs before it writes them: (output, source).
using BufferCopies = std::vector<std::pair<int, mx::array>>;

// For a primitive's eval_cpu that writes rows into a buffer it was given (a cache's): output
// `index` takes input `held`'s memory where nothing else holds it, to be written in place as MLX's
// slice_update is; otherwise fresh memory, and (index, held made row-contiguous) joins `copies`
// for the task to copy first. As MLX's is_donatable, except that each output of a primitive keeps
// its inputs (one reference each), where is_donatable asks for one reference, which an input of a
// multi-output primitive never has. Check every input before taking any other reference to it.
// `owned` (see CacheRows) skips the reference counts.
void adopt_or_copy(const mx::array& held, std::vector<mx::array>& outputs, int index, mx::Stream stream,
                   BufferCopies& copies, bool owned = false);

// view = buffer's first view.shape(2) positions (buffer [B, H, T, ·], view [B, H, t ≤ T, ·]),
// sharing its memory as MLX's slice does: a primitive's output that is a view of another's.
void set_prefix_view(const mx::array& buffer, mx::array& view);

// The floating-point types our kernels read (activations, scales, masks).
inline bool float_type(mx::Dtype t) { return t == mx::float32 || t == mx::float16 || t == mx::bfloat16; }

// The attention kernels' name for a float type (float_type(t) holds).
inline Element element_of(mx::Dtype t) {
  if (t == mx::float16) return Element::f16;
  if (t == mx::bfloat16) return Element::bf16;
  return Element::f32;
}

// The instruction set and thread count the kernels run with, e.g. "avx2, 2 threads" (and how
// 4-bit decode rows round their activations where they do: ", int16 activations" by default on
// AVX-512 VNNI, ", int8 activations" with MLX_CPU_INT8=1).
const char* describe();

// mx::quantized_matmul, on our kernel where it applies. w, scales and biases may be repacked
// (repack_for_kernels); where our kernel does not apply, MLX's op then reads them put back.
mx::array quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                           const std::optional<mx::array>& biases, bool transpose, int group, int bits,
                           const std::string& mode);

// An affine-quantized weight (transposed, MLX's layout) with its scales and biases.
using QuantizedWeight = std::tuple<mx::array, mx::array, mx::array>;

// mx::dequantize, and also of 8-bit weights in groups of 16 (GGUF's Q6_K as the loader keeps it
// for our kernels), which MLX's op refuses: in MLX's layout, of the scales' type unless `dtype`.
mx::array dequantize_affine(const mx::array& w, const mx::array& scales, const std::optional<mx::array>& biases,
                            int group, int bits, std::optional<mx::Dtype> dtype);

// The weight repacked for our int16 decode rows (kRepackColumns in quantized_matmul.h: same bytes,
// marked int32), where our kernels are on for the default stream and read that layout for it on
// this CPU (AVX-512 VNNI in the default int16 mode, 4 bits, rows a multiple of 16); else nothing.
// Only our quantized matmul reads the result (unevaluated: a transpose of the weights).
std::optional<QuantizedWeight> repack_for_kernels(const mx::array& w, const mx::array& scales,
                                                  const mx::array& biases, int group, int bits);

// Whether a product of `rows` outputs runs on our kernels in 8-bit groups of 16 (kHalfGroup), so
// that a GGUF's Q6_K weights may stay quantized: our kernels on for the default stream, and its
// weights repacked for the int16 rows (as repack_for_kernels).
bool reads_half_groups(int rows);

// Rows `ids` (any shape) of a weight in MLX's layout or repacked, in MLX's layout ([...ids, ·]):
// an embedding's lookup.
QuantizedWeight take_quantized_rows(const QuantizedWeight& weight, const mx::array& ids);

// A weight that repack_for_kernels made, back in MLX's layout (for dequantize and MLX's ops);
// any other weight as it is.
QuantizedWeight mlx_layout(const QuantizedWeight& weight);

// mx::fast::scaled_dot_product_attention, on our kernel where it applies (no sinks; float inputs).
mx::array scaled_dot_product_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                                       const std::string& mask_mode, const std::optional<mx::array>& mask,
                                       const std::optional<mx::array>& sinks);

// Keys or values [B, Hkv, T, ·] as MLX affine-quantizes them: packed codes, scales, biases.
using QuantizedKV = std::tuple<mx::array, mx::array, mx::array>;

// Attention on quantized keys and values (mask and sinks as scaled_dot_product_attention takes
// them), on our kernel where it applies, else composed of MLX's ops (quantized matmuls). With
// `key_tail`, keys are quantized per channel (mlxs_quantized_sdpa in mlx_shim.h says how). With
// `length`, the keys' and values' buffers may hold more positions than the `length` attended to
// (a cache's whole buffers, read in place: no views of them in the graph).
mx::array quantized_scaled_dot_product_attention(const mx::array& q, const QuantizedKV& keys,
                                                 const QuantizedKV& values, float scale, const std::string& mask_mode,
                                                 const std::optional<mx::array>& mask,
                                                 const std::optional<mx::array>& sinks,
                                                 const std::optional<mx::array>& key_tail, int group, int bits,
                                                 std::optional<int> length = std::nullopt);

// A decode step's keys per channel for quantized_cache_write: the new keys [B, Hkv, L, D], the
// float tail [B, Hkv, n, D] they join, and the keys' codes, scales and biases buffers, whose
// first `coded` positions (whole groups) attention reads.
struct ChannelKeyStep {
  mx::array keys, tail;
  QuantizedKV buffers;
  int coded;
};

// A quantized KV cache's step: values [B, Hkv, L, D] quantized as mx::quantize does (bit for
// bit) into the cache's buffers [B, Hkv, T ≥ at + L, ·] at column `at`, in place where the cache
// holds them alone or owns them (`owned`, see CacheRows). Returns the three buffers, their first
// at + L columns; with `keys`, then the keys' coded groups and the tail grown by the new keys (in
// the tail's type). One primitive on our kernels; MLX's ops composed otherwise (quantize,
// slice_update, slice, astype, concatenate).
std::vector<mx::array> quantized_cache_write(const mx::array& values, const QuantizedKV& buffers, int at,
                                             const std::optional<ChannelKeyStep>& keys, int group, int bits,
                                             bool owned = false);

// The layout of keys per channel in a quantized cache write: the new keys' type, the float tail
// [B, Hkv, n, D] they join, and the keys' buffers, whose first `coded` positions (whole groups)
// attention reads.
struct ChannelKeyLayout {
  mx::Dtype type;
  mx::array tail;
  QuantizedKV buffers;
  int coded;
};

// Whether our kernel writes new values [B, Hkv, L, D] of `type` into `buffers` at `at` (and with
// `keys`, new keys into their tail), as quantized_cache_write does; throws where the arguments do
// not fit together (no room, a tail of other rows).
bool quantized_write_covers(const mx::Shape& values, mx::Dtype type, const QuantizedKV& buffers, int at,
                            const ChannelKeyLayout* keys, int group, int bits);

// mx::fast::rms_norm as one primitive (MLX's CPU backend evaluates it as a chain of ops).
mx::array rms_norm(const mx::array& x, const std::optional<mx::array>& weight, float eps);

// mx::fast::rope as one primitive, for [B, H, L, D] inputs; the offset is one number or one per
// batch row.
mx::array rope(const mx::array& x, int dims, bool traditional, std::optional<float> base, float scale,
               const std::variant<int, mx::array>& offset, const std::optional<mx::array>& freqs);

// mx::logsumexp, as one primitive split over the pool where it reduces the last axis alone (the
// sampler's logits rows).
mx::array logsumexp(const mx::array& x, const std::vector<int>& axes, bool keepdims);

// Elements of a row per task in the row reductions over the pool (logsumexp_rows, greedy_tokens):
// enough to be worth a thread.
constexpr int64_t kRowPart = 8192;

// logsumexp over each of `rows` contiguous rows of `width` elements, split over the pool: the
// logsumexp primitive's own numbers (fp32 inside; float, float16 and bfloat16 rows).
template <typename T>
void logsumexp_rows(const T* in, int64_t rows, int64_t width, T* out);

// A greedy step's sampling of logits [B, V] as one primitive: {argmax(logprobs), the chosen
// token's logprob} with logprobs = logits - logsumexp(logits), the values (and first index on a
// tie) that MLX's subtract, argmax and take_along_axis give, without the logprobs array; MLX's
// ops where our kernels do not run.
std::vector<mx::array> greedy_tokens(const mx::array& logits);

// silu(gate) * up as one primitive; MLX's ops (sigmoid, two multiplies) where it does not apply.
mx::array silu_mul(const mx::array& gate, const mx::array& up);
// gelu_approx(gate) * up (GELU's tanh approximation, Gemma's GeGLU) likewise; where it does not
// apply, mlx.nn.gelu_approx's ops and a multiply.
mx::array gelu_approx_mul(const mx::array& gate, const mx::array& up);

// An affine-quantized projection (transposed weights) as the fused blocks take it.
struct QuantizedLinear {
  mx::array weight, scales, biases;
  int group, bits;
};

// h + down(silu(gate) · up), [gate, up] the two halves of gate_up(rms_norm(h, norm_weight)): the
// MLP half of a pre-norm block, one primitive on our kernels (exactly their composition), MLX's
// ops composed otherwise.
mx::array mlp_block(const mx::array& h, const mx::array& norm_weight, float eps, const QuantizedLinear& gate_up,
                    const QuantizedLinear& down);

// The heads of attention's input projection: queries, then keys, then values, head_dim each.
struct AttentionHeads {
  int heads, kv_heads, head_dim;
};

// RoPE's settings, as kernels::rope takes them.
struct Rotation {
  int dims;
  bool traditional;
  std::optional<float> base;
  float scale;
  std::variant<int, mx::array> offset;
  std::optional<mx::array> freqs;
};

// A float KV cache's key and value buffers [B, Hkv, T, D] and the column new rows go to.
// `owned`: the cache vouches that outside the work already queued on this stream nothing holds
// the buffers (they are its own: lent to no one since it made or last wrote them), so they are
// written in place even while that work still holds them: it runs first, in order. Without it,
// only where nothing else holds them at all (adopt_or_copy), which a pipelined token loop misses
// whenever it queues a step's layer before the step ahead has finished the same layer.
struct CacheRows {
  mx::array keys, values;
  int at;
  bool owned = false;
};

// {queries [B, H, L, D] and keys [B, Hkv, L, D], rotated; values [B, Hkv, L, D]} of x [B, L, ·]:
// rms_norm, the fused q/k/v product, the split into heads and RoPE, one primitive on our kernels
// (exactly their composition), MLX's ops composed otherwise. Given a cache, {queries, the
// cache's keys and values buffers with the new rows written at `at` (in the buffers' type; in
// place where the cache holds the only reference), and their first at + L columns}.
std::vector<mx::array> attention_input(const mx::array& x, const mx::array& norm_weight, float eps,
                                       const QuantizedLinear& qkv, const AttentionHeads& heads,
                                       const Rotation& rotation, const std::optional<CacheRows>& cache = std::nullopt);

// A quantized KV cache with keys per channel (see quantized_cache_write), as attention_input writes
// a step into it: the values' buffers and the keys' layout, the column the new rows go to, and
// whether the cache owns the value buffers (see CacheRows).
struct QuantizedCacheRows {
  QuantizedKV values;
  ChannelKeyLayout keys;
  int at;
  int group, bits;
  bool owned = false;
};

// attention_input's keys and values written into a quantized cache as quantized_cache_write
// writes them: {queries, the values' codes, scales and biases buffers written, the keys' tail
// grown by the new keys}. One primitive on our kernels (the two ops' result exactly, in one
// task), the two ops otherwise. keys.type is not read: the keys are the product's.
std::vector<mx::array> attention_input(const mx::array& x, const mx::array& norm_weight, float eps,
                                       const QuantizedLinear& qkv, const AttentionHeads& heads,
                                       const Rotation& rotation, const QuantizedCacheRows& cache);

// x + o_proj(heads [B, H, L, D] back into rows [B, L, H·D]): attention's output and the block's
// residual add, one primitive on our kernels (exactly their composition), MLX's ops otherwise.
mx::array attention_output(const mx::array& x, const mx::array& heads, const QuantizedLinear& o_proj);

// mlp_block(attention_output(x, heads, o_proj), ...): a pre-norm block's second half from
// attention's heads, as one node where both halves are ours (else as they are alone); where the
// heads are our attention's, not yet computed, that node computes them too, from the attention's
// own inputs. A decode step is then two nodes a layer (the fused attention input, this), not
// four: MLX's evaluation walks further ahead of the stream (see queue_task) and each node's
// hand-offs are paid once.
mx::array attention_output_mlp(const mx::array& x, const mx::array& heads, const QuantizedLinear& o_proj,
                               const mx::array& norm_weight, float eps, const QuantizedLinear& gate_up,
                               const QuantizedLinear& down);

// mx::matmul; with bfloat16/float16 operands on the CPU, converted to fp32 block by block and
// multiplied by OpenBLAS (openblas/half_matmul.cpp) when it is built in.
mx::array matmul(const mx::array& a, const mx::array& b);

}  // namespace kernels
