// The switch between our kernels and MLX's own, and what they run with.
#include "kernels.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "isa.h"
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

#if !defined(KERNELS_HAVE_OPENBLAS)
mx::array matmul(const mx::array& a, const mx::array& b) { return mx::matmul(a, b); }
#endif

const char* describe() {
  static const std::string text = std::string(isa_name(best_isa())) + ", " + std::to_string(thread_count()) +
                                 (thread_count() == 1 ? " thread" : " threads") +
                                 (int8_decode() ? ", int8 activations" : "");
  return text.c_str();
}

}  // namespace kernels
