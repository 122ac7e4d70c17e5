// What serving costs per generated token on top of the engine, in CPU time (user + system of the
// process, from /proc), which a loaded shared machine disturbs far less than wall time. The same
// greedy generation of N tokens by `mlx run` (a process per run) and through one `mlx serve`
// (OpenAI chat streamed and not, Ollama /api/chat streamed, Anthropic messages streamed, and 8
// concurrent streamed OpenAI clients). Each figure is the marginal CPU per token: (CPU of an
// N-token answer − CPU of a 1-token answer) / (N − 1), so that loading, the prompt's prefill and
// the request's fixed costs drop out; the median over the rounds. Two columns: all threads, and the
// main thread alone, where all JavaScript runs (HTTP, SSE, JSON, detokenizing, stop strings, and
// the graph's building) while MLX's kernels run on its pool threads: serving's own work per token
// shows there, not drowned by the kernels. The prompt makes smollm2 write past N tokens greedily
// (the serve modes check the count).
//
//   MLX_HOME=$PWD/.cache/mlx-home node_modules/.bin/bun bench/serve-cpu.ts [--rounds 3] [--max-tokens 300] [--port 0] [-m smollm2] [--only "run,openai stream"]
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { median } from "./lib";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "3" },
    "max-tokens": { type: "string", default: "300" },
    port: { type: "string", default: "0" },
    model: { type: "string", short: "m", default: "smollm2" },
    only: { type: "string" },
  },
});
const rounds = Number(values.rounds);
const n = Number(values["max-tokens"]);
const mainTs = join(import.meta.dir, "..", "src", "main.ts");
const prompt = "Write a very long, detailed story about a dragon who learns to cook.";
const ticksPerSecond = 100; // Linux USER_HZ

/** CPU seconds (user + system) a live process has used so far: all its threads, or its main thread's (`thread`). */
function cpuOf(pid: number, thread = false): number {
  const stat = readFileSync(thread ? `/proc/${pid}/task/${pid}/stat` : `/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond;
}

/**
 * CPU seconds used in all and by the main thread (JavaScript: the HTTP side, detokenizing, the
 * graph's building; MLX's kernels run on its pool threads), and the tokens generated.
 */
interface Sample {
  cpu: number;
  main: number;
  tokens: number;
}

/** One `mlx run` process; its main thread's CPU is read every 5 ms while it lives (the last reading counts). */
async function runOnce(maxTokens: number): Promise<Sample> {
  const proc = Bun.spawn(
    [process.execPath, mainTs, "run", "-m", values.model!, "--max-tokens", String(maxTokens), "--json", prompt],
    { stdout: "pipe", stderr: "pipe", stdin: "ignore" },
  );
  let main = 0;
  const poll = setInterval(() => {
    try {
      main = cpuOf(proc.pid, true);
    } catch {
      // exited
    }
  }, 5);
  const out = await new Response(proc.stdout).text();
  const code = await proc.exited;
  clearInterval(poll);
  if (code !== 0) throw new Error(await new Response(proc.stderr).text());
  const usage = proc.resourceUsage()!;
  return { cpu: Number(usage.cpuTime.total) / 1e6, main, tokens: JSON.parse(out).token_ids.length };
}

/** Reads a response to its end; returns the completion tokens it reports. */
type Client = (base: string, maxTokens: number) => Promise<number>;

async function sseEvents(res: Response): Promise<unknown[]> {
  const text = await res.text();
  return text
    .split("\n")
    .filter((line) => line.startsWith("data: ") && line !== "data: [DONE]")
    .map((line) => JSON.parse(line.slice(6)));
}

const messages = [{ role: "user", content: prompt }];
const model = values.model!;
const post = (url: string, body: unknown) =>
  fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

const clients: Record<string, Client> = {
  "openai stream": async (base, maxTokens) => {
    const events = (await sseEvents(
      await post(`${base}/v1/chat/completions`, {
        model,
        messages,
        max_tokens: maxTokens,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      }),
    )) as { usage?: { completion_tokens: number } }[];
    return events.at(-1)!.usage!.completion_tokens;
  },
  "openai non-stream": async (base, maxTokens) => {
    const res = await post(`${base}/v1/chat/completions`, { model, messages, max_tokens: maxTokens, temperature: 0 });
    return ((await res.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens;
  },
  "ollama stream": async (base, maxTokens) => {
    const res = await post(`${base}/api/chat`, {
      model,
      messages,
      stream: true,
      options: { num_predict: maxTokens, temperature: 0 },
    });
    const lines = (await res.text()).trim().split("\n");
    return (JSON.parse(lines.at(-1)!) as { eval_count: number }).eval_count;
  },
  "anthropic stream": async (base, maxTokens) => {
    const events = (await sseEvents(
      await post(`${base}/v1/messages`, { model, messages, max_tokens: maxTokens, temperature: 0, stream: true }),
    )) as { type: string; usage?: { output_tokens: number } }[];
    return events.find((e) => e.type === "message_delta")!.usage!.output_tokens;
  },
};

/** CPU seconds the server spends and the tokens it generates for `concurrency` requests at once. */
async function serveOnce(
  pid: number,
  base: string,
  client: Client,
  maxTokens: number,
  concurrency: number,
): Promise<Sample> {
  const before = cpuOf(pid);
  const mainBefore = cpuOf(pid, true);
  const counts = await Promise.all(Array.from({ length: concurrency }, () => client(base, maxTokens)));
  const main = cpuOf(pid, true) - mainBefore;
  return { cpu: cpuOf(pid) - before, main, tokens: counts.reduce((a, b) => a + b, 0) };
}

/** ms per token, in all and on the main thread. */
const perToken = (long: Sample, short: Sample): [number, number] => [
  ((long.cpu - short.cpu) / (long.tokens - short.tokens)) * 1000,
  ((long.main - short.main) / (long.tokens - short.tokens)) * 1000,
];

const results: [string, [number, number][]][] = [];
const wanted = (name: string) => !values.only || values.only.split(",").includes(name);

if (wanted("run")) {
  const figures: [number, number][] = [];
  for (let round = 0; round < rounds; round++) figures.push(perToken(await runOnce(n), await runOnce(1)));
  results.push(["mlx run", figures]);
}

const server = Bun.spawn(
  [process.execPath, mainTs, "serve", "-m", values.model!, "--port", values.port!, "--keep-alive", "-1"],
  { stdout: "ignore", stderr: "pipe", stdin: "ignore" },
);
try {
  // The server's first stderr line names its address.
  const reader = server.stderr.getReader();
  let log = "";
  let base = "";
  while (!base) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`mlx serve exited: ${log}`);
    log += new TextDecoder().decode(value);
    base = log.match(/http:\/\/[\d.]+:\d+/)?.[0] ?? "";
  }
  void (async () => {
    while (!(await reader.read()).done);
  })();
  while ((await fetch(`${base}/ready`).catch(() => null))?.status !== 200) await Bun.sleep(200);
  await clients["openai stream"]!(base, 8); // warm: the model loaded, the prompt's prefix cached
  const modes: [string, Client, number][] = [
    ...Object.entries(clients).map(([name, client]): [string, Client, number] => [name, client, 1]),
    ["8 × openai stream", clients["openai stream"]!, 8],
  ];
  for (const [name, client, concurrency] of modes) {
    if (!wanted(name)) continue;
    const figures: [number, number][] = [];
    for (let round = 0; round < rounds; round++) {
      const long = await serveOnce(server.pid, base, client, n, concurrency);
      const short = await serveOnce(server.pid, base, client, 1, concurrency);
      if (long.tokens !== n * concurrency) throw new Error(`${name}: ${long.tokens} tokens, not ${n * concurrency}`);
      figures.push(perToken(long, short));
    }
    results.push([name, figures]);
  }
} finally {
  server.kill();
  await server.exited;
}

console.log(`CPU ms per generated token (${n} tokens, median of ${rounds}; marginal over a 1-token answer)`);
console.log(`${"".padEnd(20)} ${"all threads".padStart(11)} ${"main thread".padStart(11)}   rounds (all / main)`);
const fmt = (x: number) => x.toFixed(2);
for (const [name, figures] of results)
  console.log(
    `${name.padEnd(20)} ${fmt(median(figures.map((f) => f[0]))).padStart(11)} ${fmt(median(figures.map((f) => f[1]))).padStart(11)}   ${figures.map((f) => `${fmt(f[0])}/${fmt(f[1])}`).join(", ")}`,
  );
