#!/usr/bin/env bash
# bench/draft-followup.ts on `serve -m smollm2 --draft-model smollm2`, this tree against another
# checkout of it, alternated round by round (a fresh server per measure):
#   git archive <commit> | tar -x -C /tmp/base; for d in node_modules .mlx .cache; do ln -s $PWD/$d /tmp/base/$d; done
#   MLX_HOME=$PWD/.cache/mlx-home BASELINE=/tmp/base bash bench/draft-followup.sh [rounds]
# Prints one line per measure: round, tree, then each turn's times (ms) and cached prompt tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
port=${PORT:-18790}
for round in $(seq 1 "$rounds"); do
  for tree in "${BASELINE:?set BASELINE to the other checkout}" "$PWD"; do
    (cd "$tree" && exec node_modules/.bin/bun src/main.ts serve -m smollm2 --draft-model smollm2 --port "$port") >/dev/null 2>&1 &
    server=$!
    for _ in $(seq 1 240); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.5; done
    echo "$round $tree $(node_modules/.bin/bun bench/draft-followup.ts "http://127.0.0.1:$port")"
    kill "$server"
    wait "$server" 2>/dev/null || true
  done
done
