// A split model's decode steps as the stages take them: each header read by the stage itself
// from the ring's connection, then the step built ahead (or built then) evaluated. Streams that
// a client cancels mid-way make the stages drop rows between steps (a header with a payload of
// row numbers), guesses fail, and every other stream still gets one process's tokens.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import {
  decodeHeader,
  encodeHeader,
  encodeMessage,
  Flag,
  headerBytes,
  headerOf,
  Op,
} from "../src/engine/pipeline/protocol";
import * as mx from "../src/mlx";
import { launchServe } from "./helpers/launch";
import { eventually, serve } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

const home = process.env.MLX_HOME ?? join(import.meta.dir, "..", ".cache", "mlx-home");
let dir: string;
let tiny: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mlx-pipeline-steps-"));
  tiny = join(dir, "tiny7");
  // Seven layers on three ranks: no split is even.
  writeTinyModel(tiny, { layers: 7, seed: 17 });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test("a header decodes alike from its bytes (read from the connection) and from a received array", () => {
  const h = headerOf(
    { op: Op.forward, set: 3, rows: 5, length: 1, flags: Flag.decode, dtype: mx.Dtype.float32, width: 64 },
    41,
  );
  expect(decodeHeader(encodeHeader(h))).toEqual(h);
  // The bytes of a whole message: the header is its first headerBytes, at any offset in a buffer.
  const message = encodeMessage(h, mx.ones([5, 1, 64], mx.Dtype.float32)).bytes();
  const at = new Uint8Array(message.length + 3);
  at.set(message, 3);
  expect(decodeHeader(at.subarray(3, 3 + headerBytes))).toEqual(h);
});

const client = (url: string) => new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });

test("3 ranks, streams cancelled mid-way among batched ones: the rest get one process's tokens, and serving goes on", async () => {
  const requests = ["The sky", "A dog and a cat", "Numbers:", "Hello", "Rain falls", "Why?"].map((prompt, i) => ({
    model: tiny,
    prompt,
    max_tokens: 8 + 4 * i,
    temperature: 0,
  }));
  const alone = serve();
  const expected: string[] = [];
  try {
    for (const r of requests) expected.push((await client(alone.url).completions.create(r)).choices[0]!.text);
  } finally {
    await alone.stop();
  }

  const server = await launchServe(home, 3, tiny, ["--peer-timeout", "3"]);
  try {
    const openai = client(server.url);
    // Long streams, each dropped by its client after a few tokens, while the others decode.
    const cancelled = [0, 1].map(async (i) => {
      const stream = await openai.completions.create({
        model: tiny,
        prompt: `Count on and on ${i}`,
        max_tokens: 400,
        temperature: 0,
        stream: true,
      });
      let chunks = 0;
      for await (const _ of stream) {
        if (++chunks < 3 + 2 * i) continue;
        // Out of the loop at once: the client may hold a chunk already read, which it would still yield.
        stream.controller.abort();
        break;
      }
      return chunks;
    });
    const streamed = await Promise.all(
      requests.map(async (r) => {
        let text = "";
        for await (const chunk of await openai.completions.create({ ...r, stream: true }))
          text += chunk.choices[0]?.text ?? "";
        return text;
      }),
    );
    expect(streamed).toEqual(expected);
    expect(await Promise.all(cancelled)).toEqual([3, 5]);
    // The ranks dropped the cancelled rows and serve on: a request after them is as one process's.
    const after = await openai.completions.create(requests[2]!);
    expect(after.choices[0]!.text).toBe(expected[2]!);
    const pipeline = async () => ((await (await fetch(`${server.url}/stats`)).json()) as any).models[0].pipeline;
    // A heartbeat a second (a third of the timeout) brings the stages' figures back.
    await eventually(async () => {
      const { stages } = await pipeline();
      return stages.length === 2 && stages.every((s: { tokens: number }) => s.tokens > 0);
    }, 10_000);
    const { stages } = await pipeline();
    expect(stages.map((s: { rank: number }) => s.rank)).toEqual([1, 2]);
    for (const stage of stages) expect(stage.steps_built_ahead).toBeGreaterThan(0);
  } finally {
    server.proc.kill("SIGTERM");
  }
  expect(await server.proc.exited).toBe(0);
}, 120_000);
