// Rows of RMSNorm for avx2 (8 fp32 lanes); the code is rms_norm_body.h.
#define ATTENTION_VECTOR_BYTES 32
#define RMS_NORM_ROWS_FN rms_norm_rows_avx2
#include "rms_norm_body.h"
