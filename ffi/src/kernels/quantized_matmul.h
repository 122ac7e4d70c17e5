// Affine-quantized matmul on the CPU: y = x · dequantize(w)ᵀ, the layout our models load
// (transposed weights, 4 or 8 bits, groups of 32, 64 or 128 along K, a scale and bias per group).
#pragma once

#include <cstdint>

namespace kernels {

enum class ScaleType { f32, f16, bf16 };

// Groups of 16 (GGUF's Q6_K, 8-bit codes): MLX's ops refuse them; only the int16 kernel on
// repacked weights reads them, with a scale per half of each block of 32.
constexpr int kHalfGroup = 16;

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
  const int8_t* x_int8;       // [M, K] x quantized to int8 for the int8 kernel (see kInt8Chunk), or null
  const float* x_int8_steps;  // [M, K/4] the float step of each int32 lane of x_int8's chunks
  float* y;                // [M, N] outputs, fp32
  int M, N, K, bits, group;
  // Every bias is -2^(bits-1) · its scale (GGUF's Q4_0 and Q8_0 as MLX loads them): a kernel may
  // take the offset from the codes and not read the biases.
  bool symmetric = false;
  // [M, K rounded up to 128] x for the AVX-512 4-bit decode rows (M <= kNibbleMaxRows), or null:
  // each chunk of 128 elements in the order of its weights' nibbles within dwords (element 8l + j
  // at 16j + l), zeros past K. See quantized_matmul_avx512.cpp.
  const float* x_nibbles = nullptr;
  // x rounded to int16 for the int16 kernel (M · int16_padded(K, bits) elements), or null; the
  // float step of each int32 lane of its chunks, and (4 bits) the sum of the rounded x over each
  // lane's elements (M · 16 · int16_chunks(K, bits) each). See quantize_rows_int16.
  const int16_t* x_int16 = nullptr;
  const float* x_int16_steps = nullptr;
  const float* x_int16_lane_sums = nullptr;
  // The weights, scales and biases are interleaved by kRepackColumns columns (see kRepackColumns):
  // only the int16 kernel reads them, decode and prompt rows, from x_int16 in pair order.
  bool repacked = false;
};

// Weights repacked for the int16 decode rows (AVX-512 VNNI, 4 bits): each block of
// kRepackColumns weight rows (output columns) interleaved dword by dword, so that one 64-byte
// vector holds dword d of all 16 rows and int32 lane j of a product accumulates column j. A
// product of 16 columns is then a run of vpdpwssd with one row's activation pair broadcast, one
// convert and one multiply-add with the 16 columns' scales per block of 32: no horizontal sums,
// no permutes, and each 64-byte load of weights serves every row. Scales and biases [N, groups]
// are interleaved the same way (element g of row 16b + j at (b · groups + g) · 16 + j). Only the
// dwords move, so the bytes are MLX's: repacking is a transpose of [N/16, 16, dwords] blocks.
constexpr int kRepackColumns = 16;

// (AVX-512 VNNI builds) x [M, K] rounded to int16 as quantize_rows_int16 rounds it (blocks of
// 32, step max |x| / 32767), row after row, each dword of `bits`-bit weights' activations as the
// pairs its masked words take: at 4 bits elements (k, k+4), (k+1, k+5), (k+2, k+6), (k+3, k+7) of
// every 8; at 8 bits (k, k+2), (k+1, k+3) of every 4. Each block's step into steps [M, K/32],
// and the sum of the rounded x over each group into group_sums [M, K/group].
void quantize_rows_int16_pairs(const float* x, int M, int K, int bits, int group, int16_t* x_pairs, float* steps,
                               float* group_sums);

// The most rows the AVX-512 4-bit kernel of quantized_matmul_avx512.cpp takes: every decode row
// count, since a row must give the same bits alone and in a batch and the generic direct rows add
// in another order (at 3 and more rows they alone were as fast or faster, measured).
constexpr int kNibbleMaxRows = 8;

// x [M, K] into x_nibbles' order.
void order_by_nibbles(const float* x, int M, int K, float* x_nibbles);

// Above this many rows, a kernel dequantizes a panel of weight rows once into fp32 scratch and
// multiplies every row of x against it; at or below, it dequantizes in registers per row tile.
constexpr int kDirectMaxRows = 8;
// The most weight rows a panel holds (the widest instruction set's), so the floats of scratch a
// thread needs: kPanelMaxColumns · K. Column blocks given to tile functions are multiples of it.
constexpr int kPanelMaxColumns = 32;

// How the decode rows (M <= kDirectMaxRows) of 4-bit (and, int16, 8-bit) weights take their
// activations on this CPU.
enum class DecodeActivations {
  exact,  // fp32 (MLX_CPU_EXACT=1, or no AVX-512 VNNI)
  int16,  // the default with AVX-512 VNNI: rounded to ~16 bits, greedy answers stay mlx-lm's
  int8,   // MLX_CPU_INT8=1 with AVX-512 VNNI (K a multiple of kInt8Chunk): llama.cpp's rounding
};
// int8 leaves 8-bit layers (the default model's tied output layer) exact: its error goes straight
// into the logits, and it did not make them faster.
DecodeActivations decode_activations();

// The int8-activation kernel (4-bit decode rows on AVX-512 VNNI) takes x in chunks of 64: two
// blocks of 32 elements, each quantized to int8 with its own float step (max |x| / 127), ordered
// like the weights' nibbles once split: the first block's even elements, the second's, the
// first's odd ones, the second's. Each 4 bytes form one int32 lane of the product, so every lane
// has one step.
constexpr int kInt8Chunk = 64;

// x [M, K] (K a multiple of kInt8Chunk) into x_int8 and x_int8_steps in the order above, and the
// sum of each block of 32 as quantized into block_sums [M, K/32].
void quantize_rows_int8(const float* x, int M, int K, int8_t* x_int8, float* steps, float* block_sums);

// The int16-activation kernel (decode rows on AVX-512 VNNI) sums each int32 lane of its
// products over int16_lane_dwords(bits) dwords of weights: four at 4 bits (a lane then covers one
// block of x and one group: one scale and one step per 32 products), one at 8 bits (two or four
// ran 8 rows faster but the one-row output layer slower, and a lane's width may not depend on the
// row count: a row must give the same bits alone and in a batch). It takes x in chunks of 16 lanes, each chunk of
// int16_chunk(bits) elements, in blocks of 32 each rounded to int16 with its own float step (max |x|
// / 32767), ordered like the weights it multiplies: with p = 32 / bits weights per dword and D
// dwords (D·p weights) per lane, lane l of vector v (0 .. D·p/2 - 1) of a chunk holds elements
// D·p·l + d·p + t and D·p·l + d·p + t + p/2 as two int16 words (d = v / (p/2), t = v % (p/2)).
// What is left of K past its whole chunks goes in chunks of one dword a lane
// (int16_tail_chunk(bits) elements, zeros past K): at K = 576 a 4-bit row is one chunk of 512 and
// one of 128, not 1024 elements of which 448 zeros.
constexpr int int16_lane_dwords(int bits) { return bits == 4 ? 4 : 1; }
constexpr int int16_chunk(int bits) { return 16 * int16_lane_dwords(bits) * 32 / bits; }
constexpr int int16_tail_chunk(int bits) { return 16 * 32 / bits; }
// The chunks of a row of K, and its elements with the zeros of its last chunk.
constexpr int int16_chunks(int K, int bits) {
  return K / int16_chunk(bits) + (K % int16_chunk(bits) + int16_tail_chunk(bits) - 1) / int16_tail_chunk(bits);
}
constexpr int int16_padded(int K, int bits) {
  const int whole = K / int16_chunk(bits) * int16_chunk(bits), tail = int16_tail_chunk(bits);
  return whole + (K - whole + tail - 1) / tail * tail;
}

// (AVX-512 VNNI builds) x [M, K] rounded into x_int16 in the order above for `bits`-bit weights,
// chunk by chunk, each chunk's M rows one after the other (a chunk of C elements at element k0 of
// the rows: row r's at M · k0 + r · C), so that a kernel reaches every row's vectors at fixed
// offsets from one address; and, per chunk and row, each lane's step into lane_steps (16 floats).
// The biases' share takes the sums of the rounded x: at 4 bits over each lane's elements, per
// chunk and row into lane_sums (as lane_steps); at 8 bits over each group into group_sums [M, K/group].
void quantize_rows_int16(const float* x, int M, int K, int bits, int group, int16_t* x_int16, float* lane_steps,
                         float* lane_sums, float* group_sums);

// Outputs y[:, n_begin:n_end] of a product. `scratch` holds kPanelMaxColumns · K floats.
using QmmTile = void (*)(const QmmProblem& p, int n_begin, int n_end, float* scratch);

void qmm_tile_portable(const QmmProblem& p, int n_begin, int n_end, float* scratch);
void qmm_tile_avx2(const QmmProblem& p, int n_begin, int n_end, float* scratch);
void qmm_tile_avx512(const QmmProblem& p, int n_begin, int n_end, float* scratch);
void qmm_tile_neon(const QmmProblem& p, int n_begin, int n_end, float* scratch);
// M <= kDirectMaxRows only, with x_int8 set.
void qmm_tile_int8_vnni(const QmmProblem& p, int n_begin, int n_end, float* scratch);
// M <= kDirectMaxRows only, with x_int16 set.
void qmm_tile_int16_vnni(const QmmProblem& p, int n_begin, int n_end, float* scratch);
// Any M (decode rows, and prompt rows 8 at a time), repacked weights, x_int16 as
// quantize_rows_int16_pairs orders it,
// x_int16_steps its steps and x_group_sums its group sums; n_begin and n_end multiples of
// kRepackColumns.
void qmm_tile_int16_repacked_vnni(const QmmProblem& p, int n_begin, int n_end, float* scratch);

}  // namespace kernels
