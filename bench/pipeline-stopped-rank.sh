#!/usr/bin/env bash
# How long a 3-rank pipeline takes to stop when one rank stops answering mid-prefill (issue #12).
#   bench/pipeline-stopped-rank.sh RANK [DELAY_S] [ITEMS]
# `mlx launch -n 3 -- serve` of a deep narrow tiny model split 0,1,2-159 (rank 2 does nearly all
# the work, so it holds a backlog of prefill chunks) with --peer-timeout 1.5; once /health says
# 200, a completion of ITEMS "Item i costs ..." sentences (200 ≈ 2,000 tokens), and DELAY_S later
# RANK is stopped (SIGSTOP). Prints how long the launcher took to exit after the signal (it waits
# 2 s before SIGKILL of a rank that does not stop) and the first error line. Run from the
# repository root; MLX_SHIM_PATH picks another shim, as everywhere.
set -u
stop=$1 delay=${2:-1.5} items=${3:-200}
model=.cache/bench/deep-160
[ -d "$model" ] || node_modules/.bin/bun -e "import { writeTinyModel } from './test/helpers/tiny-model'; writeTinyModel('$model', { layers: 160, seed: 3, contextLength: 4096 })"
prompt=$(python3 -c 'import sys; print(" ".join(f"Item {i} costs {(i*7)%23} coins." for i in range(int(sys.argv[1]))))' "$items")
log=$(mktemp)
NO_COLOR=1 node_modules/.bin/bun src/main.ts launch -n 3 -- serve --port 0 -m "$model" --layers 0,1,2-159 --peer-timeout 1.5 >/dev/null 2>"$log" &
launcher=$!
url=""
until [ -n "$url" ] && curl -sf "$url/health" >/dev/null; do
  sleep 0.2
  kill -0 $launcher 2>/dev/null || { echo "the launcher exited:"; cat "$log"; exit 1; }
  url=$(grep -o 'listening on http[^ ]*' "$log" | head -1 | cut -d' ' -f3)
done
body=$(python3 -c 'import json, sys; print(json.dumps({"model": sys.argv[1], "prompt": sys.argv[2], "max_tokens": 2, "temperature": 0}))' "$model" "$prompt")
curl -s -m 120 "$url/v1/completions" -H 'content-type: application/json' -d "$body" >/dev/null &
sleep "$delay"
pid=""
for p in $(ps -o pid= --ppid $launcher); do
  tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "MLX_RANK=$stop" && pid=$p
done
[ -n "$pid" ] || { echo "rank $stop is not running:"; cat "$log"; exit 1; }
stopped=$(date +%s.%N)
kill -STOP "$pid"
timeout 120 tail --pid=$launcher -f /dev/null
ended=$(date +%s.%N)
printf 'rank %s stopped: the launcher exited after %.1f s; first: %s\n' "$stop" "$(echo "$ended - $stopped" | bc)" "$(grep -m1 'error:' "$log")"
for p in $(ps -o pid= --ppid $launcher) $pid; do kill -9 "$p" 2>/dev/null; done
kill -9 $launcher 2>/dev/null
wait
rm -f "$log"
