#!/usr/bin/env bash
# bench/pipeline-lan.ts with ranks on an emulated LAN: one network namespace per machine, each
# joined to a bridge by a veth pair whose namespace end has `tc netem` (0.5 ms delay, 1 Gbit/s
# each way), and an sshd in each; `mlx launch --hostfile` starts the ranks there over ssh, as on
# real machines. A kernel without sch_netem gets the same link from bench/lan-relay.py instead: a
# TUN interface per machine for the ranks' ring, whose packets a user-space relay delays and
# paces. Loopback configurations run in the same interleaved rounds. Needs root (ip, tc, python3;
# installs Debian's openssh-server when missing). Everything is torn down at exit, failed or not.
#   MLX_HOME=$PWD/.cache/mlx-home bash bench/netns-lan.sh [pipeline-lan.ts options, e.g. --rounds 2]
#   MACHINES=3 DELAY=0.5ms RATE=1gbit (defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
export MLX_HOME=${MLX_HOME:-$PWD/.cache/mlx-home}
machines=${MACHINES:-3}
delay=${DELAY:-0.5ms}
rate=${RATE:-1gbit}
prefix=mlxlan
net=10.77.0
ring_net=10.78.0 # the relay's links, when there is no netem
bridge=$prefix-br
relay_pid=

source scripts/throwaway-sshd.sh
for k in $(seq 0 $((machines - 1))); do
  if ip netns list | grep -qw "$prefix$k"; then echo "namespace $prefix$k exists: another run, or left over (ip netns del $prefix$k)" >&2; exit 1; fi
done
work=$(mktemp -d /tmp/mlx-netns-lan.XXXXXX)
cleanup() {
  if [ -n "$relay_pid" ]; then
    kill -0 "$relay_pid" 2>/dev/null || { echo "the relay had stopped:" >&2; cat "$work/relay.log" >&2; }
    kill "$relay_pid" 2>/dev/null
    wait "$relay_pid" 2>/dev/null || true
  fi
  sshd_stop_all "$work"
  for k in $(seq 0 $((machines - 1))); do ip netns del "$prefix$k" 2>/dev/null || true; done
  ip link del "$bridge" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sshd_setup "$work"
ip link add "$bridge" type bridge
ip addr add "$net.254/24" dev "$bridge"
ip link set "$bridge" up
hosts=()
relay=
for k in $(seq 0 $((machines - 1))); do
  ns=$prefix$k address=$net.$((k + 1))
  ip netns add "$ns"
  ip link add "$ns-h" type veth peer name eth0 netns "$ns"
  ip link set "$ns-h" master "$bridge" up
  ip -n "$ns" addr add "$address/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  # Every packet leaving a machine waits 0.5 ms and shares 1 Gbit/s: a LAN's one-way latency.
  # A kernel without sch_netem (no modules to load in some VMs) gets the relay instead.
  if [ -z "$relay" ] && ! ip netns exec "$ns" tc qdisc add dev eth0 root netem delay "$delay" rate "$rate" 2>/dev/null; then
    echo "no netem in this kernel: the ranks' links go through bench/lan-relay.py ($delay, $rate)" >&2
    relay=1
  fi
  sshd_start "$work" "$ns" "$address" 22 ip netns exec "$ns"
  ring_address=$address
  [ -z "$relay" ] || ring_address=$ring_net.$((k + 1))
  hosts+=("{\"ssh\": \"$address\", \"ips\": [\"$ring_address\"]}")
done
if [ -n "$relay" ]; then
  namespaces=$(seq -s, -f "$prefix%g" 0 $((machines - 1)))
  delay_ms=${delay%ms}
  case $rate in *gbit) rate_mbit=$((${rate%gbit} * 1000)) ;; *mbit) rate_mbit=${rate%mbit} ;; *) echo "RATE: NNmbit or NNgbit" >&2; exit 1 ;; esac
  python3 bench/lan-relay.py --namespaces "$namespaces" --net "$ring_net" --delay-ms "$delay_ms" --rate-mbit "$rate_mbit" >"$work/relay.log" 2>&1 &
  relay_pid=$!
  until grep -q ready "$work/relay.log"; do
    kill -0 "$relay_pid" 2>/dev/null || { cat "$work/relay.log" >&2; exit 1; }
    sleep 0.1
  done
  # Rank 0's server listens on its ring address: reach it over the bridge.
  ip route add "$ring_net.1/32" via "$net.1"
fi
ssh_host "$work" "%h" 22 "$net.*"
hostfiles=()
for n in $(seq 2 "$machines"); do
  (IFS=,; echo "[${hosts[*]:0:$n}]") >"$work/lan-$n.json"
  hostfiles+=(--hostfile "$work/lan-$n.json")
done

if command -v ping >/dev/null; then
  to=$net.2
  [ -z "$relay" ] || to=$ring_net.2
  echo "round trip ${prefix}0 → ${prefix}1 (ping): $(ip netns exec "${prefix}0" ping -q -c 20 -i 0.05 "$to" | tail -1)" >&2
fi
node_modules/.bin/bun bench/pipeline-lan.ts "${hostfiles[@]}" --ssh-config "$work/ssh_config" "$@"
