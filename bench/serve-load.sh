#!/usr/bin/env bash
# Load on `mlx serve` and on a peer, on loopback, with the same streaming client
# (`mlx bench --url`): 1–16 concurrent clients, default model. The peer is mlx_lm.server, or
# with BASELINE=path/to/mlx another build of ours (e.g. the code before a change). ROUNDS>1
# repeats the pair, alternating which goes first; the table shows medians over the rounds.
#   bash scripts/setup.sh && bash bench/setup-peers.sh && bash bench/serve-load.sh [requests] [max-tokens]
#   BASELINE=/tmp/before/dist/mlx ROUNDS=3 LEVELS=1,4 bash bench/serve-load.sh 8 16
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-16}
max_tokens=${2:-16}
levels=${LEVELS:-1,2,4,8,16}
rounds=${ROUNDS:-1}
export MLX_HOME="${MLX_HOME:-$PWD/.cache/mlx-home}"
model_dir=.cache/bench/smollm2-mlx
[ -f "$model_dir/config.json" ] || dist/mlx convert smollm2 "$model_dir" --force
out=${OUT:-.cache/bench/serve-load}
rm -rf "$out" && mkdir -p "$out"
peer=${BASELINE:+baseline}
peer=${peer:-mlx-lm}
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

wait_ready() { # url
  for _ in $(seq 1 120); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "server at $1 did not come up" >&2; return 1
}

measure() { # system round
  local port url
  case "$1" in
    ours) port=18431; dist/mlx serve -m "$model_dir" --port $port >"$out/$1.log" 2>&1 & pid=$!; url=http://127.0.0.1:$port/health ;;
    baseline) port=18432; "$BASELINE" serve -m "$model_dir" --port $port >"$out/$1.log" 2>&1 & pid=$!; url=http://127.0.0.1:$port/health ;;
    mlx-lm) port=18432; .cache/peers/venv/bin/python -m mlx_lm server --model "$model_dir" --port $port >"$out/$1.log" 2>&1 & pid=$!; url=http://127.0.0.1:$port/v1/models ;;
  esac
  wait_ready "$url"
  dist/mlx bench --url "http://127.0.0.1:$port" -m "$model_dir" --concurrency "$levels" --requests "$requests" --max-tokens "$max_tokens" --json >"$out/$1-$2.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

for round in $(seq 1 "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then order="ours $peer"; else order="$peer ours"; fi
  for system in $order; do measure "$system" "$round"; done
done
echo "results in $out/" >&2
node_modules/.bin/bun bench/serve-load-table.ts "$out" "$peer"
