// The attention kernel for portable (4 fp32 lanes); the code is attention_body.h.
#define ATTENTION_VECTOR_BYTES 16
#define ATTENTION_TILE_FN attend_tile_portable
#include "attention_body.h"
