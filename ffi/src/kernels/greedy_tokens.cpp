// A greedy decode step's sampling as one primitive. The engine's composition, logprobs = logits -
// logsumexp(logits), then argmax(logprobs) and the chosen token's logprob, costs three more nodes
// and MLX's argmax (one element at a time, serial: 1.5% of an 8-row serving step) and writes the
// whole logprobs array. Here each row's logsumexp is the logsumexp primitive's (logsumexp_rows),
// and the argmax of x - lse is taken a stretch at a time over the pool, each x - lse rounded to
// the logits' type as MLX's subtract rounds it and the first index kept on a tie as MLX's argmax
// keeps it, so the tokens and logprobs are the composition's, bit for bit (for logits without NaN).
#include <algorithm>
#include <limits>
#include <memory>
#include <vector>

#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "thread_pool.h"

namespace kernels {
namespace {

struct Best {
  float value;
  uint32_t index;
};

template <typename T>
void pick(const mx::array& logits, mx::array& tokens, mx::array& chosen) {
  const int64_t rows = static_cast<int64_t>(tokens.size());
  const int64_t width = static_cast<int64_t>(logits.size()) / std::max<int64_t>(rows, 1);
  const T* in = logits.data<T>();
  std::vector<T> lse(static_cast<size_t>(rows));
  logsumexp_rows(in, rows, width, lse.data());
  const int stretches = static_cast<int>((width + kRowPart - 1) / kRowPart);
  std::vector<Best> best(static_cast<size_t>(rows) * stretches);
  parallel_for(static_cast<int>(best.size()), [&](int task, int) {
    const int64_t row = task / stretches, begin = (task % stretches) * kRowPart;
    const int64_t end = std::min(width, begin + kRowPart);
    const T* x = in + row * width;
    const float shift = static_cast<float>(lse[row]);
    // MLX's argmax starts from the first element and takes a later one only when greater.
    Best b{static_cast<float>(static_cast<T>(static_cast<float>(x[begin]) - shift)), static_cast<uint32_t>(begin)};
    for (int64_t i = begin + 1; i < end; ++i) {
      const float v = static_cast<float>(static_cast<T>(static_cast<float>(x[i]) - shift));
      if (v > b.value) b = {v, static_cast<uint32_t>(i)};
    }
    best[task] = b;
  });
  uint32_t* token = tokens.data<uint32_t>();
  T* logprob = chosen.data<T>();
  for (int64_t r = 0; r < rows; ++r) {
    Best b = best[r * stretches];
    for (int s = 1; s < stretches; ++s)
      if (best[r * stretches + s].value > b.value) b = best[r * stretches + s];
    token[r] = b.index;
    logprob[r] = static_cast<T>(b.value);
  }
}

class GreedyTokens : public mx::Primitive {
 public:
  explicit GreedyTokens(mx::Stream stream) : mx::Primitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    dispatch_rows(stream(), inputs, outputs, [](const std::vector<mx::array>& in, std::vector<mx::array>& out) {
      if (in[0].dtype() == mx::float16) pick<mx::float16_t>(in[0], out[0], out[1]);
      else if (in[0].dtype() == mx::bfloat16) pick<mx::bfloat16_t>(in[0], out[0], out[1]);
      else pick<float>(in[0], out[0], out[1]);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("[kernels::GreedyTokens] CPU only: built for CPU streams");
  }

  const char* name() const override { return "kernels::GreedyTokens"; }

  bool is_equivalent(const mx::Primitive&) const override { return true; }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    const mx::Shape rows{inputs[0].shape(0)};
    return {rows, rows};
  }
};

}  // namespace

std::vector<mx::array> greedy_tokens(const mx::array& logits) {
  mx::Stream stream = mx::default_stream(mx::default_device());
  if (logits.ndim() != 2) throw std::invalid_argument("greedy_tokens: logits must be [rows, vocabulary]");
  if (!enabled_on(stream) || !float_type(logits.dtype()) || logits.size() == 0) {
    const mx::array logprobs = mx::subtract(logits, logsumexp(logits, {-1}, true));
    const mx::array tokens = mx::argmax(logprobs, -1, true);
    return {mx::astype(mx::reshape(tokens, {-1}), mx::uint32),
            mx::reshape(mx::take_along_axis(logprobs, tokens, -1), {-1})};
  }
  const mx::Shape rows{logits.shape(0)};
  return mx::array::make_arrays({rows, rows}, {mx::uint32, logits.dtype()}, std::make_shared<GreedyTokens>(stream),
                                {logits});
}

}  // namespace kernels
