// What a remote provider costs on top of the remote itself: one `mlx serve` (the remote, the
// default model loaded) and a second `mlx serve` (the proxy) whose models.toml names the first
// as an OpenAI-compatible provider. The same streamed chat request goes to the remote directly
// and through the proxy, interleaved (the order alternating each round); we time the first
// content byte and the tokens/s after it, as a client sees them.
//
//   MLX_HOME=$PWD/.cache/mlx-home node_modules/.bin/bun bench/provider-overhead.ts [--rounds 10] [--max-tokens 64] [-m MODEL]
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { EventSourceParserStream } from "eventsource-parser/stream";
import { median, ratio } from "./lib";

const { values } = parseArgs({
  options: {
    rounds: { type: "string", default: "10" },
    "max-tokens": { type: "string", default: "64" },
    model: { type: "string", short: "m", default: "smollm2" },
  },
});
const rounds = Number(values.rounds);
const maxTokens = Number(values["max-tokens"]);
const main = join(import.meta.dir, "..", "src", "main.ts");

const signed = (x: number) => `${x >= 0 ? "+" : "−"}${Math.abs(x).toFixed(1)}`;

function freePort(): number {
  const probe = Bun.serve({ port: 0, fetch: () => new Response() });
  const port = probe.port!;
  probe.stop(true);
  return port;
}

const logs = mkdtempSync(join(tmpdir(), "mlx-provider-bench-logs-"));

/** An `mlx serve` child on a free port, its stderr in a log file (printed if the run fails). */
async function startServe(name: string, args: string[], home: string): Promise<{ url: string; stop: () => void }> {
  const port = freePort();
  const log = join(logs, `${name}.log`);
  const proc = Bun.spawn([process.execPath, main, "serve", "--port", String(port), ...args], {
    env: { ...process.env, MLX_HOME: home },
    stdout: "ignore",
    stderr: Bun.file(log),
  });
  const url = `http://127.0.0.1:${port}`;
  for (const started = performance.now(); performance.now() - started < 120_000; await Bun.sleep(100)) {
    try {
      if ((await fetch(`${url}/health`)).ok) return { url, stop: () => proc.kill() };
    } catch {
      // not listening yet
    }
  }
  proc.kill();
  throw new Error(`mlx serve on port ${port} did not become healthy (see ${log})`);
}

/** One streamed chat answer: ms to the first content, and tokens/s after it (the usage's count). */
async function streamed(url: string, model: string): Promise<{ firstMs: number; tokensPerSecond: number }> {
  const started = performance.now();
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model,
      messages: [{ role: "user", content: "Tell me a story about a river and a boat." }],
      max_tokens: maxTokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!response.ok) throw new Error(`${url} answered ${response.status}: ${await response.text()}`);
  let firstAt = Number.NaN;
  let tokens = 0;
  const events = response
    .body!.pipeThrough(new TextDecoderStream() as unknown as TransformStream<Uint8Array, string>)
    .pipeThrough(new EventSourceParserStream());
  for await (const event of events) {
    if (event.data === "[DONE]") break;
    const chunk = JSON.parse(event.data);
    if (Number.isNaN(firstAt) && chunk.choices?.[0]?.delta?.content) firstAt = performance.now();
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
  }
  const end = performance.now();
  return { firstMs: firstAt - started, tokensPerSecond: (tokens - 1) / ((end - firstAt) / 1000) };
}

const remote = await startServe("remote", ["-m", values.model!, "--keep-alive", "-1"], process.env.MLX_HOME ?? "");
const proxyHome = mkdtempSync(join(tmpdir(), "mlx-provider-bench-"));
writeFileSync(
  join(proxyHome, "models.toml"),
  `[models.remote]\nprovider = "openai"\nbase_url = "${remote.url}/v1"\nmodel = "${values.model}"\n`,
);
const proxy = await startServe("proxy", [], proxyHome);
console.error(`remote ${remote.url}, proxy ${proxy.url}; logs in ${logs}`);
try {
  const paths = { direct: () => streamed(remote.url, values.model!), proxied: () => streamed(proxy.url, "remote") };
  await paths.direct(); // warm-up: the model's first use, the prefix cache
  await paths.proxied();
  type Sample = { firstMs: number; tokensPerSecond: number };
  const results: Record<"direct" | "proxied", Sample[]> = { direct: [], proxied: [] };
  for (let i = 0; i < rounds; i++) {
    const order = i % 2 === 0 ? (["direct", "proxied"] as const) : (["proxied", "direct"] as const);
    for (const path of order) {
      const r = await paths[path]();
      results[path].push(r);
      console.error(
        `round ${i + 1} ${path}: first content ${r.firstMs.toFixed(1)} ms, ${r.tokensPerSecond.toFixed(1)} tokens/s`,
      );
    }
  }
  const first = (p: keyof typeof results) => median(results[p].map((r) => r.firstMs));
  const speed = (p: keyof typeof results) => median(results[p].map((r) => r.tokensPerSecond));
  console.log(`| path | time to first content, median (ms) | tokens/s after it, median |`);
  console.log(`|---|---:|---:|`);
  console.log(`| direct to the remote | ${first("direct").toFixed(1)} | ${speed("direct").toFixed(1)} |`);
  console.log(`| through the proxy | ${first("proxied").toFixed(1)} | ${speed("proxied").toFixed(1)} |`);
  console.log(
    `| proxy / direct | ${ratio(first("proxied"), first("direct"))} (${signed(first("proxied") - first("direct"))} ms) | ${ratio(speed("proxied"), speed("direct"))} |`,
  );
} finally {
  proxy.stop();
  remote.stop();
}
