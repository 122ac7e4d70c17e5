// How many of a pipeline's progress words (Op.progress: the last rank sends rank 0 an int32 per
// layer of each prefill chunk) one ring connection holds while rank 0 reads none, as while it
// sends a long prompt's chunks one after another. Rank 1 sends `--words` int32s one at a time,
// as the last rank does; rank 0 reads nothing for `--pause` seconds, then all of them. All sent
// before rank 0 read, with no send much longer than the others: that many fit unread.
//   bun bench/ring-unread.ts [--words 100000] [--pause 4]
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { loopbackHosts } from "../src/cmd/launch";
import { ringHostfile } from "../src/cmd/launch-plan";
import * as mx from "../src/mlx";

const { distributed } = mx;
const { values } = parseArgs({
  options: {
    words: { type: "string", default: "100000" },
    pause: { type: "string", default: "4" },
    rank: { type: "string" },
    hostfile: { type: "string" },
  },
});
const words = Number(values.words);
const pauseMs = Number(values.pause) * 1000;

if (values.rank === undefined) {
  const hostfile = join(mkdtempSync(join(tmpdir(), "ring-unread-")), "ring.json");
  writeFileSync(hostfile, ringHostfile(await loopbackHosts(2)));
  const ranks = [0, 1].map((rank) =>
    Bun.spawn(
      [process.execPath, import.meta.path, ...process.argv.slice(2), "--rank", `${rank}`, "--hostfile", hostfile],
      {
        stdout: "inherit",
        stderr: "inherit",
      },
    ),
  );
  process.exit(Math.max(...(await Promise.all(ranks.map((r) => r.exited)))));
}

const group = await distributed.init({ hostfile: values.hostfile, rank: Number(values.rank) });
if (group.rank === 0) {
  await Bun.sleep(pauseMs);
  const started = performance.now();
  const all = distributed.recv([words], mx.Dtype.int32, 1);
  mx.evaluate(all);
  const got = all.toArray();
  if (got.some((w, i) => w !== i)) throw new Error("the words came out of order");
  console.log(
    `rank 0: read ${words} words after ${pauseMs / 1000} s, in ${(performance.now() - started).toFixed(0)} ms`,
  );
} else {
  // Both ranks start their clocks once the ring is up: what rank 1 sent by the end of rank 0's
  // pause was held unread. A send that waits for rank 0 to read (the connection full) is the
  // longest by far.
  const started = performance.now();
  let beforeReading = 0;
  let longest = { ms: 0, word: 0 };
  for (let i = 0; i < words; i++) {
    const before = performance.now();
    mx.scope(() => mx.evaluate(distributed.send(mx.array(Int32Array.of(i)), 0)));
    const after = performance.now();
    if (after - started < pauseMs) beforeReading = i + 1;
    if (after - before > longest.ms) longest = { ms: after - before, word: i };
  }
  console.log(
    `rank 1: ${words} words sent in ${(performance.now() - started).toFixed(0)} ms; ${beforeReading} (${beforeReading * 4} bytes) before rank 0 read; the longest send ${longest.ms.toFixed(0)} ms (word ${longest.word})`,
  );
}
