#!/usr/bin/env bash
# Decode tokens/s of `mlx run` with a repetition penalty (1.1, Ollama's default) and without, this
# tree against another checkout of it, alternated round by round (one process per measure):
#   git archive <commit> | tar -x -C /tmp/base; for d in node_modules .mlx .cache; do ln -s $PWD/$d /tmp/base/$d; done
#   MLX_HOME=$PWD/.cache/mlx-home BASELINE=/tmp/base bash bench/penalty-decode.sh [rounds]
# Prints one line per measure: round, tree, penalty, decode tokens/s (from --verbose).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
for round in $(seq 1 "$rounds"); do
  for tree in "${BASELINE:?set BASELINE to the other checkout}" "$PWD"; do
    for penalty in 1.1 1; do
      speed=$(cd "$tree" && node_modules/.bin/bun src/main.ts run --temp 0 --max-tokens 128 --repeat-penalty "$penalty" \
        -v "Write a story about a dragon" 2>&1 >/dev/null | sed -n 's/.*generation: *128 tokens, \([0-9.]*\) tokens\/s.*/\1/p')
      echo "$round $tree repeat-penalty=$penalty $speed"
    done
  done
done
