// The work of some of our primitives, as their tasks run it on the stream's thread (inputs
// evaluated and row-contiguous, outputs allocated): fused primitives chain these in one task
// instead of one graph node each (mlp_block.cpp).
#pragma once

#include <optional>
#include <string>

#include "mlx/mlx.h"

namespace kernels {

namespace mx = mlx::core;

// out = rms_norm(x, weight) (no weight: 1s); out has x's shape.
void rms_norm_into(const mx::array& x, const mx::array* weight, mx::array& out, float eps);

// out = x · dequantize(w)ᵀ, affine (quantized_matmul_covers holds for the layout).
void quantized_matmul_into(const mx::array& x, const mx::array& w, const mx::array& scales, const mx::array& biases,
                           mx::array& out, int group, int bits);

// Whether our quantized matmul takes this layout (else kernels::quantized_matmul builds MLX's op).
bool quantized_matmul_covers(const mx::array& x, const mx::array& w, const mx::array& scales,
                             const std::optional<mx::array>& biases, bool transpose, int group, int bits,
                             const std::string& mode);

// out[..., i] = silu(halves[..., i]) · halves[..., width + i], width = out.shape(-1): the gate's
// half and the up half of a fused gate/up product's rows.
void silu_mul_halves_into(const mx::array& halves, mx::array& out);

}  // namespace kernels
