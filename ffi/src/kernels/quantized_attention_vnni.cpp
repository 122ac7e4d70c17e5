// The quantized attention kernel for avx512 with VNNI: keys per channel and values scored on
// their codes with integer dot products (quantized_attention_codes.h); the code is
// quantized_attention_body.h.
#define ATTENTION_VECTOR_BYTES 64
#define QUANTIZED_ATTENTION_TILE_FN quantized_attend_tile_vnni
#define QUANTIZED_ATTENTION_SIMD
#include "simd/avx512.h"
#include "quantized_attention_body.h"
