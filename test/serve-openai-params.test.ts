// `mlx serve`'s OpenAI request parameters at their limits, through the official client (and raw
// requests for what the client would not send): n against the server's capacity, logit_bias keys.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import type { RunningServer } from "../src/server/app";
import { post, serve, tinyModel } from "./helpers/serve";

let server: RunningServer;
let client: OpenAI;
let model: string;
const messages = [{ role: "user" as const, content: "Tell me a story" }];

beforeAll(() => {
  model = tinyModel();
  // Room for 2 + 3 sequences of the model at once.
  server = serve({ maxBatch: 2, maxQueue: 3 });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 20_000 });
});
afterAll(() => server.stop());

describe("n against the server's capacity", () => {
  test("n past --max-batch plus --max-queue is a 400 naming the limit (a 429 no retry could clear before)", async () => {
    const body = { model, max_tokens: 2, temperature: 0 };
    for (const [path, prompt] of [
      ["chat/completions", { messages }],
      ["completions", { prompt: "Once" }],
    ] as const) {
      const r = await post(`${server.url}/v1/${path}`, { ...body, ...prompt, n: 6 });
      expect(r.status).toBe(400);
      expect(r.json.error.param).toBe("n");
      expect(r.json.error.message).toMatch(/'n' must be <= 5/);
    }
    const full = await client.chat.completions.create({ ...body, messages, n: 5 });
    expect(full.choices.map((c) => c.index)).toEqual([0, 1, 2, 3, 4]);
  });
});

describe("logit_bias", () => {
  test("keys are token ids in decimal: text that Number() reads as some other id is a 400", async () => {
    for (const key of ["", " 5", "0x10", "1e2", "1.0", "-1"]) {
      const r = await post(`${server.url}/v1/chat/completions`, {
        model,
        messages,
        max_tokens: 1,
        logit_bias: { [key]: 100 },
      });
      expect(r.status).toBe(400);
      expect(r.json.error.param).toBe("logit_bias");
    }
    // Token 28 is "," in SmolLM2's vocabulary: a decimal key still forces it.
    const forced = await client.chat.completions.create({
      model,
      messages,
      max_tokens: 2,
      temperature: 0,
      logit_bias: { "28": 100 },
    });
    expect(forced.choices[0]!.message.content).toBe(",,");
  });
});

describe("system_fingerprint", () => {
  test("every answer and stream chunk carries one, the same for the same model and server", async () => {
    const body = { model, messages, max_tokens: 2, temperature: 0 };
    const first = await client.chat.completions.create(body);
    expect(first.system_fingerprint).toMatch(/^fp_[0-9a-f]{10}$/);
    const again = await client.completions.create({ model, prompt: "Once", max_tokens: 2 });
    expect(again.system_fingerprint).toBe(first.system_fingerprint);
    const stream = await client.chat.completions.create({
      ...body,
      stream: true,
      stream_options: { include_usage: true },
    });
    for await (const chunk of stream) expect(chunk.system_fingerprint).toBe(first.system_fingerprint!);
  });
});

describe("completions logprobs", () => {
  test("streamed text_offset counts a token whose text waited on a stop string's first characters", async () => {
    const body = { model, prompt: "Once upon", max_tokens: 6, temperature: 0, logprobs: 1 };
    const first = (await client.completions.create(body)).choices[0]!.logprobs!.tokens![0]!;
    // A stop string that starts with the first token's text and never completes: that text is held back.
    const request = { ...body, stop: [`${first}§§`] };
    const whole = (await client.completions.create(request)).choices[0]!.logprobs!;
    const stream = await client.completions.create({ ...request, stream: true });
    const offsets: number[] = [];
    for await (const chunk of stream) offsets.push(...(chunk.choices[0]?.logprobs?.text_offset ?? []));
    let at = 0;
    expect(whole.text_offset).toEqual(whole.tokens!.map((token) => (at += token.length) - token.length));
    expect(offsets).toEqual(whole.text_offset!);
  });
});
