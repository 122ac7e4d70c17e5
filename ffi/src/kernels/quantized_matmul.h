// Affine-quantized matmul on the CPU: y = x · dequantize(w)ᵀ, the layout our models load
// (transposed weights, 4 or 8 bits, groups of 32, 64 or 128 along K, a scale and bias per group).
#pragma once

#include <cstdint>

namespace kernels {

enum class ScaleType { f32, f16, bf16 };

// One product, in the form the per-instruction-set kernels take. Rows are contiguous.
struct QmmProblem {
  const float* x;          // [M, K] activations, fp32
  const uint8_t* w;        // [N, K·bits/8] packed weights: element k of a row at bits (k·bits)
  const void* scales;      // [N, K/group], of scale_type
  const void* biases;      // [N, K/group], of scale_type
  ScaleType scale_type;
  const float* x_group_sums;  // [M, K/group] sums of x over each group (for M <= kDirectMaxRows)
  const float* x_split;       // [M, K] x with each block of 32 as its even then its odd elements
                              // (4 bits, M <= kDirectMaxRows): the order of a block's nibbles
  float* y;                // [M, N] outputs, fp32
  int M, N, K, bits, group;
};

// Above this many rows, a kernel dequantizes a panel of weight rows once into fp32 scratch and
// multiplies every row of x against it; at or below, it dequantizes in registers per row tile.
constexpr int kDirectMaxRows = 8;
// The most weight rows a panel holds (the widest instruction set's), so the floats of scratch a
// thread needs: kPanelMaxColumns · K. Column blocks given to tile functions are multiples of it.
constexpr int kPanelMaxColumns = 32;

// Outputs y[:, n_begin:n_end] of a product. `scratch` holds kPanelMaxColumns · K floats.
using QmmTile = void (*)(const QmmProblem& p, int n_begin, int n_end, float* scratch);

void qmm_tile_portable(const QmmProblem& p, int n_begin, int n_end, float* scratch);
void qmm_tile_avx2(const QmmProblem& p, int n_begin, int n_end, float* scratch);
void qmm_tile_avx512(const QmmProblem& p, int n_begin, int n_end, float* scratch);
void qmm_tile_neon(const QmmProblem& p, int n_begin, int n_end, float* scratch);

}  // namespace kernels
