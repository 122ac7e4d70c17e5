// How the attention kernels (float: attention.cpp, quantized: quantized_attention.cpp) spread a
// problem over our pool: by batch row, key/value head and query rows and, when that leaves
// threads idle (decode), by ranges of keys whose softmax states are merged afterwards.
#pragma once

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "attention_kernel.h"
#include "thread_pool.h"

namespace kernels {

// Query rows per tile: about 32 rows of scores (all heads of the group) share each key chunk.
constexpr int kRowsPerTile = 32;
// A range of keys worth a task of its own when splitting one row's keys (decode).
constexpr int kMinKeysPerSplit = 256;
// The most positions a speculative step checks at once: 64 drafted tokens (maxNumDraft in
// src/store/aliases.ts) and the one before them.
constexpr int kMostCheckedPositions = 65;

// Whether the mask hides key j from the row starting at `base` (false in a bool mask, -inf in an
// additive one).
template <class Problem>
bool hidden_key(const Problem& p, int64_t base, int j) {
  const int64_t at = base + int64_t(j) * p.mask.stride[3];
  return p.bool_mask ? !static_cast<const bool*>(p.mask.data)[at]
                     : static_cast<const float*>(p.mask.data)[at] == -INFINITY;
}

// The keys [first, end) some query row of a tile can see: the mask hides those before and after
// from all of them (a left-padded batch row's padding, a window's past, a batch's later
// positions). A tile's work covers just those, so its key chunks and split ranges lie where they
// would for that sequence alone, or for one position decoded alone, and its output is the same to
// the bit in a batch of any size (batch invariance); hidden keys cost no work either.
template <class Problem>
std::pair<int, int> visible_keys(const Problem& p, int b, int kv_head, int row_begin, int row_end) {
  if (!p.has_mask) return {0, p.kv_len};
  const int group = p.q_heads / p.kv_heads;
  // A mask broadcast over the heads (stride 0) is read for one of them.
  const int heads = p.mask.stride[1] == 0 ? 1 : group;
  int first = p.kv_len, end = 0;
  for (int head = kv_head * group; head < kv_head * group + heads; ++head)
    for (int i = row_begin; i < row_end; ++i) {
      const int64_t base = b * p.mask.stride[0] + head * p.mask.stride[1] + int64_t(i) * p.mask.stride[2];
      for (int j = 0; j < first; ++j)
        if (!hidden_key(p, base, j)) {
          first = j;
          break;
        }
      for (int j = p.kv_len - 1; j >= std::max(end, first); --j)
        if (!hidden_key(p, base, j)) {
          end = j + 1;
          break;
        }
    }
  return {first, std::max(first, end)};
}

// The first run of keys [begin, end) inside a tile's keys that the mask hides from all its rows,
// between keys they see (begin == end: none). A rotating cache (--max-kv-size) shows a position
// its sinks, hides what has left the window, then shows the window. Those hidden columns come and
// go as the cache compacts, which happens at other steps with a speculative check than when
// decoding one token at a time: the tile's parts are cut at the run, so that they cover the same
// visible keys whatever the columns in between (the cache keeps the run at least a column wide).
// Only a run after at most kMostSinks visible keys counts: a decode step reads each tile's mask
// row once more, and a row that sees more before its first hidden key has no sinks to set apart.
constexpr int kMostSinks = 64;

template <class Problem>
std::pair<int, int> hidden_run(const Problem& p, const AttentionTile& t) {
  if (!p.has_mask) return {t.key_end, t.key_end};
  const int group = p.q_heads / p.kv_heads;
  const int heads = p.mask.stride[1] == 0 ? 1 : group;
  auto hidden_from_all = [&](int j) {
    for (int head = t.kv_head * group; head < t.kv_head * group + heads; ++head)
      for (int i = t.row_begin; i < t.row_end; ++i) {
        const int64_t base = t.b * p.mask.stride[0] + head * p.mask.stride[1] + int64_t(i) * p.mask.stride[2];
        if (!hidden_key(p, base, j)) return false;
      }
    return true;
  };
  const int sinks_end = std::min(t.key_end, t.key_begin + kMostSinks + 1);
  int begin = t.key_begin;
  while (begin < sinks_end && !hidden_from_all(begin)) ++begin;
  if (begin == sinks_end) return {t.key_end, t.key_end};
  int end = begin;
  while (end < t.key_end && hidden_from_all(end)) ++end;
  // A hidden run that reaches the tile's last key is no run between visible keys.
  return end == t.key_end ? std::pair{t.key_end, t.key_end} : std::pair{begin, end};
}

// The parts a row's `keys` are split into when one tile holds all its queries (decode, a
// speculative check), which would leave threads idle. It depends on the row's own keys and the
// model's heads, never on the batch: a row is split as it would be alone.
template <class Problem>
int parts_for(const Problem& p, int keys) {
  const int threads = thread_count();
  const int most = std::max(1, keys / kMinKeysPerSplit);
  int parts = std::clamp((4 * threads + p.kv_heads - 1) / p.kv_heads, 1, most);
  // Equal shares for every thread (3 kv heads on 2 threads: 12 tasks, not 9 that leave one
  // thread a task more than the other while the other waits).
  while ((p.kv_heads * parts) % threads != 0 && parts < most) ++parts;
  return parts;
}

// Runs attend(tile, partial) over every tile of problem p (shape fields as AttentionProblem's)
// and, for split keys, merges the parts into p.out. The stream thread calls it, one at a time.
template <class Problem, class Attend>
void run_attention_tiles(const Problem& p, Attend attend) {
  const int group = p.q_heads / p.kv_heads;
  // A prompt's positions share tiles; a few (a decode step's one, a speculative check's) take a
  // tile each, computed as decoding that position alone computes it: a checked draft's bits are
  // those of decoding one token at a time. A check holds up to kMostCheckedPositions positions
  // (--num-draft's most, and the token before), more than a shared tile's rows where many query
  // heads share a key-value head; a chunk that few positions long costs little either way.
  const int widest = std::max(1, kRowsPerTile / group);
  const int positions = p.q_len <= std::max(widest, kMostCheckedPositions) ? 1 : widest;
  const int row_tiles = (p.q_len + positions - 1) / positions;
  const int tiles = p.batch * p.kv_heads * row_tiles;
  const int shift = p.kv_len - p.q_len;
  // A tile's keys: those its rows see (causal: up to its last row's position).
  auto tile_at = [&](int index) {
    const int row_tile = index % row_tiles, head = (index / row_tiles) % p.kv_heads, b = index / (row_tiles * p.kv_heads);
    const int row_begin = row_tile * positions, row_end = std::min(p.q_len, row_begin + positions);
    const auto [first, end] = visible_keys(p, b, head, row_begin, row_end);
    const int key_end = p.causal ? std::min(end, row_end + shift) : end;
    return AttentionTile{b, head, row_begin, row_end, std::min(first, key_end), key_end, true};
  };
  if (positions > 1) {
    parallel_for(tiles, [&](int index, int) { attend(tile_at(index), nullptr); });
    return;
  }

  // One position per tile: each tile's keys split in parts, whose softmax states merging
  // rescales to the common max. A tile of one part is normalised straight into p.out, as alone.
  thread_local std::vector<AttentionTile> parts;  // the stream thread's, as the partials below
  thread_local std::vector<int> parts_begin;      // each tile's first part, then the end
  parts.clear();
  parts_begin.clear();
  for (int index = 0; index < tiles; ++index) {
    const AttentionTile t = tile_at(index);
    parts_begin.push_back(int(parts.size()));
    // Keys [begin, end) of t split by their own count.
    auto split = [&](int begin, int end) {
      const int count = parts_for(p, end - begin);
      const int per_part = (end - begin + count - 1) / count;
      for (int part = 0; part < count; ++part) {
        AttentionTile range = t;
        range.key_begin = std::min(end, begin + part * per_part);
        range.key_end = std::min(end, range.key_begin + per_part);
        range.first_part = int(parts.size()) == parts_begin.back();
        parts.push_back(range);
      }
    };
    const auto [hidden_begin, hidden_end] = hidden_run(p, t);
    split(t.key_begin, hidden_begin);
    if (hidden_begin < t.key_end) split(hidden_end, t.key_end);
  }
  parts_begin.push_back(int(parts.size()));
  const int stride = partial_stride(p);
  const size_t part_size = size_t(group) * positions * stride;
  thread_local std::vector<float> partials;
  partials.resize(parts.size() * part_size);
  float* const partial_base = partials.data();
  const int* const begin = parts_begin.data();
  const AttentionTile* const all = parts.data();
  parallel_for(int(parts.size()), [&](int task, int) {
    const int tile = (all[task].b * p.kv_heads + all[task].kv_head) * row_tiles + all[task].row_begin;
    const bool alone = begin[tile + 1] - begin[tile] == 1;
    attend(all[task], alone ? nullptr : partial_base + size_t(task) * part_size);
  });
  // The merge is a few rows of Dv floats per tile: done here, it saves waking the pool once more.
  for (int index = 0; index < tiles; ++index) {
    const int count = begin[index + 1] - begin[index];
    if (count == 1) continue;
    const AttentionTile& t = all[begin[index]];
    const int tile_positions = t.row_end - t.row_begin;
    for (int r = 0; r < group * tile_positions; ++r) {
      const float* first = partial_base + size_t(begin[index]) * part_size + size_t(r) * stride;
      float top = -INFINITY;
      for (int s = 0; s < count; ++s) top = std::max(top, first[s * part_size]);
      const int head = t.kv_head * group + r / tile_positions, i = t.row_begin + r % tile_positions;
      float* out = p.out + ((size_t(t.b) * p.q_heads + head) * p.q_len + i) * p.value_dim;
      std::fill(out, out + p.value_dim, 0.0f);
      if (top == -INFINITY) continue;  // every key hidden
      float sum = 0;
      for (int s = 0; s < count; ++s) {
        const float* state = first + s * part_size;
        if (state[0] == -INFINITY) continue;
        const float weight = std::exp(state[0] - top);
        sum += state[1] * weight;
        for (int d = 0; d < p.value_dim; ++d) out[d] += state[2 + d] * weight;
      }
      for (int d = 0; d < p.value_dim; ++d) out[d] /= sum;
    }
  }
}

}  // namespace kernels
