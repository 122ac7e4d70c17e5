#!/usr/bin/env bash
# The ssh path of `mlx launch`, against a real sshd on 127.0.0.1 (not CI: it needs root and
# Debian's openssh-server, which it installs when missing). It starts its own sshd on a free
# port with its own config and a throwaway key (scripts/throwaway-sshd.sh).
# Checks, each against the single process or the processes left behind:
#   1. rank 0 here, ranks 1 and 2 over ssh: `run --temp 0` prints the single process's tokens;
#   2. every rank over ssh (rank 0's stdout comes back through ssh): the same tokens;
#   3. a host ssh cannot reach: the launcher names its rank, exits non-zero, stops the others;
#   4. `serve` with remote ranks, SIGTERM to the launcher: every rank ends, exit status 0;
#   5. `serve` with remote ranks, SIGKILL to the launcher: the remote ranks end anyway.
#   MLX_HOME=$PWD/.cache/mlx-home bash scripts/ssh-launch-check.sh [model]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-smollm2}
export MLX_HOME=${MLX_HOME:-$PWD/.cache/mlx-home}
bun=$PWD/node_modules/.bin/bun
mlx=("$bun" "$PWD/src/main.ts")

source scripts/throwaway-sshd.sh
work=$(mktemp -d /tmp/mlx-ssh-check.XXXXXX)
chmod 700 "$work"
cleanup() {
  sshd_stop_all "$work"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$bun" -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'; }
ssh_port=$(free_port)
rank_port=$(free_port)
sshd_setup "$work"
sshd_start "$work" loopback 127.0.0.1 "$ssh_port"
# Host names only this config knows, all on our sshd.
ssh_host "$work" 127.0.0.1 "$ssh_port" rank0 rank1 rank2
echo '[{"ssh": "localhost", "ips": ["127.0.0.1"]}, {"ssh": "rank1", "ips": ["127.0.0.1"]}, {"ssh": "rank2", "ips": ["127.0.0.1"]}]' >"$work/mixed.json"
echo '[{"ssh": "rank0", "ips": ["127.0.0.1"]}, {"ssh": "rank1", "ips": ["127.0.0.1"]}]' >"$work/remote.json"
echo '[{"ssh": "localhost", "ips": ["127.0.0.1"]}, {"ssh": "rank1", "ips": ["127.0.0.1"]}, {"ssh": "nowhere.invalid", "ips": ["127.0.0.1"]}]' >"$work/unreachable.json"
launch=("${mlx[@]}" launch --ssh-config "$work/ssh_config" --starting-port "$rank_port")

# The processes of ranks started over ssh by this script (their hostfiles are /tmp/mlx-ring.*).
remote_ranks() {
  for environ in /proc/[0-9]*/environ; do
    if grep -qsz '^MLX_HOSTFILE=/tmp/mlx-ring\.' "$environ"; then
      pid=${environ#/proc/}
      echo "${pid%/environ}"
    fi
  done
}
expect_no_ranks() {
  for _ in $(seq 100); do [ -z "$(remote_ranks)" ] && return 0; sleep 0.1; done
  echo "FAIL: $1: ranks still running: $(remote_ranks | tr '\n' ' ')" >&2
  exit 1
}
[ -z "$(remote_ranks)" ] || { echo "ranks of an earlier launch are running: $(remote_ranks)" >&2; exit 1; }

prompt=(run -m "$model" --temp 0 --max-tokens 24 "Why is the sky blue?")
alone=$("${mlx[@]}" "${prompt[@]}")

split=$("${launch[@]}" --hostfile "$work/mixed.json" -- "${prompt[@]}")
[ "$split" = "$alone" ] || { printf 'FAIL 1: rank 0 here, 2 over ssh\nalone: %s\nsplit: %s\n' "$alone" "$split" >&2; exit 1; }
echo "ok 1: rank 0 here, ranks 1-2 over ssh: the single process's tokens"
expect_no_ranks "1"

split=$("${launch[@]}" --hostfile "$work/remote.json" -- "${prompt[@]}")
[ "$split" = "$alone" ] || { printf 'FAIL 2: every rank over ssh\nalone: %s\nsplit: %s\n' "$alone" "$split" >&2; exit 1; }
echo "ok 2: every rank over ssh: the single process's tokens"
expect_no_ranks "2"

status=0
err=$("${launch[@]}" --hostfile "$work/unreachable.json" -- "${prompt[@]}" 2>&1 >/dev/null) || status=$?
[ "$status" -ne 0 ] && grep -q '^error: rank 2 ' <<<"$err" || { echo "FAIL 3 (status $status): $err" >&2; exit 1; }
echo "ok 3: an unreachable host, status $status: $(grep '^error: rank' <<<"$err")"
expect_no_ranks "3"

# A launched serve with remote ranks; waits for /health, leaves the launcher's pid in $server.
start_serve() {
  "${launch[@]}" --hostfile "$work/mixed.json" -- serve -m "$model" --port 0 2>"$work/serve.log" &
  server=$!
  for _ in $(seq 600); do
    url=$(grep -o 'listening on http://[^ ]*' "$work/serve.log" | head -1 | cut -d' ' -f3) || true
    if [ -n "$url" ] && curl -sf "$url/health" >/dev/null; then return 0; fi
    sleep 0.5
  done
  echo "serve did not start: $(cat "$work/serve.log")" >&2
  exit 1
}

start_serve
[ "$(remote_ranks | wc -l)" -eq 2 ] || { echo "FAIL 4: expected 2 remote ranks, found: $(remote_ranks)" >&2; exit 1; }
kill -TERM "$server"
status=0
wait "$server" || status=$?
[ "$status" -eq 0 ] || { echo "FAIL 4: the launcher exited $status: $(tail -5 "$work/serve.log")" >&2; exit 1; }
expect_no_ranks "4"
echo "ok 4: SIGTERM to the launcher of serve: every rank ended, status 0"

start_serve
rank0=$(pgrep -P "$server" -x bun || true) # rank 0 runs here, as the launcher's child
kill -KILL "$server"
wait "$server" 2>/dev/null || true
expect_no_ranks "5"
# Orphaned, rank 0 would stop by its peer watchdog once it finds the others gone; no need to wait.
[ -z "$rank0" ] || kill "$rank0" 2>/dev/null || true
echo "ok 5: SIGKILL to the launcher: the remote ranks ended with their ssh connections"
