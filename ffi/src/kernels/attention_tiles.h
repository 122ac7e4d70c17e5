// How the attention kernels (float: attention.cpp, quantized: quantized_attention.cpp) spread a
// problem over our pool: by batch row, key/value head and query rows and, when that leaves
// threads idle (decode), by ranges of keys whose softmax states are merged afterwards.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "attention_kernel.h"
#include "thread_pool.h"

namespace kernels {

// Query rows per tile: about 32 rows of scores (all heads of the group) share each key chunk.
constexpr int kRowsPerTile = 32;
// A range of keys worth a task of its own when splitting one row's keys (decode).
constexpr int kMinKeysPerSplit = 256;

// Runs attend(tile, partial) over every tile of problem p (shape fields as AttentionProblem's)
// and, for split keys, merges the parts into p.out. The stream thread calls it, one at a time.
template <class Problem, class Attend>
void run_attention_tiles(const Problem& p, Attend attend) {
  const int group = p.q_heads / p.kv_heads;
  const int positions = std::max(1, kRowsPerTile / group);
  const int row_tiles = (p.q_len + positions - 1) / positions;
  const int tiles = p.batch * p.kv_heads * row_tiles;
  // Few tiles (decode: one query row per head) leave threads idle: split the keys too.
  const int wanted = 4 * thread_count();
  int splits = 1;
  if (tiles < wanted) {
    const int most = std::max(1, p.kv_len / kMinKeysPerSplit);
    splits = std::clamp((wanted + tiles - 1) / tiles, 1, most);
    // Equal shares for every thread (3 kv heads on 2 threads: 12 tasks, not 9 that leave one
    // thread a task more than the other while the other waits).
    while ((tiles * splits) % thread_count() != 0 && splits < most) ++splits;
  }
  const int keys_per_split = (p.kv_len + splits - 1) / splits;
  auto tile_at = [&](int index) {
    const int row_tile = index % row_tiles, head = (index / row_tiles) % p.kv_heads, b = index / (row_tiles * p.kv_heads);
    return AttentionTile{b, head, row_tile * positions, std::min(p.q_len, (row_tile + 1) * positions), 0, p.kv_len};
  };
  if (splits == 1) {
    parallel_for(tiles, [&](int index, int) { attend(tile_at(index), nullptr); });
    return;
  }

  // Split keys: each part leaves its softmax state; merging rescales them to the common max.
  const int stride = partial_stride(p);
  const int rows = group * positions;
  const size_t part_size = size_t(rows) * stride;
  thread_local std::vector<float> partials;  // the stream thread's: pass its address to the tasks
  partials.resize(size_t(tiles) * splits * part_size);
  float* const partial_base = partials.data();
  parallel_for(tiles * splits, [&](int task, int) {
    AttentionTile t = tile_at(task / splits);
    t.key_begin = (task % splits) * keys_per_split;
    t.key_end = std::min(p.kv_len, t.key_begin + keys_per_split);
    attend(t, partial_base + size_t(task) * part_size);
  });
  // The merge is a few rows of Dv floats per tile (splitting only happens when tiles are few):
  // done here, it saves waking the pool once more.
  for (int index = 0; index < tiles; ++index) {
    const AttentionTile t = tile_at(index);
    const int tile_positions = t.row_end - t.row_begin;
    for (int r = 0; r < group * tile_positions; ++r) {
      const float* first = partial_base + size_t(index) * splits * part_size + size_t(r) * stride;
      float top = -INFINITY;
      for (int s = 0; s < splits; ++s) top = std::max(top, first[s * part_size]);
      const int head = t.kv_head * group + r / tile_positions, i = t.row_begin + r % tile_positions;
      float* out = p.out + ((size_t(t.b) * p.q_heads + head) * p.q_len + i) * p.value_dim;
      std::fill(out, out + p.value_dim, 0.0f);
      if (top == -INFINITY) continue;  // every key hidden
      float sum = 0;
      for (int s = 0; s < splits; ++s) {
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
