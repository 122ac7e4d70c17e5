// Rows of RMSNorm for neon (4 fp32 lanes); the code is rms_norm_body.h.
#define ATTENTION_VECTOR_BYTES 16
#define RMS_NORM_ROWS_FN rms_norm_rows_neon
#include "rms_norm_body.h"
