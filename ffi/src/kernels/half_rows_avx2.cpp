// Half-precision weight rows for avx2 (8 fp32 lanes); the code is half_rows_body.h.
#define ATTENTION_VECTOR_BYTES 32
#define HALF_ROWS_FN half_rows_avx2
#define HALF_WIDEN_FN half_widen_avx2
#include "half_rows_body.h"
