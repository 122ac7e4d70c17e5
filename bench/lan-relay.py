"""An emulated LAN in user space, for kernels without sch_netem (tc's delay): each "machine" (a
network namespace) gets a TUN interface whose packets this process reads, holds for the link's
serialisation time at the given rate plus a one-way delay, and writes to the TUN of the machine
they are addressed to. That is what `tc netem delay D rate R` on each machine's interface does:
every packet, TCP's acknowledgements included, pays the wire. Run by bench/netns-lan.sh.

  python3 bench/lan-relay.py --namespaces mlxlan0,mlxlan1 --net 10.78.0 --delay-ms 0.5 --rate-mbit 1000

Machine k (namespace k in the list) gets address NET.(k+1)/24 on its TUN; the relay prints
"ready" once every interface is up, and relays until it is stopped (SIGTERM).
"""

import argparse
import fcntl
import heapq
import os
import select
import signal
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--namespaces", required=True, help="comma-separated, one per machine")
    parser.add_argument("--net", default="10.78.0", help="the first three octets of the machines' addresses")
    parser.add_argument("--delay-ms", type=float, default=0.5)
    parser.add_argument("--rate-mbit", type=float, default=1000.0)
    parser.add_argument("--mtu", type=int, default=1500)
    args = parser.parse_args()
    namespaces = args.namespaces.split(",")
    delay = args.delay_ms / 1000
    seconds_per_byte = 8 / (args.rate_mbit * 1e6)

    tuns = []
    for k, ns in enumerate(namespaces):
        name = f"lantun{k}"
        tuns.append(open_tun(name))
        # The interface moves into the machine's namespace; this process keeps its end.
        for command in (
            ["ip", "link", "set", name, "netns", ns],
            ["ip", "-n", ns, "link", "set", name, "mtu", str(args.mtu)],
            ["ip", "-n", ns, "addr", "add", f"{args.net}.{k + 1}/24", "dev", name],
            ["ip", "-n", ns, "link", "set", name, "up"],
        ):
            subprocess.run(command, check=True)
    machine_of = {bytes(map(int, f"{args.net}.{k + 1}".split("."))): k for k in range(len(namespaces))}

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)

    # Each machine's link is free again at: packets leave it one after another, at the rate.
    link_free = [0.0] * len(tuns)
    # (delivery time, order, destination, packet)
    in_flight: list[tuple[float, int, int, bytes]] = []
    order = 0
    while True:
        now = time.monotonic()
        while in_flight and in_flight[0][0] <= now:
            _, _, dst, packet = heapq.heappop(in_flight)
            try:
                os.write(tuns[dst], packet)
            except BlockingIOError:
                pass  # the machine's queue is full: dropped, as a wire would
        timeout = max(0.0, in_flight[0][0] - now) if in_flight else None
        # select() waits to the microsecond (epoll would round up to a millisecond).
        readable, _, _ = select.select(tuns, [], [], timeout)
        for src, fd in enumerate(tuns):
            if fd not in readable:
                continue
            while True:
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if len(packet) < 20 or packet[0] >> 4 != 4:
                    continue  # not IPv4
                dst = machine_of.get(packet[16:20])
                if dst is None or dst == src:
                    continue
                arrived = time.monotonic()
                start = max(arrived, link_free[src])
                link_free[src] = start + len(packet) * seconds_per_byte
                order += 1
                heapq.heappush(in_flight, (link_free[src] + delay, order, dst, packet))


if __name__ == "__main__":
    main()
