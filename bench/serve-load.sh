#!/usr/bin/env bash
# Load on `mlx serve` and on a peer, on loopback, with the same streaming client
# (`mlx bench --url`): 1–16 concurrent clients, default model. The peer is mlx_lm.server, or
# with BASELINE=path/to/mlx another build of ours (e.g. the code before a change). Both servers
# stay up, and each level is measured on one and then the other (alternating which goes first,
# level by level and round by round), so a machine whose load changes slows both alike. ROUNDS>1
# repeats every level; the table shows medians over the rounds.
#   bash scripts/setup.sh && bash bench/setup-peers.sh && bash bench/serve-load.sh [requests] [max-tokens]
#   BASELINE=/tmp/before/dist/mlx ROUNDS=3 LEVELS=1,4 bash bench/serve-load.sh 8 16
# OUT=dir writes the JSON there instead of .cache/bench/serve-load. Each server's CPU time over
# each level is recorded too (<system>-<round>-<level>.cpu, ms): CPU ms per output token is the
# steadier measure when other work shares the machine.
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
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_ready() { # url
  for _ in $(seq 1 120); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "server at $1 did not come up" >&2; return 1
}

# CPU time (user + system, every thread) of a process so far, in ms.
cpu_ms() { # pid
  awk -v tick="$(getconf CLK_TCK)" '{ print ($14 + $15) * 1000 / tick }' "/proc/$1/stat"
}

declare -A port=([ours]=18431 [$peer]=18432)
declare -A pid
dist/mlx serve -m "$model_dir" --port "${port[ours]}" >"$out/ours.log" 2>&1 & pids+=($!); pid[ours]=$!
case "$peer" in
  baseline) "$BASELINE" serve -m "$model_dir" --port "${port[$peer]}" >"$out/$peer.log" 2>&1 & pids+=($!); ready=/health ;;
  mlx-lm) .cache/peers/venv/bin/python -m mlx_lm server --model "$model_dir" --port "${port[$peer]}" >"$out/$peer.log" 2>&1 & pids+=($!); ready=/v1/models ;;
esac
pid[$peer]=$!
wait_ready "http://127.0.0.1:${port[ours]}/health"
wait_ready "http://127.0.0.1:${port[$peer]}$ready"

for round in $(seq 1 "$rounds"); do
  turn=$round
  for level in ${levels//,/ }; do
    if [ $((turn % 2)) -eq 1 ]; then order="ours $peer"; else order="$peer ours"; fi
    turn=$((turn + 1))
    for system in $order; do
      echo "round $round, $level clients: $system" >&2
      before=$(cpu_ms "${pid[$system]}")
      dist/mlx bench --url "http://127.0.0.1:${port[$system]}" -m "$model_dir" --concurrency "$level" \
        --requests "$requests" --max-tokens "$max_tokens" --json >"$out/$system-$round-$level.json"
      awk -v after="$(cpu_ms "${pid[$system]}")" -v before="$before" 'BEGIN { print after - before }' >"$out/$system-$round-$level.cpu"
    done
  done
done
echo "results in $out/" >&2
node_modules/.bin/bun bench/serve-load-table.ts "$out" "$peer"
