// Rows of RMSNorm for avx512 (16 fp32 lanes); the code is rms_norm_body.h.
#define ATTENTION_VECTOR_BYTES 64
#define RMS_NORM_ROWS_FN rms_norm_rows_avx512
#include "rms_norm_body.h"
