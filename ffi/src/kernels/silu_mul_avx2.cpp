// A stretch of SiLU·mul for avx2 (8 fp32 lanes); the code is silu_mul_body.h.
#define ATTENTION_VECTOR_BYTES 32
#define SILU_MUL_SPAN_FN silu_mul_span_avx2
#include "silu_mul_body.h"
