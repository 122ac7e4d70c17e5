#!/usr/bin/env bash
# `mlx bench` of one model in this tree against another checkout of it (its TypeScript and its own
# built shim), alternated round by round, one process per measure:
#   git worktree add --detach /tmp/base <commit>; link node_modules and .cache into it, and .mlx's
#   MLX files; build its shim (cmake -S ffi -B build/ffi ...) into /tmp/base/.mlx
#   MLX_HOME=$PWD/.cache/mlx-home BASELINE=/tmp/base bash bench/bench-trees.sh gemma3 [rounds]
# Prints one line per measure: round, tree, prompt and generation tokens/s (pp256, tg64, means of
# 3 runs), weights' bytes, MLX's peak bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?name a model}
rounds=${2:-5}
for round in $(seq 1 "$rounds"); do
  for tree in "${BASELINE:?set BASELINE to the other checkout}" "$PWD"; do
    figures=$(cd "$tree" && MLX_SHIM_PATH="$tree/.mlx/libmlx_shim.so" node_modules/.bin/bun src/main.ts bench \
      -m "$model" -n 3 -p 256 -g 64 --json 2>/dev/null | node_modules/.bin/bun -e '
        const m = (await Bun.stdin.json()).models[0];
        const mean = (s) => s.mean.toFixed(1);
        console.log(mean(m.prompt_tokens_per_second), mean(m.generation_tokens_per_second), m.size_bytes, m.peak_memory_bytes);')
    echo "$round $tree $figures"
  done
done
