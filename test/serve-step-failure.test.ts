// A whole engine step that fails (not one row's logits processor: serve-row-failure.test.ts)
// ends only the requests the step held, and a failed prefill only its own. The trigger is a real
// one: a prompt cache file of `serve --prompt-cache-dir` whose header was damaged so that it still
// passes its checksum (a tensor's shape rewritten, its bytes and their count unchanged), so that
// the batch's decode step (or a prefill) fails on the keys seeded from it. Requests still queued
// behind it were never in that step: they are answered; the prefix is dropped, and the server
// serves on.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { RunningServer } from "../src/server/app";
import { eventually, longStream, post, serve } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

let root: string;
let model: string;
/** The prompt cache files a first server left after answering the question. */
let written: string;

const system = Array.from({ length: 120 }, (_, i) => `rule ${i % 17}`).join("; ");
const question = (url: string, asked = "What is rule 3?") =>
  post(`${url}/v1/chat/completions`, {
    model,
    messages: [
      { role: "system", content: system },
      { role: "user", content: asked },
    ],
    max_tokens: 8,
    temperature: 0,
  });
const completion = (url: string, prompt: string) =>
  post(`${url}/v1/completions`, { model, prompt, max_tokens: 6, temperature: 0, ignore_eos: true });

/**
 * A copy of the written prompt cache files but one (each serves the question), that one with its
 * first layer's keys of shape [1, h, n, d] said to be [1, h, 2n, d/2]: the same bytes under the
 * same checksum (and a header as long, with n of 3 digits), which the batch's cache cannot take.
 * The directory and the damaged file's path.
 */
function damagedCopy(name: string): { dir: string; damaged: string } {
  const dir = join(root, name);
  cpSync(written, dir, { recursive: true });
  const [file, ...others] = readdirSync(dir).filter((f) => f.endsWith(".safetensors"));
  for (const other of others) rmSync(join(dir, other));
  const path = join(dir, file!);
  const bytes = readFileSync(path);
  const length = Number(bytes.readBigUInt64LE(0));
  const header = bytes.subarray(8, 8 + length).toString("utf8");
  const keys = JSON.parse(header)["layers.0.keys.0"] as { shape: number[] };
  const [batch, heads, positions, dim] = keys.shape as [number, number, number, number];
  const edited = header.replace(
    `"shape":${JSON.stringify(keys.shape)}`,
    `"shape":${JSON.stringify([batch, heads, positions * 2, dim / 2])}`,
  );
  expect(edited.length).toBe(header.length);
  bytes.write(edited, 8, "utf8");
  writeFileSync(path, bytes);
  return { dir, damaged: path };
}

async function metric(url: string, pattern: RegExp): Promise<number> {
  return Number(pattern.exec(await (await fetch(`${url}/metrics`)).text())?.[1] ?? Number.NaN);
}
const waiting = async (url: string) => ((await (await fetch(`${url}/stats`)).json()) as any).queue.waiting as number;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "mlx-step-failure-"));
  process.env.MLX_HOME ??= join(root, "home");
  model = join(root, "tiny");
  writeTinyModel(model, { contextLength: 8192, seed: 11 });
  written = join(root, "written");
  // A first server answers the question and, stopping, writes its prefixes to the directory.
  const first = serve({ promptCacheDir: written, prefixCacheBytes: 64 * 1024 * 1024 });
  try {
    expect((await question(first.url)).status).toBe(200);
  } finally {
    await first.stop();
  }
});

afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("a failed engine step", () => {
  let server: RunningServer;
  const warnings: string[] = [];
  let cacheDir: string;
  let damaged: string;
  beforeAll(() => ({ dir: cacheDir, damaged } = damagedCopy("prompts")));
  afterAll(() => server?.stop());

  test("fails the requests it held; one queued behind it is answered, and the server serves on", async () => {
    server = serve({
      promptCacheDir: cacheDir,
      prefixCacheBytes: 64 * 1024 * 1024,
      maxBatch: 1,
      logWarning: (w) => warnings.push(w),
    });
    const { url } = server;
    // A long stream holds the one batch slot while the failing request and another queue behind it.
    const hold = await longStream(url, model);
    const failing = question(url);
    await eventually(async () => (await waiting(url)) === 1);
    const queued = completion(url, "Hello there");
    await eventually(async () => (await waiting(url)) === 2);
    hold.stop.abort();
    // The question's prompt comes back from the damaged file, and the step it joins fails.
    const failed = await failing;
    expect(failed.status).toBe(500);
    // Before, the queued request failed with it, though the step never held it.
    const answered = await queued;
    expect(answered.status).toBe(200);
    expect(answered.json.usage.completion_tokens).toBe(6);
    expect(answered.json.choices[0].text).toBe((await completion(url, "Hello there")).json.choices[0].text);
    expect((await fetch(`${url}/health`)).status).toBe(200);
    await eventually(async () => (await metric(url, /^mlx_requests_running (\d+)$/m)) === 0);
    expect(await metric(url, /^mlx_generations_total\{[^}]*finish_reason="error"[^}]*\} (\d+)$/m)).toBe(1);
  }, 120_000);

  test("the prefix the failed step started from is dropped, its file too: the question asked again is answered", async () => {
    expect(warnings).toContain(
      `prompt cache: removing ${damaged}: slice_update: [broadcast_shapes] Shapes (1,2,1,16) and (1,2,1,8) cannot be broadcast.`,
    );
    expect(existsSync(damaged)).toBe(false);
    // Before, the damaged prefix stayed in memory (and on disk): each request sharing it failed.
    const again = await question(server.url);
    expect(again.status).toBe(200);
    expect(again.json.usage.prompt_tokens_details.cached_tokens).toBe(0);
    expect(again.json.usage.completion_tokens).toBe(8);
  }, 120_000);
});

describe("a failed prefill", () => {
  test("fails its own request alone: a stream decoding beside it goes on, and its prefix is dropped", async () => {
    const { dir, damaged } = damagedCopy("prompts-prefill");
    const warnings: string[] = [];
    const server = serve({
      promptCacheDir: dir,
      prefixCacheBytes: 64 * 1024 * 1024,
      logWarning: (w) => warnings.push(w),
    });
    try {
      const { url } = server;
      const beside = await longStream(url, model);
      // Another question under the same system prompt: the damaged file serves its start, and
      // its prefill (of the rest) fails on the keys seeded from it.
      const failed = await question(url, "And what is rule 5, in a few words?");
      expect(failed.status).toBe(500);
      expect(warnings.filter((w) => w.startsWith(`prompt cache: removing ${damaged}: concatenate:`))).toHaveLength(1);
      // Before, the stream decoding beside it failed with it: its next chunk was the error.
      expect(await metric(url, /^mlx_requests_running (\d+)$/m)).toBe(1);
      const decoder = new TextDecoder();
      for (let chunks = 0; chunks < 3; chunks++) {
        const { value, done } = await beside.reader.read();
        expect(done).toBe(false);
        expect(decoder.decode(value)).toContain('"finish_reason":null');
      }
      beside.stop.abort();
      expect((await question(url, "And what is rule 5, in a few words?")).status).toBe(200);
      await eventually(async () => (await metric(url, /^mlx_requests_running (\d+)$/m)) === 0);
    } finally {
      await server.stop();
    }
  }, 120_000);
});
