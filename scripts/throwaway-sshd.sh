# Sourced by scripts/ssh-launch-check.sh and bench/netns-lan.sh: sshd instances of our own, on
# addresses we choose, with a throwaway key, that leave the system's ssh setup alone. Needs
# root; installs Debian's openssh-server when missing.
#   sshd_setup DIR               keys, sshd_config and an empty ssh_config in DIR
#   sshd_start DIR NAME ADDRESS PORT [PREFIX...]   one sshd (PREFIX: e.g. ip netns exec NS)
#   ssh_host DIR ADDRESS PORT NAME...              ssh_config names for that sshd
#   sshd_stop_all DIR             stops every sshd started in DIR

sshd_setup() {
  local dir=$1
  if [ ! -x /usr/sbin/sshd ]; then
    apt-get install -y --no-install-recommends openssh-server >/dev/null ||
      { apt-get update >/dev/null && apt-get install -y --no-install-recommends openssh-server >/dev/null; }
  fi
  mkdir -p /run/sshd # the privilege separation directory Debian's sshd expects
  ssh-keygen -q -t ed25519 -N "" -f "$dir/host_key"
  ssh-keygen -q -t ed25519 -N "" -f "$dir/client_key"
  cp "$dir/client_key.pub" "$dir/authorized_keys"
  cat >"$dir/sshd_config" <<CONFIG
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
CONFIG
  : >"$dir/ssh_config"
}

sshd_start() {
  local dir=$1 name=$2 address=$3 port=$4
  shift 4
  "$@" /usr/sbin/sshd -f "$dir/sshd_config" -o "ListenAddress=$address" -o "Port=$port" \
    -o "PidFile=$dir/sshd-$name.pid" -E "$dir/sshd-$name.log"
  for _ in $(seq 50); do [ -s "$dir/sshd-$name.pid" ] && return 0; sleep 0.1; done
  echo "sshd $name did not start: $(cat "$dir/sshd-$name.log")" >&2
  return 1
}

# What ~/.ssh/config does for real machines, for `mlx launch --ssh-config`.
ssh_host() {
  local dir=$1 address=$2 port=$3
  shift 3
  cat >>"$dir/ssh_config" <<CONFIG
Host $*
  HostName $address
  Port $port
  User $(id -un)
  IdentityFile $dir/client_key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
CONFIG
}

sshd_stop_all() {
  local pidfile
  for pidfile in "$1"/sshd-*.pid; do
    if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
}
