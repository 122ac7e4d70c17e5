// Freed buffers' memory kept for the next ones (Linux, glibc), set when the shim loads.
//
// MLX's CPU allocator takes its blocks from malloc, and a forward pass allocates and frees its
// activations node by node. glibc serves a block above its mmap threshold with a mapping of its
// own and unmaps it on free; the threshold starts at 128 KiB and moves with the sizes freed, and
// the heap's free top is returned to the OS past the trim threshold. A prompt's activations are
// such blocks (a 256-token chunk's gate and up outputs are 1.5 MiB each), so each was mapped
// again, faulted in 4 KiB at a time and zeroed by the kernel: ~33,000 page faults per 256-token
// prompt of the converted default model in the engine's token loop, against ~250 with the
// threshold fixed, and prompts 1.1-1.25x faster (bench/RESULTS.md, "Freed memory reused: page
// faults in a prompt", and the third 2026-12-03 session's section on a new sequence's huge pages).
//
// So blocks up to 32 MiB (glibc's largest mmap threshold) come from the heap, and up to 64 MiB of
// its free top stays mapped for the next step. Larger blocks (big weights) still get mappings of
// their own. The user's own settings win (glibc.malloc.mmap_threshold or trim_threshold in
// GLIBC_TUNABLES, MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_), and MLX_MALLOC_REUSE=0 leaves
// glibc's defaults (to compare). MLX's cache cleared (mlxs_clear_cache: between benchmarked
// models, after a model is unloaded) gives the heap's free pages back too (return_free_heap).
#include <cstdlib>  // first: it defines __GLIBC__
#include <cstring>

#include "common.h"

#if defined(__linux__) && defined(__GLIBC__)
#include <malloc.h>

namespace {

constexpr int kMmapThreshold = 32 << 20;
constexpr int kTrimThreshold = 64 << 20;

bool user_tuned() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr &&
      (std::strstr(tunables, "malloc.mmap_threshold") != nullptr || std::strstr(tunables, "malloc.trim_threshold") != nullptr))
    return true;
  return std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr || std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr;
}

struct ReuseFreedMemory {
  ReuseFreedMemory() {
    const char* env = std::getenv("MLX_MALLOC_REUSE");
    if ((env != nullptr && std::strcmp(env, "0") == 0) || user_tuned()) return;
    mallopt(M_MMAP_THRESHOLD, kMmapThreshold);
    mallopt(M_TRIM_THRESHOLD, kTrimThreshold);
  }
} reuse_freed_memory;

}  // namespace

void shim::return_free_heap() { malloc_trim(0); }
#else
void shim::return_free_heap() {}
#endif
