// The quantized attention kernel for neon (4 fp32 lanes); the code is quantized_attention_body.h.
#define ATTENTION_VECTOR_BYTES 16
#define QUANTIZED_ATTENTION_TILE_FN quantized_attend_tile_neon
#include "quantized_attention_body.h"
