// The attention kernel for avx2 (8 fp32 lanes); the code is attention_body.h.
#define ATTENTION_VECTOR_BYTES 32
#define ATTENTION_TILE_FN attend_tile_avx2
#include "attention_body.h"
