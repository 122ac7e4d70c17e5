// Whether our CPU kernels replace MLX's ops: on a CPU stream, unless MLX_KERNELS=mlx asks for
// MLX's own kernels everywhere (for comparison, and for exact parity with mlx-lm).
#pragma once

#include "mlx/stream.h"

namespace kernels {

// MLX_KERNELS is read once, at the first call.
bool enabled();

// enabled() and the stream runs on the CPU.
bool enabled_on(const mlx::core::Stream& stream);

}  // namespace kernels
