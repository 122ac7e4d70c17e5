// The attention kernel for avx512 (16 fp32 lanes); the code is attention_body.h.
#define ATTENTION_VECTOR_BYTES 64
#define ATTENTION_TILE_FN attend_tile_avx512
#include "attention_body.h"
