// Half-precision weight rows for avx512 (16 fp32 lanes); the code is half_rows_body.h.
#define ATTENTION_VECTOR_BYTES 64
#define HALF_ROWS_FN half_rows_avx512
#define HALF_WIDEN_FN half_widen_avx512
#include "half_rows_body.h"
