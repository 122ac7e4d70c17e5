#!/usr/bin/env bash
# Load on `mlx serve` and on mlx_lm.server, one after the other in the same run, on loopback,
# with the same streaming client (`mlx bench --url`): 1–16 concurrent clients, default model.
#   bash scripts/setup.sh && bash bench/setup-peers.sh && bash bench/serve-load.sh [requests] [max-tokens]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-16}
max_tokens=${2:-16}
levels=${LEVELS:-1,2,4,8,16}
export MLX_HOME="${MLX_HOME:-$PWD/.cache/mlx-home}"
model_dir=.cache/bench/smollm2-mlx
[ -f "$model_dir/config.json" ] || dist/mlx convert smollm2 "$model_dir" --force
out=.cache/bench/serve-load
mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_ready() { # url
  for _ in $(seq 1 120); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "server at $1 did not come up" >&2; return 1
}

dist/mlx serve -m "$model_dir" --port 18431 >"$out/ours.log" 2>&1 & pids+=($!)
wait_ready http://127.0.0.1:18431/health
dist/mlx bench --url http://127.0.0.1:18431 -m "$model_dir" --concurrency "$levels" --requests "$requests" --max-tokens "$max_tokens" --json >"$out/ours.json"
kill "${pids[0]}"

.cache/peers/venv/bin/python -m mlx_lm server --model "$model_dir" --port 18432 >"$out/mlx-lm.log" 2>&1 & pids+=($!)
wait_ready http://127.0.0.1:18432/v1/models
dist/mlx bench --url http://127.0.0.1:18432 -m "$model_dir" --concurrency "$levels" --requests "$requests" --max-tokens "$max_tokens" --json >"$out/mlx-lm.json"
echo "results in $out/ours.json and $out/mlx-lm.json"
node_modules/.bin/bun bench/serve-load-table.ts "$out"
