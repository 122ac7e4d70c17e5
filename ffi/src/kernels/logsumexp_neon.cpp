// A stretch of logsumexp for neon (4 fp32 lanes); the code is logsumexp_body.h.
#define ATTENTION_VECTOR_BYTES 16
#define LOGSUMEXP_PART_FN logsumexp_part_neon
#include "logsumexp_body.h"
