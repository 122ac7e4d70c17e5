// The quantized attention kernel for avx2 (8 fp32 lanes); the code is quantized_attention_body.h.
#define ATTENTION_VECTOR_BYTES 32
#define QUANTIZED_ATTENTION_TILE_FN quantized_attend_tile_avx2
#define QUANTIZED_ATTENTION_SIMD
#include "simd/avx2.h"
#include "quantized_attention_body.h"
