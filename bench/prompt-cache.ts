// Time to first token after a server restart for a request whose ~2,000-token system prompt an
// earlier server run already saw: with `--prompt-cache-dir` (the prefix comes back from disk)
// and without (it is prefilled again). Each run starts a fresh server in this process, loads
// the model with a one-token request, then times the first streamed token of the measured
// request; the two kinds alternate, their order swapped each run; medians.
//
//   node_modules/.bin/bun bench/prompt-cache.ts [-m MODEL] [--prefix-tokens 2000] [--runs 3]
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startServer, type ServerOptions } from "../src/server/app";
import { median, ratio } from "./lib";

const { values } = parseArgs({
  options: {
    model: { type: "string", short: "m" },
    "prefix-tokens": { type: "string", default: "2000" },
    runs: { type: "string", default: "3" },
  },
});
const model = values.model ?? "smollm2";
const dir = mkdtempSync(join(tmpdir(), "mlx-prompt-cache-bench-"));
// These words are one token each (with SmolLM2's vocabulary), after the template's few.
const words = Number(values["prefix-tokens"]) - 40;
const system = Array.from({ length: words }, (_, i) => ["policy", "customer", "refund", "order", "day"][i % 5]).join(
  " ",
);

async function session(
  o: ServerOptions,
  question: string,
): Promise<{ ttftMs: number; cached: number; prompt: number }> {
  const server = startServer({ port: 0, logError: () => {}, ...o });
  try {
    const ask = (messages: unknown[], stream: boolean) =>
      fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          model,
          messages,
          max_tokens: 4,
          temperature: 0,
          stream,
          stream_options: stream ? { include_usage: true } : undefined,
        }),
      });
    await (await ask([{ role: "user", content: "hi" }], false)).text(); // loads the model
    const started = performance.now();
    const response = await ask(
      [
        { role: "system", content: system },
        { role: "user", content: question },
      ],
      true,
    );
    let ttftMs = Number.NaN;
    let text = "";
    const decoder = new TextDecoder();
    for await (const chunk of response.body!) {
      if (Number.isNaN(ttftMs)) ttftMs = performance.now() - started;
      text += decoder.decode(chunk, { stream: true });
    }
    const usage = text
      .split("\n")
      .filter((l) => l.startsWith("data: {"))
      .map((l) => JSON.parse(l.slice(6)))
      .find((e) => e.usage)?.usage;
    return { ttftMs, cached: usage?.prompt_tokens_details?.cached_tokens ?? 0, prompt: usage?.prompt_tokens ?? 0 };
  } finally {
    await server.stop();
  }
}

// The first server run: the shared prefix goes to disk when it stops.
const seen = await session({ promptCacheDir: dir }, "What is the refund policy?");
process.stderr.write(`first run: ${seen.prompt} prompt tokens, ${seen.ttftMs.toFixed(0)} ms\n`);
const kinds = { "without disk cache": {}, "with --prompt-cache-dir": { promptCacheDir: dir } };
const figures = new Map<string, { ttftMs: number; cached: number }[]>();
for (let run = 0; run < Number(values.runs); run++) {
  const order = Object.entries(kinds);
  if (run % 2) order.reverse();
  for (const [name, o] of order) {
    const r = await session(o, `Question ${run}: how many days for a refund?`);
    figures.set(name, [...(figures.get(name) ?? []), r]);
    process.stderr.write(`run ${run + 1}: ${name}: ${r.ttftMs.toFixed(0)} ms, ${r.cached} cached tokens\n`);
  }
}

const ttft = (name: string) => median(figures.get(name)!.map((f) => f.ttftMs));
console.log(
  `| restart, then a request sharing a ${seen.prompt}-token prompt's prefix | time to first token (ms), median | cached tokens |`,
);
console.log("|---|---:|---:|");
for (const name of Object.keys(kinds))
  console.log(
    `| ${name} | ${ttft(name).toFixed(0)} | ${figures
      .get(name)!
      .map((f) => f.cached)
      .join(", ")} |`,
  );
console.log(
  `\nwith / without: ${ratio(ttft("with --prompt-cache-dir"), ttft("without disk cache"))}; every run: ${JSON.stringify(Object.fromEntries(figures))}`,
);
