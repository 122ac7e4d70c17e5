// Transparent huge pages for MLX's long-lived buffers (weights, KV caches) on Linux.
//
// A decode step streams every weight and the whole KV cache through the caches: with 4 KiB pages
// that is a TLB miss (and a page walk) every 4 KiB. Where THP is `madvise` (a common default),
// glibc's malloc, under MLX's allocator, never asks for huge pages, and the tunable that makes it
// (glibc.malloc.hugetlb) is read only at process start. So we ask for them here, per region:
//   - MADV_HUGEPAGE on each anonymous mapping that holds one of the buffers: the malloc heap or
//     arena, or a chunk of its own. Memory first touched there from now on (a cache's growth from
//     the same heap, MLX's buffer cache handing a freed block back) gets huge pages at fault time.
//   - MADV_COLLAPSE (Linux >= 6.1) on the 2 MiB-aligned span around each buffer: its pages are
//     already filled, and collapse replaces them by huge pages now, synchronously. Neighbouring
//     blocks of the same mapping inside that span are collapsed with it (harmless: the same
//     anonymous memory), which is what lets the many sub-2 MiB tensors of a small model that
//     malloc packs side by side share huge pages.
// Where unsupported (not Linux, THP `never`, an older kernel, a GPU's memory) nothing happens.
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common.h"

#ifdef __linux__
#include <malloc.h>
#include <sys/mman.h>
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#endif

namespace {

#ifdef __linux__
constexpr uintptr_t kHugePage = uintptr_t{2} << 20;

struct Range {
  uintptr_t start, end;
};

// The process's private anonymous read-write memory (malloc's heap, arenas and chunks), as runs of
// adjacent mappings, in address order.
std::vector<Range> anonymous_mappings() {
  std::vector<Range> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    uintptr_t start = 0, end = 0;
    char perms[5] = {};
    unsigned long long offset = 0, inode = 0;
    char dev[16] = {};
    int path_at = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx %4s %llx %15s %llu %n", &start, &end, perms, &offset, dev, &inode,
                    &path_at) < 6)
      continue;
    const std::string path = path_at > 0 && static_cast<size_t>(path_at) <= line.size() ? line.substr(path_at) : "";
    if (std::strcmp(perms, "rw-p") != 0 || inode != 0 || !(path.empty() || path == "[heap]")) continue;
    // Adjacent ones as one: each growth of the heap after an madvise is a mapping of its own (its
    // flags differ), often under 2 MiB; advised alike, they merge again.
    if (!out.empty() && out.back().end == start)
      out.back().end = end;
    else
      out.push_back({start, end});
  }
  return out;
}

const Range* mapping_of(const std::vector<Range>& mappings, uintptr_t address) {
  for (const auto& m : mappings)
    if (address >= m.start && address < m.end) return &m;
  return nullptr;
}
#endif
}  // namespace

size_t mlxs_huge_pages(mlxs_array* const* arrays, int n, int collapse) {
#ifdef __linux__
  // A GPU backend's buffers are its own (device or managed memory), whichever device is default.
  if (mx::is_available(mx::Device::gpu)) return 0;
#ifdef __GLIBC__
  // The heap grows with 4 MiB to spare: the 2 MiB page holding the newest buffer, at its top,
  // then lies inside the heap and can be collapsed too (what glibc.malloc.hugetlb=1 does by
  // growing it in whole huge pages). Costs at most that much unused memory.
  static const bool padded = mallopt(M_TOP_PAD, 8 * kHugePage) == 1;
  (void)padded;
#endif
  const auto mappings = anonymous_mappings();
  std::vector<const Range*> advised;
  std::vector<Range> spans;
  for (int i = 0; i < n; ++i) {
    mx::array a = arrays[i]->value;
    if (a.status() == mx::array::Status::unscheduled || a.data_size() == 0) continue;
    a.wait();  // evaluated may still mean written later, on the stream's thread
    const auto begin = reinterpret_cast<uintptr_t>(a.buffer().raw_ptr());
    const Range* m = mapping_of(mappings, begin);
    if (m == nullptr) continue;
    bool seen = false;
    for (const Range* r : advised) seen = seen || r == m;
    if (!seen) advised.push_back(m);
    // The 2 MiB pages the buffer touches, within its mapping.
    const uintptr_t end = std::min(begin + a.buffer_size(), m->end);
    const uintptr_t lo = std::max(begin & ~(kHugePage - 1), (m->start + kHugePage - 1) & ~(kHugePage - 1));
    const uintptr_t hi = std::min((end + kHugePage - 1) & ~(kHugePage - 1), m->end & ~(kHugePage - 1));
    if (hi > lo) spans.push_back({lo, hi});
  }
  for (const Range* m : advised) madvise(reinterpret_cast<void*>(m->start), m->end - m->start, MADV_HUGEPAGE);
  if (!collapse) return 0;
  std::sort(spans.begin(), spans.end(), [](const Range& a, const Range& b) { return a.start < b.start; });
  size_t collapsed = 0;
  for (size_t i = 0; i < spans.size();) {
    Range run = spans[i++];
    while (i < spans.size() && spans[i].start <= run.end) run.end = std::max(run.end, spans[i++].end);
    // Page by page, so one that cannot be collapsed (EAGAIN: no free huge page now) leaves the rest.
    for (uintptr_t p = run.start; p < run.end; p += kHugePage)
      if (madvise(reinterpret_cast<void*>(p), kHugePage, MADV_COLLAPSE) == 0) collapsed += kHugePage;
  }
  return collapsed;
#else
  (void)arrays;
  (void)n;
  (void)collapse;
  return 0;
#endif
}
