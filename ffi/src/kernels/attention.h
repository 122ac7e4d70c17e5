// Scaled dot-product attention on our CPU kernel (attention_body.h) where it applies, MLX's
// mx::fast::scaled_dot_product_attention otherwise (a GPU, sinks, our kernels turned off).
#pragma once

#include <optional>
#include <string>

#include "mlx/mlx.h"

namespace kernels {

mlx::core::array scaled_dot_product_attention(const mlx::core::array& q, const mlx::core::array& k,
                                              const mlx::core::array& v, float scale, const std::string& mask_mode,
                                              const std::optional<mlx::core::array>& mask,
                                              const std::optional<mlx::core::array>& sinks);

}  // namespace kernels
