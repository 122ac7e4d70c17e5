// The instruction sets our kernels are built for, and the best one this CPU runs.
//
// Each kernel is compiled once per instruction set, in its own translation unit named
// <kernel>_<isa>.cpp and built with that set's compiler flags (see kernels.cmake), so the one
// binary runs on any x86-64 or arm64 CPU; the choice is made here, at run time.
#pragma once

namespace kernels {

enum class Isa { portable, neon, avx2, avx512 };

// The best instruction set both built in and supported by this CPU. MLX_CPU_ISA
// (portable, neon, avx2, avx512) caps it, to test or compare the paths on one machine.
Isa best_isa();

const char* isa_name(Isa isa);

// AVX-512 is the instruction set in use and the CPU has its 8-bit dot products (VNNI).
bool has_avx512_vnni();

}  // namespace kernels
