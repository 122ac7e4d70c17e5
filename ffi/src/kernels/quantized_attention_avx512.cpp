// The quantized attention kernel for avx512 (16 fp32 lanes); the code is quantized_attention_body.h.
#define ATTENTION_VECTOR_BYTES 64
#define QUANTIZED_ATTENTION_TILE_FN quantized_attend_tile_avx512
#define QUANTIZED_ATTENTION_SIMD
#include "simd/avx512.h"
#include "quantized_attention_body.h"
