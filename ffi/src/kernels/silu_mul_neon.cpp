// A stretch of SiLU·mul for neon (4 fp32 lanes); the code is silu_mul_body.h.
#define ATTENTION_VECTOR_BYTES 16
#define SILU_MUL_SPAN_FN silu_mul_span_neon
#include "silu_mul_body.h"
