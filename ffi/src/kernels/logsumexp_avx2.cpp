// A stretch of logsumexp for avx2 (8 fp32 lanes); the code is logsumexp_body.h.
#define ATTENTION_VECTOR_BYTES 32
#define LOGSUMEXP_PART_FN logsumexp_part_avx2
#include "logsumexp_body.h"
