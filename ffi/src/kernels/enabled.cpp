#include "enabled.h"

#include <cstdlib>
#include <cstring>

namespace kernels {

bool enabled() {
  static const bool on = [] {
    const char* choice = std::getenv("MLX_KERNELS");
    return choice == nullptr || std::strcmp(choice, "mlx") != 0;
  }();
  return on;
}

bool enabled_on(const mlx::core::Stream& stream) {
  return enabled() && stream.device == mlx::core::Device::cpu;
}

}  // namespace kernels
