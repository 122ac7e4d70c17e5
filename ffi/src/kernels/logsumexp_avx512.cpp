// A stretch of logsumexp for avx512 (16 fp32 lanes); the code is logsumexp_body.h.
#define ATTENTION_VECTOR_BYTES 64
#define LOGSUMEXP_PART_FN logsumexp_part_avx512
#include "logsumexp_body.h"
