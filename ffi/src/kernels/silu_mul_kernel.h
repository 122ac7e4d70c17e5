// The gated activation primitive's per-instruction-set part (silu_mul_<isa>.cpp, all compiled
// from silu_mul_body.h): one contiguous stretch of act(gate) · up, a vector at a time.
#pragma once

#include <cstdint>

#include "attention_kernel.h"

namespace kernels {

// The gate's activation: SiLU (SwiGLU) or GELU's tanh approximation (GeGLU, as Gemma's MLP and
// mlx.nn.gelu_approx compute it).
enum class GateActivation { silu, gelu_tanh };

// out[i] = act(gate[i]) · up[i] for i in [0, n), all three of `type` and contiguous; computed in
// fp32 and rounded to `type` as MLX's float16_t and bfloat16_t casts round (to nearest even).
// Every element is worked out by the same lane arithmetic (a stretch's last, partial vector
// included), so its result depends on its gate and up alone: not on the stretch, the row or
// the split of the work.
using SiluMulSpan = void (*)(GateActivation act, Element type, const void* gate, const void* up, void* out, int64_t n);

void silu_mul_span_portable(GateActivation, Element, const void*, const void*, void*, int64_t);
#if defined(KERNELS_HAVE_AVX2)
void silu_mul_span_avx2(GateActivation, Element, const void*, const void*, void*, int64_t);
#endif
#if defined(KERNELS_HAVE_AVX512)
void silu_mul_span_avx512(GateActivation, Element, const void*, const void*, void*, int64_t);
#endif
#if defined(KERNELS_HAVE_NEON)
void silu_mul_span_neon(GateActivation, Element, const void*, const void*, void*, int64_t);
#endif

}  // namespace kernels
