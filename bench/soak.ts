// A bounded soak of `mlx serve`: a mix of requests for a few minutes, sampling what would show a
// leak or slow drift, then the same figures once idle and once the model is unloaded.
//
//   bun bench/soak.ts [--minutes 5] [--concurrency 4] [--model smollm2] [--url URL --pid PID]
//
// Without --url it starts `bun src/main.ts serve` on a free port (MLX_HOME from the environment)
// and stops it at the end. The mix: OpenAI chat (streamed and not, n=2, logprobs, stop strings,
// json_schema, tools), completions, responses, Ollama chat/generate/embed, Anthropic messages,
// streams the client drops after the first chunk, prompts that share a long prefix (prefix-cache
// hits) and prompts that do not (misses), and requests that fail (too long, a bad schema).
// Every --sample seconds (default 10) it prints the server's RSS and open fds (/proc/PID), MLX's
// active/cache memory and live array handles (/stats), the prefix cache, the queue, and the
// /health round trip (the server's event-loop lag shows there). At the end: the figures after
// warm-up, idle after the soak, and after the model's unload (live arrays should be back to 0),
// and requests per kind with their HTTP statuses. Exit 1 when live arrays stay above 0 after the
// unload or when a kind answered 5xx.
import { readdirSync, readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { spawnServe } from "./lib";

const { values: args } = parseArgs({
  options: {
    minutes: { type: "string", default: "5" },
    concurrency: { type: "string", default: "4" },
    model: { type: "string", default: "smollm2" },
    url: { type: "string" },
    pid: { type: "string" },
    sample: { type: "string", default: "10" },
  },
});
const minutes = Number(args.minutes);
const concurrency = Number(args.concurrency);
const model = args.model!;

let server: Bun.Subprocess | undefined;
let url = args.url;
let pid = Number(args.pid);
if (!url) {
  const started = await spawnServe(
    [process.execPath, "src/main.ts", "serve", "-p", "0", "--keep-alive", "-1", "--max-batch", "8"],
    "serve",
  );
  [server, url, pid] = [started.proc, started.url, started.proc.pid];
}

// A system prompt long enough to be worth caching, shared by the "hit" requests.
const sharedPrefix = `You are a terse assistant. ${Array.from({ length: 60 }, (_, i) => `Rule ${i}: answer briefly.`).join(" ")}`;
let counter = 0;
const fresh = () => `Note ${++counter}-${Math.random().toString(36).slice(2)}.`;
const chat = (content: string, extra: object = {}) => ({
  model,
  messages: [{ role: "user", content }],
  max_tokens: 16,
  ...extra,
});
const weatherTool = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};

type Kind = { name: string; path: string; body: () => object; stream?: boolean; dropAfterFirstChunk?: boolean };
const kinds: Kind[] = [
  { name: "chat", path: "/v1/chat/completions", body: () => chat(`Say hi. ${fresh()}`) },
  {
    name: "chat-stream",
    path: "/v1/chat/completions",
    stream: true,
    body: () => chat("Count to five.", { stream: true }),
  },
  {
    name: "chat-prefix-hit",
    path: "/v1/chat/completions",
    body: () => ({
      ...chat("What is rule 3?"),
      messages: [
        { role: "system", content: sharedPrefix },
        { role: "user", content: `What is rule ${counter++ % 50}?` },
      ],
    }),
  },
  {
    name: "chat-n2-logprobs",
    path: "/v1/chat/completions",
    body: () => chat("Pick a colour.", { n: 2, logprobs: true, top_logprobs: 3, temperature: 0.8 }),
  },
  { name: "chat-stop", path: "/v1/chat/completions", body: () => chat("List: a, b, c, d", { stop: [",", "\n"] }) },
  {
    name: "chat-json-schema",
    path: "/v1/chat/completions",
    body: () =>
      chat("Give a name and an age.", {
        max_tokens: 40,
        response_format: {
          type: "json_schema",
          json_schema: {
            name: "person",
            schema: {
              type: "object",
              properties: { name: { type: "string" }, age: { type: "integer" } },
              required: ["name", "age"],
            },
          },
        },
      }),
  },
  {
    name: "chat-tools",
    path: "/v1/chat/completions",
    body: () => chat("Weather in Paris?", { tools: [weatherTool], max_tokens: 32 }),
  },
  {
    name: "chat-tools-stream",
    path: "/v1/chat/completions",
    stream: true,
    body: () =>
      chat("Weather in Rome?", { tools: [weatherTool], tool_choice: "required", stream: true, max_tokens: 32 }),
  },
  {
    name: "chat-drop",
    path: "/v1/chat/completions",
    stream: true,
    dropAfterFirstChunk: true,
    body: () => chat(`Tell a long story. ${fresh()}`, { stream: true, max_tokens: 200 }),
  },
  {
    name: "completions",
    path: "/v1/completions",
    body: () => ({ model, prompt: `Once upon a time ${fresh()}`, max_tokens: 16, logprobs: 2 }),
  },
  {
    name: "completions-stream",
    path: "/v1/completions",
    stream: true,
    body: () => ({ model, prompt: "The sky is", max_tokens: 16, stream: true, stop: ["."] }),
  },
  {
    name: "responses",
    path: "/v1/responses",
    body: () => ({ model, input: `Say yes. ${fresh()}`, max_output_tokens: 16 }),
  },
  {
    name: "responses-stream",
    path: "/v1/responses",
    stream: true,
    body: () => ({ model, input: "Say no.", max_output_tokens: 16, stream: true }),
  },
  {
    name: "ollama-chat",
    path: "/api/chat",
    stream: true,
    body: () => ({ model, messages: [{ role: "user", content: "Hello" }], options: { num_predict: 16 } }),
  },
  {
    name: "ollama-chat-drop",
    path: "/api/chat",
    stream: true,
    dropAfterFirstChunk: true,
    body: () => ({
      model,
      messages: [{ role: "user", content: `Write an essay. ${fresh()}` }],
      options: { num_predict: 200 },
    }),
  },
  {
    name: "ollama-generate",
    path: "/api/generate",
    body: () => ({ model, prompt: `Why? ${fresh()}`, stream: false, options: { num_predict: 16 } }),
  },
  { name: "ollama-embed", path: "/api/embed", body: () => ({ model, input: [`first ${fresh()}`, "second line"] }) },
  { name: "openai-embed", path: "/v1/embeddings", body: () => ({ model, input: `embed ${fresh()}` }) },
  {
    name: "anthropic",
    path: "/v1/messages",
    body: () => ({ model, max_tokens: 16, messages: [{ role: "user", content: `Hi ${fresh()}` }] }),
  },
  {
    name: "anthropic-stream",
    path: "/v1/messages",
    stream: true,
    body: () => ({ model, max_tokens: 16, stream: true, messages: [{ role: "user", content: "Hi" }] }),
  },
  {
    name: "anthropic-drop",
    path: "/v1/messages",
    stream: true,
    dropAfterFirstChunk: true,
    body: () => ({ model, max_tokens: 200, stream: true, messages: [{ role: "user", content: `Ramble. ${fresh()}` }] }),
  },
  { name: "error-too-long", path: "/v1/chat/completions", body: () => chat("word ".repeat(12000)) },
  {
    name: "error-bad-schema",
    path: "/v1/chat/completions",
    body: () =>
      chat("x", {
        response_format: {
          type: "json_schema",
          json_schema: { name: "bad", schema: { type: "object", properties: { a: { type: "nonsense" } } } },
        },
      }),
  },
];

const statuses = new Map<string, Map<number, number>>();
const note = (kind: string, status: number) => {
  const byStatus = statuses.get(kind) ?? new Map<number, number>();
  byStatus.set(status, (byStatus.get(status) ?? 0) + 1);
  statuses.set(kind, byStatus);
};

async function send(kind: Kind): Promise<void> {
  const controller = new AbortController();
  let status = 0;
  try {
    const response = await fetch(`${url}${kind.path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(kind.body()),
      signal: controller.signal,
    });
    status = response.status;
    if (kind.dropAfterFirstChunk && response.body) {
      const reader = response.body.getReader();
      await reader.read();
      controller.abort();
    } else await response.arrayBuffer();
  } catch (error) {
    if (!controller.signal.aborted) status = -1;
  }
  note(kind.name, status);
}

interface Sample {
  at: number;
  rssMb: number;
  fds: number;
  activeMb: number;
  cacheMb: number;
  arrays: number;
  prefixEntries: number;
  prefixMb: number;
  running: number;
  waiting: number;
  healthMs: number;
}

async function sample(): Promise<Sample> {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  const fds = readdirSync(`/proc/${pid}/fd`).length;
  const t0 = performance.now();
  await (await fetch(`${url}/health`)).arrayBuffer();
  const healthMs = performance.now() - t0;
  const stats = (await (await fetch(`${url}/stats`)).json()) as {
    queue: { running: number; waiting: number };
    memory: { active: number; cache: number; arrays: number };
    models: { prefix_cache?: { entries: number; bytes: number } }[];
  };
  const prefix = stats.models[0]?.prefix_cache;
  const mb = (bytes: number) => bytes / 2 ** 20;
  return {
    at: Math.round(performance.now() / 1000),
    rssMb: Math.round(rssKb / 1024),
    fds,
    activeMb: Math.round(mb(stats.memory.active)),
    cacheMb: Math.round(mb(stats.memory.cache)),
    arrays: stats.memory.arrays,
    prefixEntries: prefix?.entries ?? 0,
    prefixMb: Math.round(mb(prefix?.bytes ?? 0)),
    running: stats.queue.running,
    waiting: stats.queue.waiting,
    healthMs: Math.round(healthMs),
  };
}

const row = (label: string, s: Sample) =>
  console.log(
    `${label.padEnd(14)} rss ${s.rssMb} MB, fds ${s.fds}, mlx active ${s.activeMb} MB, cache ${s.cacheMb} MB, ` +
      `arrays ${s.arrays}, prefix ${s.prefixEntries} entries ${s.prefixMb} MB, running ${s.running}, waiting ${s.waiting}, /health ${s.healthMs} ms`,
  );

async function idle(): Promise<Sample> {
  for (;;) {
    const s = await sample();
    if (s.running === 0 && s.waiting === 0) {
      await Bun.sleep(1000);
      return sample();
    }
    await Bun.sleep(500);
  }
}

try {
  row("start", await sample());
  // Warm-up: each kind once, so what loads once (the model, kernels, the tokenizer) is in place.
  for (const kind of kinds) await send(kind);
  const warm = await idle();
  row("warm, idle", warm);

  const end = performance.now() + minutes * 60_000;
  let sent = 0;
  const sampler = setInterval(
    async () => row(`t+${Math.round((performance.now() - (end - minutes * 60_000)) / 1000)}s`, await sample()),
    Number(args.sample) * 1000,
  );
  await Promise.all(
    Array.from({ length: concurrency }, async (_, worker) => {
      for (let i = worker; performance.now() < end; i += concurrency) {
        await send(kinds[i % kinds.length]!);
        sent++;
      }
    }),
  );
  clearInterval(sampler);
  const after = await idle();
  row("soak, idle", after);
  await (
    await fetch(`${url}/api/generate`, { method: "POST", body: JSON.stringify({ model, keep_alive: 0 }) })
  ).arrayBuffer();
  await Bun.sleep(1000);
  const unloaded = await sample();
  row("unloaded", unloaded);

  console.log(`\n${sent} requests in ${minutes} min at concurrency ${concurrency}`);
  let failed = false;
  for (const [kind, byStatus] of statuses) {
    const text = [...byStatus].map(([status, n]) => `${status}×${n}`).join(" ");
    if ([...byStatus.keys()].some((status) => status >= 500 || status === -1)) failed = true;
    console.log(`  ${kind.padEnd(20)} ${text}`);
  }
  console.log(
    `\ngrowth warm → soak idle: rss ${after.rssMb - warm.rssMb} MB, fds ${after.fds - warm.fds}, arrays ${after.arrays - warm.arrays} ` +
      `(prefix cache ${after.prefixEntries - warm.prefixEntries} entries), mlx active ${after.activeMb - warm.activeMb} MB`,
  );
  console.log(`after unload: ${unloaded.arrays} live arrays, ${unloaded.activeMb} MB MLX active`);
  if (unloaded.arrays > 0) failed = true;
  process.exitCode = failed ? 1 : 0;
} finally {
  server?.kill();
  await server?.exited;
}
