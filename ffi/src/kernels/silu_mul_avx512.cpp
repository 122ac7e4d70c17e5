// A stretch of SiLU·mul for avx512 (16 fp32 lanes); the code is silu_mul_body.h.
#define ATTENTION_VECTOR_BYTES 64
#define SILU_MUL_SPAN_FN silu_mul_span_avx512
#include "silu_mul_body.h"
