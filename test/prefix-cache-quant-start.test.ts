// A prompt's answer does not depend on whether its prefix came from a cache (the prefix cache in
// memory, its files on disk, after a restart, in a batch of `n` choices) under --kv-quant-start:
// a prompt that ends before the start holds its positions in float, so a quantized prefix stored
// by a longer request cannot serve it, and every prompt's positions before the start are computed
// reading the cache in float however its chunks fall (a stored prefix ends a chunk), echo's
// prompt log-probabilities included.
import { describe, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { KvQuantization } from "../src/models/cache";
import type { ServerOptions } from "../src/server/app";
import { post, serve } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

const root = mkdtempSync(join(tmpdir(), "mlx-quant-start-"));
const model = join(root, "tiny");
// Four layers: a quantized prefix moves what later layers compute, so log-probabilities show it.
writeTinyModel(model, { headDim: 64, layers: 4, seed: 3, contextLength: 512 });

const start = 24;
const kv: KvQuantization = { bits: 4, groupSize: 32, start };
const ids = (n: number, seed: number) => Array.from({ length: n }, (_, i) => ((i * 7919 + seed * 104729) % 290) + 3);
const long = ids(60, 1);
/** Shorter than the start: all its positions are float without a cache. */
const short = [...long.slice(0, 15), 7];

interface Answer {
  tokens: string[];
  logprobs: number[][];
  cached: number;
}

async function complete(url: string, prompt: number[], maxTokens: number, n = 1): Promise<Answer> {
  const r = await post(`${url}/v1/completions`, {
    model,
    prompt,
    max_tokens: maxTokens,
    temperature: 0,
    logprobs: 0,
    n,
  });
  expect(r.status).toBe(200);
  const choices = r.json.choices as { logprobs: { tokens: string[]; token_logprobs: number[] } }[];
  return {
    tokens: choices.flatMap((c) => c.logprobs.tokens),
    logprobs: choices.map((c) => c.logprobs.token_logprobs),
    cached: r.json.usage.prompt_tokens_details?.cached_tokens ?? 0,
  };
}

/** Each of `asks`, in turn, on one server with `o`; the server is stopped after. */
async function onServer(o: ServerOptions, asks: [number[], number][], n = 1): Promise<Answer[]> {
  const server = serve({ kvQuantization: kv, ...o });
  try {
    const answers: Answer[] = [];
    for (const [prompt, maxTokens] of asks) answers.push(await complete(server.url, prompt, maxTokens, n));
    return answers;
  } finally {
    await server.stop();
  }
}

/** Greedy tokens alike and log-probabilities within rounding (each defect here moved them by 7e-4 to 1e-2). */
function expectSame(warm: Answer, cold: Answer): void {
  expect(warm.tokens).toEqual(cold.tokens);
  warm.logprobs.flat().forEach((l, i) => expect(Math.abs(l - cold.logprobs.flat()[i]!)).toBeLessThan(1e-4));
}

describe("--kv-quant-start: an answer from a cached prefix is the answer without one", () => {
  test("a prompt shorter than the start after a longer one sharing its prefix (in memory)", async () => {
    const [cold] = await onServer({}, [[short, 12]]);
    const [, warm] = await onServer({}, [
      [long, 4],
      [short, 12],
    ]);
    expectSame(warm!, cold!);
  }, 120_000);

  test("a prompt past the start after a shorter one sharing its prefix, which stayed float (in memory)", async () => {
    const [cold] = await onServer({}, [[long, 8]]);
    const [, warm] = await onServer({}, [
      [long.slice(0, 12), 3],
      [long, 8],
    ]);
    // Its first 12 positions were reused, and read as a prefill of the whole prompt reads them.
    expect(warm!.cached).toBe(12);
    expectSame(warm!, cold!);
  }, 120_000);

  test("a prompt past the start after one of exactly the start's length, whose float prefix is quantized at the next step", async () => {
    const [cold] = await onServer({}, [[long, 8]]);
    const [, warm] = await onServer({}, [
      [long.slice(0, start), 3],
      [long, 8],
    ]);
    expect(warm!.cached).toBe(start);
    expectSame(warm!, cold!);
  }, 120_000);

  test("from the disk prompt cache after a restart, and with n = 2 choices", async () => {
    const dir = join(root, "disk");
    const [cold] = await onServer({}, [[short, 12]], 2);
    await onServer({ promptCacheDir: dir }, [[long, 4]]);
    // A restarted server holds nothing in memory: what it reuses comes from the files.
    const [warm] = await onServer({ promptCacheDir: dir }, [[short, 12]], 2);
    expectSame(warm!, cold!);
  }, 120_000);
});

test("echo's prompt log-probabilities read positions before --kv-quant-start in float, as a prompt ending there does", async () => {
  const server = serve({ kvQuantization: kv });
  try {
    const echo = async (prompt: number[]) => {
      const r = await post(`${server.url}/v1/completions`, {
        model,
        prompt,
        max_tokens: 1,
        temperature: 0,
        logprobs: 0,
        echo: true,
      });
      expect(r.status).toBe(200);
      return (r.json.choices[0].logprobs.token_logprobs as (number | null)[]).slice(1, start) as number[];
    };
    const before = await echo(long.slice(0, start));
    const within = await echo(long);
    within.forEach((l, i) => expect(Math.abs(l - before[i]!)).toBeLessThan(1e-4));
  } finally {
    await server.stop();
  }
}, 120_000);
