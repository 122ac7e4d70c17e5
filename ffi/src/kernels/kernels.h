// Our CPU kernels as MLX ops: each one builds a graph node of our own primitive when the default
// stream is on the CPU and the layout is one we cover, and MLX's own op otherwise (a GPU, other
// layouts, or our kernels turned off with MLX_KERNELS=mlx).
#pragma once

#include <optional>
#include <string>

#include "mlx/mlx.h"

namespace kernels {

namespace mx = mlx::core;

// Turns our kernels on or off for the ops built from now on; returns the previous setting.
// Starts on unless MLX_KERNELS=mlx.
bool set_enabled(bool on);

// The instruction set and thread count the kernels run with, e.g. "avx2, 2 threads".
const char* describe();

// mx::quantized_matmul, on our kernel where it applies.
mx::array quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                           const std::optional<mx::array>& biases, bool transpose, int group, int bits,
                           const std::string& mode);

}  // namespace kernels
