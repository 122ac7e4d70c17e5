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
//     already filled, and collapse replaces them by huge pages (on a thread of its own, see
//     Collapser). Neighbouring blocks of the same mapping inside that span are collapsed with it
//     (harmless: the same anonymous memory), which is what lets the many sub-2 MiB tensors of a
//     small model that malloc packs side by side share huge pages.
// Where unsupported (not Linux, THP `never`, an older kernel, a GPU's memory) nothing happens.
#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
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
    // Adjacent ones as one run: once the heap is advised, each growth of it is a mapping of its
    // own (its flags differ, and so stays apart once touched), and a buffer's 2 MiB page may lie
    // across two; the kernel collapses the whole pages inside each mapping of the run.
    if (!out.empty() && out.back().end == start)
      out.back().end = end;
    else
      out.push_back({start, end});
  }
  return out;
}

// A run of mappings as last read, and whether it has been advised since.
struct Mapping {
  Range range;
  bool advised = false;
};

Mapping* mapping_of(std::vector<Mapping>& mappings, uintptr_t address) {
  for (auto& m : mappings)
    if (address >= m.range.start && address < m.range.end) return &m;
  return nullptr;
}

// The mappings read anew; a run whose bounds are unchanged keeps its advice.
void read_mappings(std::vector<Mapping>& mappings) {
  std::vector<Mapping> fresh;
  for (const Range& r : anonymous_mappings()) {
    const Mapping* old = mapping_of(mappings, r.start);
    fresh.push_back({r, old != nullptr && old->advised && old->range.start == r.start && old->range.end == r.end});
  }
  mappings = std::move(fresh);
}

// Collapses runs of 2 MiB pages on a thread of its own. MADV_COLLAPSE copies each page and first
// drains every CPU's page lists, which waits on the other CPUs: a model's weights took seconds of
// wall time (a fraction of that in CPU) on a busy 2-core machine, which a load or a cache's growth
// should not wait for. Only addresses are passed: memory freed meanwhile is at worst collapsed
// for its next owner, or skipped (ENOMEM) once unmapped; the contents never change.
class Collapser {
 public:
  void add(std::vector<Range> runs) {
    if (runs.empty()) return;
    std::lock_guard lock(mutex_);
    queue_.insert(queue_.end(), runs.begin(), runs.end());
    if (!started_) {
      started_ = true;
      std::thread([this] { work(); }).detach();
    }
    ready_.notify_all();
  }

  void wait() {
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [this] { return queue_.empty() && !busy_; });
  }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    for (;;) {
      ready_.wait(lock, [this] { return !queue_.empty(); });
      const Range run = queue_.front();
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      collapse(run);
      lock.lock();
      busy_ = false;
      if (queue_.empty()) idle_.notify_all();
    }
  }

  static void collapse(const Range& run) {
    // The run in one call (one drain); where it stops (EAGAIN: no free huge page now), page by
    // page, so that one which fails leaves the rest. EINVAL: no MADV_COLLAPSE (Linux < 6.1),
    // THP `never`, or memory it does not apply to.
    if (madvise(reinterpret_cast<void*>(run.start), run.end - run.start, MADV_COLLAPSE) == 0 || errno == EINVAL)
      return;
    for (uintptr_t p = run.start; p < run.end; p += kHugePage)
      madvise(reinterpret_cast<void*>(p), kHugePage, MADV_COLLAPSE);
  }

  std::mutex mutex_;
  std::condition_variable ready_, idle_;
  std::deque<Range> queue_;
  bool started_ = false, busy_ = false;
};

// Never destroyed: its thread may still be waiting when the process exits.
Collapser& collapser() {
  static Collapser* c = new Collapser;
  return *c;
}
#endif
}  // namespace

size_t mlxs_huge_pages(mlxs_array* const* arrays, int n, int collapse) {
#ifdef __linux__
  // A GPU backend's buffers are its own (device or managed memory), whichever device is default.
  if (mx::is_available(mx::Device::gpu)) return 0;
#ifdef __GLIBC__
  // The heap grows with 16 MiB to spare: the 2 MiB page holding the newest buffer, at its top,
  // then lies inside the heap and can be collapsed too, and each growth (a mapping of its own once
  // the heap is advised) holds several whole huge pages (glibc.malloc.hugetlb=1 grows it in whole
  // huge pages). Address space only: what is never touched costs no memory.
  static const bool padded = mallopt(M_TOP_PAD, 8 * kHugePage) == 1;
  (void)padded;
#endif
  // Reading /proc/self/maps costs ~0.2 ms (the kernel formats every mapping), and a new sequence's
  // cache asks once per layer, ~7 ms in all before its first token. So the mappings read last are
  // kept, and read again only when a buffer lies outside those advised since (the heap grew, each
  // growth a mapping of its own, or memory was mapped anew). Only mappings that held a buffer when
  // read are advised; one replaced since by another at the same addresses stays unadvised (its
  // buffers are still collapsed below).
  static std::mutex mutex;
  static std::vector<Mapping> mappings;
  std::lock_guard lock(mutex);
  std::vector<mx::array> buffers;
  for (int i = 0; i < n; ++i) {
    mx::array a = arrays[i]->value;
    if (a.status() == mx::array::Status::unscheduled || a.data_size() == 0) continue;
    a.wait();  // evaluated may still mean written later, on the stream's thread
    buffers.push_back(std::move(a));
  }
  const auto address = [](const mx::array& a) { return reinterpret_cast<uintptr_t>(a.buffer().raw_ptr()); };
  if (std::any_of(buffers.begin(), buffers.end(), [&](const mx::array& a) {
        const Mapping* m = mapping_of(mappings, address(a));
        return m == nullptr || !m->advised;
      }))
    read_mappings(mappings);
  std::vector<Range> spans;
  for (const mx::array& a : buffers) {
    const uintptr_t begin = address(a);
    Mapping* mapping = mapping_of(mappings, begin);
    if (mapping == nullptr) continue;
    const Range& m = mapping->range;
    if (!mapping->advised) madvise(reinterpret_cast<void*>(m.start), m.end - m.start, MADV_HUGEPAGE);
    mapping->advised = true;
    // The 2 MiB pages the buffer touches, within its mapping.
    const uintptr_t end = std::min(begin + a.buffer_size(), m.end);
    const uintptr_t lo = std::max(begin & ~(kHugePage - 1), (m.start + kHugePage - 1) & ~(kHugePage - 1));
    const uintptr_t hi = std::min((end + kHugePage - 1) & ~(kHugePage - 1), m.end & ~(kHugePage - 1));
    if (hi > lo) spans.push_back({lo, hi});
  }
  if (!collapse) return 0;
  std::sort(spans.begin(), spans.end(), [](const Range& a, const Range& b) { return a.start < b.start; });
  size_t bytes = 0;
  std::vector<Range> runs;
  for (size_t i = 0; i < spans.size();) {
    Range run = spans[i++];
    while (i < spans.size() && spans[i].start <= run.end) run.end = std::max(run.end, spans[i++].end);
    runs.push_back(run);
    bytes += run.end - run.start;
  }
  collapser().add(std::move(runs));
  return bytes;
#else
  (void)arrays;
  (void)n;
  (void)collapse;
  return 0;
#endif
}

void mlxs_huge_pages_wait(void) {
#ifdef __linux__
  collapser().wait();
#endif
}
