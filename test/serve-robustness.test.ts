// `mlx serve` under bad input and abuse: a battery of malformed requests (each a clear 4xx
// naming the field), prompts past the context, oversized bodies, a full queue (429), timeouts,
// 200 rapid connect/disconnects, and the server answering normally after each; plus CORS,
// /health, /ready, /stats and the /metrics text format.
import { afterAll, beforeAll, describe, expect, spyOn, test } from "bun:test";
import OpenAI from "openai";
import { createApp, createState, type RunningServer } from "../src/server/app";
import { mkdirSync, mkdtempSync, rmSync, statSync, truncateSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { gzipSync } from "node:zlib";
import { dirname, join } from "node:path";
import { eventually, post, serve, healthWhile, tinyModel } from "./helpers/serve";
import { writeShardedTinyModel, writeTinyModel } from "./helpers/tiny-model";
import { tinyLlamaGGUF, writeGGUF } from "./helpers/gguf-writer";
import * as mx from "../src/mlx";
import * as engineRequest from "../src/engine/request";
import { nextTurn } from "../src/event-loop";

let server: RunningServer;
let model: string;
const chat = (extra: Record<string, unknown> = {}) => ({
  model,
  messages: [{ role: "user", content: "Hi" }],
  max_tokens: 4,
  ...extra,
});

beforeAll(() => {
  model = tinyModel();
  server = serve();
});
afterAll(() => server.stop());

async function answersNormally(url = server.url) {
  const ok = await post(`${url}/v1/chat/completions`, chat());
  expect(ok.status).toBe(200);
  expect(ok.json.choices[0].message.content).toBeString();
}

describe("bad input: a clear 4xx naming the field, and the server carries on", () => {
  const v1 = "/v1/chat/completions";
  const cases: [string, string, unknown, number, string | null | RegExp][] = [
    ["malformed JSON", v1, '{"model": "x", "messages": [', 400, /not valid JSON/],
    ["an empty body", v1, "", 400, /empty/],
    ["a JSON array body", v1, "[1,2]", 400, /JSON object/],
    ["missing messages", v1, { messages: undefined }, 400, "messages"],
    ["empty messages", v1, { messages: [] }, 400, "messages"],
    ["messages of the wrong type", v1, { messages: "hi" }, 400, "messages"],
    ["a message that is not an object", v1, { messages: ["hi"] }, 400, "messages.0"],
    ["a message without a role", v1, { messages: [{ content: "hi" }] }, 400, "messages.0.role"],
    ["an unknown role", v1, { messages: [{ role: "robot", content: "hi" }] }, 400, "messages.0.role"],
    ["content of the wrong type", v1, { messages: [{ role: "user", content: 5 }] }, 400, "messages.0.content"],
    ["a user message without content", v1, { messages: [{ role: "user" }] }, 400, "messages.0.content"],
    ["negative max_tokens", v1, { max_tokens: -1 }, 400, "max_tokens"],
    ["zero max_tokens", v1, { max_tokens: 0 }, 400, "max_tokens"],
    ["fractional max_tokens", v1, { max_tokens: 1.5 }, 400, "max_tokens"],
    ["max_tokens as a string", v1, { max_tokens: "10" }, 400, "max_tokens"],
    ["absurd max_tokens", v1, { max_tokens: 1e12 }, 400, "max_tokens"],
    ["absurd max_completion_tokens", v1, { max_completion_tokens: 100000 }, 400, "max_completion_tokens"],
    // JSON.parse reads a number past float64's range as Infinity: said as such, not "got a number".
    [
      "max_tokens past float64's range",
      v1,
      '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1e400}',
      400,
      /'max_tokens' must be a finite number, got Infinity/,
    ],
    ["temperature as a string", v1, { temperature: "hot" }, 400, "temperature"],
    ["negative temperature", v1, { temperature: -1 }, 400, "temperature"],
    ["top_p of 0", v1, { top_p: 0 }, 400, "top_p"],
    ["top_k fractional", v1, { top_k: 2.5 }, 400, "top_k"],
    ["min_p over 1", v1, { min_p: 1.5 }, 400, "min_p"],
    ["repetition_penalty of 0", v1, { repetition_penalty: 0 }, 400, "repetition_penalty"],
    ["presence_penalty out of range", v1, { presence_penalty: 3 }, 400, "presence_penalty"],
    ["a fractional seed", v1, { seed: -5.5 }, 400, "seed"],
    ["stop as a number", v1, { stop: 5 }, 400, "stop"],
    ["stop holding a number", v1, { stop: ["a", 1] }, 400, "stop.1"],
    ["stream as a string", v1, { stream: "yes" }, 400, "stream"],
    ["stream_options without stream", v1, { stream_options: { include_usage: true } }, 400, "stream_options"],
    ["top_logprobs without logprobs", v1, { top_logprobs: 2 }, 400, "top_logprobs"],
    ["too many top_logprobs", v1, { logprobs: true, top_logprobs: 50 }, 400, "top_logprobs"],
    ["model as a number", v1, { model: 5 }, 400, "model"],
    ["logit_bias with a bad key", v1, { logit_bias: { abc: 1 } }, 400, "logit_bias"],
    ["logit_bias outside the vocabulary", v1, { logit_bias: { "99999999": 1 } }, 400, "logit_bias"],
    // Which of its keys: a client may send hundreds.
    [
      "logit_bias outside the vocabulary, the id named",
      v1,
      { logit_bias: { "5": 1, "99999999": 1 } },
      400,
      /token id 99999999,/,
    ],
    [
      "response_format json_schema without a schema",
      v1,
      { response_format: { type: "json_schema" } },
      400,
      "response_format.json_schema",
    ],
    ["response_format of an unknown type", v1, { response_format: { type: "yaml" } }, 400, "response_format.type"],
    [
      "response_format with an invalid schema",
      v1,
      {
        response_format: {
          type: "json_schema",
          json_schema: { name: "x", schema: { type: "object", properties: { a: { type: "strnig" } } } },
        },
      },
      400,
      "response_format.json_schema.schema",
    ],
    ["completions without a prompt", "/v1/completions", { prompt: undefined }, 400, "prompt"],
    ["completions with an object prompt", "/v1/completions", { prompt: {} }, 400, "prompt"],
    ["completions with an empty prompt", "/v1/completions", { prompt: "" }, 400, "prompt"],
    ["completions with a token id outside the vocabulary", "/v1/completions", { prompt: [1, 1e9] }, 400, "prompt"],
    ["completions with an echo not true or false", "/v1/completions", { prompt: "x", echo: "yes" }, 400, "echo"],
    ["audio output", v1, { audio: { voice: "alloy", format: "wav" } }, 400, "audio"],
    ["modalities beyond text", v1, { modalities: ["text", "audio"] }, 400, "modalities"],
    ["a predicted output", v1, { prediction: { type: "content", content: "x" } }, 400, "prediction"],
    ["web search", v1, { web_search_options: {} }, 400, "web_search_options"],
    ["reasoning_effort", v1, { reasoning_effort: "low" }, 400, "reasoning_effort"],
    ["an unknown model", v1, { model: "no-such-model" }, 404, "model"],
    ["an unknown route", "/v1/nothing-here", {}, 404, null],
  ];
  for (const [name, path, override, status, expected] of cases) {
    test(name, async () => {
      const body =
        typeof override === "string"
          ? override
          : path.startsWith("/v1/completions")
            ? { model, prompt: "Hi", max_tokens: 2, ...(override as object) }
            : { ...chat(), ...(override as object) };
      const r = await post(`${server.url}${path}`, body);
      expect(r.status).toBe(status);
      expect(r.json.error).toBeObject();
      expect(r.json.error.message).toBeString();
      expect(r.json.error.type).toBeString();
      expect(r.json.error.message).not.toMatch(/\n\s+at /); // never a stack
      if (expected instanceof RegExp) expect(r.json.error.message).toMatch(expected);
      else if (expected) expect(r.json.error.param).toBe(expected);
    });
  }

  test("Ollama routes: the same checks, in Ollama's error shape", async () => {
    const api = (path: string, body: unknown) => post(`${server.url}${path}`, body);
    for (const [path, body, pattern] of [
      ["/api/chat", { model, messages: "x" }, /messages/],
      ["/api/chat", { messages: [] }, /model/],
      [
        "/api/chat",
        { model, messages: [{ role: "user", content: "x" }], options: { num_predict: "x" } },
        /num_predict/,
      ],
      ["/api/generate", { model, prompt: "x", options: { temperature: "hot" } }, /temperature/],
      ["/api/generate", { model, prompt: 5 }, /prompt/],
      ["/api/chat", { model, messages: [], shift: true }, /'shift' true is not supported/],
      ["/api/generate", { model, prompt: "x", options: { typical_p: 0.5 } }, /'options.typical_p' is not supported/],
      ["/api/generate", { model, prompt: "x", format: 5 }, /format/],
      [
        "/api/generate",
        { model, prompt: "x", format: { type: "object", properties: { n: { type: "number", multipleOf: 3 } } } },
        /multipleOf/,
      ],
      ["/api/generate", "{oops", /JSON/],
      ["/api/show", {}, /model/],
    ] as const) {
      const r = await api(path, body);
      expect(r.status).toBe(400);
      expect(r.json.error).toMatch(pattern);
    }
    expect((await api("/api/push", { model: "x" })).status).toBe(501);
  });

  test("JSON nested 100,000 levels deep is a 400 on every route that reads it, never a 500", async () => {
    const deep = (inner: string, depth = 100_000) => `${'{"a":'.repeat(depth)}${inner}${"}".repeat(depth)}`;
    const user = '[{"role": "user", "content": "Hi"}]';
    for (const [path, body] of [
      // Each of these reached code that walks the value recursively: a stack overflow.
      [
        v1,
        `{"model": "${model}", "messages": ${user}, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": ${deep("1")}}}}`,
      ],
      ["/api/chat", `{"model": "${model}", "messages": ${user}, "stream": false, "format": ${deep("1")}}`],
      [
        "/v1/messages",
        `{"model": "${model}", "max_tokens": 4, "messages": [${user.slice(1, -1)}, {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": ${deep("1")}}]}, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]}`,
      ],
      [
        "/v1/responses",
        `{"model": "${model}", "input": "Hi", "tools": [{"type": "function", "name": "f", "parameters": ${deep("{}")}}]}`,
      ],
      [v1, `${"[".repeat(100_000)}${"]".repeat(100_000)}`],
    ] as const) {
      const r = await post(`${server.url}${path}`, body);
      expect(r.status).toBe(400);
      expect(JSON.stringify(r.json)).toMatch(/nests arrays and objects deeper than 128 levels/);
    }
    // As deep as a real schema goes is fine.
    const r = await post(
      `${server.url}${v1}`,
      chat({ response_format: { type: "json_schema", json_schema: { name: "x", schema: nestedArraySchema(40) } } }),
    );
    expect(r.status).toBe(200);
  });

  test("a model named with half of a UTF-16 pair (JSON's \\ud800) is a 404 on every route, a 400 as a copy's name, never a 500", async () => {
    // Its file name in the store was encodeURIComponent's, which throws on a lone surrogate.
    const user = [{ role: "user", content: "Hi" }];
    for (const name of ["\ud800", "a\udc00b"]) {
      for (const [path, body] of [
        [v1, { messages: user, max_tokens: 1 }],
        ["/v1/completions", { prompt: "Hi", max_tokens: 1 }],
        ["/v1/messages", { messages: user, max_tokens: 1 }],
        ["/v1/responses", { input: "Hi", max_output_tokens: 1 }],
        ["/v1/embeddings", { input: "Hi" }],
        ["/api/chat", { messages: user, stream: false }],
        ["/api/generate", { prompt: "Hi", stream: false }],
        ["/api/embed", { input: "Hi" }],
        ["/api/show", {}],
        ["/tokenize", { content: "Hi" }],
      ] as const) {
        const r = await post(`${server.url}${path}`, { ...body, model: name });
        expect([path, r.status]).toEqual([path, 404]);
      }
      const copy = await post(`${server.url}/api/copy`, { source: model, destination: name });
      expect([copy.status, copy.json.error]).toEqual([
        400,
        "cannot copy to a name with half of a UTF-16 surrogate pair, which is no character; choose another name",
      ]);
    }
  });

  test("afterwards the server answers normally", () => answersNormally());
});

/** Sends `request` as is on a new connection and returns what comes back until the server closes it or stops. */
function rawExchange(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let answer = "";
    const socket = connect(port, "127.0.0.1", () => socket.write(request));
    socket.on("data", (bytes) => {
      answer += bytes.toString();
      // A whole JSON answer (its length is known): the server need not close the connection.
      const length = /content-length: (\d+)/i.exec(answer)?.[1];
      const body = answer.indexOf("\r\n\r\n");
      if (length !== undefined && body >= 0 && answer.length - body - 4 >= Number(length)) socket.end();
    });
    socket.on("close", () => resolve(answer));
    socket.on("error", reject);
  });
}

/** A JSON schema of arrays of arrays ... of numbers, `depth` arrays deep. */
const nestedArraySchema = (depth: number): object =>
  depth === 0 ? { type: "number" } : { type: "array", items: nestedArraySchema(depth - 1) };

describe("limits", () => {
  test("a prompt longer than the context is a 400 (context_length_exceeded), on both APIs", async () => {
    const long = "hello ".repeat(400);
    const r = await post(`${server.url}/v1/chat/completions`, chat({ messages: [{ role: "user", content: long }] }));
    expect(r.status).toBe(400);
    expect(r.json.error.code).toBe("context_length_exceeded");
    expect(r.json.error.message).toMatch(/256/);
    expect(r.json.error.param).toBe("messages");
    const completion = await post(`${server.url}/v1/completions`, { model, prompt: long });
    expect(completion.json.error).toMatchObject({ code: "context_length_exceeded", param: "prompt" });
    const o = await post(`${server.url}/api/generate`, { model, prompt: long, stream: false });
    expect(o.status).toBe(400);
    expect(o.json.error).toMatch(/context/);
    await answersNormally();
  });

  test("a body of two million token ids is read in a moment: the server answers meanwhile", async () => {
    const big = serve({ maxBodyBytes: 16 * 1024 * 1024 });
    try {
      await answersNormally(big.url);
      const prompt = Array.from({ length: 2_000_000 }, (_, i) => i % 1000);
      const asked = post(`${big.url}/v1/completions`, { model, prompt, max_tokens: 1 });
      const { meanwhile } = await healthWhile(big.url, asked);
      expect((await asked).json.error).toMatchObject({ code: "context_length_exceeded", param: "prompt" });
      expect(meanwhile).toBe(true);
    } finally {
      await big.stop();
    }
  }, 60_000);

  test("a request near the context is clamped: finish_reason length", async () => {
    const r = await post(`${server.url}/v1/completions`, {
      model,
      prompt: "hello ".repeat(240),
      max_tokens: 200,
      temperature: 0,
    });
    expect(r.status).toBe(200);
    expect(r.json.usage.prompt_tokens + r.json.usage.completion_tokens).toBeLessThanOrEqual(256);
  });

  test("a model whose pull fails is a 502 naming it (both APIs), and the server carries on", async () => {
    // A real hub endpoint that is up but cannot serve the repository.
    const hub = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("hub down", { status: 503 }) });
    const endpoint = process.env.HF_ENDPOINT;
    process.env.HF_ENDPOINT = `http://127.0.0.1:${hub.port}`;
    try {
      const spec = "hf:nobody/unreachable-model";
      const r = await post(`${server.url}/v1/chat/completions`, chat({ model: spec }));
      expect(r.status).toBe(502);
      expect(r.json.error.code).toBe("model_pull_failed");
      expect(r.json.error.message).toContain("nobody/unreachable-model");
      const o = await post(`${server.url}/api/chat`, {
        model: spec,
        messages: [{ role: "user", content: "Hi" }],
        stream: false,
      });
      expect(o.status).toBe(502);
      expect(o.json.error).toContain("pulling it failed");
    } finally {
      if (endpoint === undefined) delete process.env.HF_ENDPOINT;
      else process.env.HF_ENDPOINT = endpoint;
      hub.stop(true);
    }
    await answersNormally();
  });

  test("a path that holds no model fails naming it, and the model loaded stays loaded", async () => {
    await answersNormally(); // the shared model is loaded (one model at a time)
    const root = mkdtempSync(join(tmpdir(), "mlx-not-a-model-"));
    const notes = join(root, "notes.txt");
    await Bun.write(notes, "not a model");
    try {
      for (const path of [root, notes]) {
        const r = await post(`${server.url}/v1/chat/completions`, chat({ model: path }));
        expect(r.json.error.code).toBe("model_load_failed");
        expect(r.json.error.message).toContain(path);
      }
      expect(server.state.models.loaded.map((e) => e.path)).toEqual([model]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  test("a model whose files cannot load (a weight file cut short or not one, a config that is no JSON, a GGUF cut short) fails naming it; the model loaded stays loaded", async () => {
    // Before, the loaded model was unloaded to make room first, and each retry of a broken model
    // unloaded whatever had been loaded since.
    await answersNormally(); // the shared model is loaded (one model at a time)
    const root = mkdtempSync(join(tmpdir(), "mlx-broken-model-"));
    const cutShort = join(root, "cut-short");
    const notSafetensors = join(root, "not-safetensors");
    const badConfig = join(root, "bad-config");
    for (const dir of [cutShort, notSafetensors, badConfig]) writeTinyModel(dir);
    const weights = (dir: string) => join(dir, "model.safetensors");
    truncateSync(weights(cutShort), Math.floor(statSync(weights(cutShort)).size / 2));
    writeFileSync(weights(notSafetensors), "not a safetensors file");
    writeFileSync(join(badConfig, "config.json"), "{ not json");
    const gguf = join(root, "cut-short.gguf");
    const { metadata, tensors } = tinyLlamaGGUF({ hidden: 64, heads: 4, kvHeads: 2, ffn: 128, layers: 1, type: "F16" });
    writeGGUF(gguf, metadata, tensors);
    truncateSync(gguf, statSync(gguf).size - 1000);
    try {
      for (const [path, named] of [
        [cutShort, weights(cutShort)],
        [notSafetensors, weights(notSafetensors)],
        [badConfig, join(badConfig, "config.json")],
        [gguf, gguf],
      ]) {
        const r = await post(`${server.url}/v1/chat/completions`, chat({ model: path }));
        expect(r.json.error.code).toBe("model_load_failed");
        expect(r.json.error.message).toContain(named);
        expect(server.state.models.loaded.map((e) => e.path)).toEqual([model]);
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  test("stored responses are bounded by bytes too: the oldest go first, the latest stay", async () => {
    // Each response's input is stored twice (conversation and input items): about 2 KB apiece.
    const bounded = serve({ storedResponseBytes: 10_000 });
    try {
      const client = new OpenAI({ baseURL: `${bounded.url}/v1`, apiKey: "none", maxRetries: 0 });
      const ids: string[] = [];
      for (let i = 0; i < 8; i++) {
        const input = `${i} ${"hello ".repeat(100)}`;
        ids.push((await client.responses.create({ model, input, store: true, max_output_tokens: 16 })).id);
      }
      const oldest = await fetch(`${bounded.url}/v1/responses/${ids[0]}`);
      expect(oldest.status).toBe(404);
      expect(((await oldest.json()) as any).error.message).toMatch(/evicted/);
      expect((await client.responses.retrieve(ids.at(-1)!)).id).toBe(ids.at(-1)!);
    } finally {
      await bounded.stop();
    }
  });

  test("an oversized body is a 413 in JSON", async () => {
    const big = JSON.stringify(chat({ messages: [{ role: "user", content: "x".repeat(5 * 1024 * 1024) }] }));
    const r = await post(`${server.url}/v1/chat/completions`, big);
    expect(r.status).toBe(413);
    expect(r.json.error.code).toBe("request_too_large");
    await answersNormally();
  });

  test("a compressed body (Content-Encoding gzip) is a 415 saying so, in each API's error shape, not a 400 about its bytes as JSON", async () => {
    for (const [path, body] of [
      ["/v1/chat/completions", chat()],
      ["/api/chat", chat({ stream: false })],
    ] as const) {
      const r = await post(`${server.url}${path}`, gzipSync(JSON.stringify(body)), { "Content-Encoding": "gzip" });
      expect(r.status).toBe(415);
      expect(r.headers.get("accept-encoding")).toBe("identity");
      const message = "the request body's Content-Encoding 'gzip' is not supported: send it uncompressed";
      expect(r.json).toEqual(
        path === "/api/chat"
          ? { error: message }
          : { error: { message, type: "invalid_request_error", param: null, code: "unsupported_content_encoding" } },
      );
    }
    // "identity" is no compression.
    expect((await post(`${server.url}/v1/chat/completions`, chat(), { "Content-Encoding": "identity" })).status).toBe(
      200,
    );
    await answersNormally();
  });

  test("a 50 MB body: the same JSON 413, read by fetch (sized or streamed) and by the openai client", async () => {
    const content = "x".repeat(50 * 1024 * 1024);
    const expected = {
      message: "the request body is larger than 4194304 bytes",
      type: "invalid_request_error",
      param: null,
      code: "request_too_large",
    };
    const sized = await post(
      `${server.url}/v1/chat/completions`,
      JSON.stringify(chat({ messages: [{ role: "user", content }] })),
    );
    expect(sized.status).toBe(413);
    expect(sized.json).toEqual({ error: expected });
    // No Content-Length: the limit is found while counting the chunks.
    const piece = new TextEncoder().encode("x".repeat(1024 * 1024));
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent++ < 50) controller.enqueue(piece);
        else controller.close();
      },
    });
    const streamed = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      body,
      headers: { "Content-Type": "application/json" },
    });
    expect(streamed.status).toBe(413);
    expect(await streamed.json()).toEqual({ error: expected });
    const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
    const error = await openai.chat.completions
      .create({ model, messages: [{ role: "user", content }] })
      .catch((e) => e);
    expect(error).toBeInstanceOf(OpenAI.APIError);
    expect(error.status).toBe(413);
    expect(error.error).toEqual(expected);
    await answersNormally();
  }, 60_000);

  test("a full queue is a 429 with Retry-After; /ready says so; it recovers", async () => {
    const small = serve({ maxQueue: 1, maxBatch: 1 }); // one running, one waiting: the queue is full
    try {
      await answersNormally(small.url); // loaded
      const long = { model, prompt: "Once", max_tokens: 220, temperature: 0 };
      const controller = new AbortController();
      const first = fetch(`${small.url}/v1/completions`, {
        method: "POST",
        body: JSON.stringify({ ...long, stream: true }),
        signal: controller.signal,
      });
      const reader = (await first).body!.getReader();
      await reader.read(); // the first is generating
      const second = fetch(`${small.url}/v1/completions`, {
        method: "POST",
        body: JSON.stringify(long),
        signal: controller.signal,
      }).catch(() => undefined);
      await eventually(() => small.state.models.loaded[0]!.scheduler.stats.waiting === 1);
      const ready = await fetch(`${small.url}/ready`);
      expect(ready.status).toBe(503);
      const third = await post(`${small.url}/v1/completions`, long);
      expect(third.status).toBe(429);
      expect(third.headers.get("retry-after")).toBe("1");
      expect(third.json.error.code).toBe("queue_full");
      controller.abort();
      await second;
      await eventually(
        () =>
          small.state.models.loaded[0]!.scheduler.stats.running +
            small.state.models.loaded[0]!.scheduler.stats.waiting ===
          0,
      );
      expect((await fetch(`${small.url}/ready`)).status).toBe(200);
      await answersNormally(small.url);
    } finally {
      await small.stop();
    }
  });

  test("what an idle batch has room for is not refused as a full queue: n choices, a burst", async () => {
    const small = serve({ maxQueue: 1, maxBatch: 4 }); // four running and one waiting fit
    try {
      await answersNormally(small.url); // loaded
      const r = await post(`${small.url}/v1/chat/completions`, chat({ n: 5 }));
      expect(r.status).toBe(200);
      expect(r.json.choices).toHaveLength(5);
      const burst = await Promise.all(
        Array.from({ length: 5 }, () => post(`${small.url}/v1/chat/completions`, chat())),
      );
      expect(burst.map((b) => b.status)).toEqual([200, 200, 200, 200, 200]);
    } finally {
      await small.stop();
    }
  });

  test("a body that stops arriving part way is a 504 past the request timeout, sized or chunked", async () => {
    // The model loaded first: its load is no part of the answer's 300 ms.
    const hasty = serve({ requestTimeoutMs: 300, defaultModel: model });
    try {
      await eventually(async () => (await fetch(`${hasty.url}/health`)).status === 200, 30_000);
      const head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
      for (const stalled of [
        `${head}Content-Length: 1000\r\n\r\n{"messages": [`,
        `${head}Transfer-Encoding: chunked\r\n\r\ne\r\n{"messages": [\r\n`,
      ]) {
        const answer = await rawExchange(hasty.port, stalled);
        expect(answer).toStartWith("HTTP/1.1 504");
        expect(answer).toContain('"code":"request_timeout"');
      }
      // Then a whole answer, however slow this machine: the timeout (read per request) long again.
      hasty.state.config.requestTimeoutMs = 600_000;
      await answersNormally(hasty.url);
    } finally {
      await hasty.stop();
    }
  }, 30_000);

  test("a kept-alive connection left idle is closed after the idle timeout; a silent request is not cut", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-idle-"));
    const next = join(root, "next");
    writeTinyModel(next);
    const idle = serve({ idleConnectionSeconds: 1, maxLoadedModels: 1 });
    try {
      // Its request waits, silent, for the one model slot longer than the idle timeout.
      const held = await idle.state.models.acquire(model);
      let answer = "";
      let closed = false;
      const body = JSON.stringify({ model: next, prompt: "Once", max_tokens: 2 });
      const socket = connect(idle.port, "127.0.0.1", () =>
        socket.write(
          `POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
        ),
      );
      socket.on("data", (bytes) => (answer += bytes.toString()));
      socket.on("close", () => (closed = true));
      await Bun.sleep(2500);
      expect(closed).toBe(false);
      held.release();
      await eventually(() => answer.includes('"text_completion"'), 30_000);
      expect(answer).toStartWith("HTTP/1.1 200");
      // Answered, the connection stays open for another request, but not for ever.
      await eventually(() => closed, 30_000);
      // So too after a streamed answer.
      const streamed = await new Promise<string>((resolve) => {
        let text = "";
        const stream = JSON.stringify({ model: next, prompt: "Once", max_tokens: 2, stream: true });
        const s = connect(idle.port, "127.0.0.1", () =>
          s.write(
            `POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${stream.length}\r\n\r\n${stream}`,
          ),
        );
        s.on("data", (bytes) => (text += bytes.toString()));
        s.on("close", () => resolve(text));
      });
      expect(streamed).toContain("data: [DONE]");
    } finally {
      await idle.stop();
      rmSync(root, { recursive: true, force: true });
    }
  }, 60_000);

  test("a timeout past a timer's range (24.8 days) is that long, not a timer that fires at once", async () => {
    const patient = serve({ requestTimeoutMs: 10 ** 11 });
    try {
      await answersNormally(patient.url);
    } finally {
      await patient.stop();
    }
  });

  test("the per-request timeout: a 504 for a whole answer, an error event in a stream", async () => {
    const hasty = serve({ requestTimeoutMs: 100 });
    // An answer that takes far longer than the timeout however fast decoding gets: 4,000 tokens.
    // (220 tokens, all the shared tiny model's context of 256 allows, once finished inside it.)
    const roomy = join(mkdtempSync(join(tmpdir(), "mlx-timeout-")), "tiny");
    writeTinyModel(roomy, { contextLength: 4096 });
    try {
      const body = { model: roomy, prompt: "Once", max_tokens: 4000, temperature: 0, ignore_eos: true };
      await post(`${hasty.url}/v1/completions`, { model: roomy, prompt: "x", max_tokens: 1 }); // load first
      const r = await post(`${hasty.url}/v1/completions`, body);
      expect(r.status).toBe(504);
      expect(r.json.error.code).toBe("request_timeout");
      const s = await fetch(`${hasty.url}/v1/completions`, {
        method: "POST",
        body: JSON.stringify({ ...body, stream: true }),
      });
      const text = await s.text();
      expect(text).toMatch(/request_timeout/);
    } finally {
      await hasty.stop();
      rmSync(dirname(roomy), { recursive: true, force: true });
    }
  });
});

describe("disconnects and the event loop", () => {
  test("200 rapid connect/disconnects of streaming requests are cancelled at once; the server carries on", async () => {
    const started = performance.now();
    const body = (i: number) =>
      JSON.stringify(
        i % 2
          ? { model, prompt: "Once", max_tokens: 200, stream: true }
          : { model, stream: true, messages: [{ role: "user", content: "Hi" }], options: { num_predict: 200 } },
      );
    const one = async (i: number) => {
      const controller = new AbortController();
      const path = i % 2 ? "/v1/completions" : "/api/chat";
      try {
        const r = await fetch(`${server.url}${path}`, { method: "POST", body: body(i), signal: controller.signal });
        if (i % 3 === 0) await r.body!.getReader().read(); // some leave after the first chunk
        controller.abort();
      } catch {
        // aborted before the answer began
      }
    };
    for (let i = 0; i < 200; i += 10) {
      await Promise.all(Array.from({ length: 10 }, (_, j) => one(i + j)));
    }
    await eventually(
      () =>
        server.state.models.loaded.every(
          (e) => e.scheduler.stats.running === 0 && e.scheduler.stats.waiting === 0 && e.active === 0,
        ),
      5000,
    );
    // 200 x 200 tokens would take minutes: they were cancelled, not run to the end.
    expect(performance.now() - started).toBeLessThan(15_000);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/mlx_generations_total\{route="[^"]+",finish_reason="cancelled"\} \d+/);
    await answersNormally();
  }, 30_000);

  test("a client that leaves part way through sending its body is counted as gone (499), not as a server error", async () => {
    const logged: unknown[] = [];
    const uploads = serve({ logError: (error) => logged.push(error) });
    try {
      const head = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
      for (const partial of [
        `${head}Content-Length: 1000\r\n\r\n{"messages": [`,
        `${head}Transfer-Encoding: chunked\r\n\r\ne\r\n{"messages": [\r\n`,
      ]) {
        const socket = connect(uploads.port, "127.0.0.1", () => socket.write(partial));
        await Bun.sleep(100); // its headers read, its body awaited
        socket.destroy();
      }
      await eventually(() => uploads.state.requests.total === 2);
      expect(uploads.state.requests.byStatus).toEqual({ "499": 2 });
      expect(logged).toEqual([]);
    } finally {
      await uploads.stop();
    }
  });

  test("a client that stops reading its stream is cut off once it leaves the bound unread: its generation is cancelled and its batch slot freed", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-unread-"));
    const long = join(root, "long");
    writeTinyModel(long, { contextLength: 8192 });
    // The body is read as Bun reads it for a client whose socket is full: not at all. (Over a real
    // socket the kernel's and Bun's buffers take some megabytes first, minutes of a tiny model.)
    const state = createState({ version: "t", logError: () => {}, maxBatch: 1, unreadStreamBytes: 16 * 1024 });
    const app = createApp(state);
    const request = (path: string, body: Record<string, unknown>) =>
      app.fetch(
        new Request(`http://127.0.0.1${path}`, { method: "POST", body: JSON.stringify({ model: long, ...body }) }),
      );
    const maxTokens = 8000;
    try {
      for (const [path, body] of [
        [
          "/v1/chat/completions",
          { messages: [{ role: "user", content: "Hi" }], max_tokens: maxTokens, stream: true, ignore_eos: true },
        ],
        ["/api/generate", { prompt: "Once", options: { num_predict: maxTokens } }],
      ] as const) {
        const answer = await request(path, body);
        expect(answer.status).toBe(200);
        const reader = answer.body!.getReader();
        await reader.read(); // its first chunk, then nothing more
        await eventually(() => state.inflight.list.length === 1, 30_000);
        const [flight] = state.inflight.list;
        await eventually(() => state.inflight.list.length === 0, 30_000);
        expect(flight!.tokens).toBeLessThan(maxTokens);
        // What waited for it is dropped, and its connection closed: no more to read.
        let rest = 0;
        await expect(
          (async () => {
            for (let part = await reader.read(); !part.done; part = await reader.read()) rest += part.value.length;
          })(),
        ).rejects.toBeUndefined();
        expect(rest).toBeLessThanOrEqual(16 * 1024 + 4096);
      }
      const metrics = state.metrics.registry.render();
      expect(metrics).toContain('mlx_generations_total{route="/v1/chat/completions",finish_reason="cancelled"} 1');
      expect(metrics).toContain('mlx_generations_total{route="/api/generate",finish_reason="cancelled"} 1');
      // The one batch slot is free: another request is answered.
      const next = await request("/v1/chat/completions", {
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 4,
      });
      expect(next.status).toBe(200);
      expect(((await next.json()) as any).choices[0].finish_reason).toBe("length");
    } finally {
      state.models.dispose();
      rmSync(root, { recursive: true, force: true });
    }
  }, 90_000);

  test("clients that leave while waiting for their model stop waiting, and nothing is loaded for them", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-wait-model-"));
    const [busy, next] = [join(root, "busy"), join(root, "next")];
    writeTinyModel(busy, { contextLength: 8192 });
    writeTinyModel(next);
    const loads: string[] = [];
    const errors: unknown[] = [];
    const one = serve({
      maxLoadedModels: 1,
      onLoad: (_name, path) => loads.push(path),
      logError: (error) => errors.push(error),
    });
    const waitingForModel = async () =>
      Number(/^mlx_requests_waiting_for_model (\d+)$/m.exec(await (await fetch(`${one.url}/metrics`)).text())![1]);
    try {
      // A request in progress holds the one model slot until it is released.
      const held = await one.state.models.acquire(busy);
      const leaving = Array.from({ length: 4 }, () => new AbortController());
      const waiters = leaving.map((c, i) =>
        fetch(`${one.url}/v1/${i === 0 ? "embeddings" : "completions"}`, {
          method: "POST",
          body: JSON.stringify(
            i === 0 ? { model: next, input: "Once" } : { model: next, prompt: "Once", max_tokens: 2 },
          ),
          signal: c.signal,
        }).catch(() => undefined),
      );
      await eventually(async () => (await waitingForModel()) === 4);
      for (const c of leaving) c.abort();
      await Promise.all(waiters);
      // They are gone while the other model is still busy...
      await eventually(async () => (await waitingForModel()) === 0);
      held.release();
      await Bun.sleep(0); // a load that waited for room would have run by now (it is synchronous)
      // ...and when it is free, it is not swapped out for a model nobody waits for any more.
      expect(one.state.models.loaded.map((e) => e.path)).toEqual([busy]);
      expect(loads).toEqual([busy]);
      expect(errors).toEqual([]); // a client leaving is not a server error
      expect(one.state.requests.byStatus["500"]).toBeUndefined();
      const r = await post(`${one.url}/v1/completions`, { model: next, prompt: "Once", max_tokens: 2 });
      expect(r.status).toBe(200);
    } finally {
      await one.stop();
      rmSync(root, { recursive: true, force: true });
    }
  }, 60_000);

  test("requests waiting for their model are bounded as its queue is: past what it could take once loaded, a 429 at once, and /ready says so", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-wait-bound-"));
    const [busy, next] = [join(root, "busy"), join(root, "next")];
    writeTinyModel(busy, { contextLength: 8192 });
    writeTinyModel(next);
    // One running and one queued: what the model takes at once. (The timeout ends a wait that is not refused.)
    const one = serve({ maxLoadedModels: 1, maxBatch: 1, maxQueue: 1, requestTimeoutMs: 5000 });
    try {
      const held = await one.state.models.acquire(busy);
      const request = { model: next, prompt: "Once", max_tokens: 2 };
      const waiting = [post(`${one.url}/v1/completions`, request), post(`${one.url}/v1/completions`, request)];
      await eventually(() => one.state.models.acquiring === 2);
      // A third would be refused once the model loads: it is refused now, not after waiting for it.
      const third = await post(`${one.url}/v1/completions`, request);
      expect(third.status).toBe(429);
      expect(third.headers.get("retry-after")).toBe("1");
      expect(third.json.error.code).toBe("queue_full");
      // So /ready says, as it says of a loaded model's full queue (a load balancer sends no more).
      const ready = await fetch(`${one.url}/ready`);
      expect(ready.status).toBe(503);
      expect(((await ready.json()) as { reason: string }).reason).toBe(`queue full for ${next}`);
      held.release();
      expect((await Promise.all(waiting)).map((r) => r.status)).toEqual([200, 200]);
      expect((await fetch(`${one.url}/ready`)).status).toBe(200);
      expect(one.state.models.pinnedFailure).toBeUndefined();
    } finally {
      await one.stop();
      rmSync(root, { recursive: true, force: true });
    }
  });

  test("a model whose one client left while it loaded idles with the keep_alive that client asked for (0: unloaded once loaded)", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-left-loading-"));
    const sharded = join(root, "sharded");
    writeShardedTinyModel(sharded, 3);
    const state = createState({ version: "t", logError: () => {} });
    const read = mx.loadSafetensors;
    const gone = new AbortController();
    // The client leaves as the load reads its first weight file: the load goes on.
    const reads = spyOn(mx, "loadSafetensors").mockImplementation((path) => {
      if (reads.mock.calls.length === 1) gone.abort();
      return read(path);
    });
    try {
      await expect(state.models.acquire(sharded, 0, gone.signal)).rejects.toThrow();
      await eventually(() => reads.mock.calls.length === 3);
      await Bun.sleep(50);
      // Not kept for the default 5 minutes: the only request for it asked for none.
      expect(state.models.loaded.map((e) => e.path)).toEqual([]);
    } finally {
      reads.mockRestore();
      state.models.dispose();
      rmSync(root, { recursive: true, force: true });
    }
  });

  test("a model loaded for two requests is not unloaded by the first one's keep_alive 0 before the second holds it", async () => {
    const state = createState({ version: "t", logError: () => {} });
    try {
      // The second waits through a signal (as every HTTP request does): it resumes a little later.
      const [first, second] = [
        state.models.acquire(model, 0),
        state.models.acquire(model, undefined, new AbortController().signal),
      ];
      (await first).release();
      const held = await second;
      expect(state.models.loaded.map((e) => e.path)).toEqual([held.entry.path]);
      held.release();
      expect(state.models.loaded).toEqual([]); // the keep_alive 0 it was left with
    } finally {
      state.models.dispose();
    }
  });

  test("requests that generate nothing (tokenize, count tokens, a preload) wait for their model no longer than the request timeout", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-wait-timeout-"));
    const [busy, next] = [join(root, "busy"), join(root, "next")];
    writeTinyModel(busy);
    writeTinyModel(next);
    const one = serve({ maxLoadedModels: 1, requestTimeoutMs: 300 });
    try {
      const held = await one.state.models.acquire(busy);
      const waiting = [
        ["/tokenize", { model: next, content: "Once" }],
        ["/detokenize", { model: next, tokens: [1] }],
        ["/apply-template", { model: next, messages: [{ role: "user", content: "Hi" }] }],
        ["/v1/messages/count_tokens", { model: next, messages: [{ role: "user", content: "Hi" }] }],
        ["/api/generate", { model: next }], // Ollama's preload
      ] as const;
      const answers = await Promise.all(
        waiting.map(([path, body]) =>
          Promise.race([post(`${one.url}${path}`, body), Bun.sleep(5000).then(() => ({ status: "still waiting" }))]),
        ),
      );
      expect(answers.map((a) => a.status)).toEqual(waiting.map(() => 504));
      held.release();
      await Bun.sleep(0); // a load that waited for room would have run by now
      expect(one.state.models.loaded.map((e) => e.path)).toEqual([busy]);
    } finally {
      await one.stop();
      rmSync(root, { recursive: true, force: true });
    }
  }, 60_000);

  test("a request for another model is served in its turn, not after every later one for the busy model", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-turns-"));
    const [busy, next] = [join(root, "busy"), join(root, "next")];
    writeTinyModel(busy);
    writeTinyModel(next);
    const one = serve({ maxLoadedModels: 1 });
    const finished: string[] = [];
    const complete = (m: string) =>
      post(`${one.url}/v1/completions`, { model: m, prompt: "Once", max_tokens: 2 }).then((r) => {
        finished.push(m);
        return r.status;
      });
    try {
      const held = await one.state.models.acquire(busy); // a request in progress on the busy model
      const first = complete(next); // waits for the busy model to go idle
      await eventually(() => one.state.models.acquiring === 1);
      const later = complete(busy); // came later: waits its turn instead of keeping the model busy
      await eventually(() => one.state.models.acquiring === 2);
      held.release();
      expect(await Promise.all([first, later])).toEqual([200, 200]);
      expect(finished).toEqual([next, busy]);
    } finally {
      await one.stop();
      rmSync(root, { recursive: true, force: true });
    }
  }, 60_000);

  test("a request's further choices (n > 1) share its hold on the model: a request for another model waiting for room does not deadlock it", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-choices-"));
    const [busy, next] = [join(root, "busy"), join(root, "next")];
    writeTinyModel(busy);
    writeTinyModel(next);
    // Within the timeout, the deadlock was a 504 for the request of n choices after it.
    const one = serve({ maxLoadedModels: 1, requestTimeoutMs: 5000 });
    const prepare = engineRequest.prepareGeneration;
    let other: Promise<number> | undefined;
    // While the first choice holds the busy model, a request for the other model comes, and waits for room.
    const prepared = spyOn(engineRequest, "prepareGeneration").mockImplementation(async (...args) => {
      if (!other) {
        other = post(`${one.url}/v1/completions`, { model: next, prompt: "Once", max_tokens: 2 }).then((r) => r.status);
        await eventually(() => one.state.models.acquiring === 1);
      }
      return prepare(...args);
    });
    try {
      const choices = await post(`${one.url}/v1/completions`, { model: busy, prompt: "Once", max_tokens: 2, n: 2 });
      expect(choices.status).toBe(200);
      expect(choices.json.choices.length).toBe(2);
      expect(await other).toBe(200);
      expect(one.state.models.loaded.map((e) => [e.path, e.active])).toEqual([[next, 0]]);
    } finally {
      prepared.mockRestore();
      await one.stop();
      rmSync(root, { recursive: true, force: true });
    }
  }, 60_000);

  test("models requested at once load one at a time under --max-models 1: never two held", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-at-once-"));
    const names = ["a", "b", "c"].map((name) => join(root, name));
    for (const dir of names) writeTinyModel(dir);
    const heldAtLoad: number[] = [];
    const one = serve({ maxLoadedModels: 1, onLoad: () => heldAtLoad.push(one.state.models.loaded.length) });
    try {
      const complete = (m: string) => post(`${one.url}/v1/completions`, { model: m, prompt: "Once", max_tokens: 2 });
      const answers = await Promise.all(names.flatMap((m) => [complete(m), complete(m)]));
      expect(answers.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 200]);
      expect(heldAtLoad).toEqual([1, 1, 1]);
      expect(one.state.models.loaded.length).toBe(1);
    } finally {
      await one.stop();
      rmSync(root, { recursive: true, force: true });
    }
  }, 60_000);

  test("loading a model gives the event loop a turn between its weight files", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-sharded-"));
    const sharded = join(root, "sharded");
    writeShardedTinyModel(sharded, 6);
    // The event loop's turn at each weight file read: one turn for all of them would mean the
    // load held the loop (no /health, no other model's tokens) from the first file to the last.
    let turn = 0;
    let ticking = true;
    void (async () => {
      while (ticking) {
        turn++;
        await nextTurn();
      }
    })();
    const turnsAtFile: number[] = [];
    const read = mx.loadSafetensors;
    const reads = spyOn(mx, "loadSafetensors").mockImplementation((path) => {
      turnsAtFile.push(turn);
      return read(path);
    });
    try {
      const one = serve();
      try {
        const r = await post(`${one.url}/v1/completions`, { model: sharded, prompt: "Once", max_tokens: 2 });
        expect(r.status).toBe(200);
      } finally {
        await one.stop();
      }
    } finally {
      reads.mockRestore();
      ticking = false;
      rmSync(root, { recursive: true, force: true });
    }
    expect(turnsAtFile.length).toBe(6);
    expect(new Set(turnsAtFile).size).toBe(6);
  }, 60_000);

  test("/health answers promptly while a generation runs", async () => {
    const r = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      body: JSON.stringify({ model, prompt: "Once", max_tokens: 200, stream: true }),
    });
    const reader = r.body!.getReader();
    await reader.read();
    // Five answers before a 200-token generation ends: the engine's steps leave the loop turns
    // between them (a loop the generation held would answer only once it ended).
    for (let i = 0; i < 5; i++) expect((await fetch(`${server.url}/health`)).status).toBe(200);
    expect(server.state.models.loaded[0]!.scheduler.stats.running).toBe(1); // still generating
    await reader.cancel();
  });

  test("a prompt of megabytes is tokenized a piece at a time (to answer it, or count its tokens): the server answers meanwhile", async () => {
    await answersNormally(); // the model loaded
    const content = "The quick brown fox jumps over the lazy dog, 42 times.\n".repeat(55_000); // 3 MB
    const messages = [{ role: "user", content }];
    const [asked, counted] = [
      post(`${server.url}/v1/chat/completions`, chat({ messages })),
      post(`${server.url}/v1/messages/count_tokens`, { model, messages }),
    ];
    const { meanwhile } = await healthWhile(server.url, Promise.all([asked, counted]));
    const { status, json } = await asked;
    expect(status).toBe(400); // past the tiny model's context, which its whole length says
    const { tokenizer } = server.state.models.loaded[0]!.lm;
    const whole = tokenizer.encode(tokenizer.applyChatTemplate([{ role: "user", content }]), {
      addSpecialTokens: false,
    });
    expect(json.error.message).toContain(`the prompt is ${whole.length} tokens`);
    expect((await counted).json.input_tokens).toBe(whole.length);
    expect(meanwhile).toBe(true);
  }, 60_000);
});

describe("stopping", () => {
  test("a model still loading when the server stops is freed once loaded, not kept", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-stop-loading-"));
    const sharded = join(root, "sharded");
    writeShardedTinyModel(sharded, 3);
    const state = createState({ version: "t", logError: () => {} });
    const read = mx.loadSafetensors;
    // The server stops as the load reads its first weight file.
    const reads = spyOn(mx, "loadSafetensors").mockImplementation((path) => {
      if (reads.mock.calls.length === 1) state.models.dispose();
      return read(path);
    });
    try {
      await expect(state.models.acquire(sharded)).rejects.toThrow(/after the server stopped/);
      expect(reads.mock.calls.length).toBe(3); // it did load
      expect(state.models.loaded).toEqual([]);
    } finally {
      reads.mockRestore();
      state.models.dispose();
      rmSync(root, { recursive: true, force: true });
    }
  });

  test("generations still running when the grace period ends get a 503 (an error event in a stream), not a cut connection", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-stopping-"));
    const long = join(root, "long");
    writeTinyModel(long, { contextLength: 8192 });
    const stopping = serve({ defaultModel: long });
    const body = { model: long, prompt: "Once", max_tokens: 8000, ignore_eos: true };
    try {
      const streamed = await fetch(`${stopping.url}/v1/completions`, {
        method: "POST",
        body: JSON.stringify({ ...body, stream: true }),
      });
      const reader = streamed.body!.getReader();
      await reader.read(); // generating
      const whole = post(`${stopping.url}/v1/completions`, body);
      await eventually(() => stopping.state.inflight.list.length === 2, 30_000);
      await stopping.stop(100);
      let rest = "";
      for (let part = await reader.read(); !part.done; part = await reader.read())
        rest += new TextDecoder().decode(part.value);
      expect(rest).toContain('"code":"server_shutting_down"');
      const answer = await whole;
      expect(answer.status).toBe(503);
      expect(answer.json.error.code).toBe("server_shutting_down");
    } finally {
      await stopping.stop();
      rmSync(root, { recursive: true, force: true });
    }
  }, 60_000);

  test("a request whose body is still arriving when the grace period ends gets the 503 too, at once", async () => {
    const stopping = serve();
    try {
      const started = performance.now();
      const answer = rawExchange(
        stopping.port,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" +
          'Content-Length: 1000\r\n\r\n{"messages": [',
      );
      await Bun.sleep(200); // its headers read, its body awaited
      await stopping.stop(100);
      // Not a connection cut with nothing said, after the request timeout or the settling time.
      expect(await answer).toStartWith("HTTP/1.1 503");
      expect(await answer).toContain('"code":"server_shutting_down"');
      expect(performance.now() - started).toBeLessThan(1500);
    } finally {
      await stopping.stop();
    }
  }, 30_000);
});

describe("operations", () => {
  test("HTTP/1.0 requests without a Host header (a load balancer's health check) reach their routes", async () => {
    for (const [request, expected] of [
      ["GET /health HTTP/1.0\r\n\r\n", '{"status":"ok"}'],
      ["GET /api/version HTTP/1.0\r\n\r\n", '"mlx_version":"0.1.0-test"'],
      [`POST /api/show HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}`, '{"error":"\'model\' is required"}'],
    ]) {
      const answer = await rawExchange(server.port, request!);
      expect(answer).toStartWith("HTTP/1.1 ");
      expect(answer.slice(answer.indexOf("\r\n\r\n") + 4)).toContain(expected!);
    }
  });

  test("/health is 503 while the first model loads, 200 after", async () => {
    const state = createState({ version: "t", logError: () => {} });
    const app = createApp(state);
    const loading = state.models.acquire(model);
    const during = await app.fetch(new Request("http://localhost/health"));
    expect(during.status).toBe(503);
    expect(await during.json()).toEqual({ status: "loading" });
    (await loading).release();
    expect((await app.fetch(new Request("http://localhost/health"))).status).toBe(200);
    state.models.dispose();
  });

  test("/ready is 503 naming why while the model the server was started with fails to load, 200 once it loads", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-broken-default-"));
    const broken = join(root, "broken");
    mkdirSync(broken);
    writeFileSync(join(broken, "config.json"), "{}");
    const started = serve({ defaultModel: broken });
    const ready = async () => {
      const r = await fetch(`${started.url}/ready`);
      return { status: r.status, body: (await r.json()) as any };
    };
    try {
      await eventually(async () => (await ready()).status === 503 && !started.state.models.startingUp, 30_000);
      expect((await ready()).body.reason).toMatch(/^the default model failed to load: cannot load .*model_type/);
      expect((await fetch(`${started.url}/health`)).status).toBe(200); // alive: other models can be served
      // Repaired, the next request loads it: ready again.
      rmSync(broken, { recursive: true });
      writeTinyModel(broken);
      expect((await post(`${started.url}/v1/completions`, { prompt: "Once", max_tokens: 2 })).status).toBe(200);
      expect(await ready()).toEqual({ status: 200, body: { ready: true } });
    } finally {
      await started.stop();
      rmSync(root, { recursive: true, force: true });
    }
  }, 60_000);

  test("/stats: queue, loaded models, request counts", async () => {
    const stats = (await (await fetch(`${server.url}/stats`)).json()) as any;
    expect(stats.queue).toEqual({ running: 0, waiting: 0, max_queue: 64, waiting_for_model: 0 });
    expect(stats.models[0].name).toBe(model);
    expect(stats.requests.total).toBeGreaterThan(10);
    expect(stats.requests.by_status["400"]).toBeGreaterThan(10);
    expect(stats.memory.active).toBeGreaterThan(0);
  });

  test("CORS only for the origins given (and this machine's pages: serve-security.test.ts)", async () => {
    const plain = await fetch(`${server.url}/v1/models`, { headers: { Origin: "http://evil.example" } });
    expect(plain.headers.get("access-control-allow-origin")).toBeNull();
    const open = serve({ corsOrigins: ["http://app.example"], apiKey: "k" });
    try {
      const preflight = await fetch(`${open.url}/v1/chat/completions`, {
        method: "OPTIONS",
        headers: { Origin: "http://app.example", "Access-Control-Request-Method": "POST" },
      });
      expect(preflight.status).toBe(204);
      expect(preflight.headers.get("access-control-allow-origin")).toBe("http://app.example");
      // The headers the OpenAI and Anthropic SDKs send from a browser pass the preflight.
      const sdkHeaders = ["authorization", "content-type", "x-stainless-os", "x-stainless-retry-count"];
      const sdkPreflight = await fetch(`${open.url}/v1/messages`, {
        method: "OPTIONS",
        headers: {
          Origin: "http://app.example",
          "Access-Control-Request-Method": "POST",
          "Access-Control-Request-Headers": [...sdkHeaders, "anthropic-dangerous-direct-browser-access"].join(","),
        },
      });
      const allowed = sdkPreflight.headers.get("access-control-allow-headers")?.toLowerCase().split(/,\s*/);
      for (const header of [...sdkHeaders, "anthropic-dangerous-direct-browser-access"])
        expect(allowed).toContain(header);
      // A page can read our own headers (a 429's Retry-After, X-Mlx-Closed-Early, X-Request-Id).
      const answer = await fetch(`${open.url}/v1/models`, {
        headers: { Origin: "http://app.example", Authorization: "Bearer k" },
      });
      expect(answer.headers.get("access-control-expose-headers")).toBe("Retry-After,X-Mlx-Closed-Early,X-Request-Id");
      const other = await fetch(`${open.url}/v1/models`, {
        headers: { Origin: "http://evil.example", Authorization: "Bearer k" },
      });
      expect(other.headers.get("access-control-allow-origin")).toBeNull();
    } finally {
      await open.stop();
    }
  });

  test("/metrics is valid Prometheus text with the expected families", async () => {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    const families = checkPrometheusText(text);
    for (const [name, type] of Object.entries({
      mlx_http_requests_total: "counter",
      mlx_generations_total: "counter",
      mlx_prompt_tokens_total: "counter",
      mlx_generation_tokens_total: "counter",
      mlx_time_to_first_token_seconds: "histogram",
      mlx_e2e_request_latency_seconds: "histogram",
      mlx_queue_wait_seconds: "histogram",
      mlx_requests_running: "gauge",
      mlx_requests_waiting: "gauge",
      mlx_memory_active_bytes: "gauge",
      mlx_memory_peak_bytes: "gauge",
      // Counts a loaded model keeps: counters, as Prometheus' rate() and increase() expect.
      mlx_prefix_cache_hits_total: "counter",
      mlx_prefix_cache_misses_total: "counter",
      mlx_prefix_cache_hit_tokens_total: "counter",
      mlx_tuner_adjustments_total: "counter",
      mlx_speculative_drafted_tokens_total: "counter",
    })) {
      expect(families.get(name)?.type).toBe(type);
    }
    expect(families.get("mlx_prompt_tokens_total")!.samples[0]!.value).toBeGreaterThan(0);
    expect(text).toMatch(/mlx_http_requests_total\{route="\/v1\/chat\/completions",status="400"\} \d+/);
    expect(text).toMatch(/mlx_generations_total\{route="\/v1\/chat\/completions",finish_reason="(length|stop)"\} \d+/);
  });
});

/**
 * A strict reading of the Prometheus text format (0.0.4): every line a comment or a sample;
 * HELP and TYPE once per family, before its samples; names and labels well formed; values
 * numbers; histograms with increasing `le`, cumulative counts, +Inf equal to _count.
 */
function checkPrometheusText(text: string) {
  expect(text.endsWith("\n")).toBe(true);
  const name = "[a-zA-Z_:][a-zA-Z0-9_:]*";
  const label = `[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"`;
  const sample = new RegExp(
    `^(${name})(\\{(?:${label})(?:,${label})*\\})? (-?(?:\\d+(?:\\.\\d+)?(?:e[+-]?\\d+)?|\\+Inf|-Inf|NaN))$`,
  );
  const families = new Map<
    string,
    { type: string; help: boolean; samples: { name: string; labels: string; value: number }[] }
  >();
  let current: string | undefined;
  for (const line of text.slice(0, -1).split("\n")) {
    let m: RegExpExecArray | null;
    if ((m = new RegExp(`^# HELP (${name}) .*$`).exec(line))) {
      expect(families.has(m[1]!)).toBe(false);
      families.set(m[1]!, { type: "untyped", help: true, samples: [] });
      current = m[1];
    } else if ((m = new RegExp(`^# TYPE (${name}) (counter|gauge|histogram|summary|untyped)$`).exec(line))) {
      expect(m[1]).toBe(current!);
      expect(families.get(m[1]!)!.samples.length).toBe(0);
      families.get(m[1]!)!.type = m[2]!;
    } else {
      m = sample.exec(line);
      if (!m) throw new Error(`not a valid exposition line: ${JSON.stringify(line)}`);
      const family = families.get(current!)!;
      const base = family.type === "histogram" ? m[1]!.replace(/_(bucket|sum|count)$/, "") : m[1]!;
      expect(base).toBe(current!);
      family.samples.push({ name: m[1]!, labels: m[2] ?? "", value: Number(m[3] === "+Inf" ? Infinity : m[3]) });
    }
  }
  for (const [familyName, family] of families) {
    if (family.type === "counter") expect(familyName).toEndWith("_total");
    if (family.type !== "histogram") continue;
    const series = new Map<string, { le: number; count: number }[]>();
    const counts = new Map<string, number>();
    for (const s of family.samples) {
      const rest = s.labels
        .replace(/,?le="[^"]*"/, "")
        .replace("{}", "")
        .replace("{,", "{");
      if (s.name === `${familyName}_bucket`) {
        const le = /le="([^"]+)"/.exec(s.labels)![1]!;
        series.set(rest, [...(series.get(rest) ?? []), { le: le === "+Inf" ? Infinity : Number(le), count: s.value }]);
      } else if (s.name === `${familyName}_count`) counts.set(rest, s.value);
    }
    for (const [key, buckets] of series) {
      for (let i = 1; i < buckets.length; i++) {
        expect(buckets[i]!.le).toBeGreaterThan(buckets[i - 1]!.le);
        expect(buckets[i]!.count).toBeGreaterThanOrEqual(buckets[i - 1]!.count);
      }
      expect(buckets.at(-1)!.le).toBe(Infinity);
      expect(buckets.at(-1)!.count).toBe(counts.get(key)!);
    }
  }
  return families;
}
