// Where `mlx serve`'s RSS goes under steady load: the malloc heap's size, used and free (glibc's
// mallinfo2, all arenas, from bench/heap-probe.ts preloaded into the server), the RSS, MLX's
// active and cache memory (/stats), and the completion tokens per second, for the same
// deterministic request mix under each variant of the server's environment, the variants run in
// turn (interleaved) --rounds times.
//
//   bun bench/heap-growth.ts [--requests 600] [--concurrency 2] [--rounds 2] [--model smollm2]
//       [--prefix-cache-mb 64] [--variant NAME=VAR=value,VAR=value ...]
//
// Default variants: the product's settings, and glibc's (MLX_MALLOC_REUSE=0). Others to try:
// GLIBC_TUNABLES=glibc.malloc.mmap_threshold=N:glibc.malloc.trim_threshold=N (the shim then
// leaves both to the user), HEAP_PROBE_TRIM_MS=N (malloc_trim every N ms, under load too),
// HEAP_PROBE_CACHE_LIMIT=N (MLX's buffer cache bounded to N bytes). Each run starts
// `bun src/main.ts serve` on a free port with MLX_HOME from the environment and --prefix-cache-mb
// (64 by default, full and churning after a few dozen requests; 512 is serve's default), warms it
// with 10 requests, then sends --requests requests --concurrency at a time: greedy chat
// completions whose prompts vary in length (prefix-cache misses), prompts sharing a long system
// prompt (hits), n=2, and long streams dropped after their first chunk. Printed per run: the
// figures after warm-up, at each tenth of the load and at its end; then tokens/s per round.
import { readFileSync, rmSync } from "node:fs";
import { parseArgs } from "node:util";
import { spawnServe } from "./lib";

const { values: args } = parseArgs({
  options: {
    requests: { type: "string", default: "600" },
    concurrency: { type: "string", default: "2" },
    rounds: { type: "string", default: "2" },
    model: { type: "string", default: "smollm2" },
    "prefix-cache-mb": { type: "string", default: "64" },
    variant: { type: "string", multiple: true },
  },
});
const requests = Number(args.requests);
const concurrency = Number(args.concurrency);
const model = args.model!;

/** name → environment added to the server's. */
const variants: [string, Record<string, string>][] = (
  args.variant ?? ["product=", "glibc-defaults=MLX_MALLOC_REUSE=0"]
).map((spec) => {
  const [name, ...rest] = spec.split("=");
  const env: Record<string, string> = {};
  const assignments = rest.join("=");
  for (const pair of assignments ? assignments.split(",") : []) {
    const at = pair.indexOf("=");
    env[pair.slice(0, at)] = pair.slice(at + 1);
  }
  return [name!, env];
});

const sharedPrefix = `You are a terse assistant. ${Array.from({ length: 60 }, (_, i) => `Rule ${i}: answer briefly.`).join(" ")}`;
const words = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => `w${(seed * 31 + i * 7) % 997}`).join(" ");

/** The i-th request of the mix: [path, body, dropAfterFirstChunk]. */
function request(i: number): [string, object, boolean] {
  const chat = (messages: object[], extra: object = {}) => ({
    model,
    messages,
    max_tokens: 24,
    temperature: 0,
    ...extra,
  });
  switch (i % 5) {
    case 0: // a miss whose prompt length varies from ~10 to ~300 tokens
      return [
        "/v1/chat/completions",
        chat([{ role: "user", content: `Summarize: ${words(5 + ((i * 37) % 150), i)}` }]),
        false,
      ];
    case 1: // a prefix-cache hit
      return [
        "/v1/chat/completions",
        chat([
          { role: "system", content: sharedPrefix },
          { role: "user", content: `What is rule ${i % 50}?` },
        ]),
        false,
      ];
    case 2:
      return [
        "/v1/chat/completions",
        chat([{ role: "user", content: `Pick a colour ${i}.` }], { n: 2, temperature: 0.8, seed: i }),
        false,
      ];
    case 3: // a long stream the client drops
      return [
        "/v1/chat/completions",
        chat([{ role: "user", content: `Tell a long story ${i}.` }], { max_tokens: 200, stream: true }),
        true,
      ];
    default: // a longer answer
      return [
        "/v1/chat/completions",
        chat([{ role: "user", content: `Explain ${words(3, i)}.` }], { max_tokens: 48 }),
        false,
      ];
  }
}

interface Probe {
  at: number;
  rss: number;
  arena: number;
  mmapped: number;
  used: number;
  free: number;
  topFree: number;
}
const MB = (bytes: number) => (bytes / 2 ** 20).toFixed(0);

async function run(name: string, env: Record<string, string>) {
  const probeFile = `/tmp/heap-growth-${process.pid}-${name}.jsonl`;
  rmSync(probeFile, { force: true });
  const { proc, url } = await spawnServe(
    [
      process.execPath,
      "--preload",
      "./bench/heap-probe.ts",
      "src/main.ts",
      "serve",
      "-p",
      "0",
      "--keep-alive",
      "-1",
      "--max-batch",
      "8",
      "--prefix-cache-mb",
      args["prefix-cache-mb"]!,
    ],
    name,
    { ...process.env, HEAP_PROBE_FILE: probeFile, ...env },
  );
  const probes = () =>
    readFileSync(probeFile, "utf8")
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as Probe);
  const stats = async () =>
    ((await (await fetch(`${url}/stats`)).json()) as { memory: { active: number; cache: number } }).memory;
  const row = async (label: string) => {
    await Bun.sleep(1100); // a probe line written since
    const p = probes().at(-1)!;
    const m = await stats();
    return `${label.padEnd(10)} heap ${MB(p.arena)} = used ${MB(p.used)} + free ${MB(p.free)} (top ${MB(p.topFree)}) mmapped ${MB(p.mmapped)}, rss ${MB(p.rss)}, mlx active ${MB(m.active)} cache ${MB(m.cache)}`;
  };
  let tokens = 0;
  const send = async (i: number) => {
    const [path, body, drop] = request(i);
    const controller = new AbortController();
    const response = await fetch(`${url}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (drop) {
      await response.body!.getReader().read();
      controller.abort();
      return;
    }
    const json = (await response.json()) as { usage?: { completion_tokens: number } };
    if (response.status !== 200) throw new Error(`${path} answered ${response.status}: ${JSON.stringify(json)}`);
    tokens += json.usage?.completion_tokens ?? 0;
  };
  try {
    for (let i = 0; i < 10; i++) await send(i);
    const lines = [await row("warm")];
    tokens = 0;
    let next = 0;
    const started = performance.now();
    const checkpoints = new Set(Array.from({ length: 10 }, (_, k) => Math.round(((k + 1) * requests) / 10)));
    let done = 0;
    const marks: Promise<string>[] = [];
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < requests) {
          await send(next++);
          if (checkpoints.has(++done) && done < requests) marks.push(row(`${done}`));
        }
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    lines.push(...(await Promise.all(marks)), await row("end"));
    const peakRss = Math.max(...probes().map((p) => p.rss));
    console.log(
      `## ${name} ${JSON.stringify(env)}: ${requests} requests, ${(tokens / seconds).toFixed(1)} completion tokens/s, peak rss ${MB(peakRss)} MB`,
    );
    for (const line of lines) console.log(`  ${line}`);
    return { tokensPerSecond: tokens / seconds, endFree: probes().at(-1)!.free, endRss: probes().at(-1)!.rss };
  } finally {
    proc.kill();
    await proc.exited;
    rmSync(probeFile, { force: true });
  }
}

const results = new Map<string, { tokensPerSecond: number; endFree: number; endRss: number }[]>();
for (let round = 0; round < Number(args.rounds); round++)
  for (const [name, env] of variants) {
    const r = await run(name, env);
    results.set(name, [...(results.get(name) ?? []), r]);
  }
console.log("\nvariant: tokens/s per round; heap free and rss at the end (MB)");
for (const [name, rs] of results)
  console.log(
    `  ${name.padEnd(16)} ${rs.map((r) => r.tokensPerSecond.toFixed(1)).join(" ")}; free ${rs.map((r) => MB(r.endFree)).join(" ")}; rss ${rs.map((r) => MB(r.endRss)).join(" ")}`,
  );
