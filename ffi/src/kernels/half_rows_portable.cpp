// Half-precision weight rows for portable (4 fp32 lanes); the code is half_rows_body.h.
#define ATTENTION_VECTOR_BYTES 16
#define HALF_ROWS_FN half_rows_portable
#define HALF_WIDEN_FN half_widen_portable
#include "half_rows_body.h"
