// The switch between our kernels and MLX's own, and what they run with.
#include "kernels.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "isa.h"
#include "mlx/backend/common/utils.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "quantized_matmul.h"
#include "thread_pool.h"

namespace kernels {
namespace {

// Atomic: the float32 matmuls read it on the stream's thread (openblas/sgemm.cpp).
std::atomic<bool> on = [] {
  const char* choice = std::getenv("MLX_KERNELS");
  return choice == nullptr || std::strcmp(choice, "mlx") != 0;
}();

}  // namespace

bool set_enabled(bool enable) { return on.exchange(enable); }

bool enabled() { return on.load(); }

bool enabled_on(const mx::Stream& stream) { return enabled() && stream.device == mx::Device::cpu; }

mx::array row_contiguous(const mx::array& a, mx::Stream stream) {
  if (a.flags().row_contiguous) return a;
  // MLX's own Contiguous primitive does the copy (its copy routines are not exported): evaluated
  // here, it queues the copy on the stream ahead of the caller's task.
  mx::array copy = mx::contiguous(a, false, stream);
  std::vector<mx::array> outputs = {copy};
  copy.primitive().eval_cpu({a}, outputs);
  mx::cpu::get_command_encoder(stream).add_temporary(copy);
  return copy;
}

void adopt_or_copy(const mx::array& held, std::vector<mx::array>& outputs, int index, mx::Stream stream,
                   BufferCopies& copies, bool owned) {
  static_assert(sizeof(mx::array) == sizeof(std::shared_ptr<void>));
  mx::array& buffer = outputs[index];
  const long references = reinterpret_cast<const std::shared_ptr<void>&>(held).use_count();
  const auto& data = held.data_shared_ptr();
  const bool alone = owned || (references == long(outputs.size()) && data.use_count() == 1);
  if (alone && data->is_owned() && held.flags().row_contiguous && held.itemsize() == buffer.itemsize() &&
      held.buffer_size() <= buffer.nbytes()) {
    buffer.copy_shared_buffer(held);
    return;
  }
  buffer.set_data(mx::allocator::malloc(buffer.nbytes()));
  copies.emplace_back(index, row_contiguous(held, stream));
}

void set_prefix_view(const mx::array& buffer, mx::array& view) {
  const mx::Strides& strides = buffer.strides();
  size_t end = view.size() == 0 ? 0 : 1;
  for (int i = 0; i < view.ndim() && end > 0; ++i) end += size_t(view.shape(i) - 1) * strides[i];
  auto [no_broadcast_size, row_contiguous, col_contiguous] = mx::check_contiguity(view.shape(), strides);
  mx::array::Flags flags = buffer.flags();
  flags.row_contiguous = row_contiguous;
  flags.col_contiguous = col_contiguous;
  flags.contiguous = no_broadcast_size == end;
  view.copy_shared_buffer(buffer, strides, flags, end);
}

void queue_task(mx::Stream stream, const std::vector<mx::array>& outputs, std::function<void()> task) {
  // A decode step's outputs are a few rows of the hidden size (or of the vocabulary, ~200 KB);
  // a prompt chunk's are megabytes.
  constexpr size_t kSmallOutputs = 256 << 10;
  size_t bytes = 0;
  for (const auto& o : outputs) bytes += o.nbytes();
  if (bytes <= kSmallOutputs) mx::scheduler::enqueue(stream, std::move(task));
  else mx::cpu::get_command_encoder(stream).dispatch(std::move(task));
}

void dispatch_rows(mx::Stream stream, const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs,
                   RowsTask task, size_t contiguous) {
  for (auto& o : outputs) o.set_data(mx::allocator::malloc(o.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream);
  for (const auto& in : inputs) encoder.set_input_array(in);
  for (auto& o : outputs) encoder.set_output_array(o);
  std::vector<mx::array> rows;
  for (size_t i = 0; i < inputs.size(); ++i)
    rows.push_back(i < contiguous ? row_contiguous(inputs[i], stream) : inputs[i]);
  queue_task(stream, outputs,
             [rows = std::move(rows), outputs = outputs, task = std::move(task)]() mutable { task(rows, outputs); });
}

#if !defined(KERNELS_HAVE_OPENBLAS)
mx::array matmul(const mx::array& a, const mx::array& b) { return mx::matmul(a, b); }
#endif

const char* describe() {
  const DecodeActivations activations = decode_activations();
  static const std::string text = std::string(isa_name(best_isa())) + ", " + std::to_string(thread_count()) +
                                 (thread_count() == 1 ? " thread" : " threads") +
                                 (activations == DecodeActivations::int16  ? ", int16 activations"
                                  : activations == DecodeActivations::int8 ? ", int8 activations"
                                                                           : "");
  return text.c_str();
}

}  // namespace kernels
