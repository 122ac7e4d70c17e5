#include "isa.h"

#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace kernels {
namespace {

Isa detect() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma")) {
    return Isa::avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return Isa::avx2;
  }
  return Isa::portable;
#elif defined(__aarch64__)
  return Isa::neon;  // Advanced SIMD is part of every arm64 CPU
#else
  return Isa::portable;
#endif
}

// The cap MLX_CPU_ISA sets; instruction sets of another architecture cap to portable.
Isa capped(Isa found) {
  const char* cap = std::getenv("MLX_CPU_ISA");
  if (cap == nullptr || *cap == '\0') return found;
  for (Isa isa : {Isa::portable, Isa::neon, Isa::avx2, Isa::avx512}) {
    if (std::strcmp(cap, isa_name(isa)) != 0) continue;
    if (isa == Isa::portable || found == Isa::portable) return Isa::portable;
    bool same_family = (isa == Isa::neon) == (found == Isa::neon);
    if (!same_family) return Isa::portable;
    return static_cast<int>(isa) < static_cast<int>(found) ? isa : found;
  }
  return found;
}

}  // namespace

Isa best_isa() {
  static const Isa isa = capped(detect());
  return isa;
}

bool has_avx512_vnni() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool vnni = best_isa() == Isa::avx512 && __builtin_cpu_supports("avx512vnni");
  return vnni;
#else
  return false;
#endif
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::portable: return "portable";
    case Isa::neon: return "neon";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "portable";
}

}  // namespace kernels
