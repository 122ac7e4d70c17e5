// One hop of a split model without the model: rank 0 sends a decode step's message (header and
// hidden states) to rank 1, which sends the hidden states back, as a 2-rank pipeline's ranks do;
// the round trip, with and without the watchdog, the poll() before each receive and the header
// read directly, interleaved. With --links N each rank listens on N loopback addresses (as a
// machine with N network links): MLX's ring then splits each transfer over N connections.
// Two processes on loopback: two hops and MLX's transfers, no layers.
//   bun bench/pipeline-hop.ts [--iterations 300] [--width 576] [--links 1]
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  decodeHeader,
  encodeMessage,
  Flag,
  headerBytes,
  headerInts,
  headerOf,
  Op,
  sendMessage,
} from "../src/engine/pipeline/protocol";
import { loopbackHosts } from "../src/cmd/launch";
import { ringHostfile } from "../src/cmd/launch-plan";
import * as mx from "../src/mlx";
import { median } from "./lib";

const { distributed } = mx;
const { values } = parseArgs({
  options: {
    iterations: { type: "string", default: "300" },
    width: { type: "string", default: "576" },
    links: { type: "string", default: "1" },
    rank: { type: "string" },
    hostfile: { type: "string" },
  },
});
const iterations = Number(values.iterations);
const width = Number(values.width);
const links = Number(values.links);

if (values.rank === undefined) {
  const dir = mkdtempSync(join(tmpdir(), "hop-"));
  const hostfile = join(dir, "ring.json");
  writeFileSync(hostfile, ringHostfile(await loopbackHosts(2, links)));
  const ranks = [0, 1].map((rank) =>
    Bun.spawn(
      [process.execPath, import.meta.path, ...process.argv.slice(2), "--rank", `${rank}`, "--hostfile", hostfile],
      {
        stdout: rank === 0 ? "inherit" : "ignore",
        stderr: "inherit",
      },
    ),
  );
  const codes = await Promise.all(ranks.map((r) => r.exited));
  process.exit(Math.max(...codes));
}

const group = await distributed.init({ hostfile: values.hostfile, rank: Number(values.rank) });
const other = 1 - group.rank;
const timeout = 30_000;

/**
 * `read`: the header read by this thread from the ring's connection (distributed.read), as a
 * stage does. `plainSend`: the message in one distributed.send, as before sendMessage (right over
 * one connection per neighbour only).
 */
type Variant = { name: string; watchdog: boolean; poll: boolean; read: boolean; plainSend?: boolean };
const variants: Variant[] = [
  {
    name: "as the pipeline: watchdog armed, poll() before each receive, header read directly",
    watchdog: true,
    poll: true,
    read: true,
  },
  ...(links === 1
    ? [{ name: "the message in one distributed.send", watchdog: true, poll: true, read: true, plainSend: true }]
    : []),
  { name: "header received through MLX (an evaluation)", watchdog: true, poll: true, read: false },
  { name: "no watchdog", watchdog: false, poll: true, read: true },
  { name: "no poll() (the ring's receive spins)", watchdog: true, poll: false, read: false },
];

function receive(v: Variant, shape: number[], dtype: mx.DtypeCode): mx.MxArray {
  if (v.watchdog) distributed.armWatchdog(timeout, "hop: peer silent");
  if (v.poll) distributed.waitReadable(timeout);
  const a = distributed.recv(shape, dtype, other);
  mx.evaluate(a);
  if (v.watchdog) distributed.disarmWatchdog();
  return a;
}

function readHeader(v: Variant): Uint8Array | undefined {
  if (!v.read) return undefined;
  if (v.watchdog) distributed.armWatchdog(timeout, "hop: peer silent");
  if (v.poll) distributed.waitReadable(timeout);
  const bytes = distributed.read(headerBytes, other);
  if (v.watchdog) distributed.disarmWatchdog();
  return bytes;
}

function send(v: Variant, sent: mx.MxArray): void {
  if (v.watchdog) distributed.armWatchdog(timeout, "hop: peer stopped reading");
  mx.evaluate(sent);
  if (v.watchdog) distributed.disarmWatchdog();
}

const header = headerOf(
  { op: Op.forward, set: 1, rows: 1, length: 1, flags: Flag.decode, dtype: mx.Dtype.float32, width },
  0,
);

/**
 * A decode step's message out (header and hidden states, sent as the pipeline sends them) and
 * the hidden states back: the receiver reads the header, then the payload it announces, as a
 * stage does.
 */
function trip(v: Variant): void {
  mx.scope(() => {
    if (group.rank === 0) {
      const hidden = mx.random.normal([1, 1, width]);
      send(
        v,
        v.plainSend ? distributed.send(encodeMessage(header, hidden), other) : sendMessage(header, other, hidden),
      );
      receive(v, [1, 1, width], mx.Dtype.float32);
    } else {
      const h = decodeHeader(readHeader(v) ?? receive(v, [headerInts], mx.Dtype.int32));
      const hidden = receive(v, [h.rows, h.length, h.width], h.dtype);
      send(v, distributed.send(mx.add(hidden, mx.array(Float32Array.from([1]))), other));
    }
  });
}

const times = new Map<string, number[]>(variants.map((v) => [v.name, []]));
/** This process's CPU milliseconds (all its threads) per round trip, by variant: a chunk's over its trips. */
const cpu = new Map<string, number[]>(variants.map((v) => [v.name, []]));
const chunk = 25;
for (let done = 0; done < iterations; done += chunk) {
  for (const v of done % (2 * chunk) ? [...variants].reverse() : variants) {
    const before = process.cpuUsage();
    for (let i = 0; i < chunk; i++) {
      const started = performance.now();
      trip(v);
      times.get(v.name)!.push(performance.now() - started);
    }
    const used = process.cpuUsage(before);
    cpu.get(v.name)!.push((used.user + used.system) / 1000 / chunk);
  }
}
// Rank 1's CPU figures come to rank 0, which prints both.
const rankOneCpu = mx.scope(() => {
  const mine = Float32Array.from(variants, (v) => median(cpu.get(v.name)!));
  if (group.rank === 1) {
    mx.evaluate(distributed.send(mx.array(mine), other));
    return [];
  }
  const theirs = distributed.recv([variants.length], mx.Dtype.float32, other);
  mx.evaluate(theirs);
  return theirs.toArray();
});
if (group.rank === 0) {
  const p95 = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(0.95 * v.length)]!;
  console.log(
    `| round trip (${width} float32 and a ${headerBytes}-byte header out, ${width} float32 back; ${links} connection(s) per neighbour) | median (ms) | p95 (ms) | CPU ms per trip: rank 0 | rank 1 |`,
  );
  console.log("|---|---|---|---|---|");
  variants.forEach((v, i) => {
    const t = times.get(v.name)!;
    const c = median(cpu.get(v.name)!);
    console.log(
      `| ${v.name} | ${median(t).toFixed(3)} | ${p95(t).toFixed(3)} | ${c.toFixed(3)} | ${rankOneCpu[i]!.toFixed(3)} |`,
    );
  });
}
